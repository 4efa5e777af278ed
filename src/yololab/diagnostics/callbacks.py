"""Lightning callbacks that collect diagnostics outside the training step (DESIGN.md).

- ``ValidationHistograms``: fixed-bin histograms over the full validation set, per scale, of the objectness
  probability at responsible predictions (``obj_pos``), at every other prediction (``obj_neg``) and of the
  IoU of responsible predictions with their truth (``iou``). Memory is bounded: only counts and moments are
  kept, never predictions. Logged to TensorBoard as ``val/hist/<key>/s<i>`` and appended to
  ``histograms.jsonl`` (one object per validation epoch).
- ``GradientShare``: every N optimiser steps, on a fixed batch (the first training batch), the norm of each
  weighted term's gradient with respect to the raw head outputs, as a share of the sum over the terms of
  its scale. Logged as ``train/grad_share/<term>/s<i>`` (epoch mean), so it lands in metrics.jsonl.

Both read what the module's steps return: ``{"loss", "breakdown", "raw"}`` (``raw`` in validation only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from yololab import keys as scale_keys
from yololab.boxes import box_cxcywh_to_xyxy, iou_elementwise
from yololab.diagnostics.config import DiagnosticsConfig
from yololab.diagnostics.doctor import DoctorConfig
from yololab.diagnostics.doctor_callback import DoctorCallback
from yololab.diagnostics.report import write_report
from yololab.diagnostics.runfiles import HISTOGRAMS_FILE
from yololab.engine.metrics_log import epoch_log_step
from yololab.loss.assign import Assignment
from yololab.model.coder import BoxCoder

HIST_KINDS = ("obj_pos", "obj_neg", "iou")
HIST_RANGE = (0.0, 1.0)  # objectness probabilities and IoUs both live in [0, 1]
# Moments kept per histogram key, beside the counts: what TensorBoard's HistogramProto asks for.
SUM, SUM_SQUARES, MIN, MAX = range(4)


def diagnostics_callbacks(cfg: DiagnosticsConfig, run_dir: str | Path,
                          doctor: DoctorConfig | None = None) -> list[L.Callback]:
    """The callbacks ``cfg`` switches on, writing beside the run in ``run_dir``; ``doctor``: its thresholds."""
    callbacks: list[L.Callback] = []
    if cfg.histograms:
        callbacks.append(ValidationHistograms(Path(run_dir) / HISTOGRAMS_FILE, cfg.hist_bins))
    if cfg.grad_share_every > 0:
        callbacks.append(GradientShare(cfg.grad_share_every))
    # Both read what MetricsJsonl wrote at this epoch end, so they come after it; the report shows the findings.
    if cfg.doctor:
        callbacks.append(DoctorCallback(run_dir, doctor))
    if cfg.report:
        callbacks.append(ReportCallback(run_dir))
    return callbacks


class ReportCallback(L.Callback):
    """Rewrites the run's self-contained report.html at every training-epoch end (first process only)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and (self.run_dir / "metrics.jsonl").exists():
            write_report(self.run_dir)


# ---------------------------------------------------------------------------------------------- histograms
def bin_counts(values: Tensor, edges: Tensor) -> Tensor:
    """values [N] -> int64 counts [len(edges) - 1] with numpy.histogram's convention: bins are half-open
    [e_k, e_k+1) except the last, which is closed. Values outside [e_0, e_-1] and non-finite ones are dropped."""
    values = values.detach().reshape(-1).to(edges.dtype)
    values = values[torch.isfinite(values) & (values >= edges[0]) & (values <= edges[-1])]
    index = torch.bucketize(values, edges[1:-1], right=True)
    return torch.bincount(index, minlength=len(edges) - 1)


def histogram_values(raw: list[Tensor], targets: Tensor, assignment: Assignment,
                     anchors: list[Tensor], strides: list[int], coder: BoxCoder) -> dict[str, Tensor]:
    """The samples one batch adds to each histogram: ``"<kind>/s<i>"`` -> 1-D tensor.

    raw: per scale [B, A, H, W, 5 + C] logits; targets [N, 6] (image, class, cx, cy, w, h) normalised to
    the input; assignment: the loss's ``Assignment`` of the positives; anchors per scale [A, 2]
    input pixels. ``obj_pos`` has one value per assignment (a cell assigned twice counts twice, as in the
    loss's stats); ``obj_neg`` one per prediction that is not responsible for any truth.
    """
    grid_h, grid_w = raw[0].shape[2:4]
    input_wh = targets.new_tensor([grid_w * strides[0], grid_h * strides[0]]).float()
    out: dict[str, Tensor] = {}
    for i, r in enumerate(raw):
        r = r.detach().float()
        b, a, y, x, t = assignment.at_scale(i)  # image, anchor, gy, gx, target
        obj = r[..., 4].sigmoid()
        positive = torch.zeros_like(obj, dtype=torch.bool)
        positive[b, a, y, x] = True
        p = r[b, a, y, x]  # [P, 5 + C]
        cell = torch.stack((x, y), -1).to(p)
        centre = (cell + coder.xy(p[:, :2])) * strides[i]
        size = coder.wh(p[:, 2:4], anchors[i].to(p)[a])
        pred = box_cxcywh_to_xyxy(torch.cat((centre, size), -1))
        truth = box_cxcywh_to_xyxy(targets[t, 2:6].float() * input_wh.repeat(2))
        out[scale_keys.key("obj_pos", i)] = obj[b, a, y, x]
        out[scale_keys.key("obj_neg", i)] = obj[~positive]
        out[scale_keys.key("iou", i)] = iou_elementwise(pred, truth, "iou")
    return out


