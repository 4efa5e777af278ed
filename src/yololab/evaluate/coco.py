"""COCO box mAP with pycocotools, on in-memory COCO dicts.

Nothing here computes AP by hand: the detections and truths are turned into the COCO json structures,
evaluated by ``pycocotools.cocoeval.COCOeval`` (iouType ``bbox``) and read back from its ``eval`` arrays.

Conventions:

- ``dets``: one array per image, ``[K, 6]`` = ``x1, y1, x2, y2, score, class`` in pixels (what
  :func:`yololab.evaluate.nms` returns). ``truths``: one array per image, ``[M, 5]`` =
  ``class, x1, y1, x2, y2`` in pixels. Tensors (any device) or numpy arrays.
- Annotation ids start at 1: pycocotools stores the id of the matched box and reads 0 as "no match".
  Image ``i`` and class ``c`` become COCO ids ``i + 1`` and ``c + 1`` in the same 1-based habit.
- ``mAP50`` / ``mAP50_95`` are COCO's AP@[.5] and AP@[.5:.95] (101-point interpolated, area "all",
  at most ``max_dets`` detections per image *and class*, as in COCOeval), averaged over the classes
  that have at least one truth.
- ``per_class`` lists every class ``0 .. num_classes - 1``; a class without truths has NaN APs (AP is
  undefined without anything to recall) and ``n_truths`` 0. A class with truths but no detections has
  AP 0.
- No truths at all: ``mAP50`` and ``mAP50_95`` are NaN (undefined, as for a class without truths).
- No detections at all (and some truths): every AP is 0.0.

AP by object size (``by_size`` and ``by_bin``), computed by COCOeval itself from ``params.areaRng``:

- ``by_size`` holds COCO's area ranges as pycocotools defines them (``Params.areaRngLbl`` / ``areaRng``):
  ``small`` (area <= 32**2), ``medium`` (32**2 .. 96**2), ``large`` (>= 96**2). The area of a box is ``w * h``
  in the pixels of the boxes given; yololab passes boxes in network-input pixels after letterbox, so "small"
  means small *as the network sees it* (COCO's own areas are in original-image pixels: the two agree only
  when images are not resized).
- ``by_bin`` holds the caller's ``area_ranges`` (a dataset's size bins, ``yololab.data.size_bins``), in the
  same pixels, with AP@0.5 only (``mAP50``, the project's headline metric): they are evaluated by a second
  COCOeval on the same detections whose ``areaRng`` is the bins and whose ``iouThrs`` is ``[0.5]`` alone,
  which gives the same AP@0.5 as a run over all ten thresholds at a tenth of its matching work.
- Ranges are closed at both ends, as COCOeval treats them: a box whose area lies on a boundary counts in
  both ranges; a truth outside a range is ignored there, as is an unmatched detection outside it.
- Each range has ``mAP50`` (``by_size`` also ``mAP50_95``), the mean over the classes with a truth in the
  range, ``n_truths`` (truths in the range) and ``area`` ``[lo, hi]``. A range without truths has NaN APs (key
  present, value NaN: AP is undefined without anything to recall, as for a class without truths).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from yololab import keys

# COCO's standard cap on detections per image (the third entry of COCOeval's maxDets [1, 10, 100]).
DEFAULT_MAX_DETS = 100

_DET_COLUMNS = 6  # x1, y1, x2, y2, score, class
_TRUTH_COLUMNS = 5  # class, x1, y1, x2, y2
_DET_XYXY = slice(0, 4)
_TRUTH_XYXY = slice(1, 5)
_AREA_ALL = "all"  # label of COCO's whole area range in COCOeval.params.areaRngLbl
_IOU50 = 0  # index of IoU 0.5 in COCOeval.params.iouThrs (0.5, 0.55, ..., 0.95)
_BIN_IOU_THRESHOLDS = [0.5]  # the size bins are evaluated at AP@0.5 alone (see the module docstring)
_MISSING = -1  # COCOeval's marker in eval["precision"] for "no truths of this class"


class EvaluationInputError(ValueError):
    """Raised when detections or truths given to :func:`coco_map` are malformed."""


def coco_map(
    dets: Sequence[Any],
    truths: Sequence[Any],
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    max_dets: int = DEFAULT_MAX_DETS,
    area_ranges: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """COCO mAP of detections against truths.

    Args:
        dets: per image ``[K, 6]`` = ``x1, y1, x2, y2, score, class`` (pixels).
        truths: per image ``[M, 5]`` = ``class, x1, y1, x2, y2`` (pixels).
        num_classes: number of classes; default ``len(names)``, else the largest class id seen + 1.
        names: class names, used as the keys of ``per_class`` (class ids otherwise).
        image_sizes: per image ``(height, width)`` written into the COCO images (not needed for boxes).
        max_dets: COCOeval's detections cap per image and class.
        area_ranges: extra area ranges ``{name: (lo, hi)}`` (pixels² of the boxes given, closed) to report in
            ``by_bin``; COCO's small / medium / large are always reported in ``by_size``.

    Returns:
        ``{"mAP50", "mAP50_95", "per_class": {name_or_id: {"AP50", "AP50_95", "n_truths"}},
        "by_size": {"small" | "medium" | "large": {"mAP50", "mAP50_95", "n_truths", "area"}},
        "by_bin": {name: {"mAP50", "n_truths", "area"}}, "n_images", "n_truths", "n_dets"}`` with ``area`` the
        range ``[lo, hi]`` (see the module docstring for NaN and 0 cases and for the area ranges).
    """
    det_arrays = [_as_array(d, _DET_COLUMNS, _DET_XYXY, "dets", i) for i, d in enumerate(dets)]
    truth_arrays = [_as_array(t, _TRUTH_COLUMNS, _TRUTH_XYXY, "truths", i) for i, t in enumerate(truths)]
    _check_lengths(det_arrays, truth_arrays, image_sizes)
    num_classes = _resolve_num_classes(det_arrays, truth_arrays, num_classes, names)
    gt = _coco_from_dict(_gt_dataset(truth_arrays, num_classes, image_sizes))
    results = _result_dicts(det_arrays)
    n_truths_per_class = _count_truths(truth_arrays, num_classes)
    coco_ranges = _coco_area_ranges()
    bins = _check_area_ranges(area_ranges or {})
    dt = _detections(gt, results)
    per_range = dict(zip(coco_ranges, _per_class_ap(gt, dt, num_classes, max_dets, list(coco_ranges.values())),
                         strict=True))
    per_bin = _per_class_ap(gt, dt, num_classes, max_dets, list(bins.values()), _BIN_IOU_THRESHOLDS) if bins else []
    ap50, ap50_95 = per_range[_AREA_ALL]
    class_keys = list(names) if names is not None else list(range(num_classes))
    areas = _truth_areas(truth_arrays)
    return {
        "mAP50": _nanmean(ap50),
        "mAP50_95": _nanmean(ap50_95),
        "per_class": {
            class_keys[c]: {"AP50": ap50[c], "AP50_95": ap50_95[c], "n_truths": n_truths_per_class[c]}
            for c in range(num_classes)
        },
        "by_size": {label: {"mAP50": _nanmean(per_range[label][0]), "mAP50_95": _nanmean(per_range[label][1]),
                            **_range_truths(areas, rng)} for label, rng in coco_ranges.items() if label != _AREA_ALL},
        "by_bin": {name: {"mAP50": _nanmean(aps[0]), **_range_truths(areas, rng)}
                   for (name, rng), aps in zip(bins.items(), per_bin, strict=True)},
        "n_images": len(truth_arrays),
        "n_truths": sum(n_truths_per_class),
        "n_dets": sum(len(d) for d in det_arrays),
    }


def _as_array(x: Any, columns: int, xyxy_columns: slice, what: str, index: int) -> np.ndarray:
    """Tensor or array -> float64 numpy ``[K, columns]``, with a clear error for a wrong shape or value."""
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, columns)
    if arr.ndim != 2 or arr.shape[1] != columns:
        raise EvaluationInputError(f"coco_map: {what}[{index}] must be [K, {columns}], got {arr.shape}")
    if not np.isfinite(arr).all():
        raise EvaluationInputError(f"coco_map: {what}[{index}] contains non-finite values")
    xyxy = arr[:, xyxy_columns]
    bad = np.nonzero((xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1]))[0]
    if len(bad):
        raise EvaluationInputError(
            f"coco_map: {what}[{index}] row {bad[0]} has x2 < x1 or y2 < y1: {xyxy[bad[0]].tolist()}"
        )
    return arr


def _check_lengths(dets: list, truths: list, sizes: Sequence | None) -> None:
    if len(dets) != len(truths):
        raise EvaluationInputError(
            f"coco_map: got detections for {len(dets)} images but truths for {len(truths)}"
        )
    if sizes is not None and len(sizes) != len(truths):
        raise EvaluationInputError(f"coco_map: got {len(sizes)} image_sizes for {len(truths)} images")


def _resolve_num_classes(
    dets: list[np.ndarray], truths: list[np.ndarray], num_classes: int | None, names: Sequence[str] | None
) -> int:
    class_ids = np.concatenate([d[:, 5] for d in dets] + [t[:, 0] for t in truths] + [np.zeros(0)])
    if np.any(class_ids != np.round(class_ids)) or np.any(class_ids < 0):
        raise EvaluationInputError("coco_map: class ids must be non-negative integers")
    seen = int(class_ids.max()) + 1 if len(class_ids) else 0
    if num_classes is None:
        num_classes = len(names) if names is not None else seen
    if names is not None and len(names) != num_classes:
        raise EvaluationInputError(f"coco_map: {len(names)} names for {num_classes} classes")
    if seen > num_classes:
        raise EvaluationInputError(f"coco_map: class id {seen - 1} out of range for {num_classes} classes")
    return num_classes


def _gt_dataset(truths: list[np.ndarray], num_classes: int, sizes: Sequence | None) -> dict[str, list]:
    """Truths -> a COCO ground-truth dict (bbox as x, y, w, h; area = w * h; no crowd boxes)."""
    images, annotations = [], []
    for i, t in enumerate(truths):
        image = {"id": i + 1}
        if sizes is not None:
            image["height"], image["width"] = (int(v) for v in sizes[i])
        images.append(image)
        for cls, x1, y1, x2, y2 in t.tolist():
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _result_dicts(dets: list[np.ndarray]) -> list[dict[str, Any]]:
    """Detections -> COCO result dicts (what ``COCO.loadRes`` reads)."""
    return [
        {"image_id": i + 1, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
        for i, d in enumerate(dets)
        for x1, y1, x2, y2, score, cls in d.tolist()
    ]


def _count_truths(truths: list[np.ndarray], num_classes: int) -> list[int]:
    counts = np.zeros(num_classes, dtype=np.int64)
    for t in truths:
        np.add.at(counts, t[:, 0].astype(np.int64), 1)
    return counts.tolist()


def _coco_from_dict(dataset: dict[str, list]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress unconditionally
        coco.createIndex()
    return coco


def _coco_area_ranges() -> dict[str, list[float]]:
    """COCO's area ranges as pycocotools defines them: ``{"all": [0, 1e10], "small": [0, 32**2], ...}``."""
    params = Params(iouType="bbox")
    return dict(zip(params.areaRngLbl, params.areaRng, strict=True))


