"""The YOLOv3 loss: assignment, terms, criterion and presets. Names are imported on first use, so the
config and the presets load without torch."""

from yololab.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "assign": ["Assignment", "Geometry", "assign_targets"],
    "config": ["LossConfig"],
    "criterion": ["STATS", "TERMS", "LossBreakdown", "YoloLoss", "aggregate"],
    "presets": ["PRESETS", "preset"],
})
