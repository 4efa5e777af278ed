"""The per-scale keys ``"<name>/s<i>"`` of loss terms and statistics: built and parsed here only.

``TERMS`` are the loss terms (``LossBreakdown.terms``), ``STATS`` the per-scale statistics
(``LossBreakdown.stats``); both are keyed by ``key(name, scale)``, scale 0 being the first ``[yolo]`` layer in
cfg order. Histograms (``histograms.jsonl``) use the same keys. The rows of ``metrics.jsonl`` name them within a
group: ``key(name, scale, LOSS) == "loss/<name>/s<i>"`` (also ``UNWEIGHTED``, ``STAT``, ``GRAD_SHARE``).
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
# Groups of the logged per-scale keys (metrics.jsonl rows, TensorBoard): "<group>/<name>/s<i>".
LOSS, UNWEIGHTED, STAT, GRAD_SHARE = "loss", "unweighted", "stat", "grad_share"
LOSS_GROUPS = (LOSS, UNWEIGHTED, STAT)  # what the loss logs per scale (engine/module.py)
_KEY = re.compile(r"^(?:(?P<group>[A-Za-z0-9_]+)/)?(?P<name>[A-Za-z0-9_]+)/s(?P<scale>\d+)$")


def key(name: str, scale: int, group: str | None = None) -> str:
    """``key("obj", 2) == "obj/s2"``; ``key("obj", 2, LOSS) == "loss/obj/s2"``."""
    return f"{name}/s{scale}" if group is None else f"{group}/{name}/s{scale}"


def loss_key(term: str, scale: int) -> str:
    """``loss_key("obj", 2) == "loss/obj/s2"``: a weighted term as metrics.jsonl names it."""
    return key(term, scale, LOSS)


def stat_key(name: str, scale: int) -> str:
    """``stat_key("iou", 0) == "stat/iou/s0"``: a statistic as metrics.jsonl names it."""
    return key(name, scale, STAT)


def grad_share_key(term: str, scale: int) -> str:
    """``grad_share_key("box", 1) == "grad_share/box/s1"``: a term's gradient share as metrics.jsonl names it."""
    return key(term, scale, GRAD_SHARE)


def split(text: str) -> tuple[str | None, str, int] | None:
    """``split("loss/obj/s2") == ("loss", "obj", 2)``, ``split("obj/s2") == (None, "obj", 2)``; None for any
    text that is not a per-scale key."""
    match = _KEY.match(text)
    if match is None:
        return None
    return match["group"], match["name"], int(match["scale"])


def match(text: str, group: str | None = None) -> tuple[str, int] | None:
    """(name, scale) when ``text`` is a per-scale key of ``group`` (None: a key without a group), else None."""
    parts = split(text)
    if parts is None or parts[0] != group:
        return None
    return parts[1], parts[2]


def parse(text: str, group: str | None = None) -> tuple[str, int]:
    """``parse("obj/s2") == ("obj", 2)``, ``parse("loss/obj/s2", LOSS) == ("obj", 2)``; anything else is a
    ValueError naming the text."""
    parts = match(text, group)
    if parts is None:
        form = "<name>/s<i>" if group is None else f"{group}/<name>/s<i>"
        raise ValueError(f"not a per-scale key '{form}': {text!r}")
    return parts


def is_key(text: str, group: str | None = None) -> bool:
    """Whether ``text`` is a per-scale key of ``group`` (None: without a group)."""
    return match(text, group) is not None


def scale_of(text: str) -> int | None:
    """The scale of any per-scale key, with or without a group; None for other text."""
    parts = split(text)
    return None if parts is None else parts[2]


# Validation AP by object size (evaluate/coco.py's ``by_size`` and ``by_bin``), as metrics.jsonl and TensorBoard
# name them (``val/`` in front there): ``mAP50_small``, ``mAP50_95_small`` … for COCO's area ranges,
# ``bin/<name>/mAP50`` for a dataset's own size bins (data/size_bins.py; AP@0.5 only). Neither form ends in
# ``/s<i>``: no per-scale key is mistaken for one.
MAP_METRICS = ("mAP50", "mAP50_95")
BIN_METRIC = "mAP50"
COCO_SIZES = ("small", "medium", "large")  # pycocotools' areaRngLbl after "all"
BIN = "bin"
_BIN_KEY = re.compile(rf"^{BIN}/(?P<name>[^/]+)/(?P<metric>{'|'.join(MAP_METRICS)})$")


def size_key(metric: str, size: str) -> str:
    """``size_key("mAP50", "small") == "mAP50_small"``: AP in one of COCO's area ranges."""
    return f"{metric}_{size}"


def bin_key(name: str, metric: str) -> str:
    """``bin_key("3x2-5x4", "mAP50") == "bin/3x2-5x4/mAP50"``: AP in one of a dataset's size bins."""
    return f"{BIN}/{name}/{metric}"


def parse_bin_key(text: str) -> tuple[str, str] | None:
    """``parse_bin_key("bin/3x2-5x4/mAP50") == ("3x2-5x4", "mAP50")``; None for any other text."""
    match = _BIN_KEY.match(text)
    return None if match is None else (match["name"], match["metric"])
