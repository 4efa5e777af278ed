"""coco_map against AP worked by hand and against a naive COCO-style AP written here."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from yololab.evaluate import EvaluationInputError, coco_map

COCO_IOU_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]
# COCO's 101 recall points, built as pycocotools' COCOeval.Params builds them (np.linspace): a few are
# one ulp above i / 100 (e.g. 0.7000000000000001), which matters when a recall is exactly 0.7.
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def naive_ap(dets, truths, cls, iou_thres):
    """101-point interpolated AP of one class: greedy matching by descending score, each detection to the
    unmatched truth of its image with the highest IoU >= iou_thres. NaN without truths of the class."""
    gts = [[t[1:] for t in image if t[0] == cls] for image in truths]
    n_truths = sum(map(len, gts))
    if n_truths == 0:
        return math.nan
    cands = sorted(((d[4], i, d[:4]) for i, image in enumerate(dets) for d in image if d[5] == cls),
                   key=lambda c: -c[0])  # fmt: skip
    matched = [[False] * len(g) for g in gts]
    is_tp = []
    for _, image, box in cands:
        best, best_iou = None, iou_thres
        for g, truth in enumerate(gts[image]):
            if not matched[image][g] and _iou(box, truth) >= best_iou:
                best, best_iou = g, _iou(box, truth)
        if best is not None:
            matched[image][best] = True
        is_tp.append(best is not None)
    recall, precision, tp = [], [], 0
    for k, hit in enumerate(is_tp, start=1):
        tp += hit
        recall.append(tp / n_truths)
        precision.append(tp / k)
    for k in range(len(precision) - 2, -1, -1):  # precision envelope: best precision at any higher recall
        precision[k] = max(precision[k], precision[k + 1])
    total = 0.0
    for r in COCO_RECALL_POINTS:
        reached = [p for rc, p in zip(recall, precision, strict=True) if rc >= r]
        total += reached[0] if reached else 0.0
    return total / len(COCO_RECALL_POINTS)


def naive_map(dets, truths, num_classes):
    """(mAP50, mAP50_95) averaged over classes with truths."""
    ap50 = [naive_ap(dets, truths, c, 0.5) for c in range(num_classes)]
    ap = [np.mean([naive_ap(dets, truths, c, t) for t in COCO_IOU_THRESHOLDS]) for c in range(num_classes)]
    return np.nanmean(ap50), np.nanmean(ap), ap50, ap


# Two images, two classes (boxes x1, y1, x2, y2 in pixels).
HAND_TRUTHS = [
    [[0, 10, 10, 50, 50], [1, 60, 60, 100, 100], [1, 0, 60, 30, 100]],
    [[0, 20, 20, 60, 60]],
]
HAND_DETS = [
    [
        [10, 10, 50, 50, 0.9, 0],  # class 0, IoU 1 with its truth: TP
        [0, 60, 30, 100, 0.75, 0],  # class 0 on a class-1 truth: FP
        [60, 60, 100, 100, 0.95, 1],  # class 1, IoU 1: TP; the other class-1 truth is missed
    ],
    [
        [100, 100, 140, 140, 0.8, 0],  # class 0, no overlap: FP
        [24, 20, 64, 60, 0.7, 0],  # class 0, IoU 1440 / 1760 = 0.818: TP up to threshold 0.8
        [0, 0, 10, 10, 0.6, 1],  # class 1, no class-1 truth in this image: FP
    ],
]


def test_hand_worked_case():
    # Class 0 (2 truths), by score: TP .9, FP .8, FP .75, TP .7 -> precision envelope 1 up to recall 0.5
    # (51 of the 101 recall points), 1/2 above (50 points): AP = 76/101 at IoU 0.5 .. 0.8 (7 thresholds).
    # At 0.85 .. 0.95 the last detection is a FP too: recall stops at 0.5, AP = 51/101.
    # Class 1 (2 truths), by score: TP .95, FP .6 -> AP = 51/101 at every threshold.
    ap50 = {0: 76 / 101, 1: 51 / 101}
    ap50_95 = {0: (7 * 76 + 3 * 51) / 1010, 1: 51 / 101}
    result = coco_map(HAND_DETS, HAND_TRUTHS, num_classes=2)
    assert result["mAP50"] == pytest.approx((ap50[0] + ap50[1]) / 2)
    assert result["mAP50_95"] == pytest.approx((ap50_95[0] + ap50_95[1]) / 2)
    for c in (0, 1):
        assert result["per_class"][c]["AP50"] == pytest.approx(ap50[c])
        assert result["per_class"][c]["AP50_95"] == pytest.approx(ap50_95[c])
        assert result["per_class"][c]["n_truths"] == 2
    assert (result["n_images"], result["n_truths"], result["n_dets"]) == (2, 4, 6)
    # The naive reference agrees with the hand numbers.
    ref50, ref, _, _ = naive_map(HAND_DETS, HAND_TRUTHS, 2)
    assert ref50 == pytest.approx(result["mAP50"])
    assert ref == pytest.approx(result["mAP50_95"])


def _random_case(seed, n_images=6, num_classes=3):
    rng = random.Random(seed)
    truths, dets = [], []
    for _ in range(n_images):
        image_truths, image_dets = [], []
        for _ in range(rng.randint(0, 5)):
            x, y, w, h = rng.uniform(0, 300), rng.uniform(0, 300), rng.uniform(10, 80), rng.uniform(10, 80)
            cls = rng.randrange(num_classes)
            image_truths.append([cls, x, y, x + w, y + h])
            for _ in range(rng.randint(0, 3)):  # noisy detections around the truth, some of another class
                jx, jy, jw, jh = (rng.gauss(0, 0.15) * s for s in (w, h, w, h))
                det_cls = cls if rng.random() < 0.8 else rng.randrange(num_classes)
                image_dets.append([x + jx, y + jy, x + jx + w + jw, y + jy + h + jh, rng.random(), det_cls])
        for _ in range(rng.randint(0, 4)):  # background false positives
            x, y = rng.uniform(0, 300), rng.uniform(0, 300)
            image_dets.append([x, y, x + rng.uniform(10, 60), y + rng.uniform(10, 60), rng.random(), 0])
        truths.append(image_truths)
        dets.append(image_dets)
    return dets, truths


@pytest.mark.parametrize("seed", range(5))
def test_random_cases_match_naive_reference(seed):
    dets, truths = _random_case(seed)
    result = coco_map(dets, truths, num_classes=3)
    ref50, ref, ref50_per_class, ref_per_class = naive_map(dets, truths, 3)
    assert result["mAP50"] == pytest.approx(ref50, abs=1e-9)
    assert result["mAP50_95"] == pytest.approx(ref, abs=1e-9)
    for c in range(3):
        assert result["per_class"][c]["AP50"] == pytest.approx(ref50_per_class[c], abs=1e-9, nan_ok=True)
        assert result["per_class"][c]["AP50_95"] == pytest.approx(ref_per_class[c], abs=1e-9, nan_ok=True)
    assert 0.0 < result["mAP50"] < 1.0  # an informative case


def test_perfect_detections_score_one():
    truths = [[[0, 10, 10, 50, 50], [1, 60, 60, 100, 90]], [[1, 5, 5, 25, 45]]]
    dets = [[[*t[1:], 0.9, t[0]] for t in image] for image in truths]
    result = coco_map(dets, truths)
    # pycocotools computes precision as tp / (tp + fp + eps): a perfect score is 1 - 1e-16.
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP50_95"] == pytest.approx(1.0)


def test_no_detections_score_zero():
    truths = [[[0, 10, 10, 50, 50]], [[1, 5, 5, 25, 45]]]
    result = coco_map([np.zeros((0, 6)), torch.zeros(0, 6)], truths)
    assert result["mAP50"] == 0.0
    assert result["mAP50_95"] == 0.0
    assert result["per_class"][1] == {"AP50": 0.0, "AP50_95": 0.0, "n_truths": 1}
    assert result["n_dets"] == 0


def test_shifted_detection_passes_only_low_iou_thresholds():
    # Shifting a 100 x 100 box by 20 px gives IoU 80*100 / (120*100) = 2/3: thresholds 0.5, 0.55, 0.6,
    # 0.65 pass (AP 1), 0.7 .. 0.95 fail (AP 0), so AP50_95 = 4/10.
    truths = [[[0, 0, 0, 100, 100]]]
    dets = [[[20, 0, 120, 100, 0.9, 0]]]
    result = coco_map(dets, truths)
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP50_95"] == pytest.approx(0.4)


def test_class_without_truths_is_nan_and_left_out_of_the_mean():
    truths = [[[0, 10, 10, 50, 50]]]
    dets = [[[10, 10, 50, 50, 0.9, 0], [60, 60, 90, 90, 0.95, 1]]]  # class 1: detections but no truths
    result = coco_map(dets, truths, names=["cat", "dog", "eel"])
    assert result["mAP50"] == pytest.approx(1.0)
    assert math.isnan(result["per_class"]["dog"]["AP50"])
    assert math.isnan(result["per_class"]["eel"]["AP50_95"])
    assert result["per_class"]["eel"]["n_truths"] == 0


def test_no_truths_at_all_gives_nan():
    result = coco_map([[[10, 10, 50, 50, 0.9, 0]]], [np.zeros((0, 5))])
    assert math.isnan(result["mAP50"])
    assert math.isnan(result["mAP50_95"])
    assert result["n_truths"] == 0


def test_max_dets_caps_detections_per_image_and_class():
    # One truth; by score FP, FP, TP: precision 1/3 once recall reaches 1, so AP = 1/3.
    truths = [[[0, 0, 0, 10, 10]]]
    dets = [[[50, 50, 60, 60, 0.9, 0], [70, 70, 80, 80, 0.8, 0], [0, 0, 10, 10, 0.7, 0]]]
    assert coco_map(dets, truths)["mAP50"] == pytest.approx(1 / 3)
    assert coco_map(dets, truths, max_dets=2)["mAP50"] == 0.0  # the TP is the third detection


def test_accepts_tensors_and_image_sizes():
    truths = [torch.tensor([[0.0, 10, 10, 50, 50]])]
    dets = [torch.tensor([[10.0, 10, 50, 50, 0.9, 0]])]
    assert coco_map(dets, truths, image_sizes=[(416, 416)])["mAP50"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("dets", "truths", "kwargs", "message"),
    [
        ([[[0, 0, 1, 1, 0.5]]], [[[0, 0, 0, 1, 1]]], {}, r"dets\[0\] must be \[K, 6\]"),
        ([[[0, 0, 1, 1, 0.5, 0]]], [[[0, 5, 0, 1, 1]]], {}, r"truths\[0\] row 0 has x2 < x1"),
        ([[], []], [[]], {}, "detections for 2 images but truths for 1"),
        ([[[0, 0, 1, 1, 0.5, 3]]], [[[0, 0, 0, 1, 1]]], {"num_classes": 2}, "class id 3 out of range"),
        ([[[0, 0, 1, 1, 0.5, 0.5]]], [[[0, 0, 0, 1, 1]]], {}, "non-negative integers"),
        ([[[0, 0, 1, 1, math.nan, 0]]], [[[0, 0, 0, 1, 1]]], {}, "non-finite"),
    ],
)
def test_bad_input_raises_clear_error(dets, truths, kwargs, message):
    with pytest.raises(EvaluationInputError, match=message):
        coco_map(dets, truths, **kwargs)


# AP by object size. One class; areas w * h: small 10 x 10 = 100 (< 32**2), medium 40 x 40 = 1600, large
# 200 x 200 = 40000 (> 96**2).
SIZE_TRUTHS = [
    [[0, 0, 0, 10, 10], [0, 300, 300, 500, 500]],  # a small truth, a large truth
    [[0, 20, 20, 30, 30], [0, 50, 50, 250, 250], [0, 400, 0, 440, 40]],  # small, large, medium
]
SIZE_DETS = [
    [[0, 0, 10, 10, 0.95, 0]],  # the small truth, exact: TP; the large truth is missed
    [[20, 20, 30, 30, 0.94, 0],  # the small truth, exact: TP; the large one missed
     [600, 600, 640, 640, 0.9, 0],  # medium-sized, on nothing: FP (ignored by the small and large ranges)
     [400, 0, 440, 40, 0.8, 0]],  # the medium truth: TP
]


def test_ap_by_size_worked_by_hand():
    result = coco_map(SIZE_DETS, SIZE_TRUTHS, num_classes=1)
    small, medium, large = (result["by_size"][k] for k in ("small", "medium", "large"))
    # small: 2 truths found first, nothing else in range -> precision 1 at every recall: AP 1 at every IoU.
    assert small["mAP50"] == pytest.approx(1.0) and small["mAP50_95"] == pytest.approx(1.0)
    # large: 2 truths, no detection of that size -> AP 0.
    assert large["mAP50"] == 0.0 and large["mAP50_95"] == 0.0
    # medium: FP (.9) then TP (.8): precision 1/2 at recall 1 -> AP 1/2 at every IoU.
    assert medium["mAP50"] == pytest.approx(0.5) and medium["mAP50_95"] == pytest.approx(0.5)
    assert [result["by_size"][k]["n_truths"] for k in ("small", "medium", "large")] == [2, 1, 2]
    assert small["area"] == [0, 32**2] and large["area"][0] == 96**2
    # all sizes, 5 truths: TP TP FP TP -> recall .2 .4 .4 .6 at precision 1 1 2/3 3/4; envelope 1 up to recall
    # 0.4 (41 of the 101 points), 3/4 up to 0.6 (20 points), 0 beyond: AP = (41 + 15) / 101.
    assert result["mAP50"] == pytest.approx(56 / 101)
    assert result["by_bin"] == {}


def test_ap_per_custom_area_bin_and_closed_boundaries():
    bins = {"tiny": (0, 100), "edge": (100, 1000), "mid": (1000, 2000), "empty": (3000, 4000), "big": (30000, 5e4)}
    result = coco_map(SIZE_DETS, SIZE_TRUTHS, num_classes=1, area_ranges=bins)
    by_bin = result["by_bin"]
    assert list(by_bin) == list(bins)
    assert by_bin["tiny"]["mAP50"] == pytest.approx(1.0)
    assert by_bin["edge"]["mAP50"] == pytest.approx(1.0)  # the area-100 truths lie on both closed ranges
    assert [by_bin[k]["n_truths"] for k in bins] == [2, 2, 1, 0, 2]
    assert by_bin["mid"]["mAP50"] == pytest.approx(0.5)
    assert math.isnan(by_bin["empty"]["mAP50"])
    assert by_bin["big"]["mAP50"] == 0.0
    assert by_bin["empty"] == {"mAP50": by_bin["empty"]["mAP50"], "n_truths": 0, "area": [3000.0, 4000.0]}
    # Extra ranges do not change COCO's own numbers.
    assert result["mAP50"] == pytest.approx(56 / 101)
    assert result["by_size"] == coco_map(SIZE_DETS, SIZE_TRUTHS, num_classes=1)["by_size"]


def test_bins_evaluated_at_iou_50_alone_agree_with_coco_sizes_on_random_cases():
    # The bins' COCOeval matches at IoU 0.5 only; on COCO's own ranges it must give the full run's AP@0.5.
    for seed in range(5):
        dets, truths = _random_case(seed)
        coco_ranges = {size: r["area"] for size, r in coco_map(dets, truths, num_classes=3)["by_size"].items()}
        result = coco_map(dets, truths, num_classes=3, area_ranges=coco_ranges)
        for size, summary in result["by_size"].items():
            assert result["by_bin"][size]["mAP50"] == pytest.approx(summary["mAP50"], nan_ok=True), (seed, size)
            assert result["by_bin"][size]["n_truths"] == summary["n_truths"]


def test_ap_by_size_without_truths_is_nan():
    result = coco_map([[[0, 0, 10, 10, 0.9, 0]]], [np.zeros((0, 5))], num_classes=1, area_ranges={"a": (0, 50)})
    assert all(math.isnan(v["mAP50"]) and v["n_truths"] == 0 for v in result["by_size"].values())
    assert math.isnan(result["by_bin"]["a"]["mAP50"])


@pytest.mark.parametrize("bad", [(5, 1), (-1, 4), (0, math.inf), (1, 2, 3)])
def test_bad_area_range_raises(bad):
    with pytest.raises(EvaluationInputError, match="area range 'x'"):
        coco_map([[]], [[[0, 0, 0, 1, 1]]], area_ranges={"x": bad})
