"""Recipes: settings that were measured together on one kind of data, chosen by name (``--recipe sparse``).

A recipe is a list of config values applied like ``--set`` items placed before the user's own: the command
line and ``--set`` still win over it. The run records the recipe's name (``recipe`` in config.yaml) beside the
values it resolved to. Every recipe names the study that chose it (docs/studies.md); none is shipped without one.

``suggest_recipe`` reads the training boxes at the start of a new run and names the recipe whose data they look
like, when that recipe was measured better than the default preset, so that ``yololab train`` can say so in one
line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# A box is tiny when its longer side is under this many network-input pixels: under one cell of the finest head
# of the packaged 3-scale cfgs (stride 8), where YOLOv3's cell-offset coder has the least to work with.
TINY_BOX_PX = 8.0
# Data with at least this share of tiny boxes is the data the sparse recipe was measured on: `yololab data make
# sparse` draws 40 % of its objects at 3x2-5x4 px; the digits of the demo have none.
TINY_BOX_SHARE = 0.2


@dataclass(frozen=True)
class Recipe:
    """A named set of config values (dotted keys, as ``--set``), the data it is for, where it was measured, and
    whether that study put it ahead of the default preset beyond seed noise: only then does ``yololab train``
    suggest it."""

    name: str
    data: str
    settings: dict[str, Any]
    measured: str
    beats_default: bool

    def set_items(self) -> list[str]:
        """The settings as ``--set`` items (values as JSON, which YAML reads back unchanged)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.settings.items()]


RECIPES: dict[str, Recipe] = {
    # studies/sparse480.yaml (docs/studies.md): on `data make sparse` at its defaults (the seeds' 480 px), 3 epochs,
    # 3 seeds, the darknet preset beat keras-yolo3 (obj_scale 5) and tf2-yolov3, the default, beyond seed noise.
    # At 320 px (sparse-presets.yaml, sparse-default.yaml, 6 epochs) it beat yololab and keras-yolo3 and was level
    # with tf2-yolov3.
    "sparse": Recipe(
        "sparse", "sparse detector-like images with many boxes of a few pixels",
        {"preset": "darknet"}, "studies/sparse480.yaml, sparse-presets.yaml and sparse-default.yaml, docs/studies.md",
        beats_default=True),
}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES)) or 'none'}")
    return RECIPES[name]


@dataclass(frozen=True)
class Suggestion:
    """A recipe whose data the training boxes look like, and why, in words."""

    recipe: Recipe
    reason: str


def suggest_recipe(longer_sides: list[float] | Any, current: str | None) -> Suggestion | None:
    """The recipe the training boxes call for when it is not ``current`` and was measured better than the default
    preset; None otherwise.

    ``longer_sides``: the longer side of every training box in network-input pixels ([N] tensor or list).
    """
    sides = [float(v) for v in longer_sides]
    if not sides or "sparse" not in RECIPES or current == "sparse" or not RECIPES["sparse"].beats_default:
        return None
    tiny = sum(side < TINY_BOX_PX for side in sides) / len(sides)
    if tiny < TINY_BOX_SHARE:
        return None
    return Suggestion(RECIPES["sparse"], f"{tiny:.0%} of the training boxes are under {TINY_BOX_PX:g} px")
