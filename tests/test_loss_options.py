"""Loss options against the seeds' own formulas and hand-worked cases.

The seed references below are small re-computations written from the seed documents (seed 002's
compute_loss, seed 004's GIoU loss, seed 001's keras-yolo3 deltas), independent of yololab's code path.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from yololab.keys import parse
from yololab.loss import Geometry, LossConfig, YoloLoss, assign_targets, preset
from yololab.loss import terms as T

ANCHORS = [torch.tensor([[116.0, 90.0], [156.0, 198.0], [373.0, 326.0]]),
           torch.tensor([[30.0, 61.0], [62.0, 45.0], [59.0, 119.0]]),
           torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]])]
STRIDES = [32, 16, 8]
INPUT = 256
GRIDS = [(INPUT // s, INPUT // s) for s in STRIDES]



def _geometry(anchors, grids, batch):
    """The batch geometry the loss builds: strides = input / grid."""
    return Geometry.build(anchors, [INPUT // h for h, _ in grids], grids, batch, "cpu")

def _raw(batch, classes, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, h, w, 5 + classes, generator=g) * scale for h, w in GRIDS]


def _targets(batch, per_image, classes, seed):
    """Well-separated truths (no two share a cell at any scale)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        for k in range(per_image):
            cx, cy = 0.1 + 0.8 * (k + 0.5) / per_image, 0.15 + 0.7 * torch.rand(1, generator=g).item()
            w, h = (0.03 + 0.5 * torch.rand(2, generator=g)).tolist()
            rows.append([b, k % classes, cx, cy, w, h])
    return torch.tensor(rows)


# ---------------------------------------------------------------------------------------------- seed 002
def _seed002_compute_loss(yhat, label, anchors_px, strides, n_class, bbox_loss="iou"):
    """seed 002's compute_loss, re-written from the seed (label columns reordered to its [b, x, y, w, h, cls])."""
    n_labels = len(label)
    n_preds = sum(y.shape[1] * y.shape[2] * y.shape[3] for y in yhat)
    obj_bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([(n_preds - n_labels) / n_labels * 0.5]))
    cls_bce = torch.nn.BCEWithLogitsLoss()
    loss_box = torch.zeros(1)
    loss_obj = torch.zeros(1)
    loss_cls = torch.zeros(1)
    for yhatii, stride, anchors_s in zip(yhat, strides, anchors_px, strict=True):
        _, _, h, w, _ = yhatii.shape
        anchors = anchors_s / stride
        grid_size = torch.tensor([w, h]).float()
        wh_lb = label[:, 3:5] * grid_size
        ratio = (wh_lb[:, None, :] / anchors[None, :, :] - 1).abs().sum(2)
        ratio = torch.min(ratio, dim=1)
        label_idx = ratio[0] < 2
        anchor_idx = ratio[1][label_idx]
        batch_idx = label[label_idx, 0].long()
        xy_lb = label[label_idx, 1:3] * grid_size
        xy_idx = torch.floor(xy_lb).long()
        x_idx = xy_idx[:, 0].clamp(0, int(grid_size[0]) - 1)
        y_idx = xy_idx[:, 1].clamp(0, int(grid_size[1]) - 1)
        obj_lb = torch.zeros(yhatii.shape[:-1])
        obj_lb[batch_idx, anchor_idx, y_idx, x_idx] = 1
        if len(batch_idx) > 0:
            relxy_lb = xy_lb - xy_idx
            xy_pd = torch.sigmoid(yhatii[batch_idx, anchor_idx, y_idx, x_idx, 0:2])
            wh_lb = label[label_idx, 3:5] * grid_size
            wh_pd = torch.exp(yhatii[batch_idx, anchor_idx, y_idx, x_idx, 2:4]) * anchors[anchor_idx, :]
            wh_pd = wh_pd.clamp(0, grid_size.max())
            if bbox_loss == "mse":
                loss_box += F.mse_loss(xy_pd, relxy_lb) + F.mse_loss(wh_pd, wh_lb) / 10
            else:
                p1, p2 = xy_pd - wh_pd / 2, xy_pd + wh_pd / 2
                t1, t2 = relxy_lb - wh_lb / 2, relxy_lb + wh_lb / 2
                inter = (torch.minimum(p2, t2) - torch.maximum(p1, t1)).clamp(min=0).prod(1)
                iou = inter / (wh_pd.prod(1) + wh_lb.prod(1) - inter)
                loss_box += (1.0 - iou).mean()
            cls_pd = yhatii[batch_idx, anchor_idx, y_idx, x_idx, 5:]
            loss_cls += cls_bce(cls_pd, F.one_hot(label[label_idx, -1].long(), n_class).float())
        loss_obj += obj_bce(yhatii[..., 4], obj_lb)
    return loss_box.item(), loss_obj.item(), loss_cls.item()