def _check_area_ranges(ranges: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """``{name: [lo, hi]}`` as floats; EvaluationInputError for a range that is not ``0 <= lo <= hi``."""
    out = {}
    for name, rng in ranges.items():
        values = [float(v) for v in rng]
        if len(values) != 2 or not all(math.isfinite(v) for v in values) or not 0 <= values[0] <= values[1]:
            raise EvaluationInputError(f"coco_map: area range {name!r} must be [lo, hi] with 0 <= lo <= hi, "
                                       f"got {list(rng)}")
        out[str(name)] = values
    return out


def _truth_areas(truths: list[np.ndarray]) -> np.ndarray:
    """``[M]`` areas ``w * h`` of every truth (pixels², the ``area`` written into the COCO annotations)."""
    boxes = np.concatenate([t[:, _TRUTH_XYXY] for t in truths] + [np.zeros((0, 4))])
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _range_truths(areas: np.ndarray, rng: list[float]) -> dict:
    """The truths whose area lies in the closed range ``rng``, and the range."""
    return {"n_truths": int(((areas >= rng[0]) & (areas <= rng[1])).sum()), "area": list(rng)}


def _detections(gt: COCO, results: list[dict]) -> COCO:
    """The detections as a COCO result set on ``gt``'s images."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            return gt.loadRes(results)
    # loadRes indexes results[0]: an empty result set is built directly.
    return _coco_from_dict({"images": gt.dataset["images"], "annotations": [], "categories": []})


def _per_class_ap(
    gt: COCO, dt: COCO, num_classes: int, max_dets: int, area_ranges: list[list[float]],
    iou_thresholds: list[float] | None = None,
) -> list[tuple[list[float], list[float]]]:
    """Run COCOeval once over ``area_ranges`` (and ``iou_thresholds``, default COCO's 0.5 .. 0.95); return per
    range the per-class (AP at IoU 0.5, AP averaged over the thresholds), NaN for classes without truths in the
    range. COCOeval's per-image matching costs one pass per range and threshold."""
    if not gt.dataset["annotations"]:
        return [([math.nan] * num_classes, [math.nan] * num_classes) for _ in area_ranges]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.maxDets = [max_dets]
        evaluator.params.areaRng = [list(r) for r in area_ranges]
        evaluator.params.areaRngLbl = [str(i) for i in range(len(area_ranges))]  # labels are not read by evaluate
        if iou_thresholds is not None:
            evaluator.params.iouThrs = np.array(iou_thresholds, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: [iou thresholds, recall thresholds, classes, area ranges, max dets]
    precision = evaluator.eval["precision"][..., -1]
    return [([_mean_valid(precision[_IOU50, :, c, a]) for c in range(num_classes)],
             [_mean_valid(precision[:, :, c, a]) for c in range(num_classes)]) for a in range(len(area_ranges))]


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries COCOeval filled in (as its summarize() does); NaN if none."""
    valid = values[values > _MISSING]
    return float(valid.mean()) if valid.size else math.nan


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def size_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The APs by size of a :func:`coco_map` result under their logged names (``yololab.keys``):
    ``{"mAP50_small": …, "mAP50_95_small": …, …, "bin/<name>/mAP50": …}``."""
    out = {keys.size_key(metric, size): result["by_size"][size][metric]
           for size in keys.COCO_SIZES for metric in keys.MAP_METRICS}
    out |= {keys.bin_key(name, keys.BIN_METRIC): summary[keys.BIN_METRIC] for name, summary in result["by_bin"].items()}
    return out
