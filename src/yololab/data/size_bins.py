"""A dataset's own object-size bins: the optional ``size_bins`` block of a ``data.yaml``.

Evaluation reports AP per bin (``coco_map``'s ``by_bin``, computed by COCOeval with these areas as extra
``areaRng`` entries), so a user sees which sizes fail. The block is a yololab extension of the ultralytics
convention; a ``data.yaml`` without it loads as before::

    size_bins:
      image_size: 480          # the longest image side the areas below are measured at (pixels)
      areas:                   # name: [lo, hi], box area w * h in pixels², both ends included
        3x2-5x4: [6, 20]
        6x6-40x40: [36, 1600]
        40x30-200x150: [1200, 30000]

Units: the areas are in pixels² of the dataset's images; evaluation compares them with boxes in network-input
pixels after letterbox, so :func:`input_area_ranges` scales them by the letterbox factor squared,
``(input side / image_size)²``. That factor is exact when every image's longest side is ``image_size`` (the
sparse generator's square images); for images of mixed sizes the bins are only as exact as ``image_size`` is
typical. Ranges may overlap (a box counts in every bin whose closed range holds its area).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from yololab.data.errors import DataError

SIZE_BINS_KEY = "size_bins"  # the data.yaml key
# A bin's name becomes part of a logged key (``bin/<name>/mAP50``): no slash, no spaces.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class SizeBins:
    """Named area ranges ``{name: (lo, hi)}`` in pixels² of images whose longest side is ``image_size``."""

    image_size: int
    areas: dict[str, tuple[float, float]]

    def to_yaml(self) -> dict:
        """The ``size_bins`` block as written in a data.yaml (plain lists, so ``yaml.safe_dump`` writes it)."""
        return {"image_size": self.image_size, "areas": {k: list(v) for k, v in self.areas.items()}}


def input_area_ranges(bins: SizeBins | None, input_size: int) -> dict[str, tuple[float, float]]:
    """The bins' areas in pixels² of a square network input of side ``input_size`` (letterbox factor
    ``input_size / image_size``, squared); ``{}`` without bins."""
    if bins is None:
        return {}
    factor = (input_size / bins.image_size) ** 2
    return {name: (lo * factor, hi * factor) for name, (lo, hi) in bins.areas.items()}


def parse_size_bins(value, yaml_path: Path, line: int | None) -> SizeBins:
    """The ``size_bins`` block of ``yaml_path`` (starting at ``line``) -> SizeBins; DataError if malformed."""

    def fail(problem: str) -> DataError:
        return DataError(yaml_path, line, f"'{SIZE_BINS_KEY}': {problem}")

    if not isinstance(value, dict) or set(value) != {"image_size", "areas"}:
        raise fail("expected a mapping with keys image_size (pixels) and areas ({name: [lo, hi]} in pixels²)")
    image_size, areas = value["image_size"], value["areas"]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise fail(f"image_size must be a positive integer (pixels), got {image_size!r}")
    if not isinstance(areas, dict) or not areas:
        raise fail(f"areas must be a non-empty mapping {{name: [lo, hi]}}, got {areas!r}")
    parsed = {}
    for name, rng in areas.items():
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise fail(f"bin name {name!r} must be letters, digits, '_', '.', '+' or '-'")
        if not _is_range(rng):
            raise fail(f"bin {name!r} must be [lo, hi] with 0 <= lo <= hi (pixels²), got {rng!r}")
        parsed[name] = (float(rng[0]), float(rng[1]))
    return SizeBins(image_size, parsed)


def _is_range(rng) -> bool:
    if not isinstance(rng, list) or len(rng) != 2:
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in rng):
        return False
    return 0 <= rng[0] <= rng[1]
