"""The ``diagnostics:`` section of a run config, apart from the Lightning callbacks it switches on
(diagnostics/callbacks.py), so reading a config does not load Lightning."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DiagnosticsConfig(BaseModel):
    """``diagnostics:`` section of a run config."""

    model_config = ConfigDict(extra="forbid")

    histograms: bool = Field(True, description="Objectness / IoU histograms over the full validation set.")
    hist_bins: int = Field(20, gt=0, description="Equal-width bins over [0, 1] for those histograms.")
    grad_share_every: int = Field(
        50, ge=0, description="Gradient share on a fixed batch every N optimiser steps (0 = off)."
    )
    doctor: bool = Field(True, description="Run the doctor at every epoch end (findings.json).")
    report: bool = Field(True, description="Rewrite report.html at every epoch end (about 2-3 s each).")
