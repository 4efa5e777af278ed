"""Wall time per epoch: training, validation, precise BN, checkpoints and diagnostics, in metrics.jsonl and printed.

Lightning calls callbacks in list order, so one clock needs three places in the list (``EpochTimer.callbacks``):
the timer first (it sees the epoch and the validation begin before anyone works), a mark after the metrics
log (the end-of-epoch diagnostics begin), and a writer last. The writer adds to the epoch's train row of
metrics.jsonl, which the metrics log wrote before the diagnostics ran:

- ``time/train_s``: epoch start to validation start (the training steps, gradient-share measurements included);
- ``time/val_s``: the validation loop (precise BN, histograms, the batch-norm check and COCO mAP included);
- ``time/precise_bn_s``: of which re-estimating batch-norm statistics;
- ``time/save_s``: checkpoints and the metrics log at the epoch end;
- ``time/diagnostics_s``: the doctor and the report at the epoch end;
- ``time/epoch_s``: all of it.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from yololab.engine.metrics_log import add_to_row
from yololab.engine.precise_bn import PreciseBatchNorm


class EpochTimer(L.Callback):
    """Place ``callbacks()[0]`` first in the callback list, ``[1]`` after MetricsJsonl, ``[2]`` last."""

    def __init__(self, metrics_path: str | Path, precise_bn: PreciseBatchNorm | None = None):
        self.metrics_path = Path(metrics_path)
        self.precise_bn = precise_bn
        self._marks: dict[str, float] = {}
        self._val_s = 0.0

    def callbacks(self) -> list[L.Callback]:
        return [self, _Mark(self, "diagnostics"), _Writer(self)]

    def mark(self, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._marks, self._val_s = {}, 0.0
        if self.precise_bn is not None:
            self.precise_bn.seconds = 0.0
        self.mark("start")

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._marks.setdefault("train_end", time.perf_counter())
            self.mark("val_start")

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val_start" in self._marks:
            self._val_s += time.perf_counter() - self._marks["val_start"]

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._marks.setdefault("train_end", time.perf_counter())
        self.mark("epoch_end")

    def times(self) -> dict[str, float]:
        """The epoch's times in seconds (keys as in metrics.jsonl); call when the writer runs."""
        now, m = time.perf_counter(), self._marks
        diagnostics_start = m.get("diagnostics", now)
        return {
            "time/train_s": m["train_end"] - m["start"],
            "time/val_s": self._val_s,
            "time/precise_bn_s": self.precise_bn.seconds if self.precise_bn is not None else 0.0,
            "time/save_s": diagnostics_start - m["epoch_end"],
            "time/diagnostics_s": now - diagnostics_start,
            "time/epoch_s": now - m["start"],
        }


class _Mark(L.Callback):
    def __init__(self, timer: EpochTimer, name: str):
        self.timer, self.name = timer, name

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.timer.mark(self.name)


class _Writer(L.Callback):
    def __init__(self, timer: EpochTimer):
        self.timer = timer

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if "start" not in self.timer._marks or not trainer.is_global_zero:
            return
        times = self.timer.times()
        if self.timer.metrics_path.exists():
            add_to_row(self.timer.metrics_path, trainer.current_epoch, "train", times)
        precise = f" (precise BN {times['time/precise_bn_s']:.1f} s)" if times["time/precise_bn_s"] else ""
        rank_zero_info(f"epoch {trainer.current_epoch}: {times['time/epoch_s']:.1f} s = train "
                       f"{times['time/train_s']:.1f} s, val {times['time/val_s']:.1f} s{precise}, checkpoints "
                       f"{times['time/save_s']:.1f} s, diagnostics {times['time/diagnostics_s']:.1f} s")
