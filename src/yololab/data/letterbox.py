"""Letterbox resize: scale an image to fit the network input keeping its aspect ratio, pad the rest.

The image is scaled by ``scale = min(h / orig_h, w / orig_w)`` to ``round(orig * scale)`` pixels and
placed at ``(pad_x, pad_y)`` = half the leftover width and height (rounded down), so the padding is
centred. A point ``x`` of the original image lands at ``x * scale + pad_x`` in the input (``y`` alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

DEFAULT_FILL = 114  # grey used by darknet-derived pipelines (ultralytics, YOLOX) for the padding


@dataclass(frozen=True)
class LetterboxInfo:
    """How an ``orig_h x orig_w`` image was placed in the network input (pixels)."""

    scale: float
    pad_x: int
    pad_y: int
    orig_h: int
    orig_w: int


def letterbox_info(orig_size: tuple[int, int], size: tuple[int, int]) -> LetterboxInfo:
    """Scale and padding that fit an image of ``orig_size (h, w)`` into ``size (h, w)``."""
    orig_h, orig_w = orig_size
    h, w = size
    scale = min(h / orig_h, w / orig_w)
    new_h, new_w = _scaled_size(orig_size, scale)
    return LetterboxInfo(scale, pad_x=(w - new_w) // 2, pad_y=(h - new_h) // 2, orig_h=orig_h, orig_w=orig_w)


def _scaled_size(orig_size: tuple[int, int], scale: float) -> tuple[int, int]:
    # At least one pixel, so extreme aspect ratios still give an image.
    return max(1, round(orig_size[0] * scale)), max(1, round(orig_size[1] * scale))


def letterbox(
    image: np.ndarray, size: tuple[int, int], fill: int = DEFAULT_FILL
) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox ``image [H, W, C] uint8`` into ``size (h, w)`` -> ``(out [h, w, C] uint8, info)``.

    Resizing is bilinear (PIL, per channel, so any ``C`` works); padding pixels get ``fill``.
    """
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects an [H, W, C] uint8 array, got {image.dtype} {image.shape}")
    orig_h, orig_w, channels = image.shape
    info = letterbox_info((orig_h, orig_w), size)
    new_h, new_w = _scaled_size((orig_h, orig_w), info.scale)
    if (new_h, new_w) != (orig_h, orig_w):
        image = np.stack(
            [np.asarray(Image.fromarray(image[:, :, c]).resize((new_w, new_h), Image.Resampling.BILINEAR))
             for c in range(channels)],
            axis=-1,
        )
    out = np.full((size[0], size[1], channels), fill, dtype=np.uint8)
    out[info.pad_y:info.pad_y + new_h, info.pad_x:info.pad_x + new_w] = image
    return out, info


def boxes_to_letterbox(boxes: np.ndarray, info: LetterboxInfo, size: tuple[int, int]) -> np.ndarray:
    """Boxes ``[M, 4]`` cxcywh normalised to the original image -> cxcywh normalised to the input.

    ``size (h, w)`` is the letterboxed input size. Returns float32 ``[M, 4]``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = size
    # Original pixels (x * orig_w) -> input pixels (* scale + pad) -> normalised by the input size.
    sx, sy = info.orig_w * info.scale / w, info.orig_h * info.scale / h
    out = np.empty_like(boxes)
    out[:, 0] = boxes[:, 0] * sx + info.pad_x / w
    out[:, 1] = boxes[:, 1] * sy + info.pad_y / h
    out[:, 2] = boxes[:, 2] * sx
    out[:, 3] = boxes[:, 3] * sy
    return out.astype(np.float32)


def boxes_from_letterbox(xyxy, info: LetterboxInfo, clip: bool = True):
    """Boxes ``[..., 4]`` xyxy in input pixels -> xyxy in original-image pixels.

    Works on a torch tensor (returns a tensor of the same dtype and device) or anything numpy
    accepts (returns float64). With ``clip`` the boxes are clipped to the original image.
    """
    out = xyxy.clone() if isinstance(xyxy, torch.Tensor) else np.array(xyxy, dtype=np.float64)
    out[..., 0::2] = (out[..., 0::2] - info.pad_x) / info.scale
    out[..., 1::2] = (out[..., 1::2] - info.pad_y) / info.scale
    if clip:
        out[..., 0::2] = out[..., 0::2].clip(0, info.orig_w)
        out[..., 1::2] = out[..., 1::2].clip(0, info.orig_h)
    return out
