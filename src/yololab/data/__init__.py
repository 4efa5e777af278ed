"""Datasets: the YOLO txt format and data.yaml, validation, letterbox, the torch Dataset, splits and
the MNIST-detection generator. Names are imported on first use, so the light modules (errors, formats,
validation) load without torch or albumentations."""

from yololab.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "augment": ["Augmenter", "build_transform"],
    "augment_config": ["AugmentConfig"],
    "dataset": ["YoloDataset", "collate", "read_image"],
    "digits": ["make_digits"],
    "errors": ["DataError"],
    "formats": ["Annotations", "ImageRecord", "convert", "read_dataset"],
    "letterbox": ["LetterboxInfo", "boxes_from_letterbox", "boxes_to_letterbox", "letterbox"],
    "photo": ["make_photo"],
    "sparse": ["make_sparse"],
    "splits": ["split_indices"],
    "stats": ["dataset_stats", "plot_stats"],
    "stratify": ["stratified_split_indices"],
    "validation_cache": ["filter_bad", "validate_cached"],
    "yolo_format": ["DataSpec", "ValidationReport", "label_path", "load_data_yaml", "parse_label_file",
                    "read_label_file", "validate_split"],
})
