"""The per-scale keys ``"<name>/s<i>"`` of loss terms and statistics: built and parsed here only.

``TERMS`` are the loss terms (``LossBreakdown.terms``), ``STATS`` the per-scale statistics
(``LossBreakdown.stats``); both are keyed by ``key(name, scale)``, scale 0 being the first ``[yolo]`` layer in
cfg order.
"""

from __future__ import annotations

import re

TERMS = ("xy", "wh", "box", "obj", "noobj", "cls")
STATS = (
    "n_pos",  # truths trained at the scale (darknet's count)
    "n_ignored",  # non-responsible predictions left out of noobj by the ignore rule
    "iou",  # mean IoU of responsible predictions with their truths (darknet's Avg IOU)
    "iou_prior",  # the same for the all-zero-output box: what the anchors alone give
    "obj_pos",  # mean objectness probability at responsible predictions (darknet's Obj)
    "obj_neg",  # mean objectness probability at every other prediction
    "obj_all",  # mean objectness probability over all predictions, positives included (darknet's "No Obj")
    "cls_prob",  # mean probability of the true class at responsible predictions (darknet's Class)
    "recall50",  # fraction of trained truths whose prediction has IoU > 0.5 (darknet's .5R)
    "recall75",  # ... IoU > 0.75 (darknet's .75R)
)
_KEY = re.compile(r"^(?P<name>[A-Za-z0-9_]+)/s(?P<scale>\d+)$")


def key(name: str, scale: int) -> str:
    """``key("obj", 2) == "obj/s2"``."""
    return f"{name}/s{scale}"


def parse(text: str) -> tuple[str, int]:
    """``parse("obj/s2") == ("obj", 2)``; anything else is a ValueError naming the text."""
    match = _KEY.match(text)
    if match is None:
        raise ValueError(f"not a per-scale key '<name>/s<i>': {text!r}")
    return match["name"], int(match["scale"])


def is_key(text: str) -> bool:
    """Whether ``text`` is a per-scale key."""
    return _KEY.match(text) is not None
