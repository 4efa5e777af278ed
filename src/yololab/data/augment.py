"""Box-aware augmentation configured from the run config, built on albumentations.

``build_transform(cfg, channels, seed)`` gives the ``transform`` of :class:`yololab.data.YoloDataset`:
``(image HWC uint8, boxes [M, 4] cxcywh normalised, classes [M]) -> the same three``, applied to the
original image before the letterbox. The steps follow ultralytics' order and hyper-parameter names:
mosaic -> affine (scale, translate, rotate) -> HSV -> vertical flip -> horizontal flip. Every step is an
albumentations transform; no box is moved by hand here.

The box rule (albumentations ``BboxParams``, checked after every step): boxes are clipped to the image;
a box whose visible part is less than ``min_visibility`` of its area, as that step moved it, or whose
clipped width or height is under ``min_size`` pixels, is dropped together with its class. With
mosaic off, the affine step is the only one that moves boxes out of the image, so the share is that of
the box after scaling, translation and rotation. Inside the mosaic, boxes are cut to their cell before
the check (as in ultralytics, which also measures the affine step against the mosaic-cut boxes), so
there only ``min_size`` applies. A pipeline without a geometric step (``enabled=False``, or colour
only) returns the boxes unchanged and drops nothing; with every gain and probability 0 the image is
returned unchanged too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

from yololab.data.augment_config import AugmentConfig
from yololab.data.letterbox import DEFAULT_FILL

# (image HWC uint8, boxes [M, 4] cxcywh normalised, classes [M]).
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]
# Returns the raw sample of a random dataset item, drawn with the generator it is given (so a seeded
# transform draws the same items). Needed by mosaic only.
Sampler = Callable[[np.random.Generator], Sample]

MOSAIC_GRID = (2, 2)  # YOLOv4 / ultralytics mosaic: four images around a random centre
MOSAIC_EXTRA = MOSAIC_GRID[0] * MOSAIC_GRID[1] - 1  # images taken besides the primary one
MOSAIC_KEY = "mosaic_metadata"  # albumentations' default metadata key of A.Mosaic
# Where the four images meet, as a share of the output window: anywhere, as in ultralytics, which draws the
# meeting point in [s/2, 3s/2] of its 2s x 2s canvas and keeps the central s x s window.
MOSAIC_CENTRE_RANGE = (0.0, 1.0)
INDEX_FIELD = "index"  # label field: each box's row in the concatenated classes, so classes stay aligned


class Augmenter:
    """The configured pipeline; call it as ``augmenter(image, boxes, classes)``.

    Args:
        cfg: the augmentation config.
        channels: 1 or 3, the channels of the images it receives (grey images skip hue and saturation).
        seed: seed of the one generator behind every random draw; ``None`` draws from the OS.
        sampler: gives other dataset items for mosaic; without it mosaic is skipped.

    In a DataLoader worker the generator is re-seeded from the worker's torch seed (different per
    worker and per epoch, reproducible when the main process is seeded), otherwise every worker would
    repeat the same augmentations. A dataset that calls :meth:`seed_sample` before each item instead draws
    each item's augmentation from (seed, epoch, index) alone: the same in a resumed run as in an unbroken one,
    whatever the number of workers.
    """

    def __init__(
        self, cfg: AugmentConfig, channels: int, seed: int | None = None, sampler: Sampler | None = None
    ):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.cfg = cfg
        self.channels = channels
        self.sampler = sampler
        self._steps = _steps(cfg, channels) if cfg.enabled else []
        self._bbox_params = A.BboxParams(
            format="yolo", label_fields=[INDEX_FIELD], min_visibility=cfg.min_visibility,
            min_width=cfg.min_size, min_height=cfg.min_size, clip=True, filter_invalid_bboxes=True,
        )
        # Colour-only pipelines get no box processor: nothing moves, so nothing is clipped or dropped.
        self._moves_boxes = any(isinstance(step, A.DualTransform) for step in self._steps)
        bbox_params = self._bbox_params if self._moves_boxes else None
        self._pipeline = A.Compose(self._steps, bbox_params=bbox_params) if self._steps else None
        # A.Mosaic has a fixed output size: the last one built, rebuilt when the image size changes (0.4 ms).
        self._mosaic_compose: tuple[tuple[int, int], A.Compose] | None = None
        self._worker: tuple[int, int] | None = None
        self._per_sample = False  # set by seed_sample: the worker's seed no longer decides the draws
        self.seed = seed
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream from ``seed``."""
        # One shared generator for all steps: albumentations' Compose(seed=...) seeds each step with the same
        # seed, which makes e.g. fliplr and flipud of equal probability always fire together.
        self._rng = np.random.default_rng(seed)
        self._py_random = random.Random(seed)
        composes = [self._pipeline, self._mosaic_compose[1] if self._mosaic_compose else None]
        for compose in composes:
            if compose is not None:
                compose.set_random_state(self._rng, self._py_random)

    def seed_sample(self, epoch: int, index: int) -> None:
        """Draw the next item's augmentation (mosaic partners included) from ``(seed, epoch, index)`` alone; a
        no-op without a seed (draws from the OS)."""
        if self.seed is None:
            return
        self._per_sample = True
        self.reseed(int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]))

    def __call__(self, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray) -> Sample:
        """``image [H, W, C] uint8, boxes [M, 4] cxcywh normalised, classes [M]`` -> the same, augmented.

        Boxes come back float32 ``[K, 4]`` cxcywh normalised to the output image, ``K <= M`` (more with
        mosaic); ``classes [K]`` keep their dtype and stay aligned with the surviving boxes.
        """
        image, boxes, classes, _ = self.apply(image, boxes, classes)
        return image, boxes, classes

    def apply(self, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
              masks: np.ndarray | None = None):
        """:meth:`__call__` that also carries ``masks [N, H, W]`` through the same geometry (not mosaic).

        Returns ``(image, boxes, classes, masks)``; ``masks`` is ``None`` when none were given.
        """
        boxes, classes = _check_sample(image, boxes, classes, self.channels)
        self._follow_worker()
        index = np.arange(len(boxes))
        if self.sampler is not None and self.cfg.enabled and self._rng.random() < self.cfg.mosaic:
            if masks is not None:
                raise ValueError("masks cannot be carried through mosaic; set mosaic=0")
            image, boxes, index, classes = self._mosaic(image, boxes, classes)
        if self._pipeline is not None:
            data = {"image": image}
            if self._moves_boxes:
                data.update(bboxes=boxes, **{INDEX_FIELD: index})
            if masks is not None:
                data["masks"] = masks
            out = self._pipeline(**data)
            image, masks = out["image"], out.get("masks")
            boxes, index = out.get("bboxes", boxes), out.get(INDEX_FIELD, index)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        index = np.rint(np.asarray(index, dtype=np.float64)).astype(np.int64).reshape(-1)
        return image, boxes, classes[index], masks

    def _mosaic(self, image, boxes, classes):
        """Mosaic of ``image`` and three sampled items at ``image``'s size: (image, boxes, index, classes)."""
        height, width = image.shape[:2]
        if self._mosaic_compose is None or self._mosaic_compose[0] != (height, width):
            # Cells of the output size, so each image keeps its scale (ultralytics: a 2s x 2s canvas of
            # images at scale 1, of which the affine step later keeps an s x s window).
            mosaic = A.Mosaic(
                grid_yx=MOSAIC_GRID, target_size=(height, width), cell_shape=(height, width),
                center_range=MOSAIC_CENTRE_RANGE, fill=DEFAULT_FILL, metadata_key=MOSAIC_KEY, p=1,
            )
            compose = A.Compose([mosaic], bbox_params=self._bbox_params)
            compose.set_random_state(self._rng, self._py_random)
            self._mosaic_compose = ((height, width), compose)
        compose = self._mosaic_compose[1]
        extras, all_classes, offset = [], [classes], len(boxes)
        for _ in range(MOSAIC_EXTRA):
            other_image, other_boxes, other_classes = self.sampler(self._rng)
            other_boxes, other_classes = _check_sample(other_image, other_boxes, other_classes, self.channels)
            extras.append({"image": other_image, "bboxes": other_boxes,
                           INDEX_FIELD: offset + np.arange(len(other_boxes))})
            all_classes.append(other_classes)
            offset += len(other_boxes)
        out = compose(image=image, bboxes=boxes, **{INDEX_FIELD: np.arange(len(boxes)), MOSAIC_KEY: extras})
        return out["image"], out["bboxes"], out[INDEX_FIELD], np.concatenate(all_classes)

    def _follow_worker(self) -> None:
        """Re-seed once per DataLoader worker process (and again when the worker is restarted)."""
        from torch.utils.data import get_worker_info  # torch is heavy; only looked up here

        info = get_worker_info()
        if info is not None and not self._per_sample and self._worker != (info.id, info.seed):
            self._worker = (info.id, info.seed)
            self.reseed(info.seed)


