"""Anchors: k-means with the 1 - IoU distance, and how well a set of anchors fits a dataset.

Box sizes are ``wh [N, 2]`` (width, height) in network-input pixels, i.e. after the letterbox resize
(``collect_box_sizes``). Anchors are either one flat ``[K, 2]`` set or, as the model holds them, one
``[A, 2]`` set per ``[yolo]`` layer in cfg order. Distances between shapes use the shape IoU of boxes
sharing a centre (``yololab.boxes.wh_iou``), the anchor-matching IoU of YOLOv3.

``kmeans_anchors`` follows the YOLOv2 paper (distance 1 - IoU) with k-means++ seeding and the median
update of the widely used kmeans-anchor-boxes script (lars76); ``group_per_scale`` hands the sorted
anchors to the heads (largest anchors to the coarsest head); ``anchor_fit`` reports what an anchor set
does to a dataset: the best IoU each truth can get, the best possible recall under the IoU rule and
under ultralytics' size-ratio rule, which anchors and scales would receive the truths, and how far the
anchors of one scale are spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from yololab.boxes import wh_iou
from yololab.data.errors import DataError
from yololab.data.letterbox import letterbox_info
from yololab.data.yolo_format import BoxPolicy, DataSpec, check_image, label_path, load_data_yaml, read_label_file
from yololab.loss.config import LossConfig

MAX_ITER = 300  # k-means iterations; the assignment usually stops changing within a few dozen
# A truth counts as recallable under the IoU rule when its best shape IoU exceeds 0.5: the usual "good
# match" IoU (PASCAL VOC's detection threshold, darknet's default ignore_thresh).
BPR_IOU = 0.5
# ultralytics' anchor_t (hyp.scratch.yaml, 4.0): a truth may use an anchor when neither side differs from
# the anchor's by more than this factor. The loss's ratio rule and this fit share one default.
DEFAULT_ANCHOR_T = LossConfig.model_fields["anchor_t"].default
KMEANS_SUMMARY = ("mean_best_iou", "bpr_iou50", "bpr_ratio")  # what anchor_fit_report keeps of the k-means fit
KMEANS_SEED = 0  # anchor_fit_report's k-means seed (autoanchor takes the run's train.seed)
# Autoanchor's anchors are rounded to 0.01 input pixels, far below any box's size, so that config.yaml and the
# cfg text hold them as short decimals and the model built from either has the very anchors that were fitted.
ANCHOR_DECIMALS = 2
PLOT_MAX_POINTS = 20_000  # boxes drawn in the scatter plot; a seeded sample above this
PLOT_SEED = 0


class AnchorError(ValueError):
    """Box sizes or anchors that cannot be used (too few distinct boxes, non-positive sizes …)."""


# --------------------------------------------------------------------------------------------- inputs


def _as_wh(values, what: str = "box sizes") -> Tensor:
    """Validated float64 ``[N, 2]`` (w, h) on the CPU; AnchorError naming the first bad row."""
    if isinstance(values, Tensor):
        wh = values.detach().to("cpu", torch.float64)
    else:
        wh = torch.from_numpy(np.asarray(values, dtype=np.float64))
    if wh.numel() == 0:
        return wh.reshape(0, 2)
    if wh.dim() != 2 or wh.shape[1] != 2:
        raise AnchorError(f"{what} must be [N, 2] (w, h), got shape {list(wh.shape)}")
    bad = ~(torch.isfinite(wh).all(1) & (wh > 0).all(1))
    if bad.any():
        row = int(bad.nonzero()[0])
        raise AnchorError(f"{what}: {int(bad.sum())} rows are not positive finite (w, h); first is row "
                          f"{row}: {wh[row].tolist()}")
    return wh


def _is_per_scale(anchors) -> bool:
    if isinstance(anchors, (Tensor, np.ndarray)):
        return anchors.ndim == 3
    return isinstance(anchors, Sequence) and len(anchors) > 0 and np.ndim(anchors[0]) == 2


def _scales(anchors) -> list[Tensor]:
    """Anchors as a list of float64 [A, 2] sets: per scale as given, or one set for a flat [K, 2]."""
    if _is_per_scale(anchors):
        sets = [_as_wh(a, f"anchors of scale {i}") for i, a in enumerate(anchors)]
    else:
        sets = [_as_wh(anchors, "anchors")]
    if any(len(s) == 0 for s in sets):
        raise AnchorError("every anchor set needs at least one (w, h) anchor")
    return sets


def _areas(wh: Tensor) -> Tensor:
    return wh[:, 0] * wh[:, 1]


# --------------------------------------------------------------------------------------------- k-means


def kmeans_anchors(wh, n: int, seed: int = 0, max_iter: int = MAX_ITER) -> Tensor:
    """``n`` anchors for box sizes ``wh [N, 2]`` (pixels) by k-means with the 1 - IoU distance.

    Steps: (1) k-means++ seeding, each next centre drawn with probability proportional to the squared
    distance to the nearest chosen one (a ``torch.Generator`` seeded with ``seed``, so the result is
    deterministic); (2) assign each box to the centre of highest shape IoU; (3) an empty cluster is
    re-seeded with the box farthest from its centre, until none is empty; (4) move each centre to the
    per-coordinate MEDIAN of its boxes; repeat from (2) until the assignment stops changing or
    ``max_iter``. The median (lars76/kmeans-anchor-boxes; darknet's calc_anchors takes the mean) keeps a
    few huge or tiny boxes from dragging a centre away from where most of its boxes are.

    Returns float32 ``[n, 2]`` (w, h) sorted by area, smallest first. Raises AnchorError for
    non-positive or non-finite sizes and when there are fewer distinct sizes than ``n``.
    """
    boxes = _as_wh(wh)
    if n < 1 or max_iter < 1:
        raise AnchorError(f"the number of anchors and max_iter must be >= 1, got {n} and {max_iter}")
    distinct = _count_distinct(boxes, n)
    if distinct < n:
        raise AnchorError(f"k-means needs at least {n} distinct box sizes for {n} anchors, got {distinct} "
                          f"(from {len(boxes)} boxes)")
    generator = torch.Generator().manual_seed(seed)
    centres = _kmeanspp_init(boxes, n, generator)
    assign = None
    for _ in range(max_iter):
        centres, new_assign = _assign(boxes, centres)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        centres = _medians(boxes, assign, n)
    centres = _medians(boxes, assign, n)
    return centres[_areas(centres).argsort()].float()


def _count_distinct(boxes: Tensor, limit: int) -> int:
    """Number of distinct rows of ``boxes``, counted up to ``limit`` (n passes, no sort of all rows)."""
    left = torch.ones(len(boxes), dtype=torch.bool)
    for count in range(limit):
        rows = left.nonzero()
        if len(rows) == 0:
            return count
        left &= (boxes != boxes[rows[0, 0]]).any(1)
    return limit


def _kmeanspp_init(boxes: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) with d = 1 - IoU: n distinct boxes -> [n, 2]."""
    index = int(torch.randint(len(boxes), (1,), generator=generator))
    chosen = [index]
    best_iou = torch.zeros(len(boxes), dtype=boxes.dtype)  # IoU with the nearest chosen centre
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    for _ in range(n - 1):
        best_iou = torch.maximum(best_iou, wh_iou(boxes, boxes[index][None])[:, 0])
        # Copies of a chosen box get weight 0 exactly (wh_iou's epsilon would leave them a tiny one).
        taken |= (boxes == boxes[index]).all(1)
        weights = (1 - best_iou).clamp(min=0).pow(2).masked_fill(taken, 0)
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
    return boxes[chosen].clone()


def _assign(boxes: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Assign boxes to the centre of highest IoU, re-seeding empty clusters -> (centres, assign [N]).

    A re-seeded centre is a box that equals no centre, so it keeps that box and never empties again;
    each pass fills one cluster for good, hence at most n passes.
    """
    n = len(centres)
    centres = centres.clone()
    for _ in range(n + 1):
        iou = wh_iou(boxes, centres)  # [N, n]
        assign = iou.argmax(1)
        empty = (torch.bincount(assign, minlength=n) == 0).nonzero()
        if len(empty) == 0:
            return centres, assign
        farthest = int(iou.amax(1).argmin())
        centres[int(empty[0])] = boxes[farthest]
    raise RuntimeError("k-means could not fill its empty clusters")  # unreachable with n distinct boxes


def _medians(boxes: Tensor, assign: Tensor, n: int) -> Tensor:
    """Per-cluster median (w, h) -> [n, 2] (numpy's median: the mean of the two middle values)."""
    values, labels = boxes.numpy(), assign.numpy()
    return torch.from_numpy(np.stack([np.median(values[labels == k], axis=0) for k in range(n)]))


# --------------------------------------------------------------------------------------------- scales


def group_per_scale(anchors, n_scales: int, strides: Sequence[int] | None = None) -> list[Tensor]:
    """Split ``anchors [n, 2]`` into ``n_scales`` sets of ``n / n_scales`` by area, in cfg order.

    The smallest anchors go to the finest head (smallest stride). Without ``strides`` the order is that
    of darknet's yolov3 cfgs (yolov3, -spp, -tiny, -tiny_3l): the first [yolo] is the coarsest head, so
    the largest anchors come first (masks 6,7,8 / 3,4,5 / 0,1,2). With ``strides`` (one per [yolo] in
    cfg order, e.g. ``model.strides``) the set of each head follows its stride rank, which also fits
    cfgs whose first head is the finest. ``Darknet.from_cfg(cfg, anchors=...)`` takes the result as is.

    Returns a list of float32 ``[n / n_scales, 2]`` tensors, each sorted by area.
    """
    wh = _as_wh(anchors, "anchors")
    if n_scales < 1 or len(wh) % n_scales or len(wh) == 0:
        raise AnchorError(f"{len(wh)} anchors cannot be split evenly over {n_scales} scales")
    groups = wh[_areas(wh).argsort()].reshape(n_scales, -1, 2).float()  # ascending area
    if strides is None:
        return [g.clone() for g in groups.flip(0)]
    if len(strides) != n_scales:
        raise AnchorError(f"{len(strides)} strides given for {n_scales} scales")
    rank = torch.as_tensor(list(strides)).argsort(stable=True).argsort()  # 0 = finest head
    return [groups[int(r)].clone() for r in rank]


# --------------------------------------------------------------------------------------------- fit


def anchor_fit(wh, anchors, strides: Sequence[int] | None = None,
               anchor_t: float = DEFAULT_ANCHOR_T) -> dict:
    """How well ``anchors`` fit the box sizes ``wh [N, 2]`` (input pixels); JSON-serialisable dict.

    ``anchors``: a flat ``[K, 2]`` set, or one ``[A, 2]`` set per scale (cfg order, as ``model.anchors``)
    which adds the per-scale keys. ``strides``: per scale, optional, adds each anchor's side in cells.

    Keys: ``n_truths``, ``n_anchors``, ``anchor_t``, ``anchors`` (flat, in the given order),
    ``mean_best_iou`` (mean over truths of the best shape IoU with any anchor), ``bpr_iou50`` (share of
    truths whose best shape IoU > 0.5), ``bpr_ratio`` (share with some anchor whose sides are within a
    factor ``anchor_t``: ultralytics' best possible recall), ``anchors_per_truth_ratio`` (mean number of
    such anchors: the positives per truth of the ratio rule), ``share_per_anchor`` (share of truths whose
    best-IoU anchor is each anchor: what the best-anchor rule hands each anchor).
    Per scale: ``share_per_scale`` (the same summed over the scale), ``ratio_share_per_scale`` (share of
    truths the ratio rule gives the scale), ``spread_per_scale`` (``area_ratio`` = largest / smallest
    anchor area, ``aspect_ratio`` = largest / smallest w/h), ``mean_best_iou_per_scale`` (over the truths
    the scale receives; None if none), and with strides ``strides`` and ``anchor_cells_per_scale`` (each
    anchor's sqrt(w h) / stride). Raises AnchorError for no boxes or bad sizes.
    """
    boxes = _as_wh(wh)
    if len(boxes) == 0:
        raise AnchorError("no boxes to fit anchors to")
    sets = _scales(anchors)
    flat = torch.cat(sets)
    best_iou, best = wh_iou(boxes, flat).max(1)  # [N]
    ratio = boxes[:, None, :] / flat[None]  # [N, K, 2]
    within = torch.maximum(ratio, 1 / ratio).amax(-1) < anchor_t  # [N, K]
    share = torch.bincount(best, minlength=len(flat)).double() / len(boxes)
    fit = {
        "n_truths": len(boxes),
        "n_anchors": len(flat),
        "anchor_t": float(anchor_t),
        "anchors": flat.tolist(),
        "mean_best_iou": best_iou.mean().item(),
        "bpr_iou50": (best_iou > BPR_IOU).double().mean().item(),
        "bpr_ratio": within.any(1).double().mean().item(),
        "anchors_per_truth_ratio": within.sum(1).double().mean().item(),
        "share_per_anchor": share.tolist(),
    }
    if _is_per_scale(anchors):
        fit.update(_per_scale_fit(sets, best, best_iou, within, share, strides))
    return fit


def _per_scale_fit(sets: list[Tensor], best: Tensor, best_iou: Tensor, within: Tensor, share: Tensor,
                   strides: Sequence[int] | None) -> dict:
    """The per-scale keys of ``anchor_fit``; ``best`` / ``within`` index the concatenated anchors."""
    scale_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(sets)])  # [K]
    best_scale = scale_of[best]  # [N]
    out: dict = {"share_per_scale": [], "ratio_share_per_scale": [], "spread_per_scale": [],
                 "mean_best_iou_per_scale": []}
    for i, anchors in enumerate(sets):
        aspect = anchors[:, 0] / anchors[:, 1]
        mine = best_scale == i
        out["share_per_scale"].append(share[scale_of == i].sum().item())
        out["ratio_share_per_scale"].append(within[:, scale_of == i].any(1).double().mean().item())
        out["spread_per_scale"].append({
            "area_ratio": (_areas(anchors).max() / _areas(anchors).min()).item(),
            "aspect_ratio": (aspect.max() / aspect.min()).item(),
        })
        out["mean_best_iou_per_scale"].append(best_iou[mine].mean().item() if mine.any() else None)
    if strides is not None:
        if len(strides) != len(sets):
            raise AnchorError(f"{len(strides)} strides given for {len(sets)} anchor sets")
        out["strides"] = [int(s) for s in strides]
        out["anchor_cells_per_scale"] = [(_areas(a).sqrt() / stride).tolist()
                                         for a, stride in zip(sets, strides, strict=True)]
    return out


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class BoxSet:
    """The boxes of a split: ``wh [N, 2]`` float32 sizes in network-input pixels (after the letterbox),
    ``classes [N]`` int64 class indices, ``n_images`` the images of the split (background images included)."""

    wh: Tensor
    classes: Tensor
    n_images: int


def collect_boxes(spec_or_data_yaml, split: str = "train", img_size: int = 416,
                  boxes_outside: BoxPolicy = "refuse") -> BoxSet:
    """The boxes of a split, their sizes in network-input pixels after the letterbox to ``img_size``.

    A box of normalised width ``w`` in an ``H x W`` image is ``w * W * scale`` pixels wide with
    ``scale = img_size / max(H, W)`` (the letterbox's scale), its height alike. Images are read for
    their size only (header, and only for images with boxes). Raises DataError for a missing split, an
    unreadable image or a bad label line (``boxes_outside``: refuse or clip boxes partly outside the image).
    """
    spec = spec_or_data_yaml if isinstance(spec_or_data_yaml, DataSpec) else load_data_yaml(spec_or_data_yaml)
    if split not in spec.splits:
        raise DataError(spec.yaml_path, None, f"no {split!r} split (has {', '.join(spec.splits)})")
    sizes, classes = [], []
    for image in spec.splits[split]:
        labels = read_label_file(label_path(image), spec.num_classes, boxes_outside)  # [M, 5] class cx cy w h
        if not len(labels):
            continue
        size, problem = check_image(image, full_decode=False)
        if problem is not None:
            raise problem
        scale = letterbox_info(size, (img_size, img_size)).scale
        h, w = size
        sizes.append(labels[:, 3:5].astype(np.float64) * np.array([w, h]) * scale)
        classes.append(labels[:, 0].astype(np.int64))
    n_images = len(spec.splits[split])
    if not sizes:
        return BoxSet(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), n_images)
    return BoxSet(torch.from_numpy(np.concatenate(sizes)).float(), torch.from_numpy(np.concatenate(classes)), n_images)


