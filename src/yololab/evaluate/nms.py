"""Class-aware greedy non-maximum suppression in pure torch, batched over images.

Input is the decoded prediction of the model, ``[B, N, 5 + C]``: ``cx, cy, w, h`` in input pixels, the
objectness probability and the ``C`` class probabilities (all already activated). Output is one
``[K, 6]`` tensor per image: ``x1, y1, x2, y2, score, class`` (class as a float), sorted by descending
score, with ``score = objectness * class probability``.

Greedy NMS is the usual definition (darknet, torchvision ``batched_nms``): walk the candidates in
descending score order; a candidate is kept unless a kept candidate of the same class overlaps it with
IoU strictly greater than ``iou_thres``.

The suppression loop runs once per *kept* box, for all images at once, and compares the kept box with
the remaining candidates of its image: ``O(max_det * N)`` work and ``O(N)`` memory per image, instead of
the ``N x N`` IoU matrix (400 MB for 10k candidates) that a matrix formulation needs. Since candidates are
visited in score order, the loop stops after ``max_det`` kept boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from yololab.boxes import box_cxcywh_to_xyxy, iou_elementwise

# Defaults of the YOLOv3 evaluation scripts (ultralytics/yolov3 test.py, darknet's map): a very low
# confidence threshold so the PR curve reaches high recall, IoU 0.6 and 300 detections per image.
DEFAULT_CONF_THRES = 0.001
DEFAULT_IOU_THRES = 0.6
DEFAULT_MAX_DET = 300
# Candidates kept per image before NMS (ultralytics' max_nms): bounds the work on untrained models
# where almost every prediction passes the confidence threshold.
DEFAULT_MAX_CANDIDATES = 30000

_BOX_DIMS = 4  # cx, cy, w, h
_OUT_COLUMNS = 6  # x1, y1, x2, y2, score, class


class NmsInputError(ValueError):
    """Raised when the decoded predictions or the thresholds given to :func:`nms` are malformed."""


def nms(
    decoded: Tensor,
    conf_thres: float = DEFAULT_CONF_THRES,
    iou_thres: float = DEFAULT_IOU_THRES,
    max_det: int = DEFAULT_MAX_DET,
    multi_label: bool = False,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> list[Tensor]:
    """Filter by score and suppress overlaps, per image and per class.

    Args:
        decoded: ``[B, N, 5 + C]`` = ``cx, cy, w, h`` (input pixels), objectness prob, class probs.
        conf_thres: a (box, class) candidate needs ``objectness * class prob > conf_thres``.
        iou_thres: a kept box suppresses same-class candidates with ``IoU > iou_thres``.
        max_det: at most this many detections per image (the highest scoring after NMS).
        multi_label: if True every (box, class) pair above ``conf_thres`` is a candidate, so one box
            can be detected as several classes; if False only the best class of each box is.
        max_candidates: at most this many candidates per image (the highest scoring) enter NMS.

    Returns:
        ``B`` tensors ``[K, 6]`` = ``x1, y1, x2, y2, score, class`` on ``decoded``'s device and dtype,
        sorted by descending score; ``[0, 6]`` for an image without detections.
    """
    _check_inputs(decoded, conf_thres, iou_thres, max_det, max_candidates)
    per_image = [_candidates(pred, conf_thres, multi_label, max_candidates) for pred in decoded]
    boxes, scores, classes, valid = _pad(per_image, decoded)
    keep = _greedy_keep(boxes, classes, valid, iou_thres, max_det)  # [B, L]
    out = torch.cat((boxes, scores[..., None], classes[..., None].to(boxes.dtype)), dim=-1)  # [B, L, 6]
    # Candidates are sorted by score, so the kept ones come out in descending score order.
    return [out[b][keep[b]] for b in range(len(per_image))]


def _check_inputs(decoded: Tensor, conf_thres: float, iou_thres: float, max_det: int, max_cand: int) -> None:
    if decoded.dim() != 3 or decoded.shape[-1] < _BOX_DIMS + 2:
        raise NmsInputError(
            f"nms: decoded predictions must be [B, N, 5 + C] with C >= 1, got shape {tuple(decoded.shape)}"
        )
    if not 0.0 <= conf_thres < 1.0:
        raise NmsInputError(f"nms: conf_thres must be in [0, 1), got {conf_thres}")
    if not 0.0 <= iou_thres <= 1.0:
        raise NmsInputError(f"nms: iou_thres must be in [0, 1], got {iou_thres}")
    if max_det < 1 or max_cand < 1:
        raise NmsInputError(f"nms: max_det and max_candidates must be >= 1, got {max_det}, {max_cand}")


def _candidates(
    pred: Tensor, conf_thres: float, multi_label: bool, max_candidates: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One image ``[N, 5 + C]`` -> candidates sorted by descending score.

    Returns ``(boxes [L, 4] xyxy, scores [L], classes [L] long)``.
    """
    scores = pred[:, _BOX_DIMS : _BOX_DIMS + 1] * pred[:, _BOX_DIMS + 1 :]  # [N, C]
    if multi_label:
        box_idx, cls = (scores > conf_thres).nonzero(as_tuple=True)
        score = scores[box_idx, cls]
    else:
        score, cls = scores.max(dim=1)
        box_idx = (score > conf_thres).nonzero(as_tuple=True)[0]
        score, cls = score[box_idx], cls[box_idx]
    # Stable sort: equal scores keep their input order, so results do not depend on the sort backend.
    order = torch.sort(score, descending=True, stable=True).indices[:max_candidates]
    boxes = box_cxcywh_to_xyxy(pred[box_idx[order], :_BOX_DIMS])
    return boxes, score[order], cls[order]


