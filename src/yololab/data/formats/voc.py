"""Pascal VOC XML annotations as :class:`Annotations`, and back.

One XML file per image: ``filename``, ``folder`` (optional), ``size/width``, ``size/height`` and per object ``name``,
``difficult`` (optional, 0 or 1) and ``bndbox/xmin, ymin, xmax, ymax``. VOC's box values are 1-based
pixel indices, both ends inclusive (a box over pixel columns 10..49, 0-based, is written
``xmin=11 xmax=50``), so the continuous pixel box is ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax,
y2 = ymax``; darknet's ``voc_label.py`` makes the same shift. :func:`write_voc` adds 1 to x1, y1.

Difficult objects are left out and counted (darknet and ultralytics leave them out of training;
VOC's own evaluation ignores them). Errors name the XML file and the element path, such as
``object[2]/bndbox/xmax`` (1-based object index).

Splits are the devkit's lists ``ImageSets/Main/<split>.txt``, one image stem per line. Among the
lists of that folder, the per-class lists ``<class>_<set>.txt`` (where ``<set>.txt`` is also there)
are not splits, nor ``trainval.txt`` when ``train.txt`` and ``val.txt`` are there (it is their union).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from yololab.data.errors import DataError
from yololab.data.formats.records import (
    SKIP_DIFFICULT,
    Annotations,
    ImageRecord,
    check_boxes,
    check_image_side,
    find_image,
    place_images,
    prepare_output,
)
from yololab.data.yolo_format import SPLIT_KEYS

BNDBOX_TAGS = ("xmin", "ymin", "xmax", "ymax")
VOC_INDEX_BASE = 1  # VOC pixel indices start at 1
IMAGE_FOLDER = "JPEGImages"  # VOCdevkit/VOC2007/JPEGImages beside VOCdevkit/VOC2007/Annotations
ANNOTATION_FOLDER = "Annotations"
SPLIT_LIST_FOLDER = Path("ImageSets") / "Main"  # VOC2007/ImageSets/Main/train.txt: one image stem a line
TRAINVAL = "trainval"  # VOC's list of train + val, not a split of its own when both are there
POSE_UNSPECIFIED = "Unspecified"  # VOC's pose of an object nobody labelled a pose for
# Significant digits of box values written: as COCO's writer, 5e-11 relative, far below 1e-6 px.
PIXEL_DIGITS = 10


@dataclass
class VocFile:
    """The content of one VOC XML file; ``boxes`` float64 ``[M, 4]`` continuous pixel xyxy."""

    filename: str
    folder: str | None  # <folder>: the devkit's dataset name, or (labelImg) the image folder's name
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
    folder = (root.findtext("folder") or "").strip() or None
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
    return VocFile(filename, folder, width, height, boxes, names, n_difficult)


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

    A folder with split lists ``ImageSets/Main/<split>.txt`` is read list by list, each listed stem from
    ``Annotations/<stem>.xml``; XML files in no list are left out (VOC2012's ``Annotations/`` also holds
    the images of its other tasks).

    Args:
        names: the classes in order; an object of another class is an error. Default: the names
            found, sorted.
        image_root: folder of the images; default the XML's folder, else the folder beside it named by the
            XML's ``<folder>`` (``photos/`` beside ``annotations/``), else ``../JPEGImages``.
        split: the split name of all images when there are no split lists.

    Each XML's image is looked up as soon as the XML is read, so a wrong image folder stops at the first file.
    """
    lists = _split_lists(Path(source)) if isinstance(source, str | Path) and Path(source).is_dir() else {}
    files = lists or {split: _xml_files(source)}
    parsed = {}
    for name, xml_paths in files.items():
        parsed[name] = []
        for xml_path in xml_paths:
            voc = _read_xml(xml_path)
            parsed[name].append((xml_path, voc, _find_image(xml_path, voc, image_root)))
    if names is None:
        names = sorted({n for items in parsed.values() for _, voc, _ in items for n in voc.names})
    names = list(names)
    index = {name: i for i, name in enumerate(names)}
    ann = Annotations(names=names)
    for name, items in parsed.items():
        records = []
        for xml_path, voc, image in items:
            unknown = [n for n in voc.names if n not in index]
            if unknown:
                raise DataError(xml_path, None, f"object name {unknown[0]!r} is not one of the classes {names}")
            skipped = {SKIP_DIFFICULT: voc.n_difficult} if voc.n_difficult else {}
            records.append(ImageRecord(image, voc.width, voc.height, voc.boxes, [index[n] for n in voc.names],
                                       skipped))
        ann.splits[name] = records
        ann.skipped[name] = {SKIP_DIFFICULT: sum(voc.n_difficult for _, voc, _ in items)}
    return ann


