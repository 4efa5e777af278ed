"""Export a trained run as one graph: the Darknet model with box decoding, optionally with class-aware NMS.

Formats:

- ONNX (``model.onnx``): input ``images`` float32 ``[B, C, S, S]`` in [0, 1], batch dynamic, ``S`` fixed
  (the run's imgsz or ``--imgsz``). Without NMS the output is ``predictions [B, N, 5 + C]`` (DESIGN.md's
  decoded layout: cx, cy, w, h in input pixels, objectness, class probabilities). With NMS it is
  ``detections [D, 7]`` = ``image_index, x1, y1, x2, y2, score, class`` (input pixels), from ONNX's own
  ``NonMaxSuppression`` operator on each box's best class (score = objectness x class probability, kept when
  score > conf and suppressed when IoU > iou, as :func:`yololab.evaluate.nms`). That operator caps the boxes
  *per class* and image at ``max_det`` (yololab's nms caps per image).
- TorchScript (``model.torchscript.pt``): the same graph traced; with NMS a scripted greedy NMS follows and
  the output is ``detections [D, 7]`` as above, capped at ``max_det`` per image, exactly yololab's nms.

Every export is checked: the exported file is run (onnxruntime, or ``torch.jit.load``) on the same images as
the PyTorch model and yololab's own decoding and NMS, and the largest absolute difference is reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from yololab.evaluate.nms import nms
from yololab.model.coder import BoxCoder, decode_outputs

FORMATS = ("onnx", "torchscript")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
ONNX_OPSET = 17  # NonMaxSuppression since opset 10; 17 is supported by every onnxruntime of the last years
DETECTION_COLUMNS = 7  # image_index, x1, y1, x2, y2, score, class
CHECK_IMAGES = 2  # images per check batch: more than one, so the dynamic batch is exercised
BOX_DIMS = 4


class DecodedModel(nn.Module):
    """images ``[B, C, S, S]`` -> ``predictions [B, N, 5 + C]`` (decoded, DESIGN.md layout)."""

    def __init__(self, model: nn.Module, coder: BoxCoder):
        super().__init__()
        self.model, self.coder = model, coder

    def forward(self, images: Tensor) -> Tensor:
        return decode_outputs(self.model(images), self.model.anchors, self.model.strides, self.coder)


class NmsInputs(nn.Module):
    """images -> ``boxes [B, N, 4]`` xyxy and ``class_scores [B, C, N]``: objectness x class probability at
    each box's best class, 0 elsewhere (so ONNX's per-class NMS sees each box once, as yololab's nms)."""

    def __init__(self, decoded: DecodedModel):
        super().__init__()
        self.decoded = decoded

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pred = self.decoded(images)
        cxcy, wh = pred[..., 0:2], pred[..., 2:4]
        boxes = torch.cat((cxcy - wh / 2, cxcy + wh / 2), dim=-1)
        scores = pred[..., 4:5] * pred[..., 5:]  # [B, N, C]
        best = scores.argmax(dim=-1, keepdim=True)
        masked = torch.zeros_like(scores).scatter(-1, best, scores.gather(-1, best))
        return boxes, masked.transpose(1, 2)


