"""The YOLOv3 loss: assignment, terms, criterion and presets."""

from yololab.loss.assign import Assignment, Geometry, assign_targets
from yololab.loss.config import LossConfig
from yololab.loss.criterion import STATS, TERMS, LossBreakdown, YoloLoss, aggregate
from yololab.loss.presets import PRESETS, preset

__all__ = [
    "PRESETS", "STATS", "TERMS", "Assignment", "Geometry", "LossBreakdown", "LossConfig", "YoloLoss", "aggregate",
    "assign_targets", "preset",
]
