"""One function per loss term, each returning an unreduced loss per element.

The criterion gathers the inputs, calls these, and reduces and weights the results; nothing here knows about
scales, weights or reduction. Every function has a minimum of 0 at a perfect prediction (label smoothing and
IoU objectness targets aside, where the minimum is the target's own entropy term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from yololab.boxes import iou_elementwise

PROB_EPS = 1e-6  # keeps logit(offset) finite when a target offset sits exactly on a cell edge
HALF = 0.5  # darknet's wh delta is the gradient of half the squared error


def xy_loss(raw_xy: Tensor, pred_offset: Tensor, true_offset: Tensor, kind: str) -> Tensor:
    """Centre loss: raw tx, ty [P, 2], decoded offsets [P, 2] and target offsets [P, 2] (cells) -> [P].

    'mse_sigmoid': (offset - target)^2 (keras-yolo3, seed 002). 'mse_logit': (tx - logit(target))^2 (the
    paper). 'bce': BCE(tx, target) - H(target), i.e. binary KL, whose gradient is darknet's delta.
    """
    if kind == "mse_sigmoid":
        return (pred_offset - true_offset).pow(2).sum(-1)
    target = true_offset.clamp(PROB_EPS, 1 - PROB_EPS)
    if kind == "mse_logit":
        return (raw_xy - torch.log(target / (1 - target))).pow(2).sum(-1)
    entropy = -(target * target.log() + (1 - target) * (1 - target).log())
    return (F.binary_cross_entropy_with_logits(raw_xy, target, reduction="none") - entropy).sum(-1)


def wh_loss(pred_wh: Tensor, true_wh: Tensor, anchors: Tensor, stride: float, kind: str) -> Tensor:
    """Size loss: widths, heights [P, 2] in pixels and anchors [P, 2] -> [P].

    'mse_log': (log(w / anchor) - log(w_true / anchor))^2; with the yolov3 coder log(pred / anchor) is the raw
    tw (keras-yolo3). 'half_mse_log': half of it, whose gradient is darknet's wh delta. 'mse_linear': squared
    error in grid cells (seed 002).
    """
    if kind in ("mse_log", "half_mse_log"):
        sq = (torch.log(pred_wh / anchors) - torch.log(true_wh / anchors)).pow(2).sum(-1)
        return sq * HALF if kind == "half_mse_log" else sq
    return ((pred_wh - true_wh) / stride).pow(2).sum(-1)


def iou_box_loss(pred_xyxy: Tensor, true_xyxy: Tensor, kind: str) -> Tensor:
    """1 - IoU of ``kind`` (iou, giou, diou, ciou): [P, 4], [P, 4] xyxy pixels -> [P]."""
    return 1.0 - iou_elementwise(pred_xyxy, true_xyxy, kind)


def objectness_loss(logits: Tensor, target: Tensor, kind: str, pos_weight: float = 1.0, gamma: float = 2.0,
                    alpha: float | None = 0.25) -> Tensor:
    """Objectness loss per prediction: logits [...] and target [...] in [0, 1] -> [...].

    'bce' on the logit, with ``pos_weight`` on the positive part (darknet, ultralytics, seed 002); 'mse' on the
    sigmoid (keras-yolo3); 'focal': BCE x alpha_t x (1 - p_t)^gamma (RetinaNet; ultralytics' FocalLoss), without
    alpha_t when ``alpha`` is None (TF2-YOLOv3's (target - p)^2 factor).
    """
    if kind == "bce":
        weight = logits.new_tensor(pos_weight)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=weight)
    prob = logits.sigmoid()
    positive_factor = 1 + (pos_weight - 1) * target
    if kind == "mse":
        return (prob - target).pow(2) * positive_factor
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = target * prob + (1 - target) * (1 - prob)
    focal = (1 - p_t).pow(gamma)  # = (target - p)^gamma for a 0/1 target
    if alpha is not None:
        focal = focal * (target * alpha + (1 - target) * (1 - alpha))
    return bce * focal * positive_factor


def class_targets(classes: Tensor, num_classes: int, smoothing: float, form: str) -> Tensor:
    """One-hot class targets [P, C] from integer classes [P], smoothed: 'half' = 1 - eps/2 and eps/2
    (ultralytics smooth_BCE), 'uniform' = (1 - eps) one-hot + eps/C (TF2-YOLOv3, torch's cross-entropy)."""
    one_hot = torch.zeros(len(classes), num_classes, device=classes.device)
    one_hot[torch.arange(len(classes), device=classes.device), classes] = 1.0
    if smoothing == 0:
        return one_hot
    if form == "half":
        return one_hot * (1 - smoothing) + smoothing / 2
    return one_hot * (1 - smoothing) + smoothing / num_classes


def class_loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """Class loss per row: logits [P, C] and targets [P, C] in [0, 1] (one-hot, smoothed or multi-hot) -> [P].

    'bce': independent logistic per class, summed over classes (the paper, darknet). 'softmax_ce': softmax
    cross-entropy against the target distribution (keras-yolo3). 'mse_softmax': squared error of the softmax
    against the target (seed 003). Both softmax forms are identically 0 when C = 1.
    """
    if kind == "softmax_ce":
        return F.cross_entropy(logits, target, reduction="none")
    if kind == "mse_softmax":
        return (logits.softmax(-1) - target).pow(2).sum(-1)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