def _pad(
    per_image: list[tuple[Tensor, Tensor, Tensor]], like: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stack ragged candidates into ``boxes [B, L, 4], scores [B, L], classes [B, L], valid [B, L]``."""
    n_images = len(per_image)
    length = max((len(s) for _, s, _ in per_image), default=0)
    boxes = like.new_zeros((n_images, length, _BOX_DIMS))
    scores = like.new_zeros((n_images, length))
    classes = torch.zeros((n_images, length), dtype=torch.long, device=like.device)
    valid = torch.zeros((n_images, length), dtype=torch.bool, device=like.device)
    for b, (bx, sc, cl) in enumerate(per_image):
        n = len(sc)
        boxes[b, :n], scores[b, :n], classes[b, :n], valid[b, :n] = bx, sc, cl, True
    return boxes, scores, classes, valid


def _greedy_keep(boxes: Tensor, classes: Tensor, valid: Tensor, iou_thres: float, max_det: int) -> Tensor:
    """Greedy NMS over score-sorted candidates of all images at once.

    Args:
        boxes: ``[B, L, 4]`` xyxy, each image's candidates sorted by descending score.
        classes: ``[B, L]`` class ids; only equal classes suppress each other.
        valid: ``[B, L]`` False for padding.

    Returns:
        ``[B, L]`` bool, True for kept candidates (at most ``max_det`` per image).
    """
    n_images = boxes.shape[0]
    rows = torch.arange(n_images, device=boxes.device)
    alive = valid.clone()  # neither kept nor suppressed yet
    keep = torch.zeros_like(valid)
    for _ in range(max_det):
        if not bool(alive.any()):
            break
        # The first alive candidate is the best remaining one: argmax returns the first maximal index.
        best = alive.to(torch.uint8).argmax(dim=1)  # [B]
        has_best = alive[rows, best]  # [B]; False for images already done
        keep[rows, best] |= has_best
        iou = iou_elementwise(boxes[rows, best][:, None, :], boxes)  # [B, L]
        same_class = classes == classes[rows, best][:, None]
        alive &= ~((iou > iou_thres) & same_class)
        # A degenerate (zero-area) box has IoU 0 with itself, so retire it explicitly.
        alive[rows, best] = False
    return keep
