"""YoloLoss: the YOLOv3 loss, returned as a breakdown per scale and term.

Works on any model that emits the raw-output contract (list of [B, A, H, W, 5 + C] logits), so it can be
used in a user's own training loop as well as in yololab's trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from yololab.boxes import box_cxcywh_to_xyxy, iou_elementwise
from yololab.loss import terms
from yololab.loss.assign import Assignment, assign_targets
from yololab.loss.config import LossConfig
from yololab.model.coder import BoxCoder

TERMS = ("xy", "wh", "box", "obj", "noobj", "cls")
STATS = ("n_pos", "n_ignored", "iou", "iou_prior", "obj_pos", "obj_neg", "cls_prob", "recall50", "recall75")
RECALL_IOUS = (0.5, 0.75)  # darknet's .5R and .75R
SMALL_BOX_BASE = 2.0  # darknet / keras-yolo3 / TF2 YOLOv3 box weight: 2 - w*h (w, h relative to the input)
AUTO_POS_WEIGHT_FACTOR = 0.5  # seed 002: (n_preds - n_labels) / n_labels * 0.5
CELL_CENTRE = 0.5  # keras-yolo3 warm-up target offset
TARGET_COLUMNS = 6  # image, class, cx, cy, w, h
COORDINATES = 2  # x and y (or w and h) averaged together by torch's MSELoss


@dataclass
class LossBreakdown:
    """What one loss evaluation returns.

    total: scalar that is back-propagated. terms: ``"<term>/s<i>"`` -> weighted scalar contributions;
    aggregating them with ``aggregate(terms, cfg.aggregation)`` gives ``total`` exactly. unweighted: the same
    keys before term and scale weights, detached. stats: ``"<name>/s<i>"`` detached diagnostics (NaN where a
    scale has no positives). assignment: (scale, image, anchor, gy, gx, target) of the positives.
    warmup: whether this batch used the anchor-prior warm-up.
    """

    total: Tensor
    terms: dict[str, Tensor]
    unweighted: dict[str, Tensor]
    stats: dict[str, Tensor]
    assignment: tuple[Tensor, ...]
    warmup: bool = False
    extras: dict[str, Tensor] = field(default_factory=dict)


def aggregate(term_values: dict[str, Tensor], aggregation: str) -> Tensor:
    """Combine ``"<term>/s<i>"`` values into the total: plain sum, or keras-yolo3's sum of per-scale sqrt."""
    if aggregation == "sum":
        return torch.stack(list(term_values.values())).sum()
    per_scale: dict[str, list[Tensor]] = {}
    for key, value in term_values.items():
        per_scale.setdefault(key.split("/")[1], []).append(value)
    return torch.stack([torch.stack(v).sum().sqrt() for v in per_scale.values()]).sum()


def _truths_per_image(targets: Tensor, batch_size: int, input_wh: Tensor) -> Tensor:
    """targets [N, 6] -> [B, T, 4] xyxy pixel truths per image, padded with empty boxes (T = max per image)."""
    image = targets[:, 0].long()
    counts = torch.bincount(image, minlength=batch_size)
    t_max = int(counts.max()) if len(targets) else 0
    padded = targets.new_zeros(batch_size, max(t_max, 1), 4)
    if len(targets):
        order = torch.argsort(image, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(targets), device=targets.device) - starts[image[order]]
        boxes = box_cxcywh_to_xyxy(targets[order, 2:6] * input_wh.repeat(2))
        padded[image[order], slot] = boxes.to(padded)
    return padded