@pytest.mark.parametrize("bbox_loss", ["iou", "mse"])
def test_scratch_ratio_reproduces_seed002_compute_loss(bbox_loss):
    classes = 4
    raw = _raw(2, classes, seed=5, scale=0.5)
    targets = _targets(2, 3, classes, seed=6)
    overrides = {"box_loss": "mse"} if bbox_loss == "mse" else {}
    breakdown = YoloLoss(preset("scratch-ratio", **overrides), ANCHORS, STRIDES, classes)(raw, targets)
    seed_label = targets[:, [0, 2, 3, 4, 5, 1]]
    box, obj, cls = _seed002_compute_loss(raw, seed_label, ANCHORS, STRIDES, classes, bbox_loss)
    terms = breakdown.terms
    ours_box = sum(v.item() for k, v in terms.items() if parse(k)[0] in ("box", "xy", "wh"))
    ours_obj = sum(v.item() for k, v in terms.items() if parse(k)[0] in ("obj", "noobj"))
    ours_cls = sum(v.item() for k, v in terms.items() if k.startswith("cls/"))
    assert ours_box == pytest.approx(box, rel=1e-4)
    assert ours_obj == pytest.approx(obj, rel=1e-4)
    assert ours_cls == pytest.approx(cls, rel=1e-4)


def test_best_pred_iou_picks_the_prediction_that_overlaps_most():
    # One truth at the centre; make anchor 1 of the middle scale predict it exactly: it must be chosen even
    # though another anchor fits the shape better.
    cfg = preset("scratch-best-iou")
    raw = [torch.full((1, 3, h, w, 6), -3.0) for h, w in GRIDS]
    target = torch.tensor([[0, 0, 0.5 + 4 / INPUT, 0.5 + 4 / INPUT, 60 / INPUT, 50 / INPUT]])
    gy = gx = int((0.5 + 4 / INPUT) * GRIDS[1][0])
    offset = (0.5 + 4 / INPUT) * GRIDS[1][0] - gx
    raw[1][0, 1, gy, gx, :4] = torch.tensor([math.log(offset / (1 - offset))] * 2 + [math.log(60 / 62),
                                             math.log(50 / 45)])
    a = assign_targets(target, _geometry(ANCHORS, GRIDS, 1), cfg, raw=raw, coder=YoloLoss(
        cfg, ANCHORS, STRIDES, 1).coder)
    assert (a.scale.tolist(), a.anchor.tolist(), a.gy.tolist(), a.gx.tolist()) == ([1], [1], [gy], [gx])


# ---------------------------------------------------------------------------------------------- seed 004
def _giou_xywh(a, b):
    """TF2 YOLOv3's bbox_giou on (x, y, w, h) boxes, written from the seed's formula."""
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = (torch.minimum(a2, b2) - torch.maximum(a1, b1)).clamp(min=0).prod(1)
    union = a[:, 2:].prod(1) + b[:, 2:].prod(1) - inter
    iou = inter / union
    enclose = (torch.maximum(a2, b2) - torch.minimum(a1, b1)).clamp(min=0).prod(1)
    return iou - (enclose - union) / enclose


