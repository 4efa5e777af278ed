"""YoloLoss against hand-worked cases and a naive per-cell loop."""

import math

import pytest
import torch

from yololab.loss import PRESETS, Geometry, LossConfig, YoloLoss, aggregate, assign_targets, preset

ANCHORS = [torch.tensor([[60.0, 60.0], [100.0, 40.0]]), torch.tensor([[12.0, 12.0], [20.0, 30.0]])]
STRIDES = [32, 16]
INPUT = 128  # grids 4x4 and 8x8



def _geometry(anchors, grids, batch):
    """The batch geometry the loss builds: strides = input / grid."""
    return Geometry.build(anchors, [INPUT // h for h, _ in grids], grids, batch, "cpu")

def _raw(batch=2, classes=3, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, 2, INPUT // s, INPUT // s, 5 + classes, generator=g).requires_grad_(requires_grad)
        for s in STRIDES
    ]


TARGETS = torch.tensor([
    [0, 1, 0.30, 0.40, 0.45, 0.45],  # 57.6 px square -> anchor (60,60) at stride 32
    [0, 2, 0.70, 0.20, 0.10, 0.10],  # 12.8 px -> anchor (12,12) at stride 16
    [1, 0, 0.55, 0.55, 0.15, 0.25],  # 19.2 x 32 px -> anchor (20,30) at stride 16
])


def test_best_anchor_assignment_by_hand():
    cfg = LossConfig(assign="best_anchor")
    a = assign_targets(TARGETS, _geometry(ANCHORS, [(4, 4), (8, 8)], 2), cfg)
    got = sorted(zip(a.target.tolist(), a.scale.tolist(), a.anchor.tolist(), a.gy.tolist(), a.gx.tolist(),
                     strict=True))
    # cells: 0.30*4 = 1.2 -> gx 1, 0.40*4 = 1.6 -> gy 1; 0.70*8 -> 5, 0.20*8 -> 1; 0.55*8 = 4.4 -> 4.
    assert got == [(0, 0, 0, 1, 1), (1, 1, 0, 1, 5), (2, 1, 1, 4, 4)]


def test_iou_threshold_assignment_adds_anchors_above_threshold():
    # Truth 2 (19.2 x 32): shape IoU with (20,30) = 576/(614.4+600-576) = 0.902; with (12,12) = 144/614.4
    # = 0.234 -> also responsible at threshold 0.213; (60,60), (100,40) are below.
    cfg = LossConfig(assign="iou_threshold", iou_thresh=0.213)
    a = assign_targets(TARGETS[2:], _geometry(ANCHORS, [(4, 4), (8, 8)], 2), cfg)
    assert sorted(zip(a.scale.tolist(), a.anchor.tolist(), strict=True)) == [(1, 0), (1, 1)]


def test_collision_keeps_best_fitting_truth():
    # Two truths with centres in one cell wanting the same anchor: the better shape fit keeps it.
    targets = torch.tensor([[0, 0, 0.30, 0.40, 0.40, 0.40], [0, 1, 0.31, 0.41, 0.47, 0.47]])
    cfg = LossConfig(assign="best_anchor")
    a = assign_targets(targets, _geometry(ANCHORS, [(4, 4), (8, 8)], 1), cfg)
    # 51.2 px: IoU with 60x60 = 2621/3600 = 0.728; 60.2 px: 3600/3624 = 0.993 -> truth 1 wins.
    assert a.target.tolist() == [1]


def _naive_paper_loss(raw, targets, anchors, strides, ignore_thresh):
    """Per-cell loops: the YOLOv3 paper loss, summed and averaged over images (independent of the vectorised code)."""
    batch = raw[0].shape[0]
    all_anchors = [(s, a) for s, anc in enumerate(anchors) for a in range(len(anc))]
    responsible = {}
    for t, (img, _cls, cx, cy, w, h) in enumerate(targets.tolist()):
        wp, hp = w * INPUT, h * INPUT
        fits = []
        for s, a in all_anchors:
            aw, ah = anchors[s][a].tolist()
            inter = min(wp, aw) * min(hp, ah)
            fits.append(inter / (wp * hp + aw * ah - inter))
        s, a = all_anchors[max(range(len(fits)), key=lambda k: fits[k])]
        gw = INPUT // strides[s]
        responsible[(s, int(img), a, int(cy * gw), int(cx * gw))] = t
    total = {}
    for s, r in enumerate(raw):
        n_a, gh, gw = r.shape[1], r.shape[2], r.shape[3]
        xy = wh = obj = noobj = cls_l = 0.0
        for b in range(batch):
            truths = [tt for tt in targets.tolist() if int(tt[0]) == b]
            for a in range(n_a):
                aw, ah = anchors[s][a].tolist()
                for gy in range(gh):
                    for gx in range(gw):
                        p = r[b, a, gy, gx].tolist()
                        px = (gx + 1 / (1 + math.exp(-p[0]))) * strides[s]
                        py = (gy + 1 / (1 + math.exp(-p[1]))) * strides[s]
                        pw, ph = math.exp(p[2]) * aw, math.exp(p[3]) * ah
                        sig_o = 1 / (1 + math.exp(-p[4]))
                        key = (s, b, a, gy, gx)
                        if key in responsible:
                            _, c, cx, cy, w, h = targets[responsible[key]].tolist()
                            ox, oy = cx * gw - gx, cy * gh - gy
                            # The paper's t-hat: the raw tx against the logit of the target offset.
                            xy += (p[0] - math.log(ox / (1 - ox))) ** 2 + (p[1] - math.log(oy / (1 - oy))) ** 2
                            wh += (p[2] - math.log(w * INPUT / aw)) ** 2 + (p[3] - math.log(h * INPUT / ah)) ** 2
                            obj += -math.log(sig_o)
                            for k in range(len(p) - 5):
                                q = 1 / (1 + math.exp(-p[5 + k]))
                                cls_l += -math.log(q) if k == int(c) else -math.log(1 - q)
                            continue
                        best = 0.0
                        for _, _, cx, cy, w, h in truths:
                            tx1, ty1 = (cx - w / 2) * INPUT, (cy - h / 2) * INPUT
                            tx2, ty2 = (cx + w / 2) * INPUT, (cy + h / 2) * INPUT
                            ix = max(0.0, min(px + pw / 2, tx2) - max(px - pw / 2, tx1))
                            iy = max(0.0, min(py + ph / 2, ty2) - max(py - ph / 2, ty1))
                            inter = ix * iy
                            best = max(best, inter / (pw * ph + (tx2 - tx1) * (ty2 - ty1) - inter))
                        if best <= ignore_thresh:
                            noobj += -math.log(1 - sig_o)
        for name, value in (("xy", xy), ("wh", wh), ("obj", obj), ("noobj", noobj), ("cls", cls_l)):
            total[f"{name}/s{s}"] = value / batch
    return total


def test_paper_preset_matches_naive_loop():
    raw = _raw(seed=3)
    cfg = preset("paper")
    breakdown = YoloLoss(cfg, ANCHORS, STRIDES, 3)(raw, TARGETS)
    expected = _naive_paper_loss(raw, TARGETS, ANCHORS, STRIDES, cfg.ignore_thresh)
    assert set(breakdown.terms) == set(expected)
    for key, value in expected.items():
        assert breakdown.terms[key].item() == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert breakdown.total.item() == pytest.approx(sum(expected.values()), rel=1e-4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_terms_aggregate_to_total_for_every_preset(name):
    cfg = preset(name)
    loss = YoloLoss(cfg, ANCHORS, STRIDES, 3)
    raw = _raw(seed=1, requires_grad=True)
    breakdown = loss(raw, TARGETS)
    assert torch.equal(aggregate(breakdown.terms, cfg.aggregation), breakdown.total)
    assert all(torch.isfinite(v) and v >= 0 for v in breakdown.terms.values())
    breakdown.total.backward()
    assert all(torch.isfinite(r.grad).all() for r in raw)


def test_sqrt_aggregation_by_hand():
    terms = {"xy/s0": torch.tensor(4.0), "obj/s0": torch.tensor(5.0), "xy/s1": torch.tensor(16.0)}
    assert aggregate(terms, "sqrt").item() == pytest.approx(3.0 + 4.0)
    assert aggregate(terms, "sum").item() == pytest.approx(25.0)


def test_batch_order_does_not_change_the_result():
    loss = YoloLoss(preset("yololab"), ANCHORS, STRIDES, 3)
    raw = _raw(seed=2)
    flipped = [r.flip(0) for r in raw]
    targets = TARGETS.clone()
    targets[:, 0] = 1 - targets[:, 0]
    a, b = loss(raw, TARGETS), loss(flipped, targets.flip(0))
    for key in a.terms:
        assert a.terms[key].item() == pytest.approx(b.terms[key].item(), rel=1e-5), key


def test_empty_targets_give_only_noobj():
    loss = YoloLoss(preset("yololab"), ANCHORS, STRIDES, 3)
    breakdown = loss(_raw(), torch.zeros(0, 6))
    assert breakdown.total.item() > 0
    for key, value in breakdown.terms.items():
        if not key.startswith("noobj"):
            assert value.item() == 0.0, key
    assert math.isnan(breakdown.stats["iou/s0"].item())
    assert breakdown.stats["n_pos/s0"].item() == 0


def test_stats_by_hand_for_a_perfect_prediction():
    # One truth, responsible cell set to decode exactly onto it with high objectness and class logits.
    cfg = preset("paper")
    loss = YoloLoss(cfg, ANCHORS, STRIDES, 3)
    raw = [torch.full_like(r, -12.0) for r in _raw()]
    target = torch.tensor([[0, 1, (1 + 0.5) / 4, (1 + 0.25) / 4, 60 / INPUT, 60 / INPUT]])
    raw[0][0, 0, 1, 1, :5] = torch.tensor([0.0, math.log(0.25 / 0.75), 0.0, 0.0, 12.0])
    raw[0][0, 0, 1, 1, 5 + 1] = 12.0
    breakdown = loss(raw, target)
    assert breakdown.stats["n_pos/s0"].item() == 1
    assert breakdown.stats["iou/s0"].item() == pytest.approx(1.0, abs=1e-5)
    assert breakdown.stats["recall75/s0"].item() == 1.0
    assert breakdown.stats["obj_pos/s0"].item() == pytest.approx(1 / (1 + math.exp(-12)))
    assert breakdown.terms["xy/s0"].item() == pytest.approx(0.0, abs=1e-10)
    assert breakdown.terms["wh/s0"].item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("coder", ["yolov3", "ultralytics"])
def test_prior_iou_by_hand(coder):
    """iou_prior: the box of all-zero outputs (cell centre, anchor size) against the truth, whatever the head
    predicts. Truth 60x60 centred at (48, 40) px; prior 60x60 at the centre (48, 48) of cell (1, 1) at stride
    32 (both coders give offset 0.5 and the anchor's size at zero): overlap 60 x 52 = 3120, union 4080."""
    loss = YoloLoss(LossConfig(assign="best_anchor", coder=coder), ANCHORS, STRIDES, 3)
    target = torch.tensor([[0, 1, 48 / INPUT, 40 / INPUT, 60 / INPUT, 60 / INPUT]])
    for seed in (0, 1):  # the head's outputs do not matter
        breakdown = loss(_raw(seed=seed), target)
        assert breakdown.stats["iou_prior/s0"].item() == pytest.approx(3120 / 4080, rel=1e-5)
        assert math.isnan(breakdown.stats["iou_prior/s1"].item())  # no truth at stride 16


def test_scale_weights_multiply_objectness_only():
    raw = _raw(seed=4)
    base = YoloLoss(preset("yololab"), ANCHORS, STRIDES, 3)(raw, TARGETS)
    weighted = YoloLoss(preset("yololab", scale_weights=[4.0, 0.5]), ANCHORS, STRIDES, 3)(raw, TARGETS)
    assert weighted.terms["obj/s0"].item() == pytest.approx(4 * base.terms["obj/s0"].item(), rel=1e-6)
    assert weighted.terms["noobj/s1"].item() == pytest.approx(0.5 * base.terms["noobj/s1"].item(), rel=1e-6)
    assert weighted.terms["box/s0"].item() == pytest.approx(base.terms["box/s0"].item(), rel=1e-6)
    assert weighted.unweighted["obj/s0"].item() == pytest.approx(base.unweighted["obj/s0"].item(), rel=1e-6)


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError):
        LossConfig(box_los="mse")
    with pytest.raises(ValueError, match="unknown loss preset"):
        preset("nope")