def _read_xml(xml_path: Path) -> VocFile:
    try:
        data = xml_path.read_bytes()
    except OSError as err:
        raise DataError(xml_path, None, f"cannot read XML: {err}") from err
    return parse_voc(data, xml_path)


def split_list_names(names: Iterable[str]) -> list[str]:
    """The split lists among the names of the lists in ``ImageSets/Main`` (file stems), in the order
    train, val, test, others; per-class lists ``<class>_<set>`` and a redundant ``trainval`` are left out."""
    names = set(names)
    per_class = {n for n in names if any(n.endswith(f"_{other}") for other in names if other != n)}
    union = {TRAINVAL} if {"train", "val"} <= names else set()
    return sorted(names - per_class - union, key=_split_order)


def _split_order(name: str) -> tuple[int, str]:
    keys = [i for i, key in enumerate(SPLIT_KEYS) if name.lower().startswith(key)]
    return (keys[0] if keys else len(SPLIT_KEYS), name)


def _split_lists(root: Path) -> dict[str, list[Path]]:
    """``{split: XML files}`` from ``root/ImageSets/Main/<split>.txt``; empty when there are no lists."""
    lists = {path.stem: path for path in (root / SPLIT_LIST_FOLDER).glob("*.txt")}
    splits = {}
    for name in split_list_names(lists):
        path = lists[name]
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(path, None, f"cannot read split list: {err}") from err
        seen: dict[str, int] = {}
        for line_no, line in enumerate(text.splitlines(), start=1):
            stem = line.strip()  # the whole line: stems may hold spaces
            if not stem:
                continue
            if stem in seen:
                raise DataError(path, line_no, f"image {stem!r} is listed again (first on line {seen[stem]})")
            if not (root / ANNOTATION_FOLDER / f"{stem}.xml").is_file():
                raise DataError(path, line_no, f"no {ANNOTATION_FOLDER}/{stem}.xml for the listed image {stem!r}")
            seen[stem] = line_no
        splits[name] = [root / ANNOTATION_FOLDER / f"{stem}.xml" for stem in seen]
    return splits


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


def image_roots(xml_path: Path, folder: str | None) -> list[Path]:
    """Where an XML's image is looked for without --image-root: beside it, in the sibling folder its
    ``<folder>`` names (labelImg writes the image folder's name there), in the devkit's ``../JPEGImages``."""
    beside = xml_path.parent
    named = [beside.parent / folder] if folder and Path(folder).name == folder else []
    return list(dict.fromkeys([beside, *named, beside.parent / IMAGE_FOLDER]))


def _find_image(xml_path: Path, voc: VocFile, image_root: str | Path | None) -> Path:
    roots = [Path(image_root)] if image_root is not None else image_roots(xml_path, voc.folder)
    path, size = find_image(voc.filename, roots, xml_path)
    if size != (voc.height, voc.width):
        raise DataError(xml_path, None, f"<size> says {voc.width}x{voc.height} but image {path} is "
                                        f"{size[1]}x{size[0]}")
    return path


