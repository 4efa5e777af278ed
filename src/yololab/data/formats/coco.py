"""COCO detection JSON (``instances_<split>.json``) as :class:`Annotations`, and back.

Reading: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations`` (``id``,
``image_id``, ``category_id``, ``bbox = [x, y, w, h]`` in pixels, ``iscrowd``) and ``categories``
(``id``, ``name``). Category ids become contiguous classes ``0 .. C - 1`` ordered by id. Crowd
annotations (``iscrowd = 1``) are left out and counted in ``Annotations.skipped``.

Writing: ``out_dir/annotations/instances_<split>.json`` and ``out_dir/images/<split>/``, each
``file_name`` relative to its split's image folder (as COCO's ``train2017/``); image ids and
annotation ids count from 1, class ``c`` is category id ``c + 1``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from yololab.data.errors import DataError
from yololab.data.formats.records import (
    SKIP_CROWD,
    Annotations,
    ImageRecord,
    check_boxes,
    check_image_side,
    find_image,
    place_images,
    prepare_output,
)

JSON_PREFIX = "instances_"  # COCO's name for detection annotation files: instances_val2017.json
ANNOTATION_FOLDER = "annotations"
# Significant digits of pixel values written: 5e-11 relative, far below 1e-6 px for any real image,
# and short numbers instead of float noise such as 12.300000000000001.
PIXEL_DIGITS = 10


def read_coco(source: str | Path, image_root: str | Path | None = None) -> Annotations:
    """Read one COCO JSON file, or every ``instances_*.json`` of a folder (or its ``annotations/``).

    The split is the file name less ``instances_`` (``instances_val2017.json`` -> ``val2017``). Images
    are looked up under ``image_root``, or else beside the JSON, in ``../images/<split>``, ``../<split>``,
    ``../images`` and ``..``; each must exist and have the size the JSON gives.
    """
    files = _json_files(Path(source))
    merged: Annotations | None = None
    for json_path in files:
        split = json_path.stem.removeprefix(JSON_PREFIX)
        try:
            text = json_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(json_path, None, f"cannot read JSON: {err}") from err
        ann = parse_coco(text, json_path, split)
        roots = [Path(image_root)] if image_root is not None else _image_roots(json_path, split)
        for record in ann.splits[split]:
            record.path = _find_image(record, roots, json_path)
        if merged is None:
            merged = ann
        elif ann.names != merged.names:
            raise DataError(json_path, None, f"categories {ann.names} differ from {merged.names} of {files[0]}")
        else:
            merged.splits.update(ann.splits)
            merged.skipped.update(ann.skipped)
    return merged


def _json_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    for folder in (source / ANNOTATION_FOLDER, source):
        files = sorted(folder.glob(f"{JSON_PREFIX}*.json"))
        if files:
            return files
    raise DataError(source, None, f"no {JSON_PREFIX}*.json in it or in its {ANNOTATION_FOLDER}/ folder")


def _image_roots(json_path: Path, split: str) -> list[Path]:
    here, up = json_path.parent, json_path.parent.parent
    return [here, up / "images" / split, up / split, up / "images", up]


def _find_image(record: ImageRecord, roots: list[Path], json_path: Path) -> Path:
    path, size = find_image(record.path, roots, json_path)
    if size != (record.height, record.width):
        raise DataError(json_path, None, f"image {path} is {size[1]}x{size[0]} but the JSON says "
                                         f"{record.width}x{record.height}")
    return path


def parse_coco(text: str | bytes, file: str | Path, split: str = "train") -> Annotations:
    """Parse COCO JSON text; record paths are the ``file_name`` values as written.

    Raises :class:`DataError` naming ``file`` and the JSON line (parse errors) or the image /
    annotation / category id at fault.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(file, err.lineno, f"invalid JSON at column {err.colno}: {err.msg}") from err
    # Nesting deeper than the recursion limit, bytes that are not UTF-8/16/32, integers longer than
    # Python's 4300-digit conversion limit (a ValueError).
    except (RecursionError, ValueError) as err:
        raise DataError(file, None, f"invalid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DataError(file, None, "expected an object with images, annotations, categories")
    images, annotations, categories = (_list_of_objects(data, key, file)
                                       for key in ("images", "annotations", "categories"))
    class_of, names = _categories(categories, file)
    records, by_id = _images(images, file)
    boxes = {image_id: [] for image_id in by_id}
    n_crowd = 0
    for index, item in enumerate(annotations):
        where = f"annotation id {item['id']!r}" if _is_id(item.get("id")) else f"annotations[{index}]"

        def fail(problem: str, where=where) -> DataError:
            return DataError(file, None, f"{where}: {problem}")

        image_id, category_id = item.get("image_id"), item.get("category_id")
        if not _is_id(image_id) or image_id not in by_id:
            raise fail(f"image_id {image_id!r} is not the id of an image")
        if not _is_id(category_id) or category_id not in class_of:
            raise fail(f"category_id {category_id!r} is not the id of a category")
        crowd = item.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, bool):
            raise fail(f"iscrowd must be 0 or 1, got {crowd!r}")
        if crowd:
            n_crowd += 1
            skipped = by_id[image_id].skipped
            skipped[SKIP_CROWD] = skipped.get(SKIP_CROWD, 0) + 1
            continue
        boxes[image_id].append((_xywh(item.get("bbox"), fail), class_of[category_id], fail))
    for image_id, record in by_id.items():
        found = boxes[image_id]
        xyxy = [(x, y, x + w, y + h) for (x, y, w, h), _, _ in found]
        record.boxes = check_boxes(np.array(xyxy).reshape(-1, 4), record.width, record.height,
                                   lambda i, problem, found=found: found[i][2](problem))
        record.classes = np.array([cls for _, cls, _ in found], dtype=np.int64)
    return Annotations(names=names, splits={split: records}, skipped={split: {SKIP_CROWD: n_crowd}})


