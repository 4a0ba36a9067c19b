"""Calibration/evaluation readers: image folders, presets, layouts, tensors; and eval on synthetic data."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from qdrop_onnx.data import ImageFolder, InputSpec, TensorDataset, open_dataset, resolve_preprocess
from qdrop_onnx.data.images import load_image
from qdrop_onnx.errors import DataError
from tests.helpers import run_ort, small_cnn

NCHW_32 = InputSpec("input", (None, 3, 32, 32), np.float32)
NHWC_224 = InputSpec("input", (None, 224, 224, 3), np.float32)


def _image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> None:
    rng = np.random.RandomState(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    data = rng.randint(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(data[..., 0] if mode == "L" else data, mode).save(path)


def test_class_folders_give_sorted_labels_and_non_images_are_counted_once(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    for cls, n in (("zebra", 2), ("ant", 3)):
        for i in range(n):
            _image(tmp_path / cls / f"{i}.png", (32, 32), seed=i)
    _image(tmp_path / "ant" / "nested" / "deep.jpg", (32, 32))
    (tmp_path / "ant" / "notes.txt").write_text("x")
    (tmp_path / "README").write_text("x")
    with caplog.at_level(logging.WARNING, logger="qdrop_onnx"):
        folder = ImageFolder(tmp_path, resolve_preprocess(NCHW_32, preset="cifar10"))
    assert [r.getMessage() for r in caplog.records] == [f"skipped 2 non-image files in {tmp_path}"]
    assert folder.class_names == ["ant", "zebra"]
    assert folder.labels.tolist() == [0, 0, 0, 0, 1, 1]
    batch, y = next(folder.batches(8))
    x = batch["input"]  # a batch is a dict keyed by the model input's name
    assert list(batch) == ["input"] and x.shape == (6, 3, 32, 32) and x.dtype == np.float32
    assert y.tolist() == [0, 0, 0, 0, 1, 1]


def test_classes_file_maps_folders_to_model_output_order(tmp_path: Path) -> None:
    _image(tmp_path / "data" / "n02" / "a.png", (32, 32))
    _image(tmp_path / "data" / "n01" / "b.png", (32, 32))
    classes = tmp_path / "classes.txt"
    classes.write_text("n09\nn02\nn07\nn01\n")
    folder = ImageFolder(tmp_path / "data", resolve_preprocess(NCHW_32, preset="cifar10"), classes=classes)
    assert folder.labels.tolist() == [3, 1]  # sorted files: n01/b.png, n02/a.png
    classes.write_text("n09\nn02\n")
    with pytest.raises(DataError, match=r"1 folder\(s\) not in the classes file, e.g. 'n01'"):
        ImageFolder(tmp_path / "data", resolve_preprocess(NCHW_32, preset="cifar10"), classes=classes)


def test_cifar10_preset_normalises_with_imagenet_mean_std(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", (32, 32))
    pixels = np.asarray(Image.open(tmp_path / "a.png"), dtype=np.float64) / 255.0
    expected = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    got = load_image(tmp_path / "a.png", resolve_preprocess(NCHW_32, preset="cifar10"))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_imagenet_geometry_resizes_short_side_then_center_crops(tmp_path: Path) -> None:
    _image(tmp_path / "wide.png", (400, 300))
    pre = resolve_preprocess(InputSpec("input", (None, 3, 224, 224), np.float32), preset="tf")
    got = load_image(tmp_path / "wide.png", pre)
    resized = Image.open(tmp_path / "wide.png").convert("RGB").resize((341, 256), Image.BILINEAR)
    crop = np.asarray(resized, dtype=np.float32)[16:240, 58:282]
    np.testing.assert_allclose(got, ((crop - 127.0) / 128.0).transpose(2, 0, 1), atol=1e-6)


def test_layout_follows_model_input_and_odd_modes_are_converted(tmp_path: Path) -> None:
    _image(tmp_path / "gray.png", (300, 260), mode="L")
    _image(tmp_path / "alpha.png", (260, 300), mode="RGBA")
    folder = ImageFolder(tmp_path, resolve_preprocess(NHWC_224, preset="imagenet"))
    assert folder.labels is None
    x = next(folder.batches(2))[0]["input"]
    assert x.shape == (2, 224, 224, 3)
    # The same pixels as the NCHW reading, channels last; grayscale becomes three equal channels, RGBA drops alpha.
    nchw = InputSpec("input", (None, 3, 224, 224), np.float32)
    planar = next(ImageFolder(tmp_path, resolve_preprocess(nchw, preset="imagenet")).batches(2))[0]["input"]
    np.testing.assert_array_equal(x, planar.transpose(0, 2, 3, 1))
    alpha, gray = folder.files.index(tmp_path / "alpha.png"), folder.files.index(tmp_path / "gray.png")
    pixels = (x[gray] * np.array([58.395, 57.12, 57.375]) + np.array([123.675, 116.28, 103.53])).round()
    assert np.ptp(pixels, axis=-1).max() == 0  # R == G == B, before normalisation
    (tmp_path / "rgb").mkdir()
    Image.open(tmp_path / "alpha.png").convert("RGB").save(tmp_path / "rgb" / "same.png")
    np.testing.assert_array_equal(x[alpha], load_image(tmp_path / "rgb" / "same.png", folder.preprocess))


def test_preset_size_must_match_model_input() -> None:
    with pytest.raises(DataError, match="preprocessing makes 32x32 images but the model input input takes 224x224"):
        resolve_preprocess(InputSpec("input", (None, 3, 224, 224), np.float32), preset="cifar10")


def test_mean_std_size_overrides(tmp_path: Path) -> None:
    pre = resolve_preprocess(InputSpec("input", (None, 3, None, None), np.float32), preset="imagenet",
                             mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), size=(40, 48), resize=64)
    assert (pre.size, pre.resize, pre.mean, pre.std) == ((40, 48), 64, (0, 0, 0), (255, 255, 255))
    _image(tmp_path / "a.png", (100, 80))
    assert load_image(tmp_path / "a.png", pre).shape == (3, 40, 48)


def test_npy_and_npz_tensors(tmp_path: Path) -> None:
    spec = InputSpec("input", (None, 3, 4, 4), np.float32)
    a = np.random.RandomState(0).randn(5, 3, 4, 4).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", input=a[:2], other=np.zeros(3))
    data = open_dataset(tmp_path, spec)
    assert isinstance(data, TensorDataset) and len(data) == 7 and data.labels is None
    batches = [x["input"] for x, _ in data.batches(3)]
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), np.concatenate([a, a[:2]]))
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(DataError, match=r"have shape \(3, 5, 5\) per sample but the model input input takes "
                                        r"\(3, 4, 4\)"):
        TensorDataset(tmp_path / "bad.npy", spec)


def test_eval_cli_on_synthetic_labeled_folder_matches_onnxruntime(tmp_path: Path) -> None:
    model, _ = small_cnn()
    onnx.save(model, tmp_path / "net.onnx")
    spec = InputSpec("x", (None, 3, 8, 8), np.float32)
    for i in range(12):
        _image(tmp_path / "data" / f"class{i % 3}" / f"{i}.png", (8, 8), seed=i)
    folder = ImageFolder(tmp_path / "data", resolve_preprocess(spec, mean=(128, 128, 128), std=(64, 64, 64)))
    x, y = next(folder.batches(100))
    logits = run_ort(model, x)[0]
    expected = 100.0 * float((logits.argmax(1) == y).mean())
    proc = subprocess.run([str(Path(sys.executable).parent / "qdrop-onnx"), "eval", str(tmp_path / "net.onnx"),
                           "--data", str(tmp_path / "data"), "--mean", "128", "128", "128", "--std", "64", "64", "64",
                           "--batch-size", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(12 images)" in proc.stdout
    assert float(re.search(r"top-1:\s+([\d.]+) %", proc.stdout).group(1)) == pytest.approx(expected, abs=0.005)


TEXT_SPECS = [InputSpec("input_ids", (None, None), np.int64), InputSpec("attention_mask", (None, None), np.int64)]


def test_npz_with_one_array_per_input_gives_dict_batches(tmp_path: Path) -> None:
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    mask = np.ones((3, 4), np.int64)
    np.savez(tmp_path / "a.npz", input_ids=ids, attention_mask=mask, extra=np.zeros(2))
    np.savez(tmp_path / "b.npz", input_ids=ids[:1], attention_mask=mask[:1])
    data = open_dataset(tmp_path, TEXT_SPECS)
    assert len(data) == 4
    batches = [x for x, _ in data.batches(3)]
    assert [sorted(b) for b in batches] == [["attention_mask", "input_ids"]] * 2
    assert [b["input_ids"].shape for b in batches] == [(3, 4), (1, 4)]
    assert all(b["input_ids"].dtype == np.int64 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b["input_ids"] for b in batches]), np.concatenate([ids, ids[:1]]))


def test_multi_input_tensor_errors_name_the_input(tmp_path: Path) -> None:
    ids = np.zeros((2, 4), np.int64)
    np.savez(tmp_path / "missing.npz", input_ids=ids)
    with pytest.raises(DataError, match=f"^{tmp_path / 'missing.npz'} has no array for model input 'attention_mask' "
                                        r"\(it holds input_ids\)$"):
        TensorDataset(tmp_path / "missing.npz", TEXT_SPECS)
    np.savez(tmp_path / "float.npz", input_ids=ids.astype(np.float32), attention_mask=ids)
    with pytest.raises(DataError, match=r"for input input_ids are float32; it takes int64 \(token ids and masks are "
                                        r"integers\)$"):
        TensorDataset(tmp_path / "float.npz", TEXT_SPECS)
    np.savez(tmp_path / "rank.npz", input_ids=np.zeros((2, 4, 1), np.int64), attention_mask=ids)
    with pytest.raises(DataError, match="for input input_ids have rank 3; it takes rank 2$"):
        TensorDataset(tmp_path / "rank.npz", TEXT_SPECS)
    np.savez(tmp_path / "counts.npz", input_ids=ids, attention_mask=ids[:1])
    with pytest.raises(DataError, match="hold different sample counts per input: input_ids 2, attention_mask 1$"):
        TensorDataset(tmp_path / "counts.npz", TEXT_SPECS)
    np.save(tmp_path / "one.npy", ids)
    with pytest.raises(DataError, match=r"holds one array; the model has 2 inputs \(input_ids, attention_mask\)"):
        TensorDataset(tmp_path / "one.npy", TEXT_SPECS)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(DataError, match=r"^model has 2 inputs \(input_ids, attention_mask\); an image folder feeds "
                                        "exactly one: give .npz files with one array per input$"):
        open_dataset(tmp_path / "imgs", TEXT_SPECS)
