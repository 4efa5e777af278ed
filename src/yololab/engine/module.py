"""YoloModule: the Lightning module that trains a Darknet model with YoloLoss and measures mAP.

Everything the module logs follows DESIGN.md's names: ``{train,val}/loss/<term>/s<i>`` (weighted),
``{train,val}/unweighted/<term>/s<i>``, ``{train,val}/stat/<name>/s<i>``, ``{train,val}/loss/total``,
``val/mAP50``, ``val/mAP50_95``, the APs by object size (``val/mAP50_small`` … for COCO's area ranges and
``val/bin/<name>/mAP50`` … for the dataset's own size bins, ``yololab.keys``; areas in network-input pixels),
``lr``, ``lr_warmup`` (share of the epoch's steps inside the learning-rate warm-up) and ``warmup`` (share inside
the loss's anchor-prior warm-up).

The steps return ``{"loss", "breakdown"}`` (and ``"raw"``, the detached head outputs, in validation) so that
diagnostics callbacks (``yololab.diagnostics.callbacks``) read them in ``on_*_batch_end``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from yololab import keys
from yololab.config import OptimConfig, RunConfig
from yololab.data.size_bins import SizeBins, input_area_ranges
from yololab.engine.schedule import warmup_cosine
from yololab.evaluate import coco_map, nms
from yololab.evaluate.coco import size_metrics
from yololab.evaluate.runner import truths_in_pixels
from yololab.loss import LossBreakdown, YoloLoss
from yololab.model.build import build_model
from yololab.model.coder import decode_outputs
from yololab.model.priors import HeadPriors

COUNT_STATS = ("n_pos", "n_ignored")  # per-batch counts, averaged over batches
NEGATIVE_STATS = ("obj_neg", "obj_all")  # means over (non-responsible or all) predictions: weighted by images
# The epoch means of training reach the loggers through MetricsJsonl, before the epoch's checkpoint; Lightning
# would log them after it, and a run killed in between would resume without them (engine/metrics_log.py).
TRAIN_EPOCH_LOG = {"logger": False}
ADAM_BETA2 = 0.999  # AdamW's second-moment decay (optim.momentum is its beta1)


class YoloModule(L.LightningModule):
    """Lightning module. ``config`` is a RunConfig as a dict (so checkpoints are self-contained);
    ``cfg_text`` the darknet cfg the model was built from (with its anchors); ``names`` the class names;
    ``head_priors`` the initial head biases measured on the training labels (``HeadPriors.as_dict()`` of
    ``label_priors``), required when ``model.head_prior`` is labels and ignored otherwise; ``size_bins`` the
    dataset's size bins that validation reports AP per (not saved in checkpoints: ``yololab eval`` takes the
    bins of the data.yaml it evaluates on)."""

    def __init__(self, config: dict[str, Any], cfg_text: str, names: list[str],
                 head_priors: dict[str, list[float]] | None = None, size_bins: SizeBins | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["size_bins"])
        self.cfg = RunConfig(**config)
        self.names = list(names)
        self.size_bins = size_bins
        mode = self.cfg.model.head_prior
        if mode == "labels":
            if head_priors is None:
                raise ValueError("model.head_prior=labels needs the priors measured on the training labels "
                                 "(head_priors; train computes them)")
            priors: HeadPriors | str = HeadPriors(**head_priors)
        else:
            priors = mode
        self.model = build_model(cfg_text, num_classes=len(names), source=self.cfg.model.cfg, head_priors=priors)
        self.loss = YoloLoss(self.cfg.loss, self.model.anchors, self.model.strides, len(names))
        self._dets: list[Tensor] = []
        self._truths: list[Tensor] = []
        self._input_side = 0  # side of the (square) validation input, for the size bins' letterbox factor
        self._lr_warmup_steps = 0  # set by configure_optimizers

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.model(images)

    # ---------------------------------------------------------------- training / validation steps
    def training_step(self, batch: tuple, batch_idx: int) -> dict[str, Any]:
        images, targets, _ = batch
        breakdown = self.loss(self.model(images), targets, step=self.global_step)
        self._log_breakdown("train", breakdown, len(images))
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        self.log("warmup", float(breakdown.warmup), on_step=False, on_epoch=True, batch_size=len(images),
                 **TRAIN_EPOCH_LOG)
        self.log("lr_warmup", float(self.global_step < self._lr_warmup_steps), on_step=False, on_epoch=True,
                 batch_size=len(images), **TRAIN_EPOCH_LOG)
        return {"loss": breakdown.total, "breakdown": breakdown}

    def validation_step(self, batch: tuple, batch_idx: int) -> dict[str, Any]:
        images, targets, _ = batch
        raw = self.model(images)
        breakdown = self.loss(raw, targets)
        self._log_breakdown("val", breakdown, len(images))
        decoded = decode_outputs(raw, self.model.anchors, self.model.strides, self.loss.coder)
        tc = self.cfg.train
        dets = nms(decoded, conf_thres=tc.conf_thres, iou_thres=tc.iou_thres, max_det=tc.max_det)
        self._dets.extend(d.cpu() for d in dets)
        self._truths.extend(truths_in_pixels(targets, len(images), tuple(images.shape[-2:])))
        self._input_side = min(images.shape[-2:])
        return {"loss": breakdown.total, "breakdown": breakdown, "raw": [r.detach() for r in raw]}

    def on_validation_epoch_end(self) -> None:
        dets, truths = self._dets, self._truths
        self._dets, self._truths = [], []
        if self.trainer.sanity_checking:
            return
        if self.trainer.world_size > 1:
            dets, truths = _gather(dets), _gather(truths)
        result = coco_map(dets, truths, num_classes=len(self.names), names=self.names,
                          area_ranges=input_area_ranges(self.size_bins, self._input_side))
        # Every rank evaluates the gathered whole split: the values agree, nothing to reduce.
        for key, value in {"mAP50": result["mAP50"], "mAP50_95": result["mAP50_95"], **size_metrics(result)}.items():
            self.log(f"val/{key}", value, sync_dist=False, rank_zero_only=False)

    def _log_breakdown(self, split: str, br: LossBreakdown, batch_size: int) -> None:
        opts = dict(on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size,
                    **(TRAIN_EPOCH_LOG if split == "train" else {}))
        self.log(f"{split}/loss/total", br.total.detach(), prog_bar=True, **opts)
        for key, value in br.terms.items():
            self.log(f"{split}/{keys.LOSS}/{key}", value.detach(), **opts)
        for key, value in br.unweighted.items():
            self.log(f"{split}/{keys.UNWEIGHTED}/{key}", value, **opts)
        n_scales = len(self.model.strides)
        n_pos = torch.bincount(br.assignment.scale, minlength=n_scales).tolist()
        for key, value in br.stats.items():
            name, scale = keys.parse(key)
            weight = batch_size if name in COUNT_STATS + NEGATIVE_STATS else n_pos[scale]
            # Every process logs every key (DDP reduces them together); a stat without samples has weight 0.
            value = value if weight > 0 else torch.zeros_like(value)
            self.log(f"{split}/{keys.STAT}/{key}", value, **{**opts, "batch_size": weight})

    # ---------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        """SGD or AdamW over two groups (conv weights decayed; biases and BN not), with warm-up then cosine.
        Every parameter is in a group, frozen ones (train.freeze) too: both optimisers skip a parameter whose
        gradient is None, so a frozen one gets no update and no weight decay until it is unfrozen
        (engine/freeze.py)."""
        oc = self.cfg.optim
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.ndim > 1 else no_decay).append(p)  # biases and BN parameters are not decayed
        groups = [{"params": params, **settings}
                  for params, settings in zip((decay, no_decay), optimizer_settings(oc), strict=True)]
        if oc.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=oc.lr, momentum=oc.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=oc.lr, betas=(oc.momentum, ADAM_BETA2))
        total = int(self.trainer.estimated_stepping_batches)
        warmup = round(oc.warmup_epochs * total / max(self.trainer.max_epochs or 1, 1))
        self._lr_warmup_steps = warmup
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, oc.final_lr_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        """The config's optimiser settings, also in a resumed run: Lightning has put back the checkpoint's
        optimiser and schedule states, which hold the peak lr, momentum and weight decay the run started with,
        and a resumed run's ``--set optim.*`` must be what config.yaml says it trained with. A new run is left
        as configure_optimizers made it."""
        optimizer = self.trainer.optimizers[0]
        schedule = self.trainer.lr_scheduler_configs[0].scheduler
        settings = optimizer_settings(self.cfg.optim)
        schedule.base_lrs = [s["lr"] for s in settings]
        for group, setting, factor in zip(optimizer.param_groups, settings, schedule.lr_lambdas, strict=True):
            group.update({k: v for k, v in setting.items() if k != "lr"}, initial_lr=setting["lr"])
            group["lr"] = setting["lr"] * factor(schedule.last_epoch)  # where the schedule is now


def optimizer_settings(oc: OptimConfig) -> list[dict[str, Any]]:
    """The hyperparameters of the two parameter groups, from the config: conv weights (decayed), then biases
    and batch-norm parameters (not decayed)."""
    momentum = {"momentum": oc.momentum} if oc.optimizer == "sgd" else {"betas": (oc.momentum, ADAM_BETA2)}
    return [{"lr": oc.lr, "weight_decay": decay, **momentum} for decay in (oc.weight_decay, 0.0)]


def _gather(items: list[Tensor]) -> list[Tensor]:
    """All ranks' lists concatenated in rank order (small CPU tensors)."""
    gathered: list[list[Tensor]] = [[] for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather_object(gathered, items)
    return [t for part in gathered for t in part]
