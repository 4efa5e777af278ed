"""Box coders: the one place that turns raw ``tx, ty, tw, th`` into boxes.

The loss and inference both use these, so a preset that trains with one coder is decoded with the same.

- ``yolov3``      (the paper, darknet, keras-yolo3): xy = sigmoid(t), wh = exp(t) * anchor.
- ``scaled``      (darknet's ``scale_x_y``, YOLOv4): xy = s * sigmoid(t) - (s - 1) / 2, wh as yolov3.
- ``ultralytics`` (YOLOv5 / ultralytics YOLOv3): xy = 2 * sigmoid(t) - 0.5, wh = (2 * sigmoid(t))^2 * anchor.

Offsets are in grid cells relative to the cell's top-left corner; widths and heights are in input pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CODERS = ("yolov3", "scaled", "ultralytics")
# exp(tw) overflows float16 beyond ~11 and gives inf boxes early in training; darknet has no guard, but an
# anchor scaled by more than e^8 (~3000x) is never a real box, so clamping there changes no trained result.
MAX_LOG_WH = 8.0
ULTRALYTICS_XY_SCALE = 2.0  # 2 * sigmoid - 0.5 spans (-0.5, 1.5) cells (YOLOv5)


@dataclass(frozen=True)
class BoxCoder:
    """Decodes raw box logits. ``scale_x_y`` is used by the ``scaled`` coder only."""

    name: str = "yolov3"
    scale_x_y: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in CODERS:
            raise ValueError(f"unknown box coder {self.name!r}; expected one of {CODERS}")

    def xy(self, t_xy: Tensor) -> Tensor:
        """[..., 2] raw tx, ty -> [..., 2] centre offset in cells from the cell's top-left corner."""
        s = t_xy.sigmoid()
        if self.name == "yolov3":
            return s
        if self.name == "scaled":
            return s * self.scale_x_y - (self.scale_x_y - 1) / 2
        return s * ULTRALYTICS_XY_SCALE - 0.5

    def wh(self, t_wh: Tensor, anchors: Tensor) -> Tensor:
        """[..., 2] raw tw, th and broadcastable anchors [..., 2] (pixels) -> [..., 2] width, height (pixels)."""
        if self.name == "ultralytics":
            return (t_wh.sigmoid() * ULTRALYTICS_XY_SCALE).pow(2) * anchors
        return t_wh.clamp(max=MAX_LOG_WH).exp() * anchors

    def decode(self, raw: Tensor, anchors: Tensor, stride: int) -> Tensor:
        """Decode one scale for inference.

        raw [B, A, H, W, 5 + C] logits; anchors [A, 2] pixels -> [B, A*H*W, 5 + C] with cx, cy, w, h in input
        pixels, objectness probability and class probabilities (independent sigmoids, as YOLOv3).
        """
        b, a, h, w, _ = raw.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, device=raw.device, dtype=raw.dtype),
            torch.arange(w, device=raw.device, dtype=raw.dtype),
            indexing="ij",
        )
        grid = torch.stack((gx, gy), -1)  # [H, W, 2] (x, y)
        xy = (self.xy(raw[..., :2]) + grid) * stride
        wh = self.wh(raw[..., 2:4], anchors.to(raw)[None, :, None, None, :])
        probs = raw[..., 4:].sigmoid()
        return torch.cat((xy, wh, probs), -1).reshape(b, a * h * w, -1)


def decode_outputs(raw: list[Tensor], anchors: list[Tensor], strides: list[int], coder: BoxCoder) -> Tensor:
    """All scales: list of [B, A, H, W, 5 + C] -> [B, N, 5 + C] (cx, cy, w, h pixels, obj prob, class probs)."""
    return torch.cat([coder.decode(r.float(), a, s) for r, a, s in zip(raw, anchors, strides, strict=True)], 1)


def inverse_sigmoid(p: Tensor) -> Tensor:
    """logit(p) for p in (0, 1): used to build raw outputs for a given decoded box in tests and checks."""
    return torch.log(p) - torch.log1p(-p)

