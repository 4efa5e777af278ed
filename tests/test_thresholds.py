"""Thresholds (PR, F1 against confidence, confusion matrix) against a naive greedy matcher and cases by hand."""

from __future__ import annotations

import numpy as np
import pytest

from yololab.evaluate.thresholds import (
    DEFAULT_DETECT_CONF,
    record_thresholds,
    recorded_conf,
    threshold_analysis,
)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def naive_counts(dets, truths, cls, conf):
    """TP, FP of class ``cls`` among detections with score > conf: per image, detections by descending score
    each take the unmatched same-class truth of highest IoU >= 0.5 (COCO's greedy rule), plain Python."""
    tp = fp = 0
    for det, truth in zip(dets, truths, strict=True):
        gts = [t[1:] for t in truth.tolist() if t[0] == cls]
        used = [False] * len(gts)
        for d in sorted((d for d in det.tolist() if d[5] == cls and d[4] > conf), key=lambda d: -d[4]):
            best, best_iou = None, 0.5
            for j, g in enumerate(gts):
                if not used[j] and _iou(d[:4], g) >= best_iou:
                    best, best_iou = j, _iou(d[:4], g)
            if best is None:
                fp += 1
            else:
                used[best] = True
                tp += 1
    return tp, fp


def _random_case(seed, n_images=6, num_classes=3):
    rng = np.random.default_rng(seed)
    dets, truths = [], []
    for _ in range(n_images):
        m = int(rng.integers(1, 6))
        xy = rng.uniform(0, 80, (m, 2))
        truth = np.column_stack([rng.integers(0, num_classes, m), xy, xy + rng.uniform(10, 30, (m, 2))])
        # detections: jittered copies of truths (some with the wrong class) plus random boxes
        jitter = truth[:, 1:] + rng.normal(0, 4, (m, 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        cls = np.where(rng.random(m) < 0.8, truth[:, 0], rng.integers(0, num_classes, m))
        k = int(rng.integers(0, 5))
        rxy = rng.uniform(0, 80, (k, 2))
        boxes = np.vstack([jitter, np.column_stack([rxy, rxy + rng.uniform(5, 30, (k, 2))])])
        det = np.column_stack([boxes, rng.uniform(0.01, 1, m + k), np.concatenate([cls, rng.integers(0, 3, k)])])
        dets.append(det)
        truths.append(truth)
    return dets, truths


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_precision_recall_f1_match_naive_greedy_matching(seed):
    dets, truths = _random_case(seed)
    names = ["a", "b", "c"]
    out = threshold_analysis(dets, truths, names)
    for c, name in enumerate(names):
        n_truths = sum(int((t[:, 0] == c).sum()) for t in truths)
        for i, conf in enumerate(out["conf"]):
            tp, fp = naive_counts(dets, truths, c, conf)
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / n_truths if n_truths else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            row = out["per_class"][name]
            assert row["precision"][i] == pytest.approx(precision)
            assert row["recall"][i] == pytest.approx(recall)
            assert row["f1"][i] == pytest.approx(f1)
    with_truths = [n for n in names if out["per_class"][n]["n_truths"]]
    mean_f1 = np.mean([out["per_class"][n]["f1"] for n in with_truths], axis=0)
    assert out["best_f1"] == pytest.approx(mean_f1.max())
    assert mean_f1[out["conf"].index(out["best_conf"])] == pytest.approx(mean_f1.max())
    # every detection above the confidence and every truth lands in exactly one cell
    matrix = np.array(out["confusion"]["matrix"])
    n_above = sum(int((d[:, 4] > out["best_conf"]).sum()) for d in dets)
    n_truths = sum(len(t) for t in truths)
    assert matrix[:, :-1].sum() == n_above
    assert matrix[:-1, :].sum() == n_truths
    for c in range(3):
        assert matrix[c, c] == naive_counts(dets, truths, c, out["best_conf"])[0]


def test_confusion_matrix_by_hand():
    truths = [np.array([[0, 0, 0, 10, 10], [1, 50, 50, 60, 60], [2, 80, 0, 90, 10.0]])]
    dets = [np.array([
        [0, 0, 10, 10, 0.9, 0],      # class 0 on the class-0 truth: diagonal
        [50, 50, 60, 61, 0.8, 2],    # class 2 on the class-1 truth: confusion 1 -> 2
        [20, 20, 30, 30, 0.7, 1],    # nothing there: background row, column 1
        [0, 0, 10, 10, 0.05, 1],     # below the confidence used: not counted
    ])]
    out = threshold_analysis(dets, truths, ["a", "b", "c"])
    matrix = np.array(out["confusion"]["matrix"])
    conf = out["confusion"]["conf"]
    assert 0.05 <= conf < 0.7
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1
    expected[1, 2] = 1
    expected[3, 1] = 1
    expected[2, 3] = 1  # the class-2 truth is missed
    np.testing.assert_array_equal(matrix, expected)
    assert out["confusion"]["labels"] == ["a", "b", "c", "background"]


def test_pr_curve_is_cocoeval_interpolated_precision():
    # one class, two truths, detections: hit (0.9), miss (0.8), hit (0.7): precision 1 up to recall 0.5,
    # then 2/3 up to recall 1 (interpolated: the max precision at any recall >= r).
    truths = [np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30.0]])]
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0], [20, 20, 30, 30, 0.7, 0]])]
    row = threshold_analysis(dets, truths, ["a"])["per_class"]["a"]
    recall, precision = np.array(row["pr_recall"]), np.array(row["pr_precision"])
    np.testing.assert_allclose(precision[recall <= 0.5], 1.0)
    np.testing.assert_allclose(precision[recall > 0.5], 2 / 3)


def test_recorded_conf_prefers_val_and_falls_back_to_default(tmp_path):
    assert recorded_conf(tmp_path)[0] == DEFAULT_DETECT_CONF
    record_thresholds(tmp_path, "test", {"best_conf": 0.4, "best_f1": 0.5})
    assert recorded_conf(tmp_path)[0] == 0.4
    record_thresholds(tmp_path, "val", {"best_conf": 0.3, "best_f1": 0.6})
    conf, source = recorded_conf(tmp_path)
    assert conf == 0.3 and "val" in source


def test_report_constants_mirror_the_evaluation_module():
    from yololab.diagnostics import threshold_plots
    from yololab.evaluate import thresholds

    assert threshold_plots.THRESHOLDS_FILE == thresholds.THRESHOLDS_FILE
    assert threshold_plots.CONF_SPLIT_ORDER == thresholds.CONF_SPLIT_ORDER
