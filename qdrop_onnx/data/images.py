"""Image folders as model input: class-per-folder labels, presets for common preprocessing.

Geometry follows torchvision's conventions (the ones the reference accuracies were measured with):
short side resized with Pillow bilinear, then a center crop with ``round((h - crop) / 2)`` offsets.
Normalisation is ``(pixel - mean) / std`` in 0–255 pixel units.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from qdrop_onnx.data.spec import Batch, InputSpec
from qdrop_onnx.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input.

    size: final (height, width); None means "take it from the model input".
    resize: short side to resize to before a center crop to ``size``; None resizes straight to ``size``.
    mean, std: per channel, in 0–255 pixel units. layout: 'NCHW' or 'NHWC'. input_name: the model input
    the images feed (the key of each batch).
    """

    size: tuple[int, int] | None
    resize: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layout: str = "NCHW"
    input_name: str = "input"


# No preset: straight to the model's input size (no crop: a crop made for 224 from 256 would cut CIFAR's 32x32
# images to 32/256 of their width), ImageNet statistics. Cropping only when asked (a preset or --resize).
PLAIN = Preprocess(size=None, resize=None, mean=_IMAGENET_MEAN, std=_IMAGENET_STD)
PRESETS: dict[str, Preprocess] = {
    "cifar10": Preprocess(size=(32, 32), resize=None, mean=_IMAGENET_MEAN, std=_IMAGENET_STD),
    "imagenet": Preprocess(size=(224, 224), resize=256, mean=_IMAGENET_MEAN, std=_IMAGENET_STD),
    "tf": Preprocess(size=(224, 224), resize=256, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
}


def resolve_preprocess(spec: InputSpec, *, preset: str | None = None, mean: tuple[float, ...] | None = None,
                       std: tuple[float, ...] | None = None, size: tuple[int, int] | None = None,
                       resize: int | None = None) -> Preprocess:
    """A preset (default: none, :data:`PLAIN`) with explicit overrides; size and layout checked against the
    model."""
    if preset is not None and preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset is not None else PLAIN
    model_hw = spec.spatial
    if size is None and preset is None and None not in model_hw:
        size = model_hw  # no preset: the model's own input size
    chosen = size or base.size
    if None not in model_hw and chosen is not None and tuple(chosen) != tuple(model_hw):
        raise DataError(f"preprocessing makes {chosen[0]}x{chosen[1]} images but the model input "
                        f"{spec.name} takes {model_hw[0]}x{model_hw[1]}; pass --size or another preset")
    if len(spec.dims) != 4:
        raise DataError(f"model input {spec.name} has rank {len(spec.dims)}; image data needs a 4-D input "
                        "(use .npy/.npz tensors instead)")
    channels = spec.dims[1] if spec.layout == "NCHW" else spec.dims[3]
    if channels not in (3, None):
        raise DataError(f"model input {spec.name} has {channels} channels; image data is RGB (3 channels)")
    if None in model_hw and size is None and (preset is None or chosen is None):
        dims = "x".join("?" if d is None else str(d) for d in spec.dims)
        raise DataError(f"model input {spec.name} has dynamic height/width ({dims}); pass --input-shape H W "
                        "(or a --preset) to choose the image size to calibrate at")
    out = replace(base, size=tuple(chosen) if chosen else None, layout=spec.layout, input_name=spec.name)
    if resize is not None:
        out = replace(out, resize=resize)
    if mean is not None:
        out = replace(out, mean=_triple(mean, "mean"))
    if std is not None:
        out = replace(out, std=_triple(std, "std"))
    if any(s == 0 for s in out.std):
        raise DataError("--std must not contain 0")
    return out


def _triple(values: tuple[float, ...], what: str) -> tuple[float, float, float]:
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) != 3:
        raise DataError(f"--{what} takes 1 or 3 values, got {len(values)}")
    return (values[0], values[1], values[2])


class UnreadableImageError(DataError):
    """One image file that Pillow cannot decode."""


