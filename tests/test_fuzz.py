"""Fuzzing the readers: random bytes and mutated ONNX protobufs, .npy and .npz files may only fail with our
documented one-line errors (or be read).

Bounded (a fixed number of examples, derandomized) so the suite stays fast and reproducible.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdrop_onnx.data import InputSpec, open_dataset
from qdrop_onnx.errors import DataError, QdropError
from qdrop_onnx.graph import load_model, lower
from tests.helpers import small_cnn

SEED_MODEL = small_cnn()[0].SerializeToString()
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        lower(load_model(path))
    except QdropError as exc:  # ModelLoadError / UnsupportedModelError: documented, one line for users
        assert str(exc) and "\n" not in str(exc).strip()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    _load(tmp_path / "random.onnx", data)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(SEED_MODEL) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.integers(0, len(SEED_MODEL))))
def test_mutated_protobuf(tmp_path: Path, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(SEED_MODEL)
    for position, value in edits:
        data[position] = value
    _load(tmp_path / "mutated.onnx", bytes(data[:cut]))


SPEC = InputSpec("x", (None, 3, 4, 4), np.float32)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


SEED_TENSORS = {".npy": _npy_bytes(np.ones((2, 3, 4, 4), np.float32)),
                ".npz": _npz_bytes(x=np.ones((2, 3, 4, 4), np.float32), mask=np.ones((2, 4), np.int64))}


def _read(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        dataset = open_dataset(path, SPEC)
        batches = list(dataset.batches(4))
    except DataError as exc:  # documented, one line for users
        assert str(exc) and "\n" not in str(exc).strip()
        return
    assert sum(len(x["x"]) for x, _ in batches) == len(dataset)
    assert all(list(x) == ["x"] and x["x"].dtype == np.float32 and x["x"].shape[1:] == (3, 4, 4) for x, _ in batches)


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".npy", ".npz"]))
def test_random_bytes_as_tensors(tmp_path: Path, data: bytes, suffix: str) -> None:
    _read(tmp_path / f"random{suffix}", data)


@FUZZ
@given(suffix=st.sampled_from([".npy", ".npz"]), data=st.data())
def test_mutated_tensor_files(tmp_path: Path, suffix: str, data: st.DataObject) -> None:
    seed = bytearray(SEED_TENSORS[suffix])
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1,
                               max_size=8))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(seed))))
    for position, value in edits:
        seed[position] = value
    _read(tmp_path / f"mutated{suffix}", bytes(seed[:cut]))


@FUZZ
@given(shape=st.one_of(st.integers(0, 3).map(lambda n: [n, 3, 4, 4]), st.just([3, 4, 4]),
                       st.lists(st.integers(0, 5), min_size=0, max_size=5)),
       dtype=st.sampled_from(["float32", "float64", "int8", "uint8", "int64", "bool", "complex64", "U3", "V4"]),
       name=st.sampled_from(["x", "y", "arr_0"]), container=st.sampled_from([".npy", ".npz"]))
def test_arrays_of_any_shape_and_dtype(tmp_path: Path, shape: list[int], dtype: str, name: str,
                                       container: str) -> None:
    array = np.zeros(shape, dtype=dtype)
    data = _npy_bytes(array) if container == ".npy" else _npz_bytes(**{name: array, "other": np.zeros(1)})
    _read(tmp_path / f"array{container}", data)
