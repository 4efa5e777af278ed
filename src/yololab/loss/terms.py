"""One function per loss term, each returning an unreduced loss per element.

The criterion gathers the inputs, calls these, and reduces and weights the results; nothing here knows about
scales, weights or reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from yololab.boxes import iou_elementwise


def xy_loss(pred_offset: Tensor, true_offset: Tensor) -> Tensor:
    """Squared error of the centre offset in cells: [P, 2], [P, 2] -> [P] (darknet, keras-yolo3)."""
    return (pred_offset - true_offset).pow(2).sum(-1)


def wh_loss(pred_wh: Tensor, true_wh: Tensor, anchors: Tensor) -> Tensor:
    """Squared error of log(w / anchor), log(h / anchor): [P, 2] pixels each -> [P].

    With the yolov3 coder log(pred_wh / anchor) is the raw tw, th: this is darknet's wh delta.
    """
    return (torch.log(pred_wh / anchors) - torch.log(true_wh / anchors)).pow(2).sum(-1)


def iou_box_loss(pred_xyxy: Tensor, true_xyxy: Tensor, kind: str) -> Tensor:
    """1 - IoU of ``kind`` (iou, giou, diou, ciou): [P, 4], [P, 4] xyxy pixels -> [P]."""
    return 1.0 - iou_elementwise(pred_xyxy, true_xyxy, kind)


def objectness_loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """Objectness loss per prediction: logits [...] and target [...] in [0, 1] -> [...].

    'bce' on the logit (darknet, ultralytics); 'mse' on the sigmoid (keras-yolo3).
    """
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (logits.sigmoid() - target).pow(2)


def class_loss(logits: Tensor, classes: Tensor, kind: str, smoothing: float) -> Tensor:
    """Class loss per positive: logits [P, C], integer classes [P] -> [P].

    'bce': independent logistic per class against a (smoothed) one-hot, summed over classes (the paper,
    darknet). 'softmax_ce': softmax cross-entropy (keras-yolo3), identically 0 when C = 1.
    """
    if kind == "softmax_ce":
        return F.cross_entropy(logits, classes, reduction="none", label_smoothing=smoothing)
    n_cls = logits.shape[-1]
    # Smoothing as ultralytics: positives 1 - eps/2, negatives eps/2.
    on, off = 1.0 - smoothing / 2, smoothing / 2
    target = torch.full_like(logits, off)
    target[torch.arange(len(classes), device=logits.device), classes] = on
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return loss.sum(-1) if n_cls else loss.new_zeros(len(classes))
