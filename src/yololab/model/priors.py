"""Initial objectness and class biases of the detection heads (``model.head_prior``).

A head's sigmoid outputs start at ``sigmoid(bias)``. Zero biases (darknet's) start every objectness at 0.5,
although nearly all predictions are background: the first steps then mostly push objectness down (Focal Loss
paper, Lin et al. 2017, section 3.3 "Initialization": a prior ``pi`` for the rare class, bias
``-log((1 - pi) / pi)`` = logit(pi)). Three choices:

- ``ultralytics``: YOLOv5's fixed constants (models/yolo.py, ``Model._initialize_biases``): objectness
  ``log(8 / (640 / stride)^2)``, as if 8 objects were spread over a 640x640 image, and every class
  ``log(0.6 / (num_classes - 0.99))``.
- ``labels``: the same idea measured on the training labels (``label_priors``): per scale, objectness
  logit(p) with p the share of that scale's predictions that are responsible for a box, and per class
  logit(q) with q the share of boxes of that class.
- ``none``: zero biases, darknet's (objectness and class probabilities 0.5 everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from yololab.boxes import wh_iou

# YOLOv5's constants (models/yolo.py, Model._initialize_biases): 8 objects per 640x640 image, class
# probability 0.6 / (num_classes - 0.99).
PRIOR_OBJECTS_PER_IMAGE = 8
PRIOR_IMAGE_SIZE = 640
PRIOR_CLASS_PROB = 0.6
PRIOR_CLASS_OFFSET = 0.99
# Laplace's rule of succession, (successes + 1) / (trials + 2): the probability of an event seen k times in
# n trials, finite at k = 0 and k = n. It keeps the logit of a scale no box chooses, or of a class every box
# (or no box) has, finite; with the thousands of predictions of a scale it changes nothing else measurably.
SUCCESSION_ADD = 1
SUCCESSION_TRIALS_ADD = 2


def objectness_prior(stride: int) -> float:
    """ultralytics' initial objectness bias of a head of the given stride: log(8 / (640 / stride)^2)."""
    return math.log(PRIOR_OBJECTS_PER_IMAGE / (PRIOR_IMAGE_SIZE / stride) ** 2)


def class_prior(num_classes: int) -> float:
    """ultralytics' initial class bias: log(0.6 / (num_classes - 0.99))."""
    return math.log(PRIOR_CLASS_PROB / (num_classes - PRIOR_CLASS_OFFSET))


def logit(p: float) -> float:
    """log(p / (1 - p)), the bias whose sigmoid is ``p`` (0 < p < 1)."""
    return math.log(p / (1 - p))


def succession(successes: float, trials: float) -> float:
    """Laplace's rule of succession: (successes + 1) / (trials + 2)."""
    return (successes + SUCCESSION_ADD) / (trials + SUCCESSION_TRIALS_ADD)


@dataclass(frozen=True)
class HeadPriors:
    """Initial head biases (logits): ``objectness`` one per [yolo] in cfg order, ``classes`` one per class
    (the same at every head). ``as_dict`` / ``HeadPriors(**d)`` is the plain form a checkpoint stores."""

    objectness: tuple[float, ...]
    classes: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "objectness", tuple(float(v) for v in self.objectness))
        object.__setattr__(self, "classes", tuple(float(v) for v in self.classes))
        if not all(math.isfinite(v) for v in self.objectness + self.classes):
            raise ValueError(f"head priors must be finite, got {self}")

    def as_dict(self) -> dict[str, list[float]]:
        return {key: list(value) for key, value in asdict(self).items()}

    def check(self, n_heads: int, num_classes: int) -> None:
        """ValueError unless there is one objectness per head and one class logit per class."""
        if len(self.objectness) != n_heads or len(self.classes) != num_classes:
            raise ValueError(f"head priors for {len(self.objectness)} heads and {len(self.classes)} classes given "
                             f"to a model of {n_heads} heads and {num_classes} classes")


def ultralytics_priors(strides: Sequence[int], num_classes: int) -> HeadPriors:
    """YOLOv5's fixed priors (``objectness_prior`` per stride, ``class_prior`` for every class)."""
    return HeadPriors(tuple(objectness_prior(s) for s in strides), (class_prior(num_classes),) * num_classes)


def zero_priors(n_heads: int, num_classes: int) -> HeadPriors:
    """darknet's zero biases: every objectness and class probability starts at sigmoid(0) = 0.5."""
    return HeadPriors((0.0,) * n_heads, (0.0,) * num_classes)


def label_priors(wh: Tensor, classes: Tensor, n_images: int, anchors: Sequence[Tensor], strides: Sequence[int],
                 img_size: int, num_classes: int) -> HeadPriors:
    """Head priors measured on the training labels.

    ``wh [N, 2]`` box sizes in network-input pixels (after the letterbox to ``img_size``, as the anchor fit
    reads them), ``classes [N]`` their class indices, ``n_images`` the images of the split (background
    images included), ``anchors`` one ``[A_s, 2]`` pixel set per [yolo] in cfg order, ``strides`` per [yolo].

    Objectness of scale s: logit(p_s), p_s the expected share of the scale's predictions that are responsible
    for a box, i.e. (mean boxes per image) x (share of boxes whose best anchor, by shape IoU as in YOLOv3's
    assignment, is at scale s) / (cells of the scale x anchors per cell)
    = n_s / (n_images x (img_size / stride_s)^2 x A_s), with the rule of succession (``succession``):
    p_s = (n_s + 1) / (n_images x cells_s x A_s + 2).
    Class c: logit(q_c), q_c = (n_c + 1) / (N + 2), the share of boxes of class c by the same rule: the target
    of class c's sigmoid at a responsible prediction is 1 for that share of them.
    """
    flat = torch.cat([torch.as_tensor(a, dtype=torch.float64).reshape(-1, 2) for a in anchors])  # [K, 2]
    scale_of = torch.cat([torch.full((len(a),), s) for s, a in enumerate(anchors)])  # [K]
    boxes = torch.as_tensor(wh, dtype=torch.float64).reshape(-1, 2)
    per_scale = torch.zeros(len(anchors), dtype=torch.float64)
    if len(boxes):
        best = wh_iou(boxes, flat).argmax(1)  # [N]
        per_scale = torch.bincount(scale_of[best], minlength=len(anchors)).double()
    objectness = []
    for s, (a, stride) in enumerate(zip(anchors, strides, strict=True)):
        predictions = n_images * (img_size / stride) ** 2 * len(a)
        objectness.append(logit(succession(float(per_scale[s]), predictions)))
    counts = torch.bincount(torch.as_tensor(classes, dtype=torch.long).reshape(-1), minlength=num_classes)
    class_logits = [logit(succession(float(n), len(boxes))) for n in counts[:num_classes]]
    return HeadPriors(tuple(objectness), tuple(class_logits))
