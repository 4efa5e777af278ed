"""Named presets: a coder plus a loss configuration, each reproducing a known implementation.

Each entry names its source. ``yololab`` is the recommended default.
"""

from __future__ import annotations

from typing import Any

from yololab.loss.config import LossConfig

PRESETS: dict[str, dict[str, Any]] = {
    # Recommended default: GIoU boxes (robust for tiny objects), BCE objectness averaged over predictions
    # (keeps objectness elsewhere low on sparse images), darknet's multi-anchor rule.
    "yololab": dict(
        coder="yolov3", assign="iou_threshold", iou_thresh=0.213, box_loss="giou", small_box_weight=True,
        obj_loss="bce", obj_target="one", ignore_thresh=0.5, cls_loss="bce", reduction="mean",
        box_weight=0.05, obj_weight=1.0, noobj_weight=1.0, cls_weight=0.5,
    ),
    # YOLOv3 paper (Redmon & Farhadi 2018): one anchor per truth, squared error on offsets and log sizes,
    # logistic objectness and classes, ignore at 0.5, sums.
    "paper": dict(
        coder="yolov3", assign="best_anchor", box_loss="mse", small_box_weight=False, obj_loss="bce",
        obj_target="one", ignore_thresh=0.5, cls_loss="bce", reduction="sum",
    ),
    # AlexeyAB darknet yolov3.cfg: iou_thresh 0.213 multi-anchor, ignore_thresh 0.7, MSE boxes, 2 - wh scale.
    "darknet": dict(
        coder="yolov3", assign="iou_threshold", iou_thresh=0.213, box_loss="mse", small_box_weight=True,
        obj_loss="bce", obj_target="one", ignore_thresh=0.7, cls_loss="bce", reduction="sum",
    ),
    # ultralytics YOLOv3/v5 hyp defaults: CIoU, IoU objectness target, balance 4/1/0.4, means x batch size.
    "ultralytics": dict(
        coder="ultralytics", assign="iou_threshold", iou_thresh=0.25, box_loss="ciou", small_box_weight=False,
        obj_loss="bce", obj_target="iou", ignore_thresh=1.0, cls_loss="bce", reduction="mean",
        box_weight=0.05, obj_weight=1.0, noobj_weight=1.0, cls_weight=0.5,
    ),
    # experiencor keras-yolo3 config.json: best anchor, MSE on sigmoid objectness with obj_scale 5,
    # noobj_scale 1, xywh_scale 1, class_scale 1, softmax classes, 2 - wh scale, per-scale sqrt of sums.
    "keras-yolo3": dict(
        coder="yolov3", assign="best_anchor", box_loss="mse", small_box_weight=True, obj_loss="mse",
        obj_target="one", ignore_thresh=0.5, cls_loss="softmax_ce", reduction="sum", aggregation="sqrt",
        obj_weight=5.0, noobj_weight=1.0,
    ),
}


def preset(name: str, **overrides: Any) -> LossConfig:
    """LossConfig of a named preset, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown loss preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return LossConfig(**{**PRESETS[name], **overrides})
