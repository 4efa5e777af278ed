"""YoloLoss: the YOLOv3 loss, returned as a breakdown per scale and term.

Works on any model that emits the raw-output contract (list of [B, A, H, W, 5 + C] logits), so it can be
used in a user's own training loop as well as in yololab's trainer.

Per scale, the criterion reads the head outputs once (``gather.gather_head``: the box and objectness logits
of every prediction, the full rows of the responsible ones), builds one ``ScaleInputs`` and calls each term
function of ``TERM_FUNCTIONS`` on it (same signature for all, as DETR's SetCriterion). A term function
returns its sum over elements; ``_reduce`` and ``_weight`` turn sums into the reported terms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from yololab.boxes import EPS, box_cxcywh_to_xyxy, iou_elementwise
from yololab.keys import STATS, TERMS, key, parse
from yololab.loss import terms
from yololab.loss.assign import Assignment, Geometry, assign_targets, last_of_slot
from yololab.loss.config import LossConfig
from yololab.loss.gather import gather_head
from yololab.model.coder import BoxCoder

__all__ = ["STATS", "TERMS", "LossBreakdown", "YoloLoss", "aggregate"]

RECALL_IOUS = (0.5, 0.75)  # darknet's .5R and .75R
SMALL_BOX_BASE = 2.0  # darknet / keras-yolo3 / TF2 YOLOv3 box weight: 2 - w*h (w, h relative to the input)
AUTO_POS_WEIGHT_FACTOR = 0.5  # seed 002: (n_preds - n_labels) / n_labels * 0.5
CELL_CENTRE = 0.5  # keras-yolo3 warm-up target offset
TARGET_COLUMNS = 6  # image, class, cx, cy, w, h
COORDINATES = 2  # x and y (or w and h) averaged together by torch's MSELoss
# ultralytics train.py:248-250 scales its hyps from a reference of 3 layers, 80 classes and 640 pixels.
ULTRALYTICS_LAYERS, ULTRALYTICS_CLASSES, ULTRALYTICS_IMGSZ = 3, 80, 640
BOX_TERMS = ("xy", "wh", "box")
HALF = 0.5  # centre +- half the size


@dataclass
class LossBreakdown:
    """What one loss evaluation returns.

    total: scalar that is back-propagated. terms: ``"<term>/s<i>"`` -> weighted scalar contributions;
    aggregating them with ``aggregate(terms, cfg.aggregation)`` gives ``total`` exactly. unweighted: the same
    keys before term and scale weights, detached. stats: ``"<name>/s<i>"`` detached diagnostics (NaN where a
    scale has no positives). assignment: the ``Assignment`` of the positives (it unpacks as DESIGN.md's
    ``(scale, image, anchor, gy, gx, target)``). warmup: whether this batch used the anchor-prior warm-up.
    """

    total: Tensor
    terms: dict[str, Tensor]
    unweighted: dict[str, Tensor]
    stats: dict[str, Tensor]
    assignment: Assignment
    warmup: bool = False
    extras: dict[str, Tensor] = field(default_factory=dict)


def aggregate(term_values: dict[str, Tensor], aggregation: str) -> Tensor:
    """Combine ``"<term>/s<i>"`` values into the total: plain sum, or keras-yolo3's sum of per-scale sqrt."""
    if aggregation == "sum":
        return torch.stack(list(term_values.values())).sum()
    per_scale: dict[int, list[Tensor]] = {}
    for name, value in term_values.items():
        per_scale.setdefault(parse(name)[1], []).append(value)
    return torch.stack([torch.stack(v).sum().sqrt() for v in per_scale.values()]).sum()


@dataclass
class BoxInputs:
    """Box-term inputs of K predictions: raw tx, ty [K, 2]; decoded and true offsets (cells) and sizes
    (pixels) [K, 2]; decoded and true boxes xyxy pixels [K, 4]; anchors [K, 2] pixels; small-box factor [K]."""

    raw_xy: Tensor
    pred_offset: Tensor
    pred_wh: Tensor
    pred_xyxy: Tensor
    true_offset: Tensor
    true_wh: Tensor
    true_xyxy: Tensor
    anchors: Tensor
    factor: Tensor

    def cat(self, other: BoxInputs) -> BoxInputs:
        return BoxInputs(*(torch.cat((getattr(self, f), getattr(other, f))) for f in self.__dataclass_fields__))


