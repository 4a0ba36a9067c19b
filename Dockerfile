# qdrop-onnx in a container.
#   CPU (default): docker build -t qdrop-onnx .
#   GPU:           docker build --build-arg VARIANT=gpu -t qdrop-onnx:gpu .   (run with --gpus all)
# VARIANT=cpu installs torch's CPU wheel (small image); VARIANT=gpu installs torch's default CUDA wheel and
# swaps onnxruntime for onnxruntime-gpu. torch is pinned like the Makefile's TORCH_PIN.
FROM python:3.11-slim
ARG VARIANT=cpu
WORKDIR /opt/qdrop-onnx
COPY pyproject.toml README.md ./
COPY qdrop_onnx ./qdrop_onnx
COPY cli ./cli
RUN if [ "${VARIANT}" = "gpu" ]; then pip install --no-cache-dir torch==2.13.0; \
    else pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; fi
RUN pip install --no-cache-dir . \
 && if [ "${VARIANT}" = "gpu" ]; then pip uninstall -y onnxruntime && pip install --no-cache-dir onnxruntime-gpu; fi
CMD ["qdrop-onnx", "--help"]