def collect_box_sizes(spec_or_data_yaml, split: str = "train", img_size: int = 416,
                      boxes_outside: BoxPolicy = "refuse") -> Tensor:
    """Box sizes of a split in network-input pixels after the letterbox to ``img_size``: float32 [N, 2]
    (``collect_boxes(...).wh``)."""
    return collect_boxes(spec_or_data_yaml, split, img_size, boxes_outside).wh


def anchor_fit_report(data_yaml, anchors_per_scale, strides: Sequence[int], img_size: int,
                      anchor_t: float = DEFAULT_ANCHOR_T, boxes_outside: BoxPolicy = "refuse") -> dict:
    """``anchor_fit`` of the configured anchors on the train split (what training logs at start).

    Adds ``data`` (the yaml path), ``split``, ``img_size`` and ``kmeans``: the overall fit of as many anchors
    found by ``kmeans_anchors`` (seed 0), what re-fitting could reach. Raises AnchorError when the split has
    no boxes and DataError for bad files.
    """
    wh = collect_box_sizes(data_yaml, "train", img_size, boxes_outside)
    anchors = [torch.as_tensor(a) for a in anchors_per_scale]
    fit = anchor_fit(wh, anchors, strides, anchor_t)
    proposed = anchor_fit(wh, kmeans_anchors(wh, sum(len(a) for a in anchors), KMEANS_SEED), anchor_t=anchor_t)
    kmeans = {key: proposed[key] for key in KMEANS_SUMMARY}
    return {"data": str(data_yaml), "split": "train", "img_size": int(img_size), **fit, "kmeans": kmeans}