def test_tf2_preset_reproduces_seed004_giou_and_scale():
    classes = 3
    raw = _raw(2, classes, seed=7, scale=0.5)
    targets = _targets(2, 2, classes, seed=8)
    loss = YoloLoss(preset("tf2-yolov3"), ANCHORS, STRIDES, classes)
    breakdown = loss(raw, targets)
    scale_idx, image, anchor, gy, gx, t = breakdown.assignment
    expected = 0.0
    for s, b, a, y, x, k in zip(*(v.tolist() for v in (scale_idx, image, anchor, gy, gx, t)), strict=True):
        p = raw[s][b, a, y, x]
        stride = STRIDES[s]
        pred = torch.stack([(x + torch.sigmoid(p[0])) * stride, (y + torch.sigmoid(p[1])) * stride,
                            torch.exp(p[2]) * ANCHORS[s][a, 0], torch.exp(p[3]) * ANCHORS[s][a, 1]])[None]
        label = (targets[k, 2:6] * INPUT)[None]
        bbox_loss_scale = 2.0 - label[0, 2] * label[0, 3] / INPUT**2
        expected += (bbox_loss_scale * (1 - _giou_xywh(pred, label))).item()
    expected /= 2  # tf.reduce_mean over the batch of per-image sums
    ours = sum(v.item() for k, v in breakdown.terms.items() if k.startswith("box/"))
    assert ours == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------------------------- seed 001
def test_keras_conf_deltas_match_seed001_and_sign_is_harmless():
    """seed 001: conf_delta1 = mask*(true - pred)*obj_scale, conf_delta2 = (1-mask)*conf_delta*noobj_scale,
    loss = sum(square(delta)). The scale sits inside the square; flipping the sign changes nothing."""
    obj_scale, noobj_scale = 5.0, 1.0
    raw = _raw(1, 2, seed=9, scale=0.7)
    targets = torch.tensor([[0, 1, 0.4, 0.45, 0.3, 0.35]])
    cfg = preset("keras-yolo3", ignore_thresh=1.0)
    breakdown = YoloLoss(cfg, ANCHORS, STRIDES, 2)(raw, targets)
    scale_idx, image, anchor, gy, gx, _ = breakdown.assignment
    obj_sum = noobj_sum = flipped = 0.0
    for s, r in enumerate(raw):
        pred_conf = torch.sigmoid(r[..., 4])
        mask = torch.zeros_like(pred_conf)
        sel = scale_idx == s
        mask[image[sel], anchor[sel], gy[sel], gx[sel]] = 1.0
        delta1 = mask * (1.0 - pred_conf) * obj_scale
        delta2 = (1 - mask) * pred_conf * noobj_scale
        obj_sum += delta1.pow(2).sum().item()
        noobj_sum += delta2.pow(2).sum().item()
        flipped += (mask * (pred_conf - 1.0) * obj_scale).pow(2).sum().item()
    ours_obj = sum(v.item() for k, v in breakdown.unweighted.items() if k.startswith("obj/")) * cfg.obj_weight
    ours_noobj = sum(v.item() for k, v in breakdown.terms.items() if k.startswith("noobj/"))
    assert ours_obj == pytest.approx(obj_sum, rel=1e-5)
    assert ours_noobj == pytest.approx(noobj_sum, rel=1e-5)
    assert flipped == pytest.approx(obj_sum, rel=1e-12)


# ---------------------------------------------------------------------------------------------- hand cases
def test_ratio_rule_by_hand():
    # 40x40 px truth: ratios to (30,61): w 1.33, h 0.66 -> max(r, 1/r) = 1.525 < 4 (kept); to (373,326):
    # 9.3 > 4 (dropped). Every anchor of every scale is judged on its own.
    cfg = LossConfig(assign="ratio", anchor_t=4.0)
    target = torch.tensor([[0, 0, 0.5, 0.5, 40 / INPUT, 40 / INPUT]])
    a = assign_targets(target, _geometry(ANCHORS, GRIDS, 1), cfg)
    all_anchors = torch.cat(ANCHORS)
    r = 40 / all_anchors
    expected = {i for i in range(9) if torch.maximum(r[i], 1 / r[i]).max() < 4}
    got = {int(s) * 3 + int(k) for s, k in zip(a.scale, a.anchor, strict=True)}
    assert got == expected and len(got) == 6


