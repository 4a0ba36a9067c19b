"""The host allocator setting reconstruction runs under (qdrop_onnx.recon.allocator)."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qdrop_onnx.recon.allocator import release_free_memory, reusing_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")


def _faults_of_churn(rounds: int = 8, mb: int = 64) -> int:
    """Minor page faults of allocating, filling and freeing one large tensor ``rounds`` times."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        t = torch.empty(mb * 2**20 // 4, dtype=torch.float32)
        t.fill_(1.0)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


_FRESH_PROCESS = """
import json
from qdrop_onnx.recon.allocator import reusing_freed_memory
from tests.test_allocator import _faults_of_churn
outside = _faults_of_churn()
with reusing_freed_memory():
    inside = _faults_of_churn()
print(json.dumps([outside, inside]))
"""


@glibc_only
def test_freed_large_tensors_are_reused_without_page_faults() -> None:
    # Each 64 MiB allocation is a fresh mmap by default: ~16k faults per round (4 KiB pages), 8 rounds.
    # Reused from the heap, only the first round faults. Measured: ~131k outside, ~16k inside.
    # In a fresh interpreter: glibc keeps what earlier tests' reconstructions left in its heap (and drops its
    # dynamic mmap threshold once set), so in a worker that ran them first the default faulted 23k, not 131k.
    pages = 64 * 2**20 // resource.getpagesize()
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    outside, inside = json.loads(proc.stdout)
    assert outside >= 6 * pages
    assert inside <= 2 * pages


@glibc_only
def test_nested_uses_share_one_setting() -> None:
    # Leaving the inner use keeps the outer one's reuse. (That leaving the outer one restores glibc's faulting
    # default is not asserted: freed heap chunks left from inside can serve later allocations, so the count
    # after leaving varied from 2 to 4 faulting rounds of 4 between runs of this same file.)
    with reusing_freed_memory():
        with reusing_freed_memory():
            _faults_of_churn(2)
        assert _faults_of_churn(4) <= 2 * 64 * 2**20 // resource.getpagesize()
    release_free_memory()


_RESTARTING = """
import os
from qdrop_onnx.recon.allocator import restart_with_huge_pages
print("start", flush=True)
restart_with_huge_pages()
print(os.environ.get("GLIBC_TUNABLES"))
"""


@glibc_only
@pytest.mark.parametrize(("before", "after"), [
    (None, "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),  # kept, appended to
    ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),  # a choice already made is left alone: no restart
])
def test_release_memory_restarts_once_with_huge_pages(before: str | None, after: str) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if before is not None:
        env["GLIBC_TUNABLES"] = before
    proc = subprocess.run([sys.executable, "-c", _RESTARTING], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1], env=env)
    assert proc.returncode == 0, proc.stderr
    starts = 1 if before and "hugetlb" in before else 2  # the restarted process prints "start" again
    assert proc.stdout.splitlines() == ["start"] * starts + [after]


@glibc_only
def test_quantize_with_release_memory_restarts_and_writes_the_file(tmp_path: Path) -> None:
    from tests.helpers import small_cnn_and_images

    model, images = small_cnn_and_images(tmp_path, 16)
    cli = str(Path(sys.executable).parent / "qdrop-onnx")
    out = tmp_path / "q.onnx"
    proc = subprocess.run([cli, "quantize", str(model), "--calib", str(images), "--method", "rtn",
                           "--release-memory", "--no-report", "-o", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and proc.stdout.count("wrote ") == 1
