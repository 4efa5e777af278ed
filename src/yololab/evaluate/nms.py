"""Class-aware greedy non-maximum suppression in pure torch, batched over images.

Input is the decoded prediction of the model, ``[B, N, 5 + C]``: ``cx, cy, w, h`` in input pixels, the
objectness probability and the ``C`` class probabilities (all already activated). Output is one
``[K, 6]`` tensor per image: ``x1, y1, x2, y2, score, class`` (class as a float), sorted by descending
score, with ``score = objectness * class probability``.

Greedy NMS is the usual definition (darknet, torchvision ``batched_nms``): walk the candidates in
descending score order; a candidate is kept unless a kept candidate of the same class overlaps it with
IoU strictly greater than ``iou_thres``.

Candidates are visited in score order in small blocks, all images at once: a block is first compared with
the boxes kept so far (at most ``max_det``), then resolved exactly inside itself with a small IoU matrix.
This needs ``O(N * (max_det + block))`` work and no ``N x N`` IoU matrix (400 MB for 10k candidates), and
stops as soon as every image has ``max_det`` boxes, which is early when few candidates overlap (an
untrained model).

Where torchvision imports (typical GPU machines) ``backend="auto"`` hands the greedy step to
``torchvision.ops.batched_nms`` (same definition, compiled kernels); the pure-torch path stays for machines
without it. Both are tested against the same naive reference.
"""

from __future__ import annotations

import functools

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

# Candidates resolved together: each block costs a [B, K, K] and a [B, max_det, K] IoU. For 16 images x
# 10k candidates on one CPU thread, 32 and 64 were fastest, 128 ~20% and 1024 ~15x slower.
_BLOCK = 64
_BOX_DIMS = 4  # cx, cy, w, h
BACKENDS = ("auto", "torch", "torchvision")


class NmsInputError(ValueError):
    """Raised when the decoded predictions or the thresholds given to :func:`nms` are malformed."""


