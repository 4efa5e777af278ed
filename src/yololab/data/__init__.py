"""Datasets: the YOLO txt format and data.yaml, validation, letterbox, the torch Dataset, splits and
the MNIST-detection generator."""

from yololab.data.augment import AugmentConfig, Augmenter, build_transform
from yololab.data.dataset import YoloDataset, collate, read_image
from yololab.data.digits import make_digits
from yololab.data.errors import DataError
from yololab.data.formats import Annotations, ImageRecord, convert, read_dataset
from yololab.data.letterbox import LetterboxInfo, boxes_from_letterbox, boxes_to_letterbox, letterbox
from yololab.data.splits import split_indices
from yololab.data.yolo_format import (
    DataSpec,
    ValidationReport,
    label_path,
    load_data_yaml,
    parse_label_file,
    read_label_file,
    validate_split,
)

__all__ = [
    "Annotations",
    "AugmentConfig",
    "Augmenter",
    "DataError",
    "DataSpec",
    "ImageRecord",
    "LetterboxInfo",
    "ValidationReport",
    "YoloDataset",
    "boxes_from_letterbox",
    "boxes_to_letterbox",
    "build_transform",
    "collate",
    "convert",
    "label_path",
    "letterbox",
    "load_data_yaml",
    "make_digits",
    "parse_label_file",
    "read_dataset",
    "read_image",
    "read_label_file",
    "split_indices",
    "validate_split",
]