class YoloLoss(nn.Module):
    """YOLOv3 loss. ``loss(raw, targets, step=None) -> LossBreakdown``.

    raw: list over scales of [B, A, H, W, 5 + C] logits; targets [N, 6] (image, class, cx, cy, w, h)
    normalised; anchors per scale [A, 2] input pixels; strides per scale. ``step`` is the training batch
    index (for the anchor-prior warm-up); None means no warm-up (evaluation).
    """

    def __init__(self, cfg: LossConfig, anchors: list[Tensor], strides: list[int], num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.anchors = [torch.as_tensor(a, dtype=torch.float32) for a in anchors]
        self.strides = list(strides)
        self.num_classes = num_classes
        self.coder = BoxCoder(cfg.coder, cfg.scale_x_y)
        self.scale_weights = _scale_weights(cfg, self.strides)

    def forward(self, raw: list[Tensor], targets: Tensor, step: int | None = None) -> LossBreakdown:
        if len(raw) != len(self.anchors):
            raise ValueError(f"model gave {len(raw)} outputs for {len(self.anchors)} anchor scales")
        batch = raw[0].shape[0]
        grids = [(r.shape[2], r.shape[3]) for r in raw]
        input_size = (grids[0][0] * self.strides[0], grids[0][1] * self.strides[0])
        targets = targets.to(raw[0].device).float()
        _check_targets(targets, batch, self.num_classes)
        assignment = assign_targets(targets, self.anchors, grids, input_size, batch, self.cfg,
                                    raw=[r.detach() for r in raw], coder=self.coder)
        input_wh = torch.tensor([input_size[1], input_size[0]], device=targets.device, dtype=torch.float32)
        truths = _truths_per_image(targets, batch, input_wh)
        warmup = step is not None and step < self.cfg.warmup_batches
        pos_weight = self._obj_pos_weight(raw, len(targets))
        weighted: dict[str, Tensor] = {}
        unweighted: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        for i, r in enumerate(raw):
            w, u, s = self._scale(i, r.float(), targets, assignment, truths, input_wh, warmup, pos_weight)
            for name in w:
                weighted[f"{name}/s{i}"] = w[name]
                unweighted[f"{name}/s{i}"] = u[name].detach()
            stats.update({f"{name}/s{i}": value for name, value in s.items()})
        total = aggregate(weighted, self.cfg.aggregation)
        if not torch.isfinite(total):
            bad = [k for k, v in weighted.items() if not torch.isfinite(v)]
            raise FloatingPointError(f"non-finite loss in term(s) {bad or ['total']}")
        return LossBreakdown(total, weighted, unweighted, stats, assignment.as_tuple(), warmup=warmup)

    def _obj_pos_weight(self, raw: list[Tensor], n_labels: int) -> float:
        """The positive-objectness weight; 'auto' is seed 002's (predictions per image - labels) / labels / 2."""
        if self.cfg.obj_pos_weight != "auto":
            return float(self.cfg.obj_pos_weight)
        n_preds = sum(r.shape[1] * r.shape[2] * r.shape[3] for r in raw)
        return (n_preds - n_labels) / max(n_labels, 1) * AUTO_POS_WEIGHT_FACTOR

    def _scale(
        self, i: int, r: Tensor, targets: Tensor, assignment: Assignment, truths: Tensor, input_wh: Tensor,
        warmup: bool, pos_weight: float,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Terms of one scale. r [B, A, H, W, 5 + C]. Returns (weighted, unweighted, stats)."""
        cfg = self.cfg
        batch, _, grid_h, grid_w, _ = r.shape
        stride = self.strides[i]
        anchors = self.anchors[i].to(r.device)
        b, a, gy, gx, t = assignment.at_scale(i)
        p = r[b, a, gy, gx]  # [P, 5 + C]
        tgt = targets[t]

        # Positives: predicted and true boxes in pixels.
        cell = torch.stack((gx, gy), -1).to(r)
        pred_offset = self.coder.xy(p[:, :2])
        pred_wh = self.coder.wh(p[:, 2:4], anchors[a])
        true_offset = tgt[:, 2:4] * tgt.new_tensor([grid_w, grid_h]) - cell  # centre within its cell, in cells
        true_wh = tgt[:, 4:6] * input_wh
        pred_xyxy = box_cxcywh_to_xyxy(torch.cat(((cell + pred_offset) * stride, pred_wh), -1))
        true_xyxy = box_cxcywh_to_xyxy(torch.cat(((cell + true_offset) * stride, true_wh), -1))
        iou = iou_elementwise(pred_xyxy.detach(), true_xyxy, "iou")
        iou_prior = self._prior_iou(cell, anchors[a], stride, true_xyxy)
        area = tgt[:, 4] * tgt[:, 5]

        sums = self._box_sums(p, pred_offset, pred_wh, pred_xyxy, true_offset, true_wh, true_xyxy,
                              anchors[a], stride, area)
        n_box = len(p)
        if warmup:
            extra, n_warm = self._warmup_sums(r, anchors, stride, assignment, i, input_wh)
            sums = {name: sums[name] + extra[name] for name in sums}
            n_box += n_warm
        sums["cls"] = terms.class_loss(p[:, 5:], tgt[:, 1].long(), cfg.cls_loss, cfg.label_smoothing).sum()

        # Objectness over the whole grid.
        obj_logit = r[..., 4]
        positive = torch.zeros_like(obj_logit, dtype=torch.bool)
        positive[b, a, gy, gx] = True
        obj_target = torch.zeros_like(obj_logit)
        if cfg.obj_target == "one":
            obj_target[b, a, gy, gx] = 1.0
        else:
            obj_target[b, a, gy, gx] = ((1 - cfg.obj_iou_mix) + cfg.obj_iou_mix * iou.clamp(min=0)).to(obj_target)
        ignored = self._ignored(r, anchors, stride, truths) & ~positive
        obj_elem = terms.objectness_loss(obj_logit, obj_target, cfg.obj_loss, pos_weight, cfg.focal_gamma,
                                         cfg.focal_alpha)
        sums["obj"] = obj_elem[positive].sum()
        sums["noobj"] = obj_elem[~positive & ~ignored].sum()

        unweighted = self._reduce(sums, n_box, len(p), batch, obj_logit.numel(), r.shape[-1] - 5)
        weighted = {name: value * self._weight(name, i) for name, value in unweighted.items()}
        stats = self._stats(p, tgt, iou, iou_prior, obj_logit, positive, ignored)
        return weighted, unweighted, stats

    @torch.no_grad()
    def _prior_iou(self, cell: Tensor, anchors: Tensor, stride: int, true_xyxy: Tensor) -> Tensor:
        """IoU with the truth of what the head predicts from all-zero outputs: the coder's neutral offset in the
        responsible cell and the anchor's size. cell [P, 2] (gx, gy), anchors [P, 2] pixels, true_xyxy [P, 4]
        -> [P]. A network that learned nothing about where and how big objects are still scores this."""
        zeros = torch.zeros_like(anchors)
        centre = (cell + self.coder.xy(zeros)) * stride
        prior_xyxy = box_cxcywh_to_xyxy(torch.cat((centre, self.coder.wh(zeros, anchors)), -1))
        return iou_elementwise(prior_xyxy, true_xyxy, "iou")

    def _box_sums(self, p, pred_offset, pred_wh, pred_xyxy, true_offset, true_wh, true_xyxy, anchors, stride,
                  area) -> dict[str, Tensor]:
        """Summed box terms over positives: {'xy', 'wh'} for box_loss='mse', else {'box'}. Inputs [P, ...]."""
        cfg = self.cfg
        factor = SMALL_BOX_BASE - area
        if cfg.small_box_weight == "none":
            factor = torch.ones_like(area)
        elif cfg.small_box_weight == "squared":
            factor = factor.pow(2)
        if cfg.box_loss == "mse":
            return {
                "xy": (terms.xy_loss(p[:, :2], pred_offset, true_offset, cfg.xy_loss) * factor).sum(),
                "wh": (terms.wh_loss(pred_wh, true_wh, anchors, stride, cfg.wh_loss) * factor).sum(),
            }
        return {"box": (terms.iou_box_loss(pred_xyxy, true_xyxy, cfg.box_loss) * factor).sum()}

    def _warmup_sums(self, r: Tensor, anchors: Tensor, stride: int, assignment: Assignment, i: int,
                     input_wh: Tensor) -> tuple[dict[str, Tensor], int]:
        """keras-yolo3's warm-up: every prediction without a truth gets its cell centre and anchor as box target.

        Returns the summed box terms over those predictions and their count.
        """
        b, a, gy, gx, _ = assignment.at_scale(i)
        free = torch.ones(r.shape[:4], dtype=torch.bool, device=r.device)
        free[b, a, gy, gx] = False
        fb, fa, fy, fx = free.nonzero(as_tuple=True)
        p = r[fb, fa, fy, fx]  # [F, 5 + C]
        cell = torch.stack((fx, fy), -1).to(r)
        prior_offset = torch.full_like(cell, CELL_CENTRE)
        prior_wh = anchors[fa]
        pred_offset = self.coder.xy(p[:, :2])
        pred_wh = self.coder.wh(p[:, 2:4], prior_wh)
        pred_xyxy = box_cxcywh_to_xyxy(torch.cat(((cell + pred_offset) * stride, pred_wh), -1))
        prior_xyxy = box_cxcywh_to_xyxy(torch.cat(((cell + prior_offset) * stride, prior_wh), -1))
        area = prior_wh.prod(-1) / input_wh.prod()
        sums = self._box_sums(p, pred_offset, pred_wh, pred_xyxy, prior_offset, prior_wh, prior_xyxy, prior_wh,
                              stride, area)
        return sums, len(p)

    def _weight(self, name: str, scale: int) -> float:
        cfg = self.cfg
        base = {"xy": cfg.xy_weight, "wh": cfg.wh_weight, "box": cfg.box_weight, "cls": cfg.cls_weight,
                "obj": cfg.obj_weight, "noobj": cfg.noobj_weight}[name]
        return base * (self.scale_weights[scale] if name in cfg.scale_weight_terms else 1.0)

    def _reduce(self, sums: dict[str, Tensor], n_box: int, n_pos: int, batch: int, n_preds: int,
                n_cls: int) -> dict[str, Tensor]:
        """Apply the configured reduction to summed terms (see LossConfig.reduction)."""
        reduction = self.cfg.reduction
        if reduction == "sum":
            return sums
        if reduction == "image_mean":
            return {name: value / batch for name, value in sums.items()}
        per_box, per_pos = max(n_box, 1), max(n_pos, 1)
        cls_elements = per_pos * (max(n_cls, 1) if self.cfg.cls_loss == "bce" else 1)
        coords = COORDINATES if reduction == "elementwise_mean" else 1  # torch's MSELoss averages x and y too
        divisor = {"xy": per_box * coords, "wh": per_box * coords, "box": per_box, "cls": cls_elements,
                   "obj": n_preds, "noobj": n_preds}
        scale = batch if reduction == "mean" else 1  # ultralytics multiplies its means by the batch size
        return {name: value / divisor[name] * scale for name, value in sums.items()}

    @torch.no_grad()
    def _ignored(self, r: Tensor, anchors: Tensor, stride: int, truths: Tensor) -> Tensor:
        """[B, A, H, W] bool: predictions whose decoded box has IoU > ignore_thresh with a truth of the image."""
        if self.cfg.ignore_thresh >= 1.0:
            return torch.zeros(r.shape[:4], dtype=torch.bool, device=r.device)
        decoded = self.coder.decode(r[..., :5], anchors, stride)[..., :4]  # [B, AHW, 4]
        boxes = box_cxcywh_to_xyxy(decoded)
        best = iou_elementwise(boxes[:, :, None, :], truths[:, None, :, :], "iou").amax(-1)  # [B, AHW]
        return (best > self.cfg.ignore_thresh).reshape(r.shape[:4])

    @torch.no_grad()
    def _stats(self, p: Tensor, tgt: Tensor, iou: Tensor, iou_prior: Tensor, obj_logit: Tensor, positive: Tensor,
               ignored: Tensor) -> dict[str, Tensor]:
        """darknet's per-scale statistics (count, Avg IOU, Class, Obj, No Obj, .5R, .75R, ignored) and the mean
        ``iou_prior`` (IoU of the all-zero-output box, what IoU owes to the anchors alone)."""
        nan = obj_logit.new_tensor(float("nan"))
        obj_prob = obj_logit.sigmoid()
        n_pos = len(p)
        stats = {"n_pos": obj_logit.new_tensor(float(n_pos)), "n_ignored": ignored.sum().float()}
        negatives = obj_prob[~positive]
        stats["obj_neg"] = negatives.mean() if negatives.numel() else nan
        if n_pos == 0:
            stats.update({k: nan for k in ("iou", "iou_prior", "obj_pos", "cls_prob", "recall50", "recall75")})
            return stats
        classes = tgt[:, 1].long()
        if self.cfg.cls_loss == "bce":
            cls_prob = p[:, 5:].sigmoid()
        else:
            cls_prob = p[:, 5:].softmax(-1)
        stats["iou"] = iou.mean()
        stats["iou_prior"] = iou_prior.mean()
        stats["obj_pos"] = obj_prob[positive].mean()
        stats["cls_prob"] = cls_prob[torch.arange(n_pos, device=p.device), classes].mean()
        for name, threshold in zip(("recall50", "recall75"), RECALL_IOUS, strict=True):
            stats[name] = (iou > threshold).float().mean()
        return stats


def _check_targets(targets: Tensor, batch: int, num_classes: int) -> None:
    """Refuse targets that would silently corrupt the loss: [N, 6] (image, class, cx, cy, w, h)."""
    if targets.ndim != 2 or targets.shape[1] != TARGET_COLUMNS:
        raise ValueError(f"targets must be [N, {TARGET_COLUMNS}] (image, class, cx, cy, w, h), got "
                         f"{tuple(targets.shape)}")
    if not len(targets):
        return
    image, cls = targets[:, 0], targets[:, 1]
    problems = {
        "non-finite values": ~torch.isfinite(targets).all(1),
        f"class id outside 0..{num_classes - 1}": (cls < 0) | (cls >= num_classes) | (cls != cls.round()),
        f"image index outside 0..{batch - 1}": (image < 0) | (image >= batch),
        "width or height <= 0": (targets[:, 4] <= 0) | (targets[:, 5] <= 0),
    }
    bad = torch.stack(list(problems.values())).any(0)
    if bad.any():
        row = int(bad.nonzero()[0])
        reasons = [name for name, mask in problems.items() if mask[row]]
        raise ValueError(f"{int(bad.sum())} bad target row(s); first: row {row} {targets[row].tolist()}: "
                         f"{', '.join(reasons)}")


def _scale_weights(cfg: LossConfig, strides: list[int]) -> list[float]:
    """Per-scale weights in cfg order from a list (cfg order) or a stride -> weight dict (missing: 1)."""
    if cfg.scale_weights is None:
        return [1.0] * len(strides)
    if isinstance(cfg.scale_weights, dict):
        return [float(cfg.scale_weights.get(s, 1.0)) for s in strides]
    if len(cfg.scale_weights) != len(strides):
        raise ValueError(f"scale_weights has {len(cfg.scale_weights)} values for {len(strides)} scales")
    return list(cfg.scale_weights)
