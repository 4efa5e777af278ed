"""Dataset formats: YOLO txt + data.yaml, one-line annotation files, COCO JSON and Pascal VOC XML,
read into one in-memory :class:`Annotations` (pixel xyxy boxes) and written as YOLO, COCO or VOC."""

from yololab.data.formats.coco import parse_coco, read_coco, write_coco
from yololab.data.formats.convert import SOURCE_FORMATS, TARGET_FORMATS, convert, detect_format, read_dataset
from yololab.data.formats.one_line import parse_one_line, read_names, read_one_line
from yololab.data.formats.records import Annotations, ImageRecord
from yololab.data.formats.voc import VocFile, parse_voc, read_voc, write_voc
from yololab.data.formats.yolo import read_yolo, write_yolo

__all__ = [
    "SOURCE_FORMATS",
    "TARGET_FORMATS",
    "Annotations",
    "ImageRecord",
    "VocFile",
    "convert",
    "detect_format",
    "parse_coco",
    "parse_one_line",
    "parse_voc",
    "read_coco",
    "read_dataset",
    "read_names",
    "read_one_line",
    "read_voc",
    "read_yolo",
    "write_coco",
    "write_voc",
    "write_yolo",
]
