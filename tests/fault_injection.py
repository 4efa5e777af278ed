"""Helpers of the fault-injection tests: training runs in child processes that are killed at chosen moments.

Children come from a forkserver that imported yololab's training code once, so each run starts in
milliseconds from a process that never ran torch (forking a process that did can hang in OpenMP).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import torch

from yololab.config import build_config

# 8 training images of 64 px at batch 4: 2 optimiser steps per epoch.
TINY = ["data.imgsz=64", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-small",
        "diagnostics.report=false", "diagnostics.doctor=false", "diagnostics.grad_share_every=0"]
STEPS_PER_EPOCH = 2
CHILD_TIMEOUT_S = 60
POLL_S = 0.02

_context = None


def context():
    """The forkserver context, started once per test session with the training code imported."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["yololab.engine.train", "yololab.cli"])
    return _context


def tiny_config(data: Path, project: Path, name: str, epochs: int, extra=()):
    return build_config({"project": str(project), "name": name, "data": {"data": str(data)},
                         "train": {"epochs": epochs}}, [*TINY, *extra])


# ------------------------------------------------------------------------------------------------ children
def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillingWriter:
    """A file object that kills the process (SIGKILL) once ``limit`` bytes have gone through it."""

    def __init__(self, handle, limit: int):
        self.handle, self.limit, self.written = handle, limit, 0

    def write(self, data) -> int:
        room = self.limit - self.written
        if room <= len(data):
            self.handle.write(bytes(data)[:room])
            self.handle.flush()
            _kill_self()
        self.written += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def fileno(self) -> int:
        return self.handle.fileno()


def _arm_checkpoint_kill(save_number: int, where: str, byte: int) -> None:
    """Kill this process during the ``save_number``-th save of last.ckpt: at byte ``byte`` of the write
    (``where="write"``), after the data is on disk but before the rename (``"rename"``), or just after the
    rename, before the epoch's metrics rows are appended (``"after"``)."""
    from yololab.engine import checkpoint

    save_checkpoint, torch_save, replace = checkpoint.AtomicCheckpointIO.save_checkpoint, torch.save, os.replace
    saves = {"n": 0, "armed": False}

    def counted_save(self, state, path, storage_options=None):
        is_last = Path(path).name == "last.ckpt"
        saves["n"] += int(is_last)
        saves["armed"] = is_last and saves["n"] == save_number
        return save_checkpoint(self, state, path, storage_options)

    def save(obj, handle, *args, **kwargs):
        if saves["armed"] and where == "write":
            handle = _KillingWriter(handle, byte)
        return torch_save(obj, handle, *args, **kwargs)

    def rename(src, dst):
        if saves["armed"] and where == "rename":
            _kill_self()
        replace(src, dst)
        if saves["armed"] and where == "after":
            _kill_self()

    checkpoint.AtomicCheckpointIO.save_checkpoint = counted_save
    checkpoint.torch.save = save
    checkpoint.os.replace = rename


def _train_child(cfg, kill: dict | None) -> None:
    from yololab.engine.train import train

    if kill is not None:
        _arm_checkpoint_kill(**kill)
    train(cfg, exist_ok=True, progress="none")


def _cli_child(argv: list[str], log: str) -> None:
    from yololab import cli

    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        sys.argv = ["yololab", *argv]
        cli.main()


def start_training(cfg, kill: dict | None = None):
    """A child process training ``cfg``; ``kill`` as :func:`_arm_checkpoint_kill`'s arguments."""
    process = context().Process(target=_train_child, args=(cfg, kill))
    process.start()
    return process


def start_cli(argv: list[str], log: Path):
    """A child process running ``yololab ARGV`` with its output in ``log``."""
    process = context().Process(target=_cli_child, args=(argv, str(log)))
    process.start()
    return process


def wait_for_rows(process, metrics: Path, rows: int) -> bool:
    """Wait until ``metrics`` has ``rows`` rows (True) or the process ended (False)."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rows:
            return True
        if not process.is_alive():
            return False
        time.sleep(POLL_S)
    process.kill()
    raise TimeoutError(f"{metrics} did not reach {rows} rows in {CHILD_TIMEOUT_S} s")


def finish(process) -> int:
    process.join(CHILD_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        raise TimeoutError("training child did not end")
    return process.exitcode