@dataclass
class ScaleInputs:
    """Everything the term functions of one scale read.

    box: the box-term inputs (positives, plus the warm-up's free predictions); cls_logits [K, C] and
    cls_target [K, C] (K = positives, or slots under 'share' collisions); obj_elem [B, A, H, W] the objectness
    loss of every prediction against its target (0 away from positives); positive / negative [B, A, H, W] bool
    (negative: neither responsible nor ignored); stride.
    """

    box: BoxInputs
    cls_logits: Tensor
    cls_target: Tensor
    obj_elem: Tensor
    positive: Tensor
    negative: Tensor
    stride: int


TermFunction = Callable[[LossConfig, ScaleInputs], Tensor]


def _xy_term(cfg: LossConfig, s: ScaleInputs) -> Tensor:
    b = s.box
    return (terms.xy_loss(b.raw_xy, b.pred_offset, b.true_offset, cfg.xy_loss) * b.factor).sum()


def _wh_term(cfg: LossConfig, s: ScaleInputs) -> Tensor:
    b = s.box
    return (terms.wh_loss(b.pred_wh, b.true_wh, b.anchors, s.stride, cfg.wh_loss) * b.factor).sum()


def _box_term(cfg: LossConfig, s: ScaleInputs) -> Tensor:
    return (terms.iou_box_loss(s.box.pred_xyxy, s.box.true_xyxy, cfg.box_loss) * s.box.factor).sum()


def _obj_term(cfg: LossConfig, s: ScaleInputs) -> Tensor:
    return (s.obj_elem * s.positive).sum()


def _noobj_term(cfg: LossConfig, s: ScaleInputs) -> Tensor:
    return (s.obj_elem * s.negative).sum()


def _cls_term(cfg: LossConfig, s: ScaleInputs) -> Tensor:
    if not cfg.single_class_loss and s.cls_logits.shape[-1] == 1:
        return s.cls_logits.sum() * 0.0
    return terms.class_loss(s.cls_logits, s.cls_target, cfg.cls_loss).sum()


TERM_FUNCTIONS: dict[str, TermFunction] = {
    "xy": _xy_term, "wh": _wh_term, "box": _box_term, "obj": _obj_term, "noobj": _noobj_term, "cls": _cls_term,
}


def active_terms(cfg: LossConfig) -> tuple[str, ...]:
    """The terms a configuration computes, in TERMS order."""
    box = ("xy", "wh") if cfg.box_loss == "mse" else ("box",)
    return (*box, "obj", "noobj", "cls")


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


