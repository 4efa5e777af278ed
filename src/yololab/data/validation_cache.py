"""Dataset validation for training and ``yololab data check``, beyond :func:`validate_split`.

- :func:`validate_cached`: ``validate_split`` whose report is kept on disk, keyed by a hash of the
  dataset's content (image paths, sizes and modification times; label file paths and bytes), so an
  unchanged dataset is validated once, and the next run reads the report back instantly.
- :func:`filter_bad`: the explicit skip policy: drop the images that have a problem (in the image or in
  any line of its label file) and list each with its reason.
- :func:`find_duplicate_lines` and :func:`check_channels`: the two checks ``yololab data check`` adds;
  duplicates are warnings, a channel mismatch is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from yololab.data.errors import DataError
from yololab.data.yolo_format import LABEL_FIELDS, BoxPolicy, ValidationReport, label_path, validate_split

CACHE_VERSION = 2  # bump when the stored report's layout or validate_split's checks change
# PIL modes of single-channel images; every other supported mode (RGB, RGBA, P, CMYK, ...) is colour.
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def dataset_key(images: Sequence[str | Path], num_classes: int, full_decode: bool,
                boxes_outside: BoxPolicy = "refuse") -> str:
    """SHA-256 hex digest of what a validation report depends on.

    Images enter by path, size and modification time in nanoseconds (hashing every image's bytes would
    cost as much as decoding it); label files by path and the SHA-256 of their bytes, or as missing.
    """
    digest = hashlib.sha256(
        f"v{CACHE_VERSION} classes={num_classes} decode={full_decode} outside={boxes_outside}\n".encode())
    for image in images:
        image = Path(image)
        try:
            stat = image.stat()
            image_part = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError:
            image_part = "missing"
        label = label_path(image)
        try:
            label_part = hashlib.sha256(label.read_bytes()).hexdigest()
        except FileNotFoundError:
            label_part = "missing"
        except OSError as err:  # unreadable: key on the error so the report (which names it) is redone
            label_part = f"unreadable {err}"
        # os.fsencode: file names are bytes on POSIX and need not be UTF-8 (surrogate-escaped in ``str``).
        digest.update(os.fsencode(image) + f"\0{image_part}\0".encode() + os.fsencode(label)
                      + f"\0{label_part}\n".encode())
    return digest.hexdigest()


def validate_cached(
    images: Sequence[str | Path],
    num_classes: int,
    cache_dir: str | Path,
    full_decode: bool = True,
    source: str | None = None,
    boxes_outside: BoxPolicy = "refuse",
) -> ValidationReport:
    """:func:`validate_split`, read from ``cache_dir/<key>.json`` when the dataset has not changed.

    The key is :func:`dataset_key`; a missing, unreadable or outdated cache file means a fresh validation,
    whose report is then written (atomically). The report comes back whole: counts, problems (file, line,
    problem), labels and image sizes.
    """
    images = [Path(p) for p in images]
    key = dataset_key(images, num_classes, full_decode, boxes_outside)
    cache_file = Path(cache_dir) / f"{key}.json"
    cached = _read_cache(cache_file)
    if cached is not None:
        if source is not None:
            cached.source = source
        return cached
    report = validate_split(images, num_classes, full_decode=full_decode, source=source, boxes_outside=boxes_outside)
    _write_cache(cache_file, report)
    return report


def _read_cache(cache_file: Path) -> ValidationReport | None:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION:
            return None
        return ValidationReport(
            source=data["source"],
            n_images=data["n_images"],
            n_boxes=data["n_boxes"],
            n_backgrounds=data["n_backgrounds"],
            n_missing_labels=data["n_missing_labels"],
            full_decode=data["full_decode"],
            problems=[DataError(p["file"], p["line"], p["problem"]) for p in data["problems"]],
            clipped=[DataError(p["file"], p["line"], p["problem"]) for p in data["clipped"]],
            labels=[np.array(rows, dtype=np.float32).reshape(-1, LABEL_FIELDS) for rows in data["labels"]],
            image_sizes=[tuple(s) if s is not None else None for s in data["image_sizes"]],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache yet, or a damaged one: validate again


def _write_cache(cache_file: Path, report: ValidationReport) -> None:
    data = {
        "version": CACHE_VERSION,
        "source": report.source,
        "n_images": report.n_images,
        "n_boxes": report.n_boxes,
        "n_backgrounds": report.n_backgrounds,
        "n_missing_labels": report.n_missing_labels,
        "full_decode": report.full_decode,
        "problems": [{"file": p.file, "line": p.line, "problem": p.problem} for p in report.problems],
        "clipped": [{"file": p.file, "line": p.line, "problem": p.problem} for p in report.clipped],
        # float32 -> Python float is exact, and JSON round-trips a float exactly.
        "labels": [labels.tolist() for labels in report.labels],
        "image_sizes": [list(s) if s is not None else None for s in report.image_sizes],
    }
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(data), encoding="utf-8")
    os.replace(partial, cache_file)  # atomic: a reader never sees half a report


def filter_bad(
    images: Sequence[str | Path], report: ValidationReport
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split ``images`` into those without problems and the skipped ones with their reasons.

    An image is skipped whole when the image itself or any line of its label file has a problem (a
    partly read label file would silently drop objects and teach the model that they are background).

    Returns:
        ``(good_images, skipped)``, ``skipped`` as ``[(image, "file:line: problem; ...")]``, both in the
        order of ``images``.

    Raises:
        DataError: a problem that belongs to no image of the list (e.g. an empty split): skipping images
            cannot fix it.
    """
    images = [Path(p) for p in images]
    owner = {str(p): p for p in images}
    owner.update({str(label_path(p)): p for p in images})
    reasons: dict[Path, list[str]] = {}
    for problem in report.problems:
        image = owner.get(problem.file)
        if image is None:
            raise DataError(problem.file, problem.line, f"{problem.problem} (not a problem of one image: "
                                                        "skipping bad samples cannot fix it)")
        reasons.setdefault(image, []).append(str(problem))
    good = [p for p in images if p not in reasons]
    skipped = [(p, "; ".join(reasons[p])) for p in images if p in reasons]
    return good, skipped


