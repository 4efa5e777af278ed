"""MetricsJsonl: one JSON object per (epoch, split) with every term, stat and metric, and the learning rate of
every training step (``lr.jsonl``, one object per epoch): what reports read."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning as L

from yololab.diagnostics.runfiles import LR_FILE

SPLITS = ("train", "val")
TRAIN_EXTRAS = ("lr", "lr_warmup", "warmup")  # logged without a split prefix, written on the train row


class MetricsJsonl(L.Callback):
    """Appends to ``path`` at each training-epoch end (after that epoch's validation has run).

    Keys drop the split prefix: ``loss/box/s0``, ``stat/iou/s1``, ``mAP50`` …; plus ``epoch``, ``split``,
    ``step``. A val row is written only for epochs where validation ran. The learning rate of each step (the
    epoch's train row keeps only the last one) goes to ``LR_FILE`` in the same folder, so that the warm-up ramp
    can be drawn.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lr_path = self.path.with_name(LR_FILE)
        self._validated = False
        self._lrs: list[float] = []
        self._first_step = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if not self._lrs:
            self._first_step = trainer.global_step
        self._lrs.append(trainer.optimizers[0].param_groups[0]["lr"])  # the lr this step's update will use

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        rows = []
        for split in SPLITS:
            if split == "val" and not self._validated:
                continue
            row = {k.split("/", 1)[1]: _finite(v) for k, v in metrics.items() if k.startswith(f"{split}/")}
            if split == "train":
                row.update({k: _finite(v) for k, v in metrics.items() if k in TRAIN_EXTRAS})
            rows.append({"epoch": trainer.current_epoch, "split": split, "step": trainer.global_step, **row})
        self._validated = False
        lrs = {"epoch": trainer.current_epoch, "step": self._first_step, "lr": self._lrs}
        self._lrs = []
        if trainer.is_global_zero:
            with self.path.open("a") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")
            with self.lr_path.open("a") as handle:
                handle.write(json.dumps(lrs) + "\n")


def _finite(value: float) -> float | None:
    """JSON has no NaN: a stat that had no samples (no positives at a scale) is written as null."""
    return value if math.isfinite(value) else None


def add_to_row(path: str | Path, epoch: int, split: str, values: dict[str, float]) -> None:
    """Add ``values`` to the last row of (``epoch``, ``split``) in the file, rewritten atomically (a kill leaves
    the old file or the new one); nothing happens when there is no such row."""
    path = Path(path)
    lines = path.read_text().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        row = json.loads(lines[i]) if lines[i].strip() else {}
        if row.get("epoch") == epoch and row.get("split") == split:
            lines[i] = json.dumps({**row, **{k: _finite(v) for k, v in values.items()}})
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in lines))
            os.replace(tmp, path)
            return


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