def test_neighbour_cells_by_hand():
    # Centre at x = 5.3 cells, y = 6.8 cells on the 8x8 grid -> own cell (6, 5); left half (0.3 < 0.5, x > 1)
    # adds (6, 4); bottom half of y (0.8 > 0.5, 8 - 6.8 = 1.2 > 1) adds (7, 5).
    cfg = LossConfig(assign="ratio", neighbour_cells=True, coder="ultralytics", collisions="keep_all")
    target = torch.tensor([[0, 0, 5.3 / 8, 6.8 / 8, 300 / INPUT, 300 / INPUT]])
    a = assign_targets(target, _geometry(ANCHORS[:1], GRIDS[:1], 1), cfg)
    cells = sorted(set(zip(a.gy.tolist(), a.gx.tolist(), strict=True)))
    assert cells == [(6, 4), (6, 5), (7, 5)]


def test_neighbour_cells_need_a_wide_coder():
    with pytest.raises(ValueError, match="neighbour_cells"):
        LossConfig(neighbour_cells=True, coder="yolov3")


def test_focal_objectness_by_hand():
    logit = torch.tensor([2.0, -1.0])
    target = torch.tensor([1.0, 0.0])
    p = torch.sigmoid(logit)
    expected = torch.stack([-0.25 * (1 - p[0]) ** 2 * torch.log(p[0]), -0.75 * p[1] ** 2 * torch.log(1 - p[1])])
    assert torch.allclose(T.objectness_loss(logit, target, "focal", gamma=2.0, alpha=0.25), expected)


def test_pos_weight_by_hand():
    logit, target = torch.tensor([0.3]), torch.tensor([1.0])
    assert T.objectness_loss(logit, target, "bce", pos_weight=3.0).item() == pytest.approx(
        -3.0 * math.log(1 / (1 + math.exp(-0.3))))


def test_auto_pos_weight_is_seed002s():
    cfg = preset("scratch-ratio")
    loss = YoloLoss(cfg, ANCHORS, STRIDES, 2)
    raw = _raw(2, 2, seed=1)
    n_preds = sum(3 * h * w for h, w in GRIDS)
    assert loss._obj_pos_weight(raw, 4) == pytest.approx((n_preds - 4) / 4 * 0.5)


def test_softmax_class_losses_vanish_with_one_class():
    logits = torch.randn(5, 1)
    target = T.class_targets(torch.zeros(5, dtype=torch.long), 1, 0.0, "half")
    assert T.class_loss(logits, target, "softmax_ce").abs().max() == 0
    assert T.class_loss(logits, target, "mse_softmax").abs().max() == 0
    assert T.class_loss(logits, target, "bce").min() > 0


def test_class_target_smoothing_forms():
    """ultralytics' smooth_BCE: 1 - eps/2, eps/2; TF2-YOLOv3: (1 - eps) one-hot + eps/C (0.99 + 0.01/C)."""
    classes = torch.tensor([2, 0])
    half = T.class_targets(classes, 4, 0.1, "half")
    uniform = T.class_targets(classes, 4, 0.01, "uniform")
    assert torch.allclose(half, torch.tensor([[0.05, 0.05, 0.95, 0.05], [0.95, 0.05, 0.05, 0.05]]))
    assert torch.allclose(uniform, torch.tensor([[0.0025, 0.0025, 0.9925, 0.0025], [0.9925, 0.0025, 0.0025, 0.0025]]))


def test_bce_xy_gradient_is_darknets_delta():
    raw = torch.tensor([[0.4, -1.2]], requires_grad=True)
    target = torch.tensor([[0.7, 0.2]])
    T.xy_loss(raw, raw.sigmoid(), target, "bce").sum().backward()
    assert torch.allclose(raw.grad, raw.detach().sigmoid() - target, atol=1e-6)  # = -(t - sigmoid(x))
    assert T.xy_loss(torch.logit(target), target, target, "bce").abs().max() < 1e-5  # minimum 0 at the truth