def _steps(cfg: AugmentConfig, channels: int) -> list:
    """The albumentations steps after mosaic, in ultralytics' order; steps that do nothing are left out."""
    steps: list = []
    if cfg.scale > 0 or cfg.translate > 0 or cfg.degrees > 0:
        steps.append(A.Affine(
            scale=(1 - cfg.scale, 1 + cfg.scale), keep_ratio=True,  # one gain for x and y, as ultralytics
            translate_percent=(-cfg.translate, cfg.translate), rotate=(-cfg.degrees, cfg.degrees),
            rotate_method="largest_box",  # the box of the rotated corners, as ultralytics for boxes
            border_mode=cv2.BORDER_CONSTANT, fill=DEFAULT_FILL, fill_mask=0, p=1,
        ))
    colour = channels == 3
    hue, saturation = (cfg.hsv_h, cfg.hsv_s) if colour else (0.0, 0.0)
    if hue > 0 or saturation > 0 or cfg.hsv_v > 0:
        # Brightness is a multiplicative factor on RGB, which is exactly a gain on HSV value; hue is an
        # additive shift in fractions of the circle, as ultralytics' hsv_h.
        steps.append(A.ColorJitter(brightness=cfg.hsv_v, contrast=0, saturation=saturation, hue=hue, p=1))
    if cfg.flipud > 0:
        steps.append(A.VerticalFlip(p=cfg.flipud))
    if cfg.fliplr > 0:
        steps.append(A.HorizontalFlip(p=cfg.fliplr))
    return steps


def _check_sample(image: np.ndarray, boxes, classes, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one sample; returns ``boxes`` as float32 ``[M, 4]`` and ``classes`` as an ``[M]`` array."""
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if not isinstance(image, np.ndarray) or dtype != np.uint8 or len(shape) != 3 or shape[2] != channels:
        kind = type(image).__name__
        raise ValueError(f"augmentation expects an [H, W, {channels}] uint8 image, got {kind} {dtype} "
                         f"{shape}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    if len(classes) != len(boxes):
        raise ValueError(f"augmentation got {len(boxes)} boxes but {len(classes)} classes")
    return boxes, classes


def build_transform(
    cfg: AugmentConfig, channels: int, seed: int | None = None, sampler: Sampler | None = None
) -> Augmenter:
    """The ``YoloDataset`` transform for ``cfg``: ``(image, boxes, classes) -> (image, boxes, classes)``.

    Deterministic for a given ``seed`` (in the main process; see :class:`Augmenter` for workers).
    """
    return Augmenter(cfg, channels, seed=seed, sampler=sampler)
