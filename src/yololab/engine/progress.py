"""PlainProgress: the progress of a run as plain, complete lines, for logs and pipes (``--progress plain``).

No carriage returns and no redrawn bars: one line every ``every_n_steps`` training steps and one line per
epoch with the epoch's loss totals and mAP, each written once and flushed.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar

DEFAULT_EVERY_N_STEPS = 50  # a step line this often: a few per epoch on the demo (125 steps), none on tiny data
# What the epoch line shows, in order: (key in the trainer's callback metrics, label).
EPOCH_METRICS = (("train/loss/total", "train loss"), ("val/loss/total", "val loss"), ("val/mAP50", "val mAP@0.5"),
                 ("val/mAP50_95", "val mAP@0.5:0.95"))


class PlainProgress(ProgressBar):
    """Progress as lines: ``epoch 3 [4/24] step 50/125: loss 6.12`` and
    ``epoch 3 [4/24] done in 41.2 s: train loss 6.01, val loss 6.3, val mAP@0.5 0.41, val mAP@0.5:0.95 0.17``.

    Args:
        every_n_steps: training steps between step lines (0: epoch lines only).
        stream: where the lines go (standard output by default).
    """

    def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS, stream: IO[str] | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._epoch_start = 0.0
        self._validated = False  # val metrics of an epoch without validation are the previous epoch's

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, line: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def _epoch(self, trainer: L.Trainer) -> str:
        # Epochs count from 0, as in metrics.jsonl and the doctor; the bracket says how far the run is.
        return f"epoch {trainer.current_epoch} [{trainer.current_epoch + 1}/{trainer.max_epochs}]"

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = batch_idx + 1
        if self.every_n_steps and step % self.every_n_steps == 0:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            total = self.total_train_batches
            of = f"/{total}" if isinstance(total, int) else ""
            self._write(f"{self._epoch(trainer)} step {step}{of}: loss {float(loss):.4g}")

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        shown = [f"{label} {float(metrics[key]):.4g}" for key, label in EPOCH_METRICS
                 if key in metrics and (self._validated or not key.startswith("val/"))]
        seconds = time.perf_counter() - self._epoch_start
        self._write(f"{self._epoch(trainer)} done in {seconds:.1f} s: " + ", ".join(shown))
