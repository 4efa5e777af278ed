"""MetricsJsonl: one JSON object per (epoch, split) with every term, stat and metric, and the learning rate of
every training step (``lr.jsonl``, one object per epoch): what reports read.

The rows of an epoch reach metrics.jsonl only after the checkpoint that closes the epoch, and that checkpoint
holds them too: a kill at any moment leaves metrics.jsonl at most one epoch behind the checkpoint, never ahead,
and the resume puts the file back in line with the checkpoint (:meth:`MetricsJsonl.on_train_start`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L

from yololab.diagnostics.runfiles import LR_FILE, unique_rows

SPLITS = ("train", "val")
TRAIN_EXTRAS = ("lr", "lr_warmup", "warmup")  # logged without a split prefix, written on the train row
EPOCH_EXTRAS = ("lr_warmup", "warmup")  # of those, the epoch means (lr is logged at every logging step)
TIME_PREFIX = "time/"  # an epoch's wall times (engine/epoch_time.py), added to its train row after the checkpoint


class MetricsJsonl(L.Callback):
    """Appends to ``path`` at each training-epoch end (after that epoch's validation has run).

    Keys drop the split prefix: ``loss/box/s0``, ``stat/iou/s1``, ``mAP50`` …; plus ``epoch``, ``split``,
    ``step``. A val row is written only for epochs where validation ran. With ``checkpoint``, the epoch's
    checkpoint is saved there first (holding the rows in this callback's state), then the rows are appended.
    The learning rate of each step (the epoch's train row keeps only the last one) goes to ``LR_FILE`` in the
    same folder, so that the warm-up ramp can be drawn.
    """

    def __init__(self, path: str | Path, checkpoint: str | Path | None = None, resume: bool = False):
        self.path = Path(path)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume = resume
        self._validated = False
        self._epoch_rows: list[dict] = []  # the rows of the last finished epoch (saved in checkpoints)
        self._restored_rows: list[dict] = []
        self._lr_row: dict | None = None  # the last finished epoch's lr.jsonl row (saved in checkpoints too)
        self._restored_lr_row: dict | None = None
        self.saved_epochs = 0  # epochs the checkpoint written by this callback holds (0: none written yet)
        self.lr_path = self.path.with_name(LR_FILE)
        self._lrs: list[float] = []
        self._first_step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rows": self._epoch_rows, "lr_row": self._lr_row}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._epoch_rows = list(state_dict.get("epoch_rows", []))
        self._restored_rows = self._epoch_rows
        self._lr_row = self._restored_lr_row = state_dict.get("lr_row")

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """On resume, drop the rows past the checkpoint and restore the checkpoint's own epoch rows."""
        if not self.resume or not trainer.is_global_zero:
            return
        restore_rows(self.path, self._restored_rows, trainer.current_epoch, self._restored_lr_row)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if not self._lrs:
            self._first_step = trainer.global_step
        self._lrs.append(trainer.optimizers[0].param_groups[0]["lr"])  # the lr this step's update will use

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_rows = self._rows(trainer)
        self._lr_row = {"epoch": trainer.current_epoch, "step": self._first_step, "lr": self._lrs}
        self._validated = False
        log_train_means(trainer)
        if self.checkpoint is not None:
            trainer.save_checkpoint(self.checkpoint, weights_only=False)  # the whole training state
            self.saved_epochs = trainer.current_epoch + 1
        if trainer.is_global_zero:
            with self.path.open("a") as handle:
                for row in self._epoch_rows:
                    handle.write(json.dumps(row) + "\n")
            with self.lr_path.open("a") as handle:
                handle.write(json.dumps(self._lr_row) + "\n")
        self._lrs = []

    def _rows(self, trainer: L.Trainer) -> list[dict]:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        rows = []
        for split in SPLITS:
            if split == "val" and not self._validated:
                continue
            row = {k.split("/", 1)[1]: _finite(v) for k, v in metrics.items() if k.startswith(f"{split}/")}
            if split == "train":
                row.update({k: _finite(v) for k, v in metrics.items() if k in TRAIN_EXTRAS})
            rows.append({"epoch": trainer.current_epoch, "split": split, "step": trainer.global_step, **row})
        return rows


def epoch_log_step(trainer: L.Trainer) -> int:
    """The logger step of an epoch's means, as Lightning logs them: that of the epoch's last optimiser step.
    Everything of an epoch is logged at steps below ``global_step`` at its end (the step a resume from its
    checkpoint purges TensorBoard's events from)."""
    return max(trainer.global_step - 1, 0)


def log_train_means(trainer: L.Trainer) -> None:
    """The epoch means of training (``train/*``, warm-up shares; the module logs them with ``logger=False``) to
    every logger, before the epoch's checkpoint: a run killed after the checkpoint resumes with them logged."""
    metrics: dict[str, float] = {k: float(v) for k, v in trainer.callback_metrics.items()
                                 if k.startswith(f"{SPLITS[0]}/") or k in EPOCH_EXTRAS}
    if not metrics:
        return
    metrics["epoch"] = trainer.current_epoch  # what Lightning adds to each of its own logging calls
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=epoch_log_step(trainer))
        logger.save()


def restore_rows(path: str | Path, restored: list[dict], next_epoch: int, restored_lr: dict | None = None) -> None:
    """Put ``path`` (metrics.jsonl) back in line with a checkpoint: the rows past it are dropped and the
    checkpoint's own epoch rows ``restored`` replace the file's rows of that epoch; ``next_epoch`` is the first
    epoch still to run. Without ``restored`` (a checkpoint written before the rows were kept in it) only the
    rows of the epochs still to run are dropped. The per-step lr log is cut the same way, and the checkpoint's
    own lr row ``restored_lr`` replaces that of its epoch.

    The wall times of the checkpoint's epoch (``time/*``) are measured after the checkpoint, so it cannot hold
    them: the ones the file has for that epoch are kept on the restored rows."""
    path = Path(path)
    # The checkpoint's epoch rows are the truth for that epoch, its wall times excepted.
    first_restored = min((r["epoch"] for r in restored), default=next_epoch)
    rows = read_metrics(path) if path.exists() else []
    times = {(r["epoch"], r["split"]): {k: v for k, v in r.items() if k.startswith(TIME_PREFIX)} for r in rows}
    restored = [{**r, **times.get((r["epoch"], r["split"]), {})} for r in restored]
    write_rows_atomically(path, [r for r in rows if r["epoch"] < first_restored] + restored)
    lr_path = path.with_name(LR_FILE)
    if restored_lr is None:
        drop_rows_from(lr_path, next_epoch)
    else:
        lr_rows = read_metrics(lr_path) if lr_path.exists() else []
        write_rows_atomically(lr_path, [r for r in lr_rows if r["epoch"] < restored_lr["epoch"]] + [restored_lr])


def _finite(value: float) -> float | None:
    """JSON has no NaN: a stat that had no samples (no positives at a scale) is written as null."""
    return value if math.isfinite(value) else None


def write_rows_atomically(path: str | Path, rows: list[dict]) -> None:
    """Replace a JSON-lines file with ``rows`` (a temporary file renamed over it: never half written)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(partial, path)


def add_to_row(path: str | Path, epoch: int, split: str, values: dict[str, float]) -> None:
    """Add ``values`` to the last row of (``epoch``, ``split``) in the file, rewritten atomically (a kill leaves
    the old file or the new one); nothing happens when there is no such row."""
    rows = read_metrics(path)
    for row in reversed(rows):
        if row.get("epoch") == epoch and row.get("split") == split:
            row.update({k: _finite(v) for k, v in values.items()})
            write_rows_atomically(path, rows)
            return


def drop_rows_from(path: str | Path, epoch: int) -> None:
    """Drop the rows of ``epoch`` and later from a JSON-lines file of per-epoch rows (histograms.jsonl)."""
    path = Path(path)
    if path.exists():
        write_rows_atomically(path, [r for r in read_metrics(path) if r.get("epoch", -1) < epoch])


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl in order, one per (epoch, split): where an interrupted run written by an older
    yololab repeated an epoch, the later row (the one the resumed run went on from) is kept."""
    return unique_rows([json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()])