def load_image(path: Path, pre: Preprocess) -> np.ndarray:
    """One image file → float32 array (C,H,W) or (H,W,C) per ``pre.layout``."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # Pillow raises all of these
        raise UnreadableImageError(f"cannot read image {path}: {exc}") from None
    if pre.size is None:
        raise DataError("image size unknown: the model input has no fixed size; pass --size H W")
    height, width = pre.size
    if pre.resize is not None:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = pre.resize, int(pre.resize * long / short)
        new_size = (new_short, new_long) if w <= h else (new_long, new_short)
        if new_size != img.size:
            img = img.resize(new_size, Image.BILINEAR)
        w, h = img.size
        top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
        img = img.crop((left, top, left + width, top + height))
    elif img.size != (width, height):
        img = img.resize((width, height), Image.BILINEAR)
    array = np.asarray(img, dtype=np.float32)
    array = (array - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1) if pre.layout == "NCHW" else array)


def _read_classes(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read classes file {path}: {exc.strerror}") from None
    names = [line.strip().split()[0] for line in lines if line.strip()]
    if not names:
        raise DataError(f"classes file {path} is empty")
    return names


class ImageFolder:
    """All images under ``root`` (recursive, sorted), with class-per-folder labels when present.

    Labels exist when every image lies in a sub-folder of ``root``: the label is the index of the
    top-level folder name in ``classes`` (a file with one class name per line, e.g. ImageNet synsets in
    model output order) or, without it, in the sorted folder names. Non-image files are skipped with one
    warning that counts them.
    """

    def __init__(self, root: str | Path, preprocess: Preprocess, classes: str | Path | None = None) -> None:
        self.root = Path(root)
        self.preprocess = preprocess
        files, skipped = [], 0
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
            elif not path.name.startswith("."):
                skipped += 1
        if skipped:
            log.warning("skipped %d non-image file%s in %s", skipped, "s" if skipped != 1 else "", self.root)
        if not files:
            raise DataError(f"no images found in {self.root}")
        self.files: list[Path] = files
        self._unreadable: set[Path] = set()  # shared with subsets: each bad file is reported once
        self.class_names: list[str] | None = None
        self._labels: np.ndarray | None = None
        folders = [p.relative_to(self.root).parts for p in files]
        if all(len(parts) > 1 for parts in folders):
            tops = [parts[0] for parts in folders]
            names = _read_classes(classes) if classes is not None else sorted(set(tops))
            index = {name: i for i, name in enumerate(names)}
            unknown = sorted(set(tops) - set(index))
            if unknown:
                raise DataError(f"{len(unknown)} folder(s) not in the classes file, e.g. {unknown[0]!r}")
            self.class_names = names
            self._labels = np.array([index[t] for t in tops], dtype=np.int64)
        elif classes is not None:
            raise DataError(f"--classes given but images in {self.root} are not in class folders")

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: Sequence[int]) -> ImageFolder:
        """The images at ``indices`` (e.g. those calibration did not use, or an even sample for checks)."""
        rest = copy.copy(self)
        rest.files = [self.files[i] for i in indices]
        rest._labels = None if self._labels is None else self._labels[list(indices)]
        return rest

    @property
    def labels(self) -> np.ndarray | None:
        return self._labels

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[Batch, np.ndarray | None]]:
        """Consecutive batches of preprocessed images (and labels) in sorted file order, keyed by the input name.

        Files that cannot be decoded (corrupt, truncated, not really images) are skipped with their label;
        one warning at the end counts them. Only when none is readable is it an error.
        """
        count = len(self.files) if limit is None else min(limit, len(self.files))
        skipped: list[str] = []  # new this pass; self._unreadable remembers them across passes and subsets
        yielded = 0
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            arrays, keep = [], []
            for i in range(start, stop):
                try:
                    arrays.append(load_image(self.files[i], self.preprocess))
                    keep.append(i)
                except UnreadableImageError as exc:
                    if self.files[i] not in self._unreadable:
                        self._unreadable.add(self.files[i])
                        skipped.append(str(exc))
            if not arrays:
                continue
            y = self._labels[keep] if self._labels is not None else None
            yielded += len(arrays)
            yield {self.preprocess.input_name: np.stack(arrays)}, y
        if yielded == 0 and count > 0:
            raise DataError(f"none of the {count} image files in {self.root} could be read "
                            f"({skipped[0] if skipped else 'see the warning above'})")
        if skipped:
            log.warning("skipped %d unreadable image%s (first: %s)", len(skipped), "s" if len(skipped) > 1 else "",
                        skipped[0])