# --------------------------------------------------------------------------------------------- autoanchor

# Why autoanchor kept or replaced the anchors (anchor_fit.json "autoanchor" / "reason").
FITS = "fits"  # both best possible recalls at or above their thresholds: nothing to do
APPLIED = "applied"  # k-means anchors fit better and replace the configured ones
NOT_BETTER = "kmeans_not_better"  # under the threshold, but k-means anchors do not fit better
PINNED = "pinned"  # under the threshold, k-means fits better, but model.anchors were given
OFF = "off"  # under the threshold, k-means fits better, but model.autoanchor is false
NO_KMEANS = "kmeans_failed"  # under the threshold and k-means could not run (too few distinct boxes ...)
FIT_SUMMARY = ("bpr_ratio", "bpr_iou50", "mean_best_iou")  # what the autoanchor record keeps of each fit


@dataclass
class AutoAnchor:
    """What ``autoanchor`` decided. ``anchors``: per scale (cfg order) the ``[A, 2]`` pixel anchors to train
    with; ``fit``: ``anchor_fit`` of those; ``configured`` / ``fitted``: the fits of the configured and the
    k-means anchors (``fitted`` None when k-means could not run, ``kmeans_error`` then says why)."""

    anchors: list[Tensor]
    applied: bool
    reason: str
    configured: dict
    fitted: dict | None
    threshold: float
    enabled: bool
    pinned: bool
    seed: int
    kmeans_error: str | None = None
    iou_threshold: float = 0.0

    @property
    def fit(self) -> dict:
        return self.fitted if self.applied else self.configured

    def record(self) -> dict:
        """The ``autoanchor`` entry of anchor_fit.json: settings, decision, and both anchor sets per scale with
        their best possible recall and mean best IoU."""
        def summary(fit: dict | None) -> dict | None:
            if fit is None:
                return None
            return {"anchors": fit["anchors_per_scale"], **{key: fit[key] for key in FIT_SUMMARY}}

        return {"enabled": self.enabled, "pinned": self.pinned, "threshold": self.threshold,
                "iou_threshold": self.iou_threshold, "seed": self.seed,
                "applied": self.applied, "reason": self.reason, "configured": summary(self.configured),
                "fitted": summary(self.fitted), "kmeans_error": self.kmeans_error}