def _list_of_objects(data: dict, key: str, file) -> list[dict]:
    items = data.get(key)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise DataError(file, None, f"'{key}' must be a list of objects")
    return items


def _is_id(value) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _categories(categories: list[dict], file) -> tuple[dict, list[str]]:
    """``{category id: class index}`` (classes ordered by id) and the class names."""
    by_id = {}
    for index, item in enumerate(categories):
        cat_id, name = item.get("id"), item.get("name")
        if not isinstance(cat_id, int) or isinstance(cat_id, bool) or cat_id in by_id:
            raise DataError(file, None, f"categories[{index}]: id {cat_id!r} is not a new integer id")
        if not isinstance(name, str) or not name:
            raise DataError(file, None, f"category id {cat_id}: name {name!r} is not a non-empty string")
        by_id[cat_id] = name
    if not by_id:
        raise DataError(file, None, "no categories")
    ids = sorted(by_id)
    return {cat_id: i for i, cat_id in enumerate(ids)}, [by_id[cat_id] for cat_id in ids]


def _images(images: list[dict], file) -> tuple[list[ImageRecord], dict]:
    records, by_id = [], {}
    for index, item in enumerate(images):
        image_id = item.get("id")
        where = f"image id {image_id!r}" if _is_id(image_id) else f"images[{index}]"

        def fail(problem: str, where=where) -> DataError:
            return DataError(file, None, f"{where}: {problem}")

        if not _is_id(image_id) or image_id in by_id:
            raise fail("id is missing, not an integer or string, or repeated")
        name = item.get("file_name")
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise fail(f"file_name {name!r} is not a file name")
        width = check_image_side(item.get("width"), "width", fail)
        height = check_image_side(item.get("height"), "height", fail)
        record = ImageRecord(Path(name), width, height, np.zeros((0, 4)), np.zeros(0))
        records.append(record)
        by_id[image_id] = record
    return records, by_id


def _xywh(bbox, fail) -> tuple[float, float, float, float]:
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise fail(f"bbox must be a list [x, y, w, h], got {bbox!r}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in bbox):
        raise fail(f"bbox values must be numbers, got {bbox!r}")
    try:
        values = tuple(float(v) for v in bbox)
    except OverflowError:  # an integer too large for a float
        raise fail(f"bbox value out of range in {bbox!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise fail(f"non-finite value in bbox {bbox!r}")
    return values


def write_coco(ann: Annotations, out_dir: str | Path) -> list[Path]:
    """Write ``annotations/instances_<split>.json`` and ``images/<split>/`` per split.

    Images are hard-linked or copied under their own file names; ``out_dir`` must be absent or empty.
    Returns the JSON paths.
    """
    out_dir = prepare_output(out_dir)
    categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(ann.names)]
    written = []
    for split, records in ann.splits.items():
        place_images(records, out_dir / "images" / split)
        data = {"info": {"description": f"{split} split"}, "licenses": [], "images": [],
                "annotations": [], "categories": categories}
        for image_id, record in enumerate(records, start=1):
            data["images"].append({"id": image_id, "file_name": Path(record.path).name,
                                   "width": record.width, "height": record.height})
            for (x1, y1, x2, y2), cls in zip(record.boxes.tolist(), record.classes.tolist(), strict=True):
                x, y, w, h = (_short(v) for v in (x1, y1, x2 - x1, y2 - y1))
                data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id,
                                            "category_id": cls + 1, "bbox": [x, y, w, h],
                                            "area": _short(w * h), "iscrowd": 0})
        json_path = out_dir / ANNOTATION_FOLDER / f"{JSON_PREFIX}{split}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data))
        written.append(json_path)
    return written


def _short(value: float) -> float:
    return float(f"{value:.{PIXEL_DIGITS}g}")
