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
    tw (darknet, keras-yolo3). 'mse_linear': squared error in grid cells (seed 002).
    """
    if kind == "mse_log":
        return (torch.log(pred_wh / anchors) - torch.log(true_wh / anchors)).pow(2).sum(-1)
    return ((pred_wh - true_wh) / stride).pow(2).sum(-1)


def iou_box_loss(pred_xyxy: Tensor, true_xyxy: Tensor, kind: str) -> Tensor:
    """1 - IoU of ``kind`` (iou, giou, diou, ciou): [P, 4], [P, 4] xyxy pixels -> [P]."""
    return 1.0 - iou_elementwise(pred_xyxy, true_xyxy, kind)


def objectness_loss(logits: Tensor, target: Tensor, kind: str, pos_weight: float = 1.0, gamma: float = 2.0,
                    alpha: float = 0.25) -> Tensor:
    """Objectness loss per prediction: logits [...] and target [...] in [0, 1] -> [...].

    'bce' on the logit, with ``pos_weight`` on the positive part (darknet, ultralytics, seed 002); 'mse' on the
    sigmoid (keras-yolo3); 'focal': BCE x alpha_t x (1 - p_t)^gamma (RetinaNet; ultralytics' FocalLoss).
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
    alpha_t = target * alpha + (1 - target) * (1 - alpha)
    return bce * alpha_t * (1 - p_t).pow(gamma) * positive_factor


def class_loss(logits: Tensor, classes: Tensor, kind: str, smoothing: float) -> Tensor:
    """Class loss per positive: logits [P, C], integer classes [P] -> [P].

    'bce': independent logistic per class against a (smoothed) one-hot, summed over classes (the paper,
    darknet). 'softmax_ce': softmax cross-entropy (keras-yolo3). 'mse_softmax': squared error of the softmax
    against the one-hot (seed 003). Both softmax forms are identically 0 when C = 1.
    """
    if kind == "softmax_ce":
        return F.cross_entropy(logits, classes, reduction="none", label_smoothing=smoothing)
    # Smoothing as ultralytics: positives 1 - eps/2, negatives eps/2.
    target = torch.full_like(logits, smoothing / 2)
    target[torch.arange(len(classes), device=logits.device), classes] = 1.0 - smoothing / 2
    if kind == "mse_softmax":
        return (logits.softmax(-1) - target).pow(2).sum(-1)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