def fits_better(new: dict, old: dict) -> bool:
    """``new`` fits better than ``old`` (two ``anchor_fit`` dicts): a higher best possible recall under the
    ratio rule, or the same one and a higher mean best IoU."""
    return (new["bpr_ratio"], new["mean_best_iou"]) > (old["bpr_ratio"], old["mean_best_iou"])


def autoanchor(wh, anchors_per_scale, strides: Sequence[int], anchor_t: float, threshold: float, *,
               iou_threshold: float = 0.0, enabled: bool = True, pinned: bool = False, seed: int = 0) -> AutoAnchor:
    """Keep or replace the configured anchors, as ultralytics' check_anchors does at train start.

    ``wh [N, 2]`` box sizes (input pixels), ``anchors_per_scale`` one ``[A, 2]`` set per [yolo] in cfg order,
    ``strides`` per [yolo], ``threshold`` ``model.autoanchor_bpr`` (ultralytics: 0.98). Steps: (1) the best
    possible recall of the configured anchors under the size-ratio rule (``anchor_fit``'s ``bpr_ratio`` with
    ``anchor_t``) and the share of boxes whose best anchor has shape IoU > 0.5 (``bpr_iou50``); (2) k-means
    anchors (``kmeans_anchors``, as many as configured, ``seed``), split over the scales by area
    (``group_per_scale`` with ``strides``) and rounded to ``ANCHOR_DECIMALS``; (3) they replace the configured
    ones only when the first recall is under ``threshold`` or the second under ``iou_threshold``
    (``model.autoanchor_bpr_iou50``; 0 = ultralytics' ratio rule alone), they fit better (``fits_better``), the
    anchors are not ``pinned`` (given explicitly) and autoanchor is ``enabled``. k-means runs in every case, so
    that the record shows what re-fitting would reach. Raises AnchorError for no boxes.
    """
    sets = [torch.as_tensor(a, dtype=torch.float32).reshape(-1, 2) for a in anchors_per_scale]
    configured = _fit_per_scale(wh, sets, strides, anchor_t)
    fitted_sets, fitted, error = None, None, None
    try:
        if len({len(a) for a in sets}) > 1:
            raise AnchorError(f"the [yolo] layers hold different anchor counts ({[len(a) for a in sets]}): "
                              "k-means anchors are split evenly over the scales")
        fitted_sets = [a.double().round(decimals=ANCHOR_DECIMALS) for a in
                       group_per_scale(kmeans_anchors(wh, sum(len(a) for a in sets), seed), len(sets), strides)]
        fitted = _fit_per_scale(wh, fitted_sets, strides, anchor_t)
    except AnchorError as err:
        error = str(err)
    if configured["bpr_ratio"] >= threshold and configured["bpr_iou50"] >= iou_threshold:
        reason = FITS
    elif fitted is None:
        reason = NO_KMEANS
    elif not fits_better(fitted, configured):
        reason = NOT_BETTER
    else:
        reason = PINNED if pinned else OFF if not enabled else APPLIED
    applied = reason == APPLIED
    return AutoAnchor(fitted_sets if applied else sets, applied, reason, configured, fitted, float(threshold),
                      enabled, pinned, seed, error, float(iou_threshold))


