"""Suite-wide set-up: when pytest-xdist runs the tests in several worker processes (``make test`` runs
``-n auto``), each worker and the processes it starts use their share of the machine's cores.

torch's default is one thread per core in every process; two workers that each train with all the cores
oversubscribe them, and a training step then takes many times longer than with one thread each.
"""

from __future__ import annotations

import os

import torch


def _cores() -> int:
    """Cores this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _share_cores_between_workers() -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = max(1, _cores() // workers)
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the CLI and DDP processes a test starts read it


_share_cores_between_workers()
