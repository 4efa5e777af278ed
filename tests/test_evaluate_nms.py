"""NMS against a naive per-class reference and against cases worked by hand."""

from __future__ import annotations

import pytest
import torch

from yololab.evaluate import NmsInputError, nms


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(decoded, conf_thres, iou_thres, max_det, multi_label=False, max_candidates=10**9):
    """Naive greedy NMS: plain Python, one class at a time, one box at a time."""
    results = []
    for pred in decoded.tolist():
        candidates = []  # (score, box xyxy, class), in input order
        for cx, cy, w, h, obj, *cls_probs in pred:
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            if multi_label:
                pairs = [(obj * p, c) for c, p in enumerate(cls_probs)]
            else:
                best = max(range(len(cls_probs)), key=lambda c, probs=cls_probs: probs[c])
                pairs = [(obj * cls_probs[best], best)]
            candidates += [(s, box, c) for s, c in pairs if s > conf_thres]
        candidates = sorted(candidates, key=lambda cand: -cand[0])[:max_candidates]
        kept = []
        for cls in sorted({c for _, _, c in candidates}):
            kept_cls = []
            for score, box, c in candidates:
                if c == cls and all(_iou(box, k[1]) <= iou_thres for k in kept_cls):
                    kept_cls.append((score, box, c))
            kept += kept_cls
        kept = sorted(kept, key=lambda k: -k[0])[:max_det]
        results.append([[*box, score, float(c)] for score, box, c in kept])
    return results


