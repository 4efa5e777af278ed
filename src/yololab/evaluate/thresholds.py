"""Choosing a confidence threshold: per-class precision-recall curves, F1 against confidence and a confusion
matrix with background, all read from the matching pycocotools does at IoU 0.5.

COCOeval matches each image's detections of one class greedily in descending score order to the unmatched
truth of that class with the highest IoU (at least 0.5 here). Because the matching is greedy by score, the
detections above any confidence ``c`` are matched exactly as if only they had been kept, so one COCOeval run
gives precision, recall and F1 at every confidence:

- ``TP(c)`` = matched detections with score > c, ``FP(c)`` = unmatched ones with score > c (the same strict
  ``>`` as :func:`yololab.evaluate.nms`), ``P = TP / (TP + FP)``, ``R = TP / truths``, ``F1 = 2PR / (P + R)``
  (0 where undefined). The run's F1 curve is the mean over the classes that have truths (as ultralytics
  plots it); the best-F1 confidence is where that mean peaks. F1 is flat between detection scores, so the peak
  is a plateau: its middle is taken (the first plateau if several reach the same F1), away from both edges.
- The PR curve of a class is COCOeval's own interpolated precision at its 101 recall points (what AP50
  averages).
- Confusion matrix at a confidence: rows are the true class, columns the predicted class, the last row and
  column "background". A detection COCOeval matched counts on the diagonal. An unmatched detection that
  overlaps (IoU >= 0.5) a still-unclaimed truth of another class counts as that confusion (the best-IoU such
  truth, detections visited by descending score); any other unmatched detection is a false positive
  (background row). A truth left unclaimed is a miss (background column).

Inputs follow :mod:`yololab.evaluate.coco`: per image ``dets [K, 6]`` = ``x1, y1, x2, y2, score, class`` and
``truths [M, 5]`` = ``class, x1, y1, x2, y2``, in pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval

from yololab.boxes import box_iou
from yololab.evaluate.coco import (
    DEFAULT_MAX_DETS,
    _as_array,
    _check_lengths,
    _coco_from_dict,
    _gt_dataset,
    _resolve_num_classes,
    _result_dicts,
)

THRESHOLDS_FILE = "thresholds.json"  # in the run folder: {split: analysis}
MATCH_IOU = 0.5
CONF_STEPS = 101  # confidences 0.00, 0.01, ..., 1.00 at which P, R and F1 are given
# detect's confidence when the run has no thresholds.json (ultralytics' and darknet's default).
DEFAULT_DETECT_CONF = 0.25
# Split whose best-F1 confidence detect uses first: picking a threshold on the test split would tune on it.
CONF_SPLIT_ORDER = ("val", "test", "train")
_IOU50 = 0  # index of IoU 0.5 in COCOeval.params.iouThrs
_AREA_ALL = 0  # index of the "all" area range
_MISSING = -1  # COCOeval's marker for "no truths of this class"


def threshold_analysis(dets: Sequence[Any], truths: Sequence[Any], names: Sequence[str],
                       max_dets: int = DEFAULT_MAX_DETS) -> dict[str, Any]:
    """PR curves, F1 against confidence, the best-F1 confidence and the confusion matrix there.

    ``best_conf`` is None when F1 is 0 at every confidence (the confusion matrix is then at
    DEFAULT_DETECT_CONF).

    Returns ``{"iou", "conf", "f1", "precision", "recall", "best_conf", "best_f1", "per_class":
    {name: {"n_truths", "f1", "precision", "recall", "pr_recall", "pr_precision"}}, "confusion":
    {"conf", "labels", "matrix"}}``; curves are lists over ``conf`` (CONF_STEPS values), the confusion matrix
    is ``[C + 1][C + 1]`` counts, rows true class, columns predicted class, last index background.
    """
    det_arrays = [_as_array(d, 6, slice(0, 4), "dets", i) for i, d in enumerate(dets)]
    truth_arrays = [_as_array(t, 5, slice(1, 5), "truths", i) for i, t in enumerate(truths)]
    _check_lengths(det_arrays, truth_arrays, None)
    num_classes = _resolve_num_classes(det_arrays, truth_arrays, None, names)
    evaluator = _run_cocoeval(det_arrays, truth_arrays, num_classes, max_dets)
    matches = _matches(evaluator, det_arrays, truth_arrays)  # per image [K]: index of the matched truth or -1
    conf = np.linspace(0.0, 1.0, CONF_STEPS)
    per_class, f1_rows, p_rows, r_rows = {}, [], [], []
    recall_points = evaluator.params.recThrs
    for c, name in enumerate(names):
        scores = np.concatenate([d[d[:, 5] == c, 4] for d in det_arrays] + [np.zeros(0)])
        hits = np.concatenate([m[d[:, 5] == c] >= 0 for d, m in zip(det_arrays, matches, strict=True)]
                              + [np.zeros(0, bool)])
        n_truths = int(sum((t[:, 0] == c).sum() for t in truth_arrays))
        precision, recall, f1 = _curves(scores, hits.astype(bool), n_truths, conf)
        pr = evaluator.eval["precision"][_IOU50, :, c, _AREA_ALL, -1] if evaluator.eval else None
        per_class[name] = {"n_truths": n_truths, "f1": f1.tolist(), "precision": precision.tolist(),
                           "recall": recall.tolist(), "pr_recall": recall_points.tolist(),
                           "pr_precision": pr.tolist() if pr is not None and (pr > _MISSING).any() else None}
        if n_truths:
            f1_rows.append(f1)
            p_rows.append(precision)
            r_rows.append(recall)
    mean_f1 = np.mean(f1_rows, axis=0) if f1_rows else np.zeros_like(conf)
    best = _plateau_middle(mean_f1)
    # F1 0 at every confidence (nothing found): no threshold is better than another, none is recorded.
    best_conf = float(conf[best]) if mean_f1[best] > 0 else None
    confusion_conf = DEFAULT_DETECT_CONF if best_conf is None else best_conf
    return {
        "iou": MATCH_IOU, "conf": conf.tolist(), "f1": mean_f1.tolist(),
        "precision": (np.mean(p_rows, axis=0) if p_rows else np.zeros_like(conf)).tolist(),
        "recall": (np.mean(r_rows, axis=0) if r_rows else np.zeros_like(conf)).tolist(),
        "best_conf": best_conf, "best_f1": float(mean_f1[best]), "per_class": per_class,
        "confusion": {"conf": confusion_conf, "labels": [*map(str, names), "background"],
                      "matrix": confusion_matrix(det_arrays, truth_arrays, matches, num_classes,
                                                 confusion_conf).tolist()},
    }


def _plateau_middle(values: np.ndarray) -> int:
    """Index of the middle of the first run of entries equal to the maximum."""
    start = int(np.argmax(values))
    end = start
    while end + 1 < len(values) and values[end + 1] == values[start]:
        end += 1
    return (start + end) // 2


def _run_cocoeval(dets: list[np.ndarray], truths: list[np.ndarray], num_classes: int, max_dets: int) -> COCOeval:
    gt = _coco_from_dict(_gt_dataset(truths, num_classes, None))
    results = _result_dicts(dets)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results) if results else _coco_from_dict(
            {"images": gt.dataset["images"], "annotations": [], "categories": []})
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.params.maxDets = [max_dets]
        evaluator.evaluate()
        if gt.dataset["annotations"]:
            evaluator.accumulate()
    return evaluator


def _matches(evaluator: COCOeval, dets: list[np.ndarray], truths: list[np.ndarray]) -> list[np.ndarray]:
    """Per image ``[K]`` int: the row of the truth COCOeval matched each detection to (IoU 0.5, area "all"),
    -1 for an unmatched detection.

    ``loadRes`` numbers the result dicts 1, 2, ... in the order ``_result_dicts`` lists them (image by image,
    row by row), and ``_gt_dataset`` numbers the truths the same way, so ids map back to rows."""
    flat = np.zeros(sum(len(d) for d in dets), dtype=np.int64)  # matched truth id, 0 = none
    all_area = evaluator.params.areaRng[_AREA_ALL]
    for record in evaluator.evalImgs:
        if record is None or record["aRng"] != all_area:
            continue
        ids = np.asarray(record["dtIds"], dtype=np.int64)
        if len(ids):
            flat[ids - 1] = record["dtMatches"][_IOU50]
    per_image = np.split(flat, np.cumsum([len(d) for d in dets])[:-1])
    first_truth_id = np.cumsum([0] + [len(t) for t in truths])[:-1] + 1
    return [np.where(m > 0, m - first, -1) for m, first in zip(per_image, first_truth_id, strict=True)]


def _curves(scores: np.ndarray, hits: np.ndarray, n_truths: int, conf: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of one class at each confidence (detections with score > conf)."""
    above = scores[None, :] > conf[:, None]  # [T, D]
    tp = (above & hits[None, :]).sum(1).astype(np.float64)
    fp = (above & ~hits[None, :]).sum(1).astype(np.float64)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = tp / n_truths if n_truths else np.zeros_like(tp)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    return precision, recall, f1


