"""ONNX (run in onnxruntime) and TorchScript exports against the PyTorch model on the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yololab.export import check_export, export_model, match_detections, onnx_session, run_exported
from yololab.model import Darknet, packaged_cfg
from yololab.model.coder import BoxCoder

pytest.importorskip("onnxruntime")

IMGSZ = 128
CONF, IOU, MAX_DET = 0.05, 0.45, 20
FLOAT32_REL = 1e-5  # float32 and different summation orders, amplified by exp() in the box decoding
ABS_TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    """An untrained model whose head biases are spread out, so scores cross the threshold and classes differ
    clearly (untrained heads give every class nearly the same probability: argmax ties)."""
    torch.manual_seed(0)
    net = Darknet.from_cfg(packaged_cfg("yolov3-tiny-3l-small"), num_classes=3).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.add_(torch.randn_like(module.bias) * 2.0)
    return net


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_decoded_export_matches_pytorch_with_another_batch_size(model, images, fmt, tmp_path):
    path = export_model(model, BoxCoder(), tmp_path / f"m.{fmt}", fmt, IMGSZ)
    check = check_export(model, BoxCoder(), path, fmt, images, False, CONF, IOU, MAX_DET)
    print(f"{fmt}: max abs difference {check.max_abs_diff:.3g} over {check.compared} values")
    assert check.compared == 3 * 1008 * 8  # 3 images (exported with a batch of 2), N boxes, 5 + 3 columns
    assert check.max_abs_diff <= ABS_TOL + FLOAT32_REL * check.max_value  # pixels and probabilities


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_with_nms_matches_yololab_nms(model, images, fmt, tmp_path):
    path = export_model(model, BoxCoder(), tmp_path / f"m.{fmt}", fmt, IMGSZ, with_nms=True, conf_thres=CONF,
                        iou_thres=IOU, max_det=MAX_DET)
    check = check_export(model, BoxCoder(), path, fmt, images, True, CONF, IOU, MAX_DET)
    print(f"{fmt} + NMS: max abs difference {check.max_abs_diff:.3g}; {check.detail}")
    assert check.compared >= 20 and check.unpaired == 0
    assert check.max_abs_diff <= ABS_TOL + FLOAT32_REL * check.max_value
    dets = run_exported(path, fmt, images[:1])
    assert dets.shape[1] == 7 and set(np.unique(dets[:, 0])) <= {0.0}


def test_onnx_session_with_one_thread_gives_the_same_detections(model, images, tmp_path):
    path = export_model(model, BoxCoder(), tmp_path / "m.onnx", "onnx", IMGSZ, with_nms=True, conf_thres=CONF,
                        iou_thres=IOU, max_det=MAX_DET)
    session = onnx_session(path, threads=1)
    assert session.get_session_options().intra_op_num_threads == 1
    diff, pairs, unpaired = match_detections(session.run(None, {"images": images.numpy()})[0],
                                             run_exported(path, "onnx", images))  # the default thread count
    assert pairs >= 20 and unpaired == 0 and diff <= ABS_TOL


def test_matching_reports_a_missing_detection():
    want = np.array([[0, 1, 1, 5, 5, 0.9, 0], [0, 10, 10, 20, 20, 0.8, 1]], dtype=np.float32)
    got = want[:1] + np.array([0, 0, 0, 0, 0, 1e-4, 0], dtype=np.float32)
    diff, pairs, unpaired = match_detections(got, want)
    assert pairs == 1 and unpaired == 1 and diff == pytest.approx(1e-4, rel=1e-2)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_stride4_cfg_exports(images, fmt, tmp_path):
    torch.manual_seed(0)
    net = Darknet.from_cfg(packaged_cfg("yolov3-tiny-4l-small"), num_classes=3).eval()
    path = export_model(net, BoxCoder(), tmp_path / f"m.{fmt}", fmt, IMGSZ)
    check = check_export(net, BoxCoder(), path, fmt, images, False, CONF, IOU, MAX_DET)
    # 3 anchors per cell on grids of 128 / 32, / 16, / 8 and / 4: 3 * (16 + 64 + 256 + 1024) = 4080 boxes
    assert check.compared == 3 * 4080 * 8
    assert check.max_abs_diff <= ABS_TOL + FLOAT32_REL * check.max_value