class FixedBinHistograms:
    """Streamed histograms with fixed equal-width bins: counts [K, bins] and moments [K, 4] (sum, sum of
    squares, min, max) per key. Its size depends on the keys and bins only, never on how many values went in."""

    def __init__(self, keys: list[str], bins: int, value_range: tuple[float, float] = HIST_RANGE):
        self.keys = list(keys)
        self.edges = torch.linspace(value_range[0], value_range[1], bins + 1, dtype=torch.float64)
        self.counts = torch.zeros(len(self.keys), bins, dtype=torch.int64)
        self.moments = torch.zeros(len(self.keys), 4, dtype=torch.float64)
        self.moments[:, MIN], self.moments[:, MAX] = math.inf, -math.inf

    def to(self, device: torch.device | str) -> FixedBinHistograms:
        self.edges, self.counts, self.moments = (t.to(device) for t in (self.edges, self.counts, self.moments))
        return self

    def update(self, samples: dict[str, Tensor]) -> None:
        """Add ``key -> values [N]`` (keys not declared at construction raise KeyError)."""
        for key, values in samples.items():
            k = self.keys.index(key) if key in self.keys else None
            if k is None:
                raise KeyError(f"histogram key {key!r} not among {self.keys}")
            values = values.detach().reshape(-1).to(self.moments)
            values = values[torch.isfinite(values)]
            self.counts[k] += bin_counts(values, self.edges.to(values.device)).to(self.counts.device)
            if len(values):
                values = values.to(self.moments.device)
                self.moments[k, SUM] += values.sum()
                self.moments[k, SUM_SQUARES] += values.pow(2).sum()
                self.moments[k, MIN] = torch.minimum(self.moments[k, MIN], values.min())
                self.moments[k, MAX] = torch.maximum(self.moments[k, MAX], values.max())

    def all_reduce(self) -> None:
        """Under torch.distributed, every process ends with the counts and moments of all processes."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        op = torch.distributed.ReduceOp
        torch.distributed.all_reduce(self.counts, op.SUM)
        sums = self.moments[:, :MIN].contiguous()
        low, high = self.moments[:, MIN].contiguous(), self.moments[:, MAX].contiguous()
        torch.distributed.all_reduce(sums, op.SUM)
        torch.distributed.all_reduce(low, op.MIN)
        torch.distributed.all_reduce(high, op.MAX)
        self.moments = torch.cat((sums, low[:, None], high[:, None]), 1)

    def rows(self) -> dict[str, dict]:
        """key -> {"counts": [bins] ints, "num", "sum", "sum_squares", "min", "max"} (plain Python numbers)."""
        counts, moments = self.counts.cpu().tolist(), self.moments.cpu().tolist()
        out = {}
        for key, c, m in zip(self.keys, counts, moments, strict=True):
            empty = sum(c) == 0
            out[key] = {"counts": c, "num": sum(c), "sum": m[SUM], "sum_squares": m[SUM_SQUARES],
                        "min": 0.0 if empty else m[MIN], "max": 0.0 if empty else m[MAX]}
        return out


class ValidationHistograms(L.Callback):
    """Histograms of objectness and IoU over the full validation set, per scale (see the module docstring).

    ``path`` is the histograms.jsonl file: one line per validation epoch,
    ``{"epoch", "step", "edges": [bins + 1], "histograms": {"obj_pos/s0": {"counts", "num", ...}, ...}}``.
    """

    def __init__(self, path: str | Path, bins: int):
        self.path = Path(path)
        self.bins = bins
        self._hist: FixedBinHistograms | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n_scales = len(pl_module.loss.strides)
        keys = [scale_keys.key(kind, i) for i in range(n_scales) for kind in HIST_KINDS]
        self._hist = FixedBinHistograms(keys, self.bins).to(trainer.strategy.root_device)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._hist is None or not isinstance(outputs, dict) or "raw" not in outputs:
            return
        loss = pl_module.loss
        self._hist.update(histogram_values(outputs["raw"], batch[1], outputs["breakdown"].assignment,
                                           loss.anchors, loss.strides, loss.coder))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hist, self._hist = self._hist, None
        if hist is None or trainer.sanity_checking:
            return
        hist.all_reduce()
        if not trainer.is_global_zero:
            return
        rows = hist.rows()
        edges = hist.edges.cpu().tolist()
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for key, row in rows.items():
                    if row["num"] == 0:  # nothing to draw (e.g. a scale without truths)
                        continue
                    logger.experiment.add_histogram_raw(
                        f"val/hist/{key}", row["min"], row["max"], row["num"], row["sum"],
                        row["sum_squares"], bucket_limits=edges[1:], bucket_counts=row["counts"],
                        global_step=epoch_log_step(trainer))
        line = {"epoch": trainer.current_epoch, "step": trainer.global_step, "edges": edges, "histograms": rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------------------------------ gradient share
def gradient_shares(raw: list[Tensor], term_values: dict[str, Tensor]) -> dict[str, float]:
    """``"<term>/s<i>"`` -> ||d term / d raw|| / sum over the terms of scale i of the same norms.

    raw: the head outputs the terms were computed from (they must require grad); the norm is over all of
    them together. Only ``raw`` receives gradients (torch.autograd.grad, nothing accumulates in ``.grad``).
    A scale whose terms all have zero gradient gets shares of 0.
    """
    norms: dict[str, float] = {}
    for key, value in term_values.items():
        if not value.requires_grad:  # a constant term (e.g. no positives at that scale) drives nothing
            norms[key] = 0.0
            continue
        grads = torch.autograd.grad(value, raw, retain_graph=True, allow_unused=True)
        norms[key] = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads if g is not None))
    totals: dict[str, float] = {}
    for key, norm in norms.items():
        scale = scale_keys.parse(key)[1]
        totals[scale] = totals.get(scale, 0.0) + norm
    return {key: norm / total if (total := totals[scale_keys.parse(key)[1]]) > 0 else 0.0
            for key, norm in norms.items()}


def measure_gradient_shares(model: torch.nn.Module, loss, images: Tensor, targets: Tensor,
                            step: int | None = None) -> dict[str, float]:
    """Gradient shares of ``loss``'s terms on one batch, without side effects on the model.

    The forward runs in the model's current mode (BatchNorm in training mode uses batch statistics, as in
    the real step) without a graph through the parameters; running statistics are restored afterwards, and
    no parameter's ``.grad`` is touched.
    """
    buffers = [b.detach().clone() for b in model.buffers()]
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            raw = model(images.to(dtype))
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
    with torch.enable_grad():
        raw = [r.detach().float().requires_grad_() for r in raw]
        breakdown = loss(raw, targets, step=step)
        return gradient_shares(raw, breakdown.terms)


class GradientShare(L.Callback):
    """Every ``every`` optimiser steps (from the first), gradient shares on a fixed batch: the data module's
    ``fixed_batch()`` when it has one (the first training images, not augmented: the same after a resume),
    else the first training batch seen.

    Logs ``train/grad_share/<term>/s<i>`` with ``pl_module.log`` (epoch mean over the measured steps).
    """

    def __init__(self, every: int):
        if every <= 0:
            raise ValueError(f"gradient share interval must be positive, got {every}")
        self.every = every
        self._batch: tuple[Tensor, Tensor] | None = None
        self._last_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._batch is None:  # kept on the callback so every measurement sees the same images
            fixed = getattr(getattr(trainer, "datamodule", None), "fixed_batch", None)
            images, targets = fixed() if fixed is not None else batch[:2]
            self._batch = (images.detach().clone().to(batch[0].device), targets.detach().clone().to(batch[1].device))
        step = trainer.global_step  # already counts the step just taken: measure at steps 1, 1 + N, ...
        if step == self._last_step or (step - 1) % self.every:
            return
        self._last_step = step
        images, targets = self._batch
        # The loss sees the step index of the batch just trained (anchor-prior warm-up decided the same way).
        shares = measure_gradient_shares(pl_module.model, pl_module.loss, images, targets, step=max(step - 1, 0))
        for key, share in shares.items():
            pl_module.log(f"train/{scale_keys.GRAD_SHARE}/{key}", share, on_step=False, on_epoch=True, sync_dist=True,
                          batch_size=1, logger=False)  # to the loggers through MetricsJsonl (engine/module.py)
