"""Evaluation: class-aware NMS (pure torch) and COCO mAP (pycocotools)."""

from yololab.evaluate.coco import EvaluationInputError, coco_map
from yololab.evaluate.nms import NmsInputError, nms

__all__ = ["EvaluationInputError", "NmsInputError", "coco_map", "nms"]