def confusion_matrix(dets: list[np.ndarray], truths: list[np.ndarray], matches: list[np.ndarray],
                     num_classes: int, conf: float) -> np.ndarray:
    """``[C + 1, C + 1]`` counts at ``conf``: rows true class, columns predicted class, index C background.

    ``matches`` is what :func:`_matches` returns (COCOeval's same-class matches)."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    background = num_classes
    for det, truth, match in zip(dets, truths, matches, strict=True):
        order = np.argsort(-det[:, 4], kind="stable")
        order = order[det[order, 4] > conf]
        det, match = det[order], match[order]
        det_cls, truth_cls = det[:, 5].astype(np.int64), truth[:, 0].astype(np.int64)
        claimed = np.zeros(len(truth), dtype=bool)
        claimed[match[match >= 0]] = True
        np.add.at(matrix, (det_cls[match >= 0], det_cls[match >= 0]), 1)
        iou = box_iou(torch.from_numpy(det[:, :4]), torch.from_numpy(truth[:, 1:5])).numpy()
        for i in np.nonzero(match < 0)[0]:  # descending score
            free = (truth_cls != det_cls[i]) & ~claimed & (iou[i] >= MATCH_IOU)
            if free.any():
                j = int(np.argmax(np.where(free, iou[i], -1.0)))
                claimed[j] = True
                matrix[truth_cls[j], det_cls[i]] += 1
            else:
                matrix[background, det_cls[i]] += 1
        np.add.at(matrix[:, background], truth_cls[~claimed], 1)
    return matrix


def record_thresholds(run_dir: Path, split: str, analysis: dict[str, Any]) -> Path:
    """Store ``analysis`` under ``split`` in ``run_dir/thresholds.json`` (other splits are kept)."""
    path = Path(run_dir) / THRESHOLDS_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored[split] = analysis
    path.write_text(json.dumps(stored))
    return path


def recorded_conf(run_dir: Path | None) -> tuple[float, str]:
    """The confidence detect uses by default and where it comes from: the best-F1 confidence of the first
    split in CONF_SPLIT_ORDER recorded in ``run_dir/thresholds.json``, else DEFAULT_DETECT_CONF."""
    path = Path(run_dir) / THRESHOLDS_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        stored = json.loads(path.read_text())
        for split in CONF_SPLIT_ORDER:
            if stored.get(split, {}).get("best_conf") is not None:
                entry = stored[split]
                return float(entry["best_conf"]), (f"best-F1 confidence on {split} (F1 {entry['best_f1']:.3f}, "
                                                   f"{path})")
    return DEFAULT_DETECT_CONF, "default (no thresholds.json in the run: `yololab eval RUN --split val` writes it)"