def find_duplicate_lines(label_file: str | Path) -> list[DataError]:
    """One :class:`DataError` per line that repeats an earlier line's ``(class, cx, cy, w, h)``.

    Lines are compared by value (``0 0.5 0.5 0.1 0.1`` equals ``0 0.50 0.5 0.1 0.100``); the message
    names the earlier line. Unparseable lines are left to :func:`parse_label_file`. No file, no problem.
    """
    label_file = Path(label_file)
    try:
        text = label_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return []  # missing or unreadable: reported (if at all) by parse_label_file
    first_seen: dict[tuple[float, ...], int] = {}
    duplicates = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        try:
            values = tuple(float(v) for v in line.split())
        except ValueError:
            continue
        if len(values) != LABEL_FIELDS:
            continue
        if values in first_seen:
            duplicates.append(DataError(label_file, lineno, f"duplicate of line {first_seen[values]}"))
        else:
            first_seen[values] = lineno
    return duplicates


def image_channels(mode: str) -> int:
    """Channels a PIL image mode stands for: 1 for grey modes, else 3 (alpha is ignored by the loader)."""
    return 1 if mode in GREY_MODES else 3


def check_channels(image: str | Path, channels: int) -> DataError | None:
    """A :class:`DataError` when the image is not ``channels``-channel (1 grey, 3 colour), else ``None``.

    Reads the header only; an unreadable image is left to :func:`check_image`.
    """
    try:
        with Image.open(image) as opened:
            mode = opened.mode
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None
    found = image_channels(mode)
    if found == channels:
        return None
    plural = "s" if found > 1 else ""
    return DataError(image, None, f"image has {found} channel{plural} (mode {mode}), expected {channels}")
