"""What a run does when it is stopped from outside (Ctrl-C, a cluster's SIGTERM) or by a non-finite loss.

Lightning turns Ctrl-C (SIGINT) into a graceful shutdown that ends in ``sys.exit(1)``, and SIGTERM into a
``SIGTERMException`` (a ``SystemExit`` with status 0) raised after the current batch; neither saves a
checkpoint. yololab saves ``last.ckpt`` at every epoch end before anything else (engine/metrics_log.py), so
the last finished epoch is always on disk: :class:`InterruptWatch` records why and where the run stopped, and
:func:`stopped_error` turns that into one :class:`RunStopped` line saying how to resume, exiting non-zero.
"""

from __future__ import annotations

import shlex
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from yololab.errors import RunStopped

SIGNAL_EXIT_BASE = 128  # shells report death by signal N as status 128 + N


@dataclass
class Stop:
    """Why and where a run stopped: ``reason`` is SIGINT, SIGTERM or a non-finite loss message."""

    reason: str
    epoch: int  # 0-based epoch that was running
    step: int  # optimiser steps done before it stopped (the step in progress is step + 1)
    exit_code: int
    sanity_check: bool = False  # in Lightning's validation sanity check, before the first step of the fit


class InterruptWatch(L.Callback):
    """Records the first interruption or non-finite loss Lightning reports through ``on_exception``.

    Ctrl-C is also noted by a SIGINT handler of its own (which then raises as before): a KeyboardInterrupt
    that lands inside torch's C++ checkpoint writer comes out as a RuntimeError, not as KeyboardInterrupt."""

    def __init__(self) -> None:
        self.stop: Stop | None = None
        self._ctrl_c = False
        self._previous_handler = None

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous_handler = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._note_ctrl_c)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _note_ctrl_c(self, signum: int, frame) -> None:
        self._ctrl_c = True
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if self.stop is not None:
            return
        if isinstance(exception, KeyboardInterrupt) or self._ctrl_c:
            reason, code = "SIGINT", SIGNAL_EXIT_BASE + signal.SIGINT
        elif trainer.received_sigterm:  # also when SIGTERM killed a DataLoader worker first
            reason, code = "SIGTERM", SIGNAL_EXIT_BASE + signal.SIGTERM
        elif isinstance(exception, FloatingPointError):
            reason, code = str(exception), 1
        else:
            return
        self.stop = Stop(reason, trainer.current_epoch, trainer.global_step, code, trainer.sanity_checking)

    def on_uncaught(self, trainer: L.Trainer, exception: BaseException) -> None:
        """Ctrl-C that reached ``trainer.fit``'s caller without ``on_exception`` having seen it: pressed outside
        Lightning's handler, or Lightning's own Ctrl-C path (it marks the run interrupted and exits with status
        1) when the hook did not get to this callback."""
        lightning_ctrl_c = isinstance(exception, SystemExit) and exception.code == 1 and trainer.interrupted
        if self.stop is None and (isinstance(exception, KeyboardInterrupt) or lightning_ctrl_c or self._ctrl_c):
            self.stop = Stop("SIGINT", trainer.current_epoch, trainer.global_step,
                             SIGNAL_EXIT_BASE + signal.SIGINT)


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in ``run_dir``."""
    return (f"yololab train --project {shlex.quote(str(run_dir.parent))} --name {shlex.quote(run_dir.name)} "
            "--resume")


def stopped_error(stop: Stop, run_dir: Path, saved_epochs: int) -> RunStopped:
    """One line: what stopped the run, which epochs ``last.ckpt`` holds (``saved_epochs`` finished ones) and the
    command that resumes it (or that nothing was kept: train() removes the folder of a new run stopped before its
    first checkpoint)."""
    if stop.sanity_check:  # Lightning's epoch counter is not yet that of the epoch about to run
        where = f"the validation sanity check before epoch {saved_epochs + 1}, step {stop.step + 1}"
    else:
        where = f"epoch {stop.epoch + 1}, step {stop.step + 1}"  # both 1-based, as the progress bar counts
    if stop.reason in ("SIGINT", "SIGTERM"):
        what = f"interrupted by {stop.reason} in {where}"
    else:
        at = "in" if stop.sanity_check else "at"
        what = f"stopped {at} {where}: {stop.reason} (lower optim.lr or the loss weights)"
    if saved_epochs == 0:
        return RunStopped(f"{what}; no epoch had finished, so nothing was kept: run the command again",
                          stop.exit_code)
    last = run_dir / "checkpoints" / "last.ckpt"
    epochs = "epoch 1" if saved_epochs == 1 else f"epochs 1-{saved_epochs}"
    return RunStopped(f"{what}; {last} holds {epochs}; continue with: {resume_command(run_dir)}", stop.exit_code)
