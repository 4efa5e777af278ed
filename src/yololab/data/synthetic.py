"""What the synthetic dataset generators (digits, sparse, photo) share: output folder, label lines, overlap test."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

LABEL_DECIMALS = 6  # normalised label values: 1e-6 of the image side, well below a pixel at any size
GENERATED = ("images", "labels")  # folders a generator writes


def prepare_output_dir(out_dir: Path, overwrite: bool, extra_files: Sequence[str] = ()) -> None:
    """Make ``out_dir``; with ``overwrite`` remove only what a previous generator run wrote there
    (images/, labels/, data.yaml and ``extra_files``), never anything else."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace the dataset")
        for name in GENERATED:
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("data.yaml", *extra_files):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def label_line(cls: int, box: Sequence[float], size: int) -> str:
    """YOLO label line ``class cx cy w h`` normalised by the (square) image side, for a pixel xyxy box."""
    x1, y1, x2, y2 = box
    values = ((x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size)
    return f"{int(cls)} " + " ".join(f"{v:.{LABEL_DECIMALS}f}" for v in values) + "\n"


def pair_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes given as plain tuples (placement checks while drawing one image)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union
