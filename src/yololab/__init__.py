"""yololab: train YOLOv3-family detectors and see what every part of the loss is doing.

Inference in Python: ``yololab.load(run).predict(images)`` (see :func:`yololab.detect.load`) returns per image
a ``[K, 6]`` tensor ``x1, y1, x2, y2, score, class`` in that image's pixels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load"]


def load(run: Any, **kwargs: Any) -> Any:
    """A :class:`yololab.detect.Detector` for a run folder or checkpoint (torch is imported on first use, so
    ``import yololab`` stays light)."""
    from yololab.detect import load as load_detector

    return load_detector(run, **kwargs)
