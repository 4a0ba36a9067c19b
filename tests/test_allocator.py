"""The host allocator setting reconstruction runs under (qdrop_onnx.recon.allocator)."""

from __future__ import annotations

import platform
import resource

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


@glibc_only
def test_freed_large_tensors_are_reused_without_page_faults() -> None:
    # Each 64 MiB allocation is a fresh mmap by default: ~16k faults per round (4 KiB pages), 8 rounds.
    # Reused from the heap, only the first round faults. Measured: ~131k outside, ~16k inside.
    pages = 64 * 2**20 // resource.getpagesize()
    outside = _faults_of_churn()
    with reusing_freed_memory():
        inside = _faults_of_churn()
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
