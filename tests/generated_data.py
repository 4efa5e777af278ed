"""Helpers shared by the tests of the synthetic dataset generators (digits, sparse, photo)."""

from __future__ import annotations

from pathlib import Path


def files_and_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), to compare two generator runs byte for byte."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixel_boxes(label_file: Path, size: int) -> list[tuple[int, int, int, int, int]]:
    """(class, x1, y1, x2, y2) in pixels, right/bottom exclusive, from a YOLO label file of a square image."""
    boxes = []
    for line in label_file.read_text().splitlines():
        cls, cx, cy, w, h = (float(v) for v in line.split())
        x1, y1, x2, y2 = (round(v * size) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        boxes.append((int(cls), x1, y1, x2, y2))
    return boxes