def write_voc(ann: Annotations, out_dir: str | Path) -> list[Path]:
    """Write the devkit layout: ``Annotations/<stem>.xml`` per image, the images in ``JPEGImages/`` and
    ``ImageSets/Main/<split>.txt`` (one stem a line) per split; return the XML paths in split order.

    Boxes are written in VOC's 1-based inclusive pixel indices, the exact inverse of :func:`parse_voc`:
    ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2`` (the continuous box ``x1 = 10, x2 = 30`` covers
    0-based columns 10..29, 1-based 11..30). Whole numbers are written as integers, as in VOC; a
    fractional box (from COCO or YOLO) keeps its fraction, to ``PIXEL_DIGITS`` significant digits, so that
    reading the files back gives the same boxes (tools that parse VOC values with ``int()`` need whole-pixel
    boxes). ``depth`` is the image's channel count. Images are hard-linked or copied under their own file
    names; ``out_dir`` must be absent or empty.

    All splits share ``JPEGImages/`` and ``Annotations/``, so two images whose names have the same stem
    (``a.png`` in train, ``a.jpg`` or another ``a.png`` in val) are a :class:`DataError` naming both, raised
    before anything is written. A split name that would not read back as a split list (``trainval`` beside
    ``train`` and ``val``, ``x_val`` beside ``val``) is a ValueError.
    """
    kept = split_list_names(ann.splits)
    if len(kept) < len(ann.splits):
        raise ValueError(f"splits {sorted(set(ann.splits) - set(kept))} would read back as VOC's trainval or "
                         f"per-class lists, not as splits; rename them")
    seen: dict[str, tuple[Path, str]] = {}
    for split, records in ann.splits.items():
        for record in records:
            path = Path(record.path)
            key = path.stem.lower()  # case folding: a.PNG and a.png collide on case-insensitive disks
            if key in seen:
                other, other_split = seen[key]
                raise DataError(path, None, f"split {split}: name stem {path.stem!r} is also that of {other} "
                                            f"(split {other_split}); VOC keeps all images in one {IMAGE_FOLDER}/ "
                                            f"and {ANNOTATION_FOLDER}/ folder, so stems must differ: rename one")
            if path.stem != path.stem.strip() or len(path.stem.splitlines()) != 1:
                raise DataError(path, None, f"the name stem {path.stem!r} cannot be one line of "
                                            f"{SPLIT_LIST_FOLDER.as_posix()}/{split}.txt")
            seen[key] = (path, split)
    out_dir = prepare_output(out_dir)
    images = place_images([r for records in ann.splits.values() for r in records], out_dir / IMAGE_FOLDER)
    (out_dir / ANNOTATION_FOLDER).mkdir()
    (out_dir / SPLIT_LIST_FOLDER).mkdir(parents=True)
    written, placed = [], iter(images)
    for split, records in ann.splits.items():
        for record in records:
            image = next(placed)
            xml_path = out_dir / ANNOTATION_FOLDER / f"{image.stem}.xml"
            xml_path.write_text(voc_xml(record, ann.names, out_dir.name, _depth(image)), encoding="utf-8")
            written.append(xml_path)
        (out_dir / SPLIT_LIST_FOLDER / f"{split}.txt").write_text("".join(f"{Path(r.path).stem}\n" for r in records),
                                                                  encoding="utf-8")
    return written


def voc_xml(record: ImageRecord, names: Sequence[str], folder: str, depth: int) -> str:
    """The VOC XML document of one image: ``folder``, ``filename``, ``size`` and one ``object`` per box
    (pose Unspecified, truncated 0, difficult 0, ``bndbox`` in 1-based inclusive indices)."""
    root = ET.Element("annotation")
    _add(root, "folder", folder)
    _add(root, "filename", Path(record.path).name)
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", depth)):
        _add(size, tag, str(value))
    for (x1, y1, x2, y2), cls in zip(record.boxes.tolist(), record.classes.tolist(), strict=True):
        obj = ET.SubElement(root, "object")
        for tag, text in (("name", names[cls]), ("pose", POSE_UNSPECIFIED), ("truncated", "0"), ("difficult", "0")):
            _add(obj, tag, text)
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(BNDBOX_TAGS, (x1 + VOC_INDEX_BASE, y1 + VOC_INDEX_BASE, x2, y2), strict=True):
            _add(bndbox, tag, f"{value:.{PIXEL_DIGITS}g}")
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _add(parent: ET.Element, tag: str, text: str) -> None:
    ET.SubElement(parent, tag).text = text


def _depth(image: Path) -> int:
    """The channel count of an image, from its header (3 for RGB, 1 for grey)."""
    try:
        with Image.open(image) as opened:
            return len(opened.getbands())
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(image, None, f"cannot decode image: {err}") from err
