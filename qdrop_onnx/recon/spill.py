"""Block tensors kept in an unnamed temporary file instead of memory (the cache past ``--max-cache-gb``).

A :class:`DiskTensor` is a [samples, ...] tensor whose rows live in a file; reading ``t[idx]`` or
``t[start:stop]`` returns an ordinary tensor, so the reconstruction loop reads one batch per step and never
holds the whole tensor. Rows are read with ``preadv`` into a fresh buffer and written with ``pwritev``.

Why not ``mmap`` (``numpy.memmap``, ``torch.from_file``): every page of a mapping the process touches counts
in its resident set, and the kernel leaves it mapped as long as memory is free, so a mapped cache shows up as
RSS exactly like an in-memory one and a memory limit (a CI runner's cgroup, a ``ulimit``) sees no gain.
Reads through the page cache are as fast once the file is cached, and that cache is the kernel's to drop.

The files are created with :func:`tempfile.TemporaryFile` (``O_TMPFILE`` on Linux, else created and unlinked
at once), so they have no name: nothing is left behind on any exit, a crash, SIGINT or SIGKILL included.
4-D tensors are stored channels-last (NHWC rows) and read back channels-last, the layout the reconstruction
uses in memory, so a run that spills computes exactly what the in-memory run does.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor

from qdrop_onnx.errors import DataError


class CacheDiskFullError(DataError):
    """The spill folder has no room for a block tensor."""


class DiskTensor:
    """A [samples, ...] tensor on disk in ``dtype``; rows come back on ``device`` (float ones as ``read_dtype``)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, folder: str | Path | None = None,
                 device: torch.device | str = "cpu", read_dtype: torch.dtype | None = None) -> None:
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.ndim = len(shape)
        self.device = torch.device(device)
        self.read_dtype = read_dtype if read_dtype is not None and dtype.is_floating_point else dtype
        self._np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        # Row layout on disk: NHWC for images (see the module docstring), the tensor's own order otherwise.
        self._row_shape = (shape[2], shape[3], shape[1]) if self.ndim == 4 else tuple(shape[1:])
        self.row_bytes = math.prod(self._row_shape) * self._np_dtype.itemsize
        self.nbytes = self.row_bytes * shape[0]
        folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        self.folder = folder
        free = _free_bytes(folder)
        if free is not None and free < self.nbytes:
            raise CacheDiskFullError(f"no room for the block-tensor cache in {folder}: a tensor needs "
                                     f"{self.nbytes / 1e9:.2f} GB, {free / 1e9:.2f} GB are free "
                                     "(--cache-dir, or a larger --max-cache-gb)")
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=folder)
        self._file.truncate(self.nbytes)

    def on(self, device: torch.device | str) -> DiskTensor:
        """The same file, its rows read onto ``device``."""
        other = copy.copy(self)
        other.device = torch.device(device)
        return other

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __getitem__(self, key: slice | Tensor) -> Tensor:
        if isinstance(key, slice):
            start, stop, stride = key.indices(self.shape[0])
            if stride != 1:
                raise IndexError("DiskTensor slices take no step")
            buf = np.empty((max(stop - start, 0), *self._row_shape), self._np_dtype)
            if buf.size:
                self._read(buf, start * self.row_bytes)
        else:
            rows = key.cpu().tolist()
            buf = np.empty((len(rows), *self._row_shape), self._np_dtype)
            for k, row in enumerate(rows):
                self._read(buf[k], row * self.row_bytes)
        out = torch.from_numpy(buf)
        if self.ndim == 4:
            out = out.permute(0, 3, 1, 2)  # NCHW shape, channels-last strides
        return out.to(self.device, self.read_dtype)

    def __setitem__(self, key: slice, value: Tensor) -> None:
        start, stop, _ = key.indices(self.shape[0])
        value = value.detach().to("cpu", self.dtype)
        if self.ndim == 4:
            value = value.permute(0, 2, 3, 1)
        data = np.ascontiguousarray(value.numpy())
        if data.shape != (stop - start, *self._row_shape):
            raise ValueError(f"rows of shape {tuple(data.shape)} do not fit [{start}:{stop}] of {tuple(self.shape)}")
        self._write(memoryview(data).cast("B"), start * self.row_bytes)

    def _read(self, buf: np.ndarray, offset: int) -> None:
        view = memoryview(buf).cast("B")
        fd = self._file.fileno()
        while len(view):
            got = os.preadv(fd, [view], offset) if hasattr(os, "preadv") else _seek_read(self._file, view, offset)
            if got <= 0:
                raise OSError(f"short read from the block-tensor cache at byte {offset}")
            view, offset = view[got:], offset + got

    def _write(self, view: memoryview, offset: int) -> None:
        fd = self._file.fileno()
        while len(view):
            try:
                done = os.pwritev(fd, [view], offset) if hasattr(os, "pwritev") else \
                    _seek_write(self._file, view, offset)
            except OSError as e:
                raise CacheDiskFullError(f"cannot write the block-tensor cache in {self.folder}: {e.strerror}") from e
            view, offset = view[done:], offset + done


def _free_bytes(folder: Path) -> int | None:
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows): the write reports a full disk instead
        return None
    return stat.f_bavail * stat.f_frsize


def _seek_read(f: IO[bytes], view: memoryview, offset: int) -> int:
    f.seek(offset)
    return f.readinto(view) or 0  # type: ignore[attr-defined]


def _seek_write(f: IO[bytes], view: memoryview, offset: int) -> int:
    f.seek(offset)
    return f.write(view)
