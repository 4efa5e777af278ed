"""Datasets: the YOLO txt format and data.yaml, validation, letterbox, the torch Dataset, splits and
the MNIST-detection generator."""

from yololab.data.augment import AugmentConfig, Augmenter, build_transform
from yololab.data.dataset import YoloDataset, collate, read_image
from yololab.data.digits import make_digits
from yololab.data.errors import DataError
from yololab.data.formats import Annotations, ImageRecord, convert, read_dataset
from yololab.data.letterbox import LetterboxInfo, boxes_from_letterbox, boxes_to_letterbox, letterbox
from yololab.data.sparse import make_sparse
from yololab.data.splits import split_indices
from yololab.data.stats import dataset_stats, plot_stats
from yololab.data.stratify import stratified_split_indices
from yololab.data.validation_cache import filter_bad, validate_cached
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
    "dataset_stats",
    "filter_bad",
    "label_path",
    "letterbox",
    "load_data_yaml",
    "make_digits",
    "make_sparse",
    "parse_label_file",
    "plot_stats",
    "read_dataset",
    "read_image",
    "read_label_file",
    "split_indices",
    "stratified_split_indices",
    "validate_cached",
    "validate_split",
]