@torch.jit.script
def scripted_nms(boxes: Tensor, class_scores: Tensor, conf_thres: float, iou_thres: float, max_det: int) -> Tensor:
    """Greedy class-aware NMS for TorchScript: ``boxes [B, N, 4]``, ``class_scores [B, C, N]`` (one non-zero
    class per box) -> ``[D, 7]`` (image_index, x1, y1, x2, y2, score, class), per image by descending score,
    at most ``max_det`` per image."""
    out: list[Tensor] = []
    for b in range(boxes.shape[0]):
        score, cls = class_scores[b].max(dim=0)  # [N]
        idx = (score > conf_thres).nonzero().squeeze(1)
        idx = idx[torch.sort(score[idx], descending=True, stable=True).indices]
        bx, sc, cl = boxes[b, idx], score[idx], cls[idx]
        area = (bx[:, 2] - bx[:, 0]).clamp(min=0) * (bx[:, 3] - bx[:, 1]).clamp(min=0)
        lt = torch.maximum(bx[:, None, :2], bx[None, :, :2])
        rb = torch.minimum(bx[:, None, 2:], bx[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=-1)
        iou = inter / (area[:, None] + area[None, :] - inter + 1e-7)
        suppress = (iou > iou_thres) & (cl[:, None] == cl[None, :])
        removed = torch.zeros(len(idx), dtype=torch.bool)
        kept: list[int] = []
        for i in range(len(idx)):
            if len(kept) >= max_det:
                break
            if not bool(removed[i]):
                kept.append(i)
                removed = removed | suppress[i]
        k = torch.tensor(kept, dtype=torch.long)
        image = torch.full((len(kept), 1), float(b), dtype=bx.dtype)
        out.append(torch.cat((image, bx[k], sc[k, None], cl[k, None].to(bx.dtype)), dim=1))
    return torch.cat(out, dim=0) if len(out) > 0 else torch.zeros((0, 7), dtype=boxes.dtype)


class ScriptedDetector(nn.Module):
    """TorchScript wrapper: traced NmsInputs followed by :func:`scripted_nms` with the run's thresholds."""

    def __init__(self, traced: torch.jit.ScriptModule, conf_thres: float, iou_thres: float, max_det: int):
        super().__init__()
        self.traced, self.conf_thres, self.iou_thres, self.max_det = traced, conf_thres, iou_thres, max_det

    def forward(self, images: Tensor) -> Tensor:
        boxes, class_scores = self.traced(images)
        return scripted_nms(boxes, class_scores, self.conf_thres, self.iou_thres, self.max_det)


@dataclass
class ExportCheck:
    """The exported file run against PyTorch on the same images."""

    max_abs_diff: float  # over the predictions, or over the paired detections (pixels and scores)
    compared: int  # values (no NMS) or paired detections (NMS)
    unpaired: int  # detections found on one side only (NMS; near ties, see match_detections)
    detail: str
    max_value: float = 0.0  # largest |value| PyTorch gave: float32 rounding differences scale with it


def export_model(model: nn.Module, coder: BoxCoder, path: Path, fmt: str, imgsz: int, with_nms: bool = False,
                 conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 100) -> Path:
    """Write ``model`` (a Darknet, in eval mode) with decoding (+ NMS) to ``path`` in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {fmt!r}")
    model = model.eval().cpu()
    decoded = DecodedModel(model, coder).eval()
    example = torch.zeros(CHECK_IMAGES, model.channels, imgsz, imgsz)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Tracing warns at every Python-level shape check of the model: the input size is fixed by design.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        _export(decoded, example, path, fmt, with_nms, conf_thres, iou_thres, max_det)
    return path


def _export(decoded: DecodedModel, example: Tensor, path: Path, fmt: str, with_nms: bool, conf_thres: float,
            iou_thres: float, max_det: int) -> None:
    if fmt == "torchscript":
        with torch.no_grad():
            if with_nms:
                traced = torch.jit.trace(NmsInputs(decoded).eval(), example)
                scripted = torch.jit.script(ScriptedDetector(traced, conf_thres, iou_thres, max_det))
            else:
                scripted = torch.jit.trace(decoded, example)
        scripted.save(str(path))
        return
    _export_onnx(NmsInputs(decoded).eval() if with_nms else decoded, example, path, with_nms)
    if with_nms:
        _append_onnx_nms(path, conf_thres, iou_thres, max_det)


def _export_onnx(module: nn.Module, example: Tensor, path: Path, with_nms: bool) -> None:
    outputs = ["boxes", "class_scores"] if with_nms else ["predictions"]
    dynamic = {"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}}
    with torch.no_grad():
        # The TorchScript-based exporter: dynamic_axes is all a fixed-size detector needs, and it does not
        # pull in onnxscript.
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=outputs,
                          dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False)


def _append_onnx_nms(path: Path, conf_thres: float, iou_thres: float, max_det: int) -> None:
    """Extend the graph ``images -> boxes, class_scores`` with ONNX NonMaxSuppression and gathers, so that its
    only output is ``detections [D, 7]``."""
    import onnx
    from onnx import TensorProto, helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph

    def const(name: str, value, dtype) -> None:
        graph.initializer.append(helper.make_tensor(name, dtype, [len(value)], value))

    const("nms_max_per_class", [max_det], TensorProto.INT64)
    const("nms_iou", [iou_thres], TensorProto.FLOAT)
    const("nms_conf", [conf_thres], TensorProto.FLOAT)
    const("col_image", [0], TensorProto.INT64)
    const("col_class", [1], TensorProto.INT64)
    const("col_box", [2], TensorProto.INT64)
    const("axis1", [1], TensorProto.INT64)
    nodes = [
        helper.make_node("NonMaxSuppression", ["boxes", "class_scores", "nms_max_per_class", "nms_iou", "nms_conf"],
                         ["selected"]),  # [D, 3] = image, class, box
        helper.make_node("Gather", ["selected", "col_image"], ["sel_image"], axis=1),  # [D, 1]
        helper.make_node("Gather", ["selected", "col_class"], ["sel_class"], axis=1),
        helper.make_node("Gather", ["selected", "col_box"], ["sel_box"], axis=1),
        helper.make_node("Concat", ["sel_image", "sel_box"], ["image_box"], axis=1),  # [D, 2]
        helper.make_node("GatherND", ["boxes", "image_box"], ["det_boxes"]),  # [D, 4]
        helper.make_node("GatherND", ["class_scores", "selected"], ["det_scores_flat"]),  # [D]
        helper.make_node("Unsqueeze", ["det_scores_flat", "axis1"], ["det_scores"]),
        helper.make_node("Cast", ["sel_image"], ["det_image"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["sel_class"], ["det_class"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["det_image", "det_boxes", "det_scores", "det_class"], ["detections"], axis=1),
    ]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["detections", 7]))
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


# ------------------------------------------------------------------------------------------------ running
def onnx_session(path: Path, threads: int | None = None):
    """An onnxruntime InferenceSession of an exported ``model.onnx`` on the CPU; ``threads``: intra-op threads
    (None: onnxruntime's default, one per physical core). Run it with ``session.run(None, {"images": x})``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_exported(path: Path, fmt: str, images: Tensor) -> np.ndarray:
    """The exported file's output on ``images [B, C, S, S]`` (onnxruntime on the CPU, or torch.jit.load)."""
    if fmt == "onnx":
        return onnx_session(path).run(None, {"images": images.numpy()})[0]
    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(images).numpy()


def reference_detections(model: nn.Module, coder: BoxCoder, images: Tensor, fmt: str, conf_thres: float,
                         iou_thres: float, max_det: int) -> np.ndarray:
    """yololab's own pipeline in the exported layout ``[D, 7]``: decode + :func:`nms`; for ONNX the cap is per
    class and image (greedy NMS per class stops after ``max_det`` keeps), for TorchScript per image."""
    with torch.no_grad():
        decoded = DecodedModel(model, coder)(images)
        per_image = nms(decoded, conf_thres, iou_thres, max_det=decoded.shape[1] if fmt == "onnx" else max_det,
                        max_candidates=decoded.shape[1], backend="torch")
    rows = []
    for b, det in enumerate(per_image):
        if fmt == "onnx":  # keep the first max_det of each class (already in descending score order)
            rank = torch.zeros(len(det), dtype=torch.long)
            for cls in det[:, 5].unique():
                where = det[:, 5] == cls
                rank[where] = torch.arange(int(where.sum()))
            det = det[rank < max_det]
        rows.append(torch.cat((torch.full((len(det), 1), float(b)), det), dim=1))
    return torch.cat(rows).numpy() if rows else np.zeros((0, DETECTION_COLUMNS), np.float32)


MATCH_BOX_TOL = 1e-2  # pixels: the same detection from both sides agrees far closer than this


def match_detections(got: np.ndarray, want: np.ndarray) -> tuple[float, int, int]:
    """Pair exported and PyTorch detections (same image and class, box within MATCH_BOX_TOL, nearest score).

    Returns ``(max abs difference over the pairs, pairs, detections left unpaired on either side)``. An
    unpaired detection comes from a near tie that float rounding decides differently: two class probabilities
    within ~1e-6 (argmax), or a score or IoU within ~1e-6 of its threshold."""
    used = np.zeros(len(want), dtype=bool)
    worst, pairs = 0.0, 0
    for row in got:
        same = (~used) & (want[:, 0] == row[0]) & (want[:, 6] == row[6])
        close = same & (np.abs(want[:, 1:5] - row[1:5]).max(axis=1) < MATCH_BOX_TOL)
        if not close.any():
            continue
        j = int(np.argmin(np.where(close, np.abs(want[:, 5] - row[5]), np.inf)))
        used[j] = True
        pairs += 1
        worst = max(worst, float(np.abs(want[j] - row).max()))
    return worst, pairs, (len(got) - pairs) + (len(want) - pairs)


def check_export(model: nn.Module, coder: BoxCoder, path: Path, fmt: str, images: Tensor, with_nms: bool,
                 conf_thres: float, iou_thres: float, max_det: int) -> ExportCheck:
    """Run the exported file and PyTorch (yololab's decoding and NMS) on ``images`` and compare."""
    got = run_exported(path, fmt, images)
    if not with_nms:
        with torch.no_grad():
            want = DecodedModel(model.eval(), coder)(images).numpy()
        if got.shape != want.shape:
            raise AssertionError(f"exported predictions {got.shape} vs PyTorch {want.shape}")
        return ExportCheck(float(np.abs(got - want).max()), want.size, 0, f"predictions {list(want.shape)}",
                           float(np.abs(want).max()))
    want = reference_detections(model, coder, images, fmt, conf_thres, iou_thres, max_det)
    if not len(want) and not len(got):
        return ExportCheck(0.0, 0, 0, "no detections above the threshold on the check images")
    diff, pairs, unpaired = match_detections(got, want)
    return ExportCheck(diff, pairs, unpaired, f"{pairs} detections paired on {len(images)} images ({len(got)} "
                       f"exported, {len(want)} from PyTorch, {unpaired} unpaired)", float(np.abs(want).max()))