def nms(
    decoded: Tensor,
    conf_thres: float = DEFAULT_CONF_THRES,
    iou_thres: float = DEFAULT_IOU_THRES,
    max_det: int = DEFAULT_MAX_DET,
    multi_label: bool = False,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    backend: str = "auto",
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
        backend: ``torch`` (pure torch, any machine), ``torchvision`` (``torchvision.ops.batched_nms``) or
            ``auto`` (torchvision where it imports, else torch).

    Returns:
        ``B`` tensors ``[K, 6]`` = ``x1, y1, x2, y2, score, class`` on ``decoded``'s device and dtype,
        sorted by descending score; ``[0, 6]`` for an image without detections.
    """
    _check_inputs(decoded, conf_thres, iou_thres, max_det, max_candidates)
    per_image = [_candidates(pred, conf_thres, multi_label, max_candidates) for pred in decoded]
    if _use_torchvision(backend):
        return [_torchvision_keep(bx, sc, cl, iou_thres, max_det) for bx, sc, cl in per_image]
    boxes, scores, classes, valid = _pad(per_image, decoded)
    keep = _greedy_keep(boxes, classes, valid, iou_thres, max_det)  # [B, L]
    out = torch.cat((boxes, scores[..., None], classes[..., None].to(boxes.dtype)), dim=-1)  # [B, L, 6]
    # Candidates are sorted by score, so the kept ones come out in descending score order.
    return [out[b][keep[b]] for b in range(len(per_image))]


@functools.cache
def torchvision_ops():
    """``torchvision.ops`` where torchvision imports, else None (a CPU torch next to a CUDA-only torchvision
    build fails at import with errors other than ImportError, hence the broad catch)."""
    try:
        import torchvision.ops
    except Exception:
        return None
    return torchvision.ops


def _use_torchvision(backend: str) -> bool:
    if backend not in BACKENDS:
        raise NmsInputError(f"nms: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torchvision" and torchvision_ops() is None:
        raise NmsInputError("nms: backend 'torchvision' asked for, but torchvision does not import here")
    return backend != "torch" and torchvision_ops() is not None


def _torchvision_keep(boxes: Tensor, scores: Tensor, classes: Tensor, iou_thres: float, max_det: int) -> Tensor:
    """One image's score-sorted candidates -> ``[K, 6]`` kept by ``torchvision.ops.batched_nms``."""
    keep = torchvision_ops().batched_nms(boxes, scores, classes, iou_thres)[:max_det]
    return torch.cat((boxes[keep], scores[keep, None], classes[keep, None].to(boxes.dtype)), dim=-1)


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
    if len(score) > max_candidates:
        # Sorting only what can make the cut is much faster (untrained models pass nearly everything);
        # ">= k-th best" keeps the ties at the cut, so the stable sort below still decides them.
        top = score >= torch.topk(score, max_candidates, sorted=False).values.min()
        box_idx, cls, score = box_idx[top], cls[top], score[top]
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


def _suppresses(a: Tensor, a_cls: Tensor, b: Tensor, b_cls: Tensor, iou_thres: float) -> Tensor:
    """``a [B, P, 4]`` xyxy with classes ``[B, P]`` vs ``b [B, K, 4]``, ``[B, K]`` -> ``[B, P, K]`` bool:
    True where ``a`` would suppress ``b`` (same class, IoU > iou_thres)."""
    iou = iou_elementwise(a[:, :, None, :], b[:, None, :, :])  # [B, P, K]
    return (iou > iou_thres) & (a_cls[:, :, None] == b_cls[:, None, :])


def _greedy_keep(boxes: Tensor, classes: Tensor, valid: Tensor, iou_thres: float, max_det: int) -> Tensor:
    """Greedy NMS over score-sorted candidates of all images at once, one block of candidates at a time.

    Args:
        boxes: ``[B, L, 4]`` xyxy, each image's candidates sorted by descending score.
        classes: ``[B, L]`` class ids; only equal classes suppress each other.
        valid: ``[B, L]`` False for padding.

    Returns:
        ``[B, L]`` bool, True for kept candidates (at most ``max_det`` per image).
    """
    n_images, length = valid.shape
    keep = torch.zeros_like(valid)
    n_kept = torch.zeros(n_images, dtype=torch.long, device=valid.device)
    # Boxes kept in earlier blocks, compacted to the front: [B, <= max_det, ...].
    kept_boxes, kept_cls, kept_valid = boxes[:, :0], classes[:, :0], valid[:, :0]
    for start in range(0, length, _BLOCK):
        if bool((n_kept >= max_det).all()):
            break
        block = slice(start, start + _BLOCK)
        cand_boxes, cand_cls = boxes[:, block], classes[:, block]  # [B, K, 4], [B, K]
        alive = valid[:, block] & (n_kept < max_det)[:, None]
        if kept_boxes.shape[1]:
            by_kept = _suppresses(kept_boxes, kept_cls, cand_boxes, cand_cls, iou_thres)  # [B, P, K]
            alive &= ~(by_kept & kept_valid[..., None]).any(dim=1)
        block_keep = _resolve_block(alive, _suppresses(cand_boxes, cand_cls, cand_boxes, cand_cls, iou_thres))
        block_keep &= n_kept[:, None] + block_keep.cumsum(dim=1) <= max_det
        keep[:, block] = block_keep
        n_kept += block_keep.sum(dim=1)
        kept_boxes, kept_cls, kept_valid = _compact(
            torch.cat((kept_boxes, cand_boxes), 1),
            torch.cat((kept_cls, cand_cls), 1),
            torch.cat((kept_valid, block_keep), 1),
            width=int(n_kept.max()),
        )
    return keep


def _resolve_block(alive: Tensor, suppress: Tensor) -> Tensor:
    """Exact greedy NMS inside one score-sorted block, without a Python loop over its boxes.

    Args:
        alive: ``[B, K]`` candidates not suppressed by earlier blocks.
        suppress: ``[B, K, K]`` True where candidate i would suppress candidate j.

    Greedy NMS is the recursion ``keep[j] = alive[j] and no i < j with keep[i] and suppress[i, j]``.
    Iterating that rule on the whole block (Cluster-NMS, Zheng et al. 2021) fixes at least one more
    leading entry per pass, so it reaches the unique solution in at most K passes (a few in practice).
    """
    suppress = suppress.triu(diagonal=1)  # only higher-scoring (earlier) boxes suppress
    keep = alive
    while True:
        updated = alive & ~(suppress & keep[:, :, None]).any(dim=1)
        if torch.equal(updated, keep):
            return keep
        keep = updated


def _compact(boxes: Tensor, classes: Tensor, valid: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Move each image's valid entries to the front (order kept) and cut to ``width`` columns."""
    order = torch.sort(valid.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
    return (
        boxes.gather(1, order[..., None].expand(-1, -1, boxes.shape[-1])),
        classes.gather(1, order),
        valid.gather(1, order),
    )
