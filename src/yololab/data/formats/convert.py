"""Tell a dataset's format from its path, read it, write it in another format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from yololab.data.errors import DataError
from yololab.data.formats.coco import ANNOTATION_FOLDER, JSON_PREFIX, read_coco, write_coco
from yololab.data.formats.one_line import read_names, read_one_line
from yololab.data.formats.records import Annotations
from yololab.data.formats.voc import ANNOTATION_FOLDER as VOC_ANNOTATION_FOLDER
from yololab.data.formats.voc import read_voc, write_voc
from yololab.data.formats.yolo import read_yolo, write_yolo
from yololab.data.splits import split_indices
from yololab.data.stratify import stratified_split_indices
from yololab.data.yolo_format import SPLIT_KEYS

SOURCE_FORMATS = ("yolo", "one-line", "coco", "voc")
TARGET_FORMATS = ("yolo", "coco", "voc")
YAML_SUFFIXES = (".yaml", ".yml")
DATA_YAML = "data.yaml"


def detect_format(src: str | Path) -> str:
    """``yolo`` (a data.yaml), ``coco`` (a .json, or a folder with instances_*.json), ``voc`` (a .xml,
    or a folder of them), ``one-line`` (a .txt of ``path x1,y1,x2,y2,cls ...`` lines)."""
    src = Path(src)
    if src.is_file():
        by_suffix = {".json": "coco", ".xml": "voc", ".txt": "one-line", **dict.fromkeys(YAML_SUFFIXES, "yolo")}
        if src.suffix.lower() in by_suffix:
            return by_suffix[src.suffix.lower()]
    elif src.is_dir():
        if (src / DATA_YAML).is_file():
            return "yolo"
        if any(src.glob(f"{JSON_PREFIX}*.json")) or any((src / ANNOTATION_FOLDER).glob(f"{JSON_PREFIX}*.json")):
            return "coco"
        if any(src.glob("*.xml")) or any((src / VOC_ANNOTATION_FOLDER).glob("*.xml")):
            return "voc"
    else:
        raise DataError(src, None, "no such file or folder")
    raise DataError(src, None, f"cannot tell the dataset format; name it as one of {list(SOURCE_FORMATS)}")


def read_dataset(
    src: str | Path, src_format: str | None = None, names: str | Path | Sequence[str] | None = None,
    image_root: str | Path | None = None,
) -> Annotations:
    """Read ``src`` in ``src_format`` (detected when ``None``). ``names`` (a names file or list)
    is for one-line and VOC sources, ``image_root`` for one-line, COCO and VOC."""
    fmt = src_format or detect_format(src)
    if fmt not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; expected one of {list(SOURCE_FORMATS)}")
    if names is not None and fmt in ("yolo", "coco"):
        raise ValueError(f"class names come from the {fmt} files themselves; do not pass names")
    src = Path(src)
    if fmt == "yolo":
        return read_yolo(src / DATA_YAML if src.is_dir() else src)
    if fmt == "coco":
        return read_coco(src, image_root)
    if fmt == "one-line":
        return read_one_line(src, names, image_root)
    if isinstance(names, str | Path):
        names = read_names(names)
    return read_voc(src, names, image_root)


def resplit(ann: Annotations, fractions: Sequence[float], seed: int = 0, stratify: bool = False) -> Annotations:
    """The images of every split of ``ann`` pooled (in source order, an image listed twice once) and split
    anew into ``train``, ``val`` and ``test`` by ``fractions``, as ``yololab data split`` splits them (the same
    fractions and seed pick the same images); each image's skipped objects are counted in its new split."""
    records = list({Path(r.path): r for rs in ann.splits.values() for r in rs}.values())
    indices = (stratified_split_indices([r.classes for r in records], fractions, seed) if stratify
               else split_indices(len(records), fractions, seed))
    out = Annotations(names=list(ann.names))
    for key, part in zip(SPLIT_KEYS, indices, strict=False):
        if len(part):
            out.splits[key] = [records[i] for i in part]
            out.skipped[key] = dict(sum((Counter(records[i].skipped) for i in part), Counter()))
    return out


def convert(
    src: str | Path, dst: str | Path, to: str = "yolo", src_format: str | None = None,
    names: str | Path | Sequence[str] | None = None, image_root: str | Path | None = None,
    split: Sequence[float] | None = None, seed: int = 0, stratify: bool = False,
) -> tuple[Annotations, list[Path]]:
    """Convert the dataset at ``src`` into ``dst`` (absent or empty) in format ``to``.

    ``split``: train, val[, test] fractions to split the images anew (:func:`resplit`), so that each image is
    written to the folder of the split it ends in; by default the source's own splits are kept.

    Returns what was written and the files written: ``[data.yaml]`` for YOLO, one
    ``instances_<split>.json`` per split for COCO, one ``Annotations/<stem>.xml`` per image for VOC.
    """
    if to not in TARGET_FORMATS:
        raise ValueError(f"unknown target format {to!r}; expected one of {list(TARGET_FORMATS)}")
    ann = read_dataset(src, src_format, names, image_root)
    if split is not None:
        ann = resplit(ann, split, seed, stratify)
    if to == "yolo":
        written = [write_yolo(ann, dst)]
    else:
        written = write_coco(ann, dst) if to == "coco" else write_voc(ann, dst)
    return ann, written