def _fit_per_scale(wh, sets: list[Tensor], strides: Sequence[int], anchor_t: float) -> dict:
    """``anchor_fit`` with ``anchors_per_scale`` (the anchors as per-scale lists) added."""
    return {**anchor_fit(wh, sets, strides, anchor_t), "anchors_per_scale": [a.tolist() for a in sets]}


# --------------------------------------------------------------------------------------------- plot


def plot_anchor_fit(wh, anchors_current, anchors_proposed, path: str | Path) -> Path:
    """Scatter of box w/h (log axes) with both anchor sets marked; saved as PNG at ``path``.

    Either anchor set may be None, flat ``[K, 2]`` or per scale. Above ``PLOT_MAX_POINTS`` boxes a
    seeded random sample is drawn.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    boxes = _as_wh(wh).numpy()
    if len(boxes) > PLOT_MAX_POINTS:
        boxes = boxes[np.random.default_rng(PLOT_SEED).choice(len(boxes), PLOT_MAX_POINTS, replace=False)]
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot()
    ax.scatter(boxes[:, 0], boxes[:, 1], s=4, alpha=0.3, color="tab:gray", label=f"boxes ({len(wh)})")
    for anchors, style, label in ((anchors_current, dict(marker="x", color="tab:red"), "current"),
                                  (anchors_proposed, dict(marker="+", color="tab:blue"), "proposed")):
        if anchors is None:
            continue
        flat = torch.cat(_scales(anchors)).numpy()
        ax.scatter(flat[:, 0], flat[:, 1], s=120, linewidths=2, label=f"{label} anchors", **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width (input pixels)")
    ax.set_ylabel("height (input pixels)")
    ax.set_title("Box sizes and anchors")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path
