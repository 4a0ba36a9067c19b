"""Fuzzing the model loader: random bytes and mutated ONNX protobufs may only fail with our documented errors.

Bounded (a fixed number of examples, derandomized) so the suite stays fast and reproducible.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdrop_onnx.errors import QdropError
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