def _random_decoded(seed, batch=3, n=200, num_classes=4, extent=40.0, dtype=torch.float64):
    """Boxes crowded into a small square so that many overlap."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, n, 2, generator=g, dtype=dtype) * extent
    sizes = 10 + torch.rand(batch, n, 2, generator=g, dtype=dtype) * 30
    obj = torch.rand(batch, n, 1, generator=g, dtype=dtype)
    cls = torch.rand(batch, n, num_classes, generator=g, dtype=dtype)
    return torch.cat((centres, sizes, obj, cls), dim=-1)


def _assert_matches_reference(out, ref):
    assert len(out) == len(ref)
    for got, want in zip(out, ref, strict=True):
        assert got.shape == (len(want), 6)
        if want:
            torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize(("iou_thres", "max_det"), [(0.5, 300), (0.3, 7), (0.7, 300), (0.5, 70)])
def test_matches_naive_reference_on_crowded_random_boxes(seed, multi_label, iou_thres, max_det):
    decoded = _random_decoded(seed)
    out = nms(decoded, conf_thres=0.05, iou_thres=iou_thres, max_det=max_det, multi_label=multi_label)
    ref = reference_nms(decoded, 0.05, iou_thres, max_det, multi_label)
    _assert_matches_reference(out, ref)
    assert min(map(len, ref)) >= min(max_det, 10)  # not trivially empty


def test_random_boxes_are_crowded_enough_to_test_suppression():
    decoded = _random_decoded(0)
    n_candidates = int(((decoded[..., 4:5] * decoded[..., 5:]).amax(-1) > 0.05).sum())
    n_kept = sum(map(len, reference_nms(decoded, 0.05, 0.5, 10**6)))
    assert n_kept < 0.75 * n_candidates


def test_max_candidates_keeps_the_highest_scores_before_nms():
    decoded = _random_decoded(5)
    out = nms(decoded, conf_thres=0.0, iou_thres=0.5, max_candidates=40)
    _assert_matches_reference(out, reference_nms(decoded, 0.0, 0.5, 300, max_candidates=40))


def test_float32_input_gives_float32_output_matching_reference():
    decoded = _random_decoded(7, dtype=torch.float32)
    out = nms(decoded, conf_thres=0.05, iou_thres=0.5)
    ref = reference_nms(decoded, 0.05, 0.5, 300)
    assert all(o.dtype == torch.float32 for o in out)
    for got, want in zip(out, ref, strict=True):
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-4)


def _decoded(rows, num_classes):
    """rows: (cx, cy, w, h, obj, class, class_prob) -> one image [1, N, 5 + C]."""
    out = torch.zeros(1, len(rows), 5 + num_classes)
    for i, (cx, cy, w, h, obj, cls, prob) in enumerate(rows):
        out[0, i, :5] = torch.tensor([cx, cy, w, h, obj])
        out[0, i, 5 + cls] = prob
    return out


def test_same_class_overlap_keeps_the_higher_score():
    # IoU of [40,40,60,60] and [42,40,62,60] = 360 / 440 = 0.82
    decoded = _decoded([(52, 50, 20, 20, 1.0, 0, 0.8), (50, 50, 20, 20, 1.0, 0, 0.9)], 2)
    (out,) = nms(decoded, conf_thres=0.1, iou_thres=0.5)
    torch.testing.assert_close(out, torch.tensor([[40.0, 40, 60, 60, 0.9, 0]]))


def test_different_class_overlap_keeps_both_in_score_order():
    decoded = _decoded([(52, 50, 20, 20, 1.0, 1, 0.8), (50, 50, 20, 20, 1.0, 0, 0.9)], 2)
    (out,) = nms(decoded, conf_thres=0.1, iou_thres=0.5)
    torch.testing.assert_close(out, torch.tensor([[40.0, 40, 60, 60, 0.9, 0], [42, 40, 62, 60, 0.8, 1]]))


def test_iou_exactly_at_threshold_is_not_suppressed():
    # [0,0,4,4] and [0,0,4,2]: intersection 8, union 16, IoU exactly 0.5 (representable in float).
    decoded = _decoded([(2, 2, 4, 4, 1.0, 0, 0.9), (2, 1, 4, 2, 1.0, 0, 0.8)], 1)
    assert len(nms(decoded, conf_thres=0.1, iou_thres=0.5)[0]) == 2  # suppression needs IoU > thres
    assert len(reference_nms(decoded, 0.1, 0.5, 300)[0]) == 2
    assert len(nms(decoded, conf_thres=0.1, iou_thres=0.49)[0]) == 1


def test_score_is_objectness_times_class_prob_and_conf_filter_is_strict():
    # scores: 0.5 * 0.6 = 0.30 (kept), 0.5 * 0.4 = 0.20 (dropped at 0.25), far apart.
    decoded = _decoded([(10, 10, 4, 4, 0.5, 0, 0.6), (50, 50, 4, 4, 0.5, 0, 0.4)], 1)
    (out,) = nms(decoded, conf_thres=0.25, iou_thres=0.5)
    torch.testing.assert_close(out, torch.tensor([[8.0, 8, 12, 12, 0.3, 0]]))


def test_multi_label_emits_one_detection_per_class_above_threshold():
    decoded = torch.tensor([[[10.0, 10, 4, 4, 1.0, 0.6, 0.5, 0.05]]])
    (single,) = nms(decoded, conf_thres=0.1)
    (multi,) = nms(decoded, conf_thres=0.1, multi_label=True)
    torch.testing.assert_close(single, torch.tensor([[8.0, 8, 12, 12, 0.6, 0]]))
    torch.testing.assert_close(multi, torch.tensor([[8.0, 8, 12, 12, 0.6, 0], [8, 8, 12, 12, 0.5, 1]]))


def test_max_det_keeps_the_best_in_descending_order():
    scores = [0.3, 0.9, 0.5, 0.7, 0.1]
    decoded = _decoded([(20 * i + 5, 5, 4, 4, 1.0, 0, s) for i, s in enumerate(scores)], 1)
    (out,) = nms(decoded, conf_thres=0.01, max_det=3)
    torch.testing.assert_close(out[:, 4], torch.tensor([0.9, 0.7, 0.5]))
    torch.testing.assert_close(out[:, 0], torch.tensor([23.0, 63.0, 43.0]))  # x1 of boxes 1, 3, 2


def test_chain_of_overlaps_keeps_every_other_box():
    # Boxes 10 wide shifted by 2: neighbours have IoU 8/12 = 0.67, boxes two apart 6/14 = 0.43. Greedy
    # keeps box 0, drops 1, keeps 2 (its only kept neighbour, 0, is two apart), and so on. 150 boxes
    # cross several internal blocks; a one-pass matrix NMS ("Fast NMS") would keep only box 0.
    n = 150
    rows = [(2 * i + 5, 5, 10, 10, 1.0, 0, 1 - i / (2 * n)) for i in range(n)]
    (out,) = nms(_decoded(rows, 1), conf_thres=0.01, iou_thres=0.5)
    torch.testing.assert_close(out[:, 0], torch.arange(0, 2 * n, 4, dtype=torch.float32))
    assert len(reference_nms(_decoded(rows, 1), 0.01, 0.5, 300)[0]) == n // 2


def test_images_do_not_suppress_each_other():
    image = _decoded([(50, 50, 20, 20, 1.0, 0, 0.9), (51, 50, 20, 20, 1.0, 0, 0.8)], 1)
    out = nms(torch.cat((image, image, torch.zeros_like(image))), conf_thres=0.1)
    assert [len(o) for o in out] == [1, 1, 0]
    torch.testing.assert_close(out[0], out[1])


@pytest.mark.parametrize("shape", [(2, 0, 7), (0, 5, 7)])
def test_empty_input(shape):
    out = nms(torch.zeros(shape))
    assert len(out) == shape[0]
    assert all(o.shape == (0, 6) for o in out)


def test_nothing_above_threshold_gives_empty_detections():
    out = nms(_random_decoded(0) * torch.tensor([1.0] * 4 + [0.0] * 5, dtype=torch.float64))
    assert [o.shape for o in out] == [(0, 6)] * 3


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [((2, 10), {}), ((1, 10, 5), {}), ((1, 10, 7), {"conf_thres": 1.0}), ((1, 10, 7), {"max_det": 0})],
)
def test_bad_input_raises_clear_error(shape, kwargs):
    with pytest.raises(NmsInputError, match="nms:"):
        nms(torch.zeros(shape), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    decoded = _random_decoded(3, batch=4, n=2000, num_classes=10)
    cpu = nms(decoded, conf_thres=0.05, iou_thres=0.5)
    gpu = nms(decoded.cuda(), conf_thres=0.05, iou_thres=0.5)
    for c, g in zip(cpu, gpu, strict=True):
        assert g.is_cuda
        torch.testing.assert_close(g.cpu(), c)
