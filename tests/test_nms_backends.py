"""Both NMS back ends (pure torch, torchvision.ops.batched_nms) against the naive reference."""

from __future__ import annotations

import pytest

from test_evaluate_nms import _assert_matches_reference, _random_decoded, reference_nms
from yololab.evaluate import NmsInputError, nms
from yololab.evaluate.nms import torchvision_ops

needs_torchvision = pytest.mark.skipif(torchvision_ops() is None, reason="torchvision does not import here")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_thres", [0.3, 0.6])
def test_pure_torch_backend_matches_reference(seed, iou_thres):
    decoded = _random_decoded(seed)
    out = nms(decoded, conf_thres=0.05, iou_thres=iou_thres, max_det=50, backend="torch")
    _assert_matches_reference(out, reference_nms(decoded, 0.05, iou_thres, 50))


@needs_torchvision
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_thres", [0.3, 0.6])
@pytest.mark.parametrize("multi_label", [False, True])
def test_torchvision_backend_matches_reference(seed, iou_thres, multi_label):
    decoded = _random_decoded(seed)
    out = nms(decoded, conf_thres=0.05, iou_thres=iou_thres, max_det=50, multi_label=multi_label,
              backend="torchvision")
    _assert_matches_reference(out, reference_nms(decoded, 0.05, iou_thres, 50, multi_label=multi_label))


def test_unknown_backend_is_refused():
    with pytest.raises(NmsInputError, match="backend"):
        nms(_random_decoded(0), backend="tensorrt")


@pytest.mark.skipif(torchvision_ops() is not None, reason="torchvision imports here")
def test_asking_for_missing_torchvision_says_so():
    with pytest.raises(NmsInputError, match="torchvision does not import"):
        nms(_random_decoded(0), backend="torchvision")