@torch.no_grad()
def any_iou_above(x1: Tensor, y1: Tensor, x2: Tensor, y2: Tensor, truths: Tensor, threshold: float) -> Tensor:
    """Whether each box has IoU > threshold with some truth of its image.

    Box corners x1, y1, x2, y2 [B, N] (pixels), truths [B, T, 4] xyxy (all-zero rows are padding: IoU 0) ->
    [B, N] bool. One truth at a time into preallocated [B, N] buffers, and without a division:
    IoU > t  <=>  inter > t / (1 + t) * (area + truth area).
    """
    k = threshold / (1 + threshold)
    area_k = (x2 - x1).mul_(y2 - y1).mul_(k)
    hit = torch.zeros(x1.shape, dtype=torch.bool, device=x1.device)
    iw, ih, rhs = torch.empty_like(x1), torch.empty_like(x1), torch.empty_like(x1)
    t_area_k = (truths[..., 2] - truths[..., 0]) * (truths[..., 3] - truths[..., 1]) * k  # [B, T]
    for t in range(truths.shape[1]):
        tx1, ty1, tx2, ty2 = (v[:, None] for v in truths[:, t].unbind(-1))  # [B, 1]
        torch.clamp(x2, max=tx2, out=iw).sub_(torch.clamp(x1, min=tx1, out=rhs)).clamp_(min=0)
        torch.clamp(y2, max=ty2, out=ih).sub_(torch.clamp(y1, min=ty1, out=rhs)).clamp_(min=0)
        torch.add(area_k, t_area_k[:, t, None], out=rhs)
        hit |= iw.mul_(ih) > rhs.add_(EPS)
    return hit


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
        self.term_names = active_terms(cfg)

    def forward(self, raw: list[Tensor], targets: Tensor, step: int | None = None) -> LossBreakdown:
        if len(raw) != len(self.anchors):
            raise ValueError(f"model gave {len(raw)} outputs for {len(self.anchors)} anchor scales")
        device = raw[0].device
        geo = Geometry.build(self.anchors, self.strides, [(r.shape[2], r.shape[3]) for r in raw], raw[0].shape[0],
                             device)
        targets = targets.to(device).float()
        _check_targets(targets, geo.batch, self.num_classes)
        assignment = assign_targets(targets, geo, self.cfg, raw=[r.detach() for r in raw], coder=self.coder)
        truths = self._ignore_truths(targets, assignment, geo)
        warmup = step is not None and step < self.cfg.warmup_batches
        pos_weight = self._obj_pos_weight(raw, len(targets))
        weighted: dict[str, Tensor] = {}
        unweighted: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        for i, r in enumerate(raw):
            w, u, s = self._scale(i, r, targets, assignment, geo, truths[i], warmup, pos_weight)
            for name in w:
                weighted[key(name, i)] = w[name]
                unweighted[key(name, i)] = u[name].detach()
            stats.update({key(name, i): value for name, value in s.items()})
        total = aggregate(weighted, self.cfg.aggregation)
        if not torch.isfinite(total):
            bad = [k for k, v in weighted.items() if not torch.isfinite(v)]
            raise FloatingPointError(f"non-finite loss in term(s) {bad or ['total']}")
        return LossBreakdown(total, weighted, unweighted, stats, assignment, warmup=warmup)

    def _obj_pos_weight(self, raw: list[Tensor], n_labels: int) -> float:
        """The positive-objectness weight; 'auto' is seed 002's (predictions per image - labels) / labels / 2.
        seed 002 divides by zero on a batch without truths; here the divisor is then 1 (no positive exists, so
        the weight changes nothing)."""
        if self.cfg.obj_pos_weight != "auto":
            return float(self.cfg.obj_pos_weight)
        n_preds = sum(r.shape[1] * r.shape[2] * r.shape[3] for r in raw)
        return (n_preds - n_labels) / max(n_labels, 1) * AUTO_POS_WEIGHT_FACTOR

    @torch.no_grad()
    def _ignore_truths(self, targets: Tensor, assignment: Assignment, geo: Geometry) -> list[Tensor | None]:
        """Per scale the [B, T, 4] xyxy pixel truths of the ignore test (None: nothing is ignored)."""
        cfg = self.cfg
        if cfg.ignore_thresh >= 1.0:
            return [None] * len(geo.grids)
        if cfg.ignore_truths == "image" and cfg.ignore_truth_grid == "own":
            shared = _truths_per_image(targets, geo.batch, geo.input_wh)
            return [shared] * len(geo.grids)
        out = []
        for i in range(len(geo.grids)):
            t, home = targets, assignment.home_scale
            if cfg.ignore_truths == "scale":
                t, home = t[assignment.matched[:, i]], home[assignment.matched[:, i]]
            if cfg.ignore_truth_grid == "responsible":
                # keras-yolo3's bug: the centre in cells of the truth's home scale, read as cells of scale i
                ratio = torch.stack((geo.width[home] / geo.width[i], geo.height[home] / geo.height[i]), -1)
                t = torch.cat((t[:, :2], t[:, 2:4] * ratio, t[:, 4:6]), 1)
            out.append(_truths_per_image(t, geo.batch, geo.input_wh))
        return out

    def _scale(self, i: int, r: Tensor, targets: Tensor, assignment: Assignment, geo: Geometry,
               truths: Tensor | None, warmup: bool, pos_weight: float,
               ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Terms of one scale. r [B, A, H, W, 5 + C]. Returns (weighted, unweighted, stats)."""
        cfg = self.cfg
        stride, anchors = geo.strides[i], geo.anchors[i]
        b, a, gy, gx, t = assignment.at_scale(i)
        head, p = gather_head(r, b, a, gy, gx)  # [B, A, H, W, 5], [P, 5 + C]
        tgt = targets[t]
        grid_h, grid_w = geo.grids[i]

        # Positives: predicted and true boxes in pixels.
        cell = torch.stack((gx, gy), -1).to(p)
        true_offset = tgt[:, 2:4] * tgt.new_tensor([grid_w, grid_h]) - cell  # centre within its cell, in cells
        max_wh = max(grid_h, grid_w) * stride if cfg.clamp_pred_wh_to_grid else None
        box = self._box_inputs(p[:, :4], cell, anchors[a], stride, true_offset, tgt[:, 4:6] * geo.input_wh,
                               tgt[:, 4] * tgt[:, 5], max_wh)
        iou = iou_elementwise(box.pred_xyxy.detach(), box.true_xyxy, "iou")
        n_box = len(p)
        if warmup:
            free = self._warmup_inputs(head, anchors, stride, b, a, gy, gx, geo)
            box, n_box = box.cat(free), n_box + len(free.factor)

        # Objectness over the whole grid; a slot listed by several rows takes the last row's target.
        obj_logit = head[..., 4]
        slot = ((b * obj_logit.shape[1] + a) * grid_h + gy) * grid_w + gx
        last = last_of_slot(slot)
        positive = torch.zeros(obj_logit.numel(), dtype=torch.bool, device=r.device)
        positive[slot] = True
        obj_target = torch.zeros(obj_logit.numel(), device=r.device)
        obj_target[slot[last]] = self._obj_target_values(box, iou, len(p))[last]
        positive, obj_target = positive.view_as(obj_logit), obj_target.view_as(obj_logit)
        ignored = self._ignored(head, r, anchors, stride, truths) & ~positive

        cls_logits, cls_target = self._class_inputs(p, tgt[:, 1].long(), slot, last)
        obj_elem = terms.objectness_loss(obj_logit, obj_target, cfg.obj_loss, pos_weight, cfg.focal_gamma,
                                         cfg.focal_alpha)
        inputs = ScaleInputs(box, cls_logits, cls_target, obj_elem, positive, ~(positive | ignored), stride)
        sums = {name: TERM_FUNCTIONS[name](cfg, inputs) for name in self.term_names}
        unweighted = self._reduce(sums, n_box, len(cls_logits), geo.batch, obj_logit.numel(), r.shape[-1] - 5)
        weighted = {name: value * self._weight(name, i, geo) for name, value in unweighted.items()}
        stats = self._stats(p, tgt, iou, box, cell, anchors[a], stride, obj_logit, positive, ignored)
        return weighted, unweighted, stats

    def _box_inputs(self, t_box: Tensor, cell: Tensor, anchors: Tensor, stride: int, true_offset: Tensor,
                    true_wh: Tensor, area: Tensor, max_wh: float | None = None) -> BoxInputs:
        """Box-term inputs from raw tx..th [K, 4], cells [K, 2] (gx, gy), anchors [K, 2] px, the target's offset
        in its cell [K, 2], size [K, 2] px and area relative to the input [K]; ``max_wh`` clamps the decoded
        size (pixels)."""
        pred_offset = self.coder.xy(t_box[:, :2])
        pred_wh = self.coder.wh(t_box[:, 2:4], anchors)
        if max_wh is not None:
            pred_wh = pred_wh.clamp(max=max_wh)
        pred_xyxy = box_cxcywh_to_xyxy(torch.cat(((cell + pred_offset) * stride, pred_wh), -1))
        true_xyxy = box_cxcywh_to_xyxy(torch.cat(((cell + true_offset) * stride, true_wh), -1))
        factor = {"none": torch.ones_like(area), "linear": SMALL_BOX_BASE - area,
                  "squared": (SMALL_BOX_BASE - area).pow(2)}[self.cfg.small_box_weight]
        return BoxInputs(t_box[:, :2], pred_offset, pred_wh, pred_xyxy, true_offset, true_wh, true_xyxy, anchors,
                         factor)

    def _warmup_inputs(self, head: Tensor, anchors: Tensor, stride: int, b: Tensor, a: Tensor, gy: Tensor,
                       gx: Tensor, geo: Geometry) -> BoxInputs:
        """keras-yolo3's warm-up: every prediction without a truth gets its cell centre and anchor as box target
        (yolo.py:153-159); its small-box factor uses the anchor's area (yolo.py:164-165)."""
        free = torch.ones(head.shape[:4], dtype=torch.bool, device=head.device)
        free[b, a, gy, gx] = False
        fb, fa, fy, fx = free.nonzero(as_tuple=True)
        cell = torch.stack((fx, fy), -1).to(head)
        prior_wh = anchors[fa]
        area = prior_wh.prod(-1) / geo.input_wh.prod()
        return self._box_inputs(head[fb, fa, fy, fx, :4], cell, prior_wh, stride, torch.full_like(cell, CELL_CENTRE),
                                prior_wh, area)

    def _obj_target_values(self, box: BoxInputs, iou: Tensor, n_pos: int) -> Tensor:
        """[P] objectness targets of the positives (see LossConfig.obj_target)."""
        cfg = self.cfg
        if cfg.obj_target == "one":
            return iou.new_ones(n_pos)
        quality = iou
        if cfg.obj_target == "ciou":
            quality = iou_elementwise(box.pred_xyxy[:n_pos].detach(), box.true_xyxy[:n_pos], "ciou").clamp(min=0)
        return (1 - cfg.obj_iou_mix) + cfg.obj_iou_mix * quality.clamp(min=0)

    def _class_inputs(self, p: Tensor, classes: Tensor, slot: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [K, C], targets [K, C]): one row per positive, or under 'share' collisions one per slot with
        every truth's class in the target (darknet)."""
        cfg = self.cfg
        target = terms.class_targets(classes, p.shape[-1] - 5, cfg.label_smoothing, cfg.class_smoothing_form)
        if cfg.collisions != "share" or len(last) == len(slot):
            return p[:, 5:], target
        _, inverse = torch.unique(slot, return_inverse=True)  # ``last`` is in the same ascending slot order
        shared = target.new_zeros(len(last), target.shape[1]).scatter_reduce_(
            0, inverse[:, None].expand_as(target), target, reduce="amax")
        return p[last, 5:], shared

    def _weight(self, name: str, scale: int, geo: Geometry) -> float:
        cfg = self.cfg
        base = {"xy": cfg.xy_weight, "wh": cfg.wh_weight, "box": cfg.box_weight, "cls": cfg.cls_weight,
                "obj": cfg.obj_weight, "noobj": cfg.noobj_weight}[name]
        if cfg.weight_scaling == "ultralytics":
            base *= self._ultralytics_gain(name, geo)
        return base * (self.scale_weights[scale] if name in cfg.scale_weight_terms else 1.0)

    def _ultralytics_gain(self, name: str, geo: Geometry) -> float:
        """train.py:248-250: box x 3/nl, cls x nc/80 x 3/nl, objectness x (imgsz/640)^2 x 3/nl."""
        layers = ULTRALYTICS_LAYERS / len(geo.grids)
        if name == "cls":
            return self.num_classes / ULTRALYTICS_CLASSES * layers
        if name in ("obj", "noobj"):
            return (geo.input_hw[1] / ULTRALYTICS_IMGSZ) ** 2 * layers
        return layers

    def _reduce(self, sums: dict[str, Tensor], n_box: int, n_cls_rows: int, batch: int, n_preds: int,
                n_cls: int) -> dict[str, Tensor]:
        """Apply the configured reduction to summed terms (see LossConfig.reduction)."""
        reduction = self.cfg.reduction
        if reduction == "sum":
            return sums
        if reduction == "image_mean":
            return {name: value / batch for name, value in sums.items()}
        per_box, per_pos = max(n_box, 1), max(n_cls_rows, 1)
        cls_elements = per_pos * (max(n_cls, 1) if self.cfg.cls_loss == "bce" else 1)
        coords = COORDINATES if reduction == "elementwise_mean" else 1  # torch's MSELoss averages x and y too
        divisor = {"xy": per_box * coords, "wh": per_box * coords, "box": per_box, "cls": cls_elements,
                   "obj": n_preds, "noobj": n_preds}
        scale = batch if reduction == "mean" else 1  # ultralytics multiplies its means by the batch size
        return {name: value / divisor[name] * scale for name, value in sums.items()}

    @torch.no_grad()
    def _ignored(self, head: Tensor, r: Tensor, anchors: Tensor, stride: int, truths: Tensor | None) -> Tensor:
        """[B, A, H, W] bool: predictions whose decoded box has IoU > ignore_thresh with a truth of the ignore
        test and, with ignore_min_class_prob, some class probability above it (darknet)."""
        if truths is None:
            return torch.zeros(head.shape[:4], dtype=torch.bool, device=head.device)
        b, a, h, w, _ = head.shape
        centre = self.coder.xy(head[..., :2])  # [B, A, H, W, 2] offsets in cells
        centre[..., 0].add_(torch.arange(w, device=head.device, dtype=head.dtype))
        centre[..., 1].add_(torch.arange(h, device=head.device, dtype=head.dtype)[:, None])
        half = self.coder.wh(head[..., 2:4], anchors[None, :, None, None, :]).mul_(HALF)  # [B, A, H, W, 2] px
        lo, hi = centre.mul_(stride) - half, centre + half
        x1, y1, x2, y2 = (v.reshape(b, a * h * w) for v in (lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]))
        ignored = any_iou_above(x1, y1, x2, y2, truths, self.cfg.ignore_thresh).view(head.shape[:4])
        if self.cfg.ignore_min_class_prob > 0:
            idx = ignored.nonzero(as_tuple=True)
            min_logit = math.log(self.cfg.ignore_min_class_prob / (1 - self.cfg.ignore_min_class_prob))
            ignored[idx] = (r.detach()[idx][:, 5:] > min_logit).any(-1)
        return ignored

    @torch.no_grad()
    def _stats(self, p: Tensor, tgt: Tensor, iou: Tensor, box: BoxInputs, cell: Tensor, anchors: Tensor,
               stride: int, obj_logit: Tensor, positive: Tensor, ignored: Tensor) -> dict[str, Tensor]:
        """darknet's per-scale statistics (count, Avg IOU, Class, Obj, No Obj, .5R, .75R, ignored) per trained
        (truth, prediction) row, and the mean ``iou_prior`` (IoU of the all-zero-output box, what IoU owes to the
        anchors alone)."""
        nan = obj_logit.new_tensor(float("nan"))
        obj_prob = obj_logit.sigmoid()
        n_pos = len(p)
        stats = {"n_pos": obj_logit.new_tensor(float(n_pos)), "n_ignored": ignored.sum().float(),
                 "obj_all": obj_prob.mean()}
        n_neg = positive.numel() - int(positive.sum())
        stats["obj_neg"] = obj_prob.masked_fill(positive, 0).sum() / n_neg if n_neg else nan
        if n_pos == 0:
            stats.update({k: nan for k in STATS if k not in stats})
            return stats
        classes = tgt[:, 1].long()
        cls_prob = p[:, 5:].sigmoid() if self.cfg.cls_loss == "bce" else p[:, 5:].softmax(-1)
        zeros = torch.zeros_like(anchors)
        prior = box_cxcywh_to_xyxy(torch.cat(((cell + self.coder.xy(zeros)) * stride, self.coder.wh(zeros, anchors)),
                                             -1))
        stats["iou"] = iou.mean()
        stats["iou_prior"] = iou_elementwise(prior, box.true_xyxy[:n_pos], "iou").mean()
        stats["obj_pos"] = p[:, 4].sigmoid().mean()
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
