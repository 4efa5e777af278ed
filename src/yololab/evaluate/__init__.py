"""Evaluation: class-aware NMS (pure torch) and COCO mAP (pycocotools). Names are imported on first use."""

from yololab.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "coco": ["EvaluationInputError", "coco_map"],
    "nms": ["NmsInputError", "nms"],
})
