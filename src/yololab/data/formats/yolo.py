"""YOLO txt labels and ``data.yaml`` (ultralytics convention) as :class:`Annotations`.

Reading reuses :mod:`yololab.data.yolo_format` (the yaml, the image list, the label checks); writing
lays out ``images/<split>/``, ``labels/<split>/`` and ``data.yaml`` as ultralytics does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from yololab.data.formats.records import Annotations, ImageRecord, place_images, prepare_output, split_key
from yololab.data.yolo_format import check_image, label_path, load_data_yaml, parse_label_file

# Significant digits of the normalised values written: the relative error 5e-11 is ~3e-8 px on a
# 640-pixel image, so pixel -> YOLO -> pixel round trips are exact to well under 1e-6 px.
LABEL_DIGITS = 10


def read_yolo(data_yaml: str | Path) -> Annotations:
    """Read a YOLO dataset named by its ``data.yaml``; boxes become pixel xyxy.

    Image sizes come from the image headers. Labels are validated by
    :func:`yololab.data.parse_label_file`; the first bad line raises its :class:`DataError`.
    """
    spec = load_data_yaml(data_yaml)
    ann = Annotations(names=list(spec.names))
    for split, images in spec.splits.items():
        ann.splits[split] = [_read_image_labels(image, spec.num_classes) for image in images]
        ann.skipped[split] = {}
    return ann


def _read_image_labels(image: Path, num_classes: int) -> ImageRecord:
    size, problem = check_image(image, full_decode=False)
    if problem is not None:
        raise problem
    height, width = size
    label_file = label_path(image)
    labels, problems = parse_label_file(label_file, num_classes)
    if problems:
        raise problems[0]
    rows = _float64_labels(label_file) if len(labels) else np.zeros((0, 5))
    classes = rows[:, 0].astype(np.int64)
    boxes = np.stack([rows[:, 1] - rows[:, 3] / 2, rows[:, 2] - rows[:, 4] / 2,
                      rows[:, 1] + rows[:, 3] / 2, rows[:, 2] + rows[:, 4] / 2], axis=1)
    # parse_label_file has clipped boxes that overshoot [0, 1] by its tolerance; do the same here.
    boxes = boxes.clip(0.0, 1.0) * np.array([width, height, width, height], dtype=np.float64)
    return ImageRecord(path=image, width=width, height=height, boxes=boxes, classes=classes)


def _float64_labels(label_file: Path) -> np.ndarray:
    """The label rows ``[M, 5]`` at full float64 precision (parse_label_file gives float32, ~1e-5 px
    on a 640-pixel image, too coarse for lossless conversion). Only called once the file validated."""
    lines = label_file.read_text(encoding="utf-8-sig").splitlines()
    return np.array([[float(v) for v in line.split()] for line in lines if line.strip()], dtype=np.float64)


def write_yolo(ann: Annotations, out_dir: str | Path) -> Path:
    """Write ``out_dir/images/<key>/``, ``labels/<key>/*.txt`` and ``data.yaml``; return the yaml path.

    ``<key>`` is ``train``/``val``/``test`` (``train2017`` -> ``train``). Images are hard-linked or
    copied under their own file names; each gets a label file, empty for a background image.
    ``out_dir`` must be absent or empty.
    """
    keys = {split: split_key(split) for split in ann.splits}
    if len(set(keys.values())) < len(keys):
        raise ValueError(f"splits {list(keys)} map to the same data.yaml keys {list(keys.values())}")
    out_dir = prepare_output(out_dir)
    for split, records in ann.splits.items():
        images = place_images(records, out_dir / "images" / keys[split])
        for record, image in zip(records, images, strict=True):
            target = label_path(image)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(yolo_label_lines(record)))
    spec = {"path": str(out_dir), **{key: f"images/{key}" for key in keys.values()}, "names": ann.names}
    yaml_path = out_dir / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return yaml_path


def yolo_label_lines(record: ImageRecord) -> list[str]:
    """``class cx cy w h`` lines, normalised by the image size, for the record's pixel boxes."""
    x1, y1, x2, y2 = record.boxes.T
    w, h = record.width, record.height
    values = np.stack([(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h], axis=1)
    return [f"{cls} " + " ".join(f"{v:.{LABEL_DIGITS}g}" for v in row) + "\n"
            for cls, row in zip(record.classes.tolist(), values.tolist(), strict=True)]
