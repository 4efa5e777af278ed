"""Runs the doctor at every epoch end, after metrics.jsonl has its new rows: findings.json stays current."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from yololab.diagnostics.doctor import DoctorConfig, diagnose_run

# Said during training besides the errors: validation curves cannot be read while this holds.
ANNOUNCED_RULES = ("stale_batch_norm",)


class DoctorCallback(L.Callback):
    """Place it after MetricsJsonl in the callback list (callbacks run in list order)."""

    def __init__(self, run_dir: str | Path, cfg: DoctorConfig | None = None):
        self.run_dir = Path(run_dir)
        self.cfg = cfg or DoctorConfig()
        self._reported: set[tuple[str, int | None, str | None]] = set()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not (self.run_dir / "metrics.jsonl").exists():
            return
        for finding in diagnose_run(self.run_dir, self.cfg):
            key = (finding.rule, finding.scale, finding.term)
            said_at_once = finding.severity == "error" or finding.rule in ANNOUNCED_RULES
            if said_at_once and key not in self._reported:
                self._reported.add(key)  # say it once, when it first appears; findings.json has all of them
                rank_zero_warn(f"doctor: {finding.message} Try: {finding.suggestion}")
