"""Box formats and the IoU family.

Formats are named explicitly: ``xyxy`` = (x1, y1, x2, y2) corners, ``cxcywh`` = (centre x, centre y, width,
height). Every function works on the last dimension of size 4 and is device- and dtype-agnostic.

Pairwise functions (``box_iou`` …) take ``a [N, 4]`` and ``b [M, 4]`` in xyxy and return ``[N, M]``.
Element-wise ``iou_elementwise(a [..., 4], b [..., 4], kind)`` returns ``[...]`` for aligned pairs: it is
what box losses use. The generalised forms follow their papers: GIoU (Rezatofighi et al. 2019), DIoU and
CIoU (Zheng et al. 2020).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-7  # guards divisions by empty areas; small enough not to move IoU of real boxes
IOU_KINDS = ("iou", "giou", "diou", "ciou")


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] area (0 for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _iou_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast a [..., 4] and b [..., 4] (xyxy) -> (iou, union)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    return inter / (union + EPS), union


def _generalised(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """IoU of the given kind for broadcastable a [..., 4], b [..., 4] xyxy -> [...]."""
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind {kind!r}; expected one of {IOU_KINDS}")
    iou, union = _iou_union(a, b)
    if kind == "iou":
        return iou
    enc_wh = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0)
    if kind == "giou":
        enc_area = enc_wh.prod(-1)
        return iou - (enc_area - union) / (enc_area + EPS)
    # DIoU: penalise the squared centre distance relative to the enclosing box's squared diagonal.
    diag2 = enc_wh.pow(2).sum(-1) + EPS
    centre_a = (a[..., :2] + a[..., 2:]) / 2
    centre_b = (b[..., :2] + b[..., 2:]) / 2
    rho2 = (centre_a - centre_b).pow(2).sum(-1)
    diou = iou - rho2 / diag2
    if kind == "diou":
        return diou
    # CIoU adds aspect-ratio consistency v with trade-off alpha (alpha treated as a constant, per the paper).
    wa, ha = (a[..., 2] - a[..., 0]), (a[..., 3] - a[..., 1])
    wb, hb = (b[..., 2] - b[..., 0]), (b[..., 3] - b[..., 1])
    v = (4 / math.pi**2) * (torch.atan(wb / (hb + EPS)) - torch.atan(wa / (ha + EPS))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + EPS))
    return diou - alpha * v


def iou_elementwise(a: Tensor, b: Tensor, kind: str = "iou") -> Tensor:
    """Aligned pairs: a [..., 4], b [..., 4] xyxy -> [...] IoU of ``kind`` (iou, giou, diou, ciou)."""
    return _generalised(a, b, kind)


def _pairwise(a: Tensor, b: Tensor, kind: str) -> Tensor:
    return _generalised(a[:, None, :], b[None, :, :], kind)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU: a [N, 4], b [M, 4] xyxy -> [N, M]."""
    return _pairwise(a, b, "iou")


def box_giou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalised IoU: a [N, 4], b [M, 4] xyxy -> [N, M] in [-1, 1]."""
    return _pairwise(a, b, "giou")


def box_diou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise distance IoU: a [N, 4], b [M, 4] xyxy -> [N, M]."""
    return _pairwise(a, b, "diou")


def box_ciou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise complete IoU: a [N, 4], b [M, 4] xyxy -> [N, M]."""
    return _pairwise(a, b, "ciou")


def wh_iou(wh_a: Tensor, wh_b: Tensor) -> Tensor:
    """Shape IoU of boxes sharing a centre: wh_a [N, 2], wh_b [M, 2] -> [N, M].

    This is the anchor-matching IoU of YOLOv3 (the paper, darknet, keras-yolo3).
    """
    inter = torch.minimum(wh_a[:, None], wh_b[None]).prod(-1)
    return inter / (wh_a.prod(-1)[:, None] + wh_b.prod(-1)[None] - inter + EPS)
