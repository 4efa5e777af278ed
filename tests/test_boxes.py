"""Box conversions and the IoU family against hand-worked cases."""

import math

import pytest
import torch

from yololab.boxes import (
    box_ciou,
    box_cxcywh_to_xyxy,
    box_diou,
    box_giou,
    box_iou,
    box_xyxy_to_cxcywh,
    iou_elementwise,
    wh_iou,
)


def test_conversions_by_hand():
    cxcywh = torch.tensor([[5.0, 4.0, 4.0, 2.0]])
    assert box_cxcywh_to_xyxy(cxcywh).tolist() == [[3.0, 3.0, 7.0, 5.0]]
    assert box_xyxy_to_cxcywh(torch.tensor([[3.0, 3.0, 7.0, 5.0]])).tolist() == [[5.0, 4.0, 4.0, 2.0]]


def test_iou_by_hand():
    # a = [0,0,2,2] (area 4), b = [1,1,3,3] (area 4): intersection 1, union 7.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 3)
    assert iou[0, 0].item() == pytest.approx(1 / 7)
    assert iou[0, 1].item() == 0.0
    assert iou[0, 2].item() == pytest.approx(1.0)


def test_giou_by_hand():
    # Enclosing box of [0,0,2,2] and [1,1,3,3] is [0,0,3,3], area 9: GIoU = 1/7 - (9 - 7)/9.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert box_giou(a, b).item() == pytest.approx(1 / 7 - 2 / 9)
    # Disjoint boxes [0,0,1,1], [2,0,3,1]: IoU 0, enclosing area 3, union 2 -> GIoU = -1/3.
    c = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    d = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert box_giou(c, d).item() == pytest.approx(-1 / 3)


def test_diou_by_hand():
    # Centres (1,1) and (2,2): rho^2 = 2; enclosing diagonal^2 = 3^2 + 3^2 = 18.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert box_diou(a, b).item() == pytest.approx(1 / 7 - 2 / 18)


def test_ciou_by_hand():
    # a = [0,0,2,2] (square), b = [1,1,5,3] (w 4, h 2). Intersection [1,1,2,2] = 1; union 4 + 8 - 1 = 11.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 5.0, 3.0]])
    iou = 1 / 11
    rho2 = (3 - 1) ** 2 + (2 - 1) ** 2  # centres (1,1) and (3,2)
    diag2 = 5**2 + 3**2  # enclosing [0,0,5,3]
    v = 4 / math.pi**2 * (math.atan(4 / 2) - math.atan(2 / 2)) ** 2
    alpha = v / (1 - iou + v)
    assert box_ciou(a, b).item() == pytest.approx(iou - rho2 / diag2 - alpha * v, rel=1e-5)


def test_elementwise_matches_pairwise_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 10
    wh = torch.rand(20, 2, generator=g) * 5 + 0.1
    a = torch.cat((xy, xy + wh), 1)
    b = a + torch.randn(20, 4, generator=g) * 0.5
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 0.05)
    for kind, pairwise in (("iou", box_iou), ("giou", box_giou), ("diou", box_diou), ("ciou", box_ciou)):
        assert torch.allclose(iou_elementwise(a, b, kind), pairwise(a, b).diagonal(), atol=1e-6)


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown IoU kind"):
        iou_elementwise(torch.zeros(1, 4), torch.zeros(1, 4), "bogus")


def test_wh_iou_by_hand():
    # 10x10 vs 20x5 sharing a centre: intersection 10x5 = 50, union 100 + 100 - 50 = 150.
    assert wh_iou(torch.tensor([[10.0, 10.0]]), torch.tensor([[20.0, 5.0]])).item() == pytest.approx(1 / 3)
