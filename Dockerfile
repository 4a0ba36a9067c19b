# CPU image by default; --build-arg ORT_PACKAGE=onnxruntime-gpu swaps in the CUDA build of ONNX Runtime.
FROM python:3.11-slim
ARG ORT_PACKAGE=onnxruntime
# Pass a CPU wheel index in TORCH_SPEC to keep the image small; the default resolves from PyPI.
ARG TORCH_SPEC="torch==2.13.0"
WORKDIR /opt/qdrop-onnx
COPY pyproject.toml README.md ./
COPY qdrop_onnx ./qdrop_onnx
COPY cli ./cli
RUN pip install --no-cache-dir ${TORCH_SPEC} \
 && pip install --no-cache-dir . \
 && if [ "${ORT_PACKAGE}" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install --no-cache-dir "${ORT_PACKAGE}"; fi
ENTRYPOINT ["qdrop-onnx"]
CMD ["--help"]
