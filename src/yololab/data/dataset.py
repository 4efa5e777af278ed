"""A torch Dataset over YOLO-format images and labels, and the batch collate function.

Each item is letterboxed to the network input; its targets are ``(class, cx, cy, w, h)`` normalised
to the letterboxed input. ``collate`` adds the image index in front, giving the batch target
contract ``[N, 6] = (image_index, class, cx, cy, w, h)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from yololab.data.errors import DataError
from yololab.data.letterbox import boxes_to_letterbox, letterbox
from yololab.data.yolo_format import LABEL_FIELDS, SUPPORTED_MODES, BoxPolicy, label_path, read_label_file

UINT8_MAX = 255
UINT16_MAX = 65535
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L"})  # PIL modes of 16-bit grey images

# (image HWC uint8, boxes [M, 4] normalised cxcywh, classes [M]) -> the same three, transformed.
Transform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Read an image as uint8 ``[H, W, channels]``; ``channels`` is 1 (grey) or 3 (RGB).

    Grey and RGB are converted into each other as needed (PIL's ITU-R 601 luma for RGB -> grey);
    16-bit grey is scaled to 8 bits by its full range, 0..65535 -> 0..255. Alpha is dropped.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(path, None, f"cannot decode image: {err}") from err
    if image.mode not in SUPPORTED_MODES:
        raise DataError(path, None, f"unsupported image mode {image.mode!r}")
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(wide * (UINT8_MAX / UINT16_MAX)).clip(0, UINT8_MAX).astype(np.uint8))
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array.reshape(array.shape[0], array.shape[1], channels)


class YoloDataset(Dataset):
    """Letterboxed images and their targets.

    Args:
        images: image paths; each label file is found by :func:`label_path`.
        num_classes: classes must lie in ``0 .. num_classes - 1``.
        img_size: network input ``(h, w)``, or one int for a square input.
        channels: 1 or 3; images are converted to it.
        transform: optional augmentation applied to the original image before the letterbox,
            ``(image HWC uint8, boxes [M, 4] cxcywh normalised, classes [M]) -> same``.
        boxes_outside: ``"refuse"`` a box partly outside the image (DataError) or ``"clip"`` it to the image.

    Labels are read and validated once here and kept in memory (``self.labels``, float32
    ``[M, 5]`` per image, boxes normalised to the original image); a bad line raises
    :class:`DataError` now rather than mid-epoch.

    Items are ``(image float32 [C, h, w] in [0, 1], targets float32 [M, 5] (class, cx, cy, w, h)
    normalised to the letterboxed input, meta dict(path, orig_size=(h, w), letterbox=LetterboxInfo))``.
    ``orig_size`` is the size of the image that was letterboxed (after ``transform``).
    """

    def __init__(
        self,
        images: Sequence[str | Path],
        num_classes: int,
        img_size: int | tuple[int, int],
        channels: int = 3,
        transform: Transform | None = None,
        boxes_outside: BoxPolicy = "refuse",
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.images = [Path(p) for p in images]
        self.num_classes = num_classes
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.channels = channels
        self.transform = transform
        self.labels = [read_label_file(label_path(p), num_classes, boxes_outside) for p in self.images]
        if transform is not None and getattr(transform, "sampler", False) is None:
            transform.sampler = self.random_raw_item  # mosaic draws its other images from this dataset

    def __len__(self) -> int:
        return len(self.images)

    def raw_item(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Item ``index`` before augmentation and letterbox: (image HWC uint8, boxes [M, 4] cxcywh normalised
        to the image, classes [M])."""
        labels = self.labels[index]
        return read_image(self.images[index], self.channels), labels[:, 1:], labels[:, 0]

    def random_raw_item(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A random item's raw sample: the source of the extra images of a mosaic (a bound method, so it
        pickles into spawned DataLoader workers)."""
        return self.raw_item(int(rng.integers(len(self))))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Item ``key``: an index, or ``(epoch, index)`` (``EpochSeededSampler``'s keys), which seeds the
        augmentation of this item from the epoch and index (``Augmenter.seed_sample``)."""
        epoch, index = key if isinstance(key, tuple) else (None, key)
        path = self.images[index]
        image, boxes, classes = self.raw_item(index)
        if self.transform is not None:
            if epoch is not None and hasattr(self.transform, "seed_sample"):
                self.transform.seed_sample(epoch, index)
            image, boxes, classes = self.transform(image, boxes, classes)
            boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            classes = np.asarray(classes, dtype=np.float32).reshape(-1)
        out, info = letterbox(image, self.img_size)
        boxes = boxes_to_letterbox(boxes, info, self.img_size)
        targets = np.concatenate([classes[:, None], boxes], axis=1).astype(np.float32)

        tensor = torch.from_numpy(out).permute(2, 0, 1).float().div_(UINT8_MAX)  # [C, h, w]
        meta = {"path": str(path), "orig_size": (int(image.shape[0]), int(image.shape[1])), "letterbox": info}
        return tensor, torch.from_numpy(targets).reshape(-1, LABEL_FIELDS), meta


Item = tuple[torch.Tensor, torch.Tensor, dict]


def collate(batch: Sequence[Item]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Items -> ``(images [B, C, h, w], targets [N, 6] (image_index, class, cx, cy, w, h), metas)``."""
    images = torch.stack([item[0] for item in batch])
    targets = torch.cat(
        [torch.cat([torch.full((len(t), 1), float(i)), t], dim=1) for i, (_, t, _) in enumerate(batch)]
    )
    return images, targets, [item[2] for item in batch]