@pytest.mark.parametrize("reduction", ["sum", "image_mean", "mean", "elementwise_mean"])
def test_reductions_by_hand(reduction):
    classes = 3
    raw = _raw(2, classes, seed=11)
    targets = _targets(2, 2, classes, seed=12)
    summed = YoloLoss(preset("darknet", reduction="sum"), ANCHORS, STRIDES, classes)(raw, targets)
    reduced = YoloLoss(preset("darknet", reduction=reduction), ANCHORS, STRIDES, classes)(raw, targets)
    n_pos = torch.bincount(summed.assignment.scale, minlength=3).tolist()
    for key, value in reduced.terms.items():
        name, s = parse(key)
        n_preds = 2 * 3 * GRIDS[s][0] * GRIDS[s][1]
        divisor = {
            "sum": 1,
            "image_mean": 2,
            "mean": {"xy": n_pos[s], "wh": n_pos[s], "cls": n_pos[s] * classes, "obj": n_preds,
                     "noobj": n_preds}[name] / 2,
            "elementwise_mean": {"xy": 2 * n_pos[s], "wh": 2 * n_pos[s], "cls": n_pos[s] * classes,
                                 "obj": n_preds, "noobj": n_preds}[name],
        }[reduction]
        assert value.item() == pytest.approx(summed.terms[key].item() / max(divisor, 1e-9), rel=1e-5), key


def test_warmup_pulls_free_predictions_to_priors():
    cfg = preset("keras-yolo3", warmup_batches=2)
    loss = YoloLoss(cfg, ANCHORS, STRIDES, 2)
    raw = _raw(1, 2, seed=3)
    targets = torch.tensor([[0, 1, 0.4, 0.45, 0.3, 0.35]])
    during, after, evaluation = loss(raw, targets, step=1), loss(raw, targets, step=2), loss(raw, targets)
    assert during.warmup and not after.warmup and not evaluation.warmup
    assert during.terms["xy/s2"].item() > after.terms["xy/s2"].item()
    # Exactly at the priors (offset 0.5, tw = th = 0) the free predictions add nothing.
    prior = [r.clone() for r in raw]
    for r in prior:
        r[..., :4] = 0.0
    assert torch.allclose(loss(prior, targets[:0], step=0).terms["wh/s1"], torch.tensor(0.0))
    assert torch.allclose(loss(prior, targets[:0], step=0).terms["xy/s1"], torch.tensor(0.0))


def test_scale_weights_by_stride():
    loss = YoloLoss(preset("ultralytics"), ANCHORS, STRIDES, 2)
    assert loss.scale_weights == [0.4, 1.0, 4.0]  # cfg order: strides 32, 16, 8


@pytest.mark.parametrize(("row", "message"), [
    ([0, 5, 0.5, 0.5, 0.1, 0.1], "class id outside 0..2"),
    ([0, 1, float("nan"), 0.5, 0.1, 0.1], "non-finite"),
    ([0, 1, 0.5, 0.5, 0.0, 0.1], "width or height <= 0"),
    ([3, 1, 0.5, 0.5, 0.1, 0.1], "image index outside 0..1"),
])
def test_bad_targets_are_refused(row, message):
    loss = YoloLoss(preset("yololab"), ANCHORS, STRIDES, 3)
    with pytest.raises(ValueError, match=message):
        loss(_raw(2, 3, seed=0), torch.tensor([row]))


def test_unknown_option_value_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'bce'"):
        LossConfig(obj_loss="bogus")


def test_neighbour_cells_with_a_narrow_scaled_coder_is_refused():
    with pytest.raises(ValueError, match="scale_x_y >= 2"):
        LossConfig(neighbour_cells=True, coder="scaled", scale_x_y=1.2)
    LossConfig(neighbour_cells=True, coder="scaled", scale_x_y=2.0)
