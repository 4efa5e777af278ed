"""Pascal VOC XML annotations as :class:`Annotations` (read only).

One XML file per image: ``filename``, ``size/width``, ``size/height`` and per object ``name``,
``difficult`` (optional, 0 or 1) and ``bndbox/xmin, ymin, xmax, ymax``. VOC's box values are 1-based
pixel indices, both ends inclusive (a box over pixel columns 10..49, 0-based, is written
``xmin=11 xmax=50``), so the continuous pixel box is ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax,
y2 = ymax``; darknet's ``voc_label.py`` makes the same shift. A VOC writer would add 1 to x1, y1.

Difficult objects are left out and counted (darknet and ultralytics leave them out of training;
VOC's own evaluation ignores them). Errors name the XML file and the element path, such as
``object[2]/bndbox/xmax`` (1-based object index).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yololab.data.errors import DataError
from yololab.data.formats.records import (
    SKIP_DIFFICULT,
    Annotations,
    ImageRecord,
    check_boxes,
    check_image_side,
    find_image,
)

BNDBOX_TAGS = ("xmin", "ymin", "xmax", "ymax")
VOC_INDEX_BASE = 1  # VOC pixel indices start at 1
IMAGE_FOLDER = "JPEGImages"  # VOCdevkit/VOC2007/JPEGImages beside VOCdevkit/VOC2007/Annotations
ANNOTATION_FOLDER = "Annotations"


@dataclass
class VocFile:
    """The content of one VOC XML file; ``boxes`` float64 ``[M, 4]`` continuous pixel xyxy."""

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    names: list[str]  # class name of each box
    n_difficult: int  # difficult objects left out of boxes


def parse_voc(text: str | bytes, file: str | Path) -> VocFile:
    """Parse one VOC XML document. Raises :class:`DataError` naming ``file`` and the line or element."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise DataError(file, err.position[0], f"invalid XML at column {err.position[1] + 1}: {err}") from err
    except ValueError as err:  # e.g. a str document with an encoding declaration it cannot honour
        raise DataError(file, None, f"invalid XML: {err}") from err

    def fail(element: str, problem: str) -> DataError:
        return DataError(file, None, f"{root.tag}/{element}: {problem}")

    filename = _text(root, "filename", fail)
    width = check_image_side(_text(root, "size/width", fail), "width", lambda p: fail("size/width", p))
    height = check_image_side(_text(root, "size/height", fail), "height", lambda p: fail("size/height", p))
    rows, names, places, n_difficult = [], [], [], 0
    for index, obj in enumerate(root.findall("object"), start=1):
        place = f"object[{index}]"
        name = _text(obj, "name", lambda e, p, place=place: fail(f"{place}/{e}", p))
        difficult = obj.findtext("difficult", default="0").strip()
        if difficult not in ("0", "1"):
            raise fail(f"{place}/difficult", f"expected 0 or 1, got {difficult!r}")
        if difficult == "1":
            n_difficult += 1
            continue
        values = [_number(obj, f"bndbox/{tag}", lambda e, p, place=place: fail(f"{place}/{e}", p))
                  for tag in BNDBOX_TAGS]
        xmin, ymin, xmax, ymax = values
        rows.append((xmin - VOC_INDEX_BASE, ymin - VOC_INDEX_BASE, xmax, ymax))
        names.append(name)
        places.append(place)
    boxes = check_boxes(np.array(rows, dtype=np.float64).reshape(-1, 4), width, height,
                        lambda i, problem: fail(f"{places[i]}/bndbox", problem))
    return VocFile(filename, width, height, boxes, names, n_difficult)


def _text(element: ET.Element, path: str, fail: Callable[[str, str], DataError]) -> str:
    found = element.find(path)
    if found is None:
        raise fail(path, "missing element")
    text = (found.text or "").strip()
    if not text:
        raise fail(path, "empty element")
    return text


def _number(element: ET.Element, path: str, fail: Callable[[str, str], DataError]) -> float:
    text = _text(element, path, fail)
    try:
        return float(text)
    except ValueError:
        raise fail(path, f"{text[:40]!r} is not a number") from None


def read_voc(
    source: str | Path | Sequence[str | Path], names: Sequence[str] | None = None,
    image_root: str | Path | None = None, split: str = "train",
) -> Annotations:
    """Read VOC XML files: one file, a folder of them (or its ``Annotations/``), or a list of files.

    Args:
        names: the classes in order; an object of another class is an error. Default: the names
            found, sorted.
        image_root: folder of the images; default the XML's folder, else ``../JPEGImages``.
        split: the split name of all images.
    """
    files = _xml_files(source)
    parsed = []
    for xml_path in files:
        try:
            data = xml_path.read_bytes()
        except OSError as err:
            raise DataError(xml_path, None, f"cannot read XML: {err}") from err
        parsed.append((xml_path, parse_voc(data, xml_path)))
    names = list(names) if names is not None else sorted({n for _, voc in parsed for n in voc.names})
    index = {name: i for i, name in enumerate(names)}
    records = []
    for xml_path, voc in parsed:
        unknown = [n for n in voc.names if n not in index]
        if unknown:
            raise DataError(xml_path, None, f"object name {unknown[0]!r} is not one of the classes {names}")
        image = _find_image(xml_path, voc, image_root)
        records.append(ImageRecord(image, voc.width, voc.height, voc.boxes, [index[n] for n in voc.names]))
    n_difficult = sum(voc.n_difficult for _, voc in parsed)
    return Annotations(names=names, splits={split: records}, skipped={split: {SKIP_DIFFICULT: n_difficult}})


def _xml_files(source) -> list[Path]:
    if not isinstance(source, str | Path):
        return [Path(p) for p in source]
    source = Path(source)
    if source.is_file():
        return [source]
    for folder in (source / ANNOTATION_FOLDER, source):
        files = sorted(folder.glob("*.xml"))
        if files:
            return files
    raise DataError(source, None, f"no .xml files in it or in its {ANNOTATION_FOLDER}/ folder")


def _find_image(xml_path: Path, voc: VocFile, image_root: str | Path | None) -> Path:
    roots = [Path(image_root)] if image_root is not None else [xml_path.parent, xml_path.parent.parent / IMAGE_FOLDER]
    path, size = find_image(voc.filename, roots, xml_path)
    if size != (voc.height, voc.width):
        raise DataError(xml_path, None, f"<size> says {voc.width}x{voc.height} but image {path} is "
                                        f"{size[1]}x{size[0]}")
    return path
