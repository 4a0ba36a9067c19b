"""Test-session set-up: under pytest-xdist (``make test`` runs ``-n 2``) each worker gets its share of the cores.

Two workers with two torch threads each on two cores spend their time waiting on each other (OpenMP spins);
one thread per worker ran the suite 3x faster here (8 min against 25). Subprocesses (the CLI tests) inherit
``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import os

workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if workers > 1:
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
