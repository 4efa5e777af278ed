"""YoloDataModule: datasets and loaders of a data.yaml, validated before training starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from yololab.data import (
    DataSpec,
    YoloDataset,
    collate,
    filter_bad,
    label_path,
    load_data_yaml,
    validate_cached,
    validate_split,
)
from yololab.data.augment import AugmentConfig, build_transform
from yololab.data.yolo_format import BoxPolicy


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """Random order that depends only on (seed, epoch): a resumed run sees the same order as an unbroken one.
    It yields ``(epoch, index)`` keys, from which ``YoloDataset`` seeds each image's augmentation, so a resumed
    run also draws the same augmentations.

    Lightning calls ``set_epoch`` at every epoch start. Under DDP it wraps this sampler in its
    ``DistributedSamplerWrapper``, which forwards ``set_epoch`` and gives each rank its share of these keys: the
    same rule holds there.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter([(self.epoch, index) for index in torch.randperm(self.n, generator=generator).tolist()])

    def __len__(self) -> int:
        return self.n


class YoloDataModule(L.LightningDataModule):
    """Loaders for the splits of ``data_yaml``. Every split used is validated (images decodable, labels
    parseable, classes in range, boxes inside the image) before any loader is made: a bad file stops the run
    before training, with its file and line, instead of crashing a worker mid-epoch."""

    def __init__(self, data_yaml: str | Path | DataSpec, img_size: int, batch_size: int, workers: int, channels: int,
                 seed: int = 0, augment: AugmentConfig | None = None, boxes_outside: BoxPolicy = "refuse"):
        super().__init__()
        self.spec: DataSpec = data_yaml if isinstance(data_yaml, DataSpec) else load_data_yaml(data_yaml)
        self.img_size, self.batch_size, self.workers = img_size, batch_size, workers
        self.channels, self.seed = channels, seed
        self.augment = augment
        self.boxes_outside = boxes_outside
        self.datasets: dict[str, YoloDataset] = {}

    def validate(self, splits: tuple[str, ...] = ("train", "val"), cache_dir: Path | None = None,
                 skip_bad: bool = False, clipped: list | None = None) -> tuple[list[str], list[tuple[Path, str]]]:
        """Check every image and label of the given splits before any loader is made.

        Without ``skip_bad`` any problem raises one DataError listing them (file and line for each); with it,
        bad images are left out of their split and returned with their reasons. ``cache_dir`` reuses the
        result for an unchanged dataset. Returns one summary line per split and the skipped images. Images
        without a label file are legal (background, as in ultralytics) but are counted and named in the
        summary, never skipped silently. Boxes clipped under ``boxes_outside="clip"`` are counted in the
        summary and appended to ``clipped`` (one DataError-style note per box).
        """
        lines, skipped = [], []
        for split in splits:
            source = f"{self.spec.yaml_path} [{split}]"
            images = self._images(split)
            if cache_dir is None:
                report = validate_split(images, self.spec.num_classes, source=source,
                                        boxes_outside=self.boxes_outside)
            else:
                report = validate_cached(images, self.spec.num_classes, cache_dir, source=source,
                                         boxes_outside=self.boxes_outside)
            if skip_bad and not report.ok:
                good, bad = filter_bad(images, report)
                self.spec.splits[split] = good
                skipped += bad
            else:
                report.raise_if_errors()
            line = f"{source}: {report.n_images} images, {report.n_boxes} boxes, {report.n_backgrounds} background"
            if report.n_missing_labels:
                first = next(p for p in images if not label_path(p).exists())
                line += f" ({report.n_missing_labels} without a label file, e.g. {label_path(first)})"
            if skip_bad and not report.ok:
                line += f"; {len(images) - len(self.spec.splits[split])} bad images skipped"
            if report.clipped:
                line += f"; {len(report.clipped)} boxes clipped to the image"
                if clipped is not None:
                    clipped += report.clipped
            lines.append(line)
        return lines, skipped

    def _images(self, split: str) -> list[Path]:
        if split not in self.spec.splits:
            raise ValueError(f"{self.spec.yaml_path}: no '{split}' split")
        return self.spec.splits[split]

    def dataset(self, split: str) -> YoloDataset:
        """The split's dataset; only the training split is augmented."""
        if split not in self.datasets:
            transform = None
            if split == "train" and self.augment is not None and self.augment.enabled:
                transform = build_transform(self.augment, self.channels, seed=self.seed)
            self.datasets[split] = YoloDataset(self._images(split), self.spec.num_classes, self.img_size,
                                               channels=self.channels, transform=transform,
                                               boxes_outside=self.boxes_outside)
        return self.datasets[split]

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        data = self.dataset(split)
        sampler = EpochSeededSampler(len(data), self.seed) if shuffle else None
        return DataLoader(
            data, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers, collate_fn=collate,
            persistent_workers=self.workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def fixed_batch(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``batch_size`` images of ``split``, letterboxed and never augmented, collated:
        ``(images [B, C, h, w], targets [N, 6])``. The same every time, also after a resume."""
        images = self._images(split)[: self.batch_size]
        data = YoloDataset(images, self.spec.num_classes, self.img_size, channels=self.channels,
                           boxes_outside=self.boxes_outside)
        batch_images, targets, _ = collate([data[i] for i in range(len(data))])
        return batch_images, targets

    def transfer_batch_to_device(self, batch: tuple, device: torch.device, dataloader_idx: int) -> tuple:
        """Move images and targets; the per-image metadata (frozen dataclasses) stays on the host."""
        if isinstance(batch, torch.Tensor):  # the model summary's example input: images only
            return batch.to(device)
        images, targets, metas = batch
        return images.to(device, non_blocking=True), targets.to(device, non_blocking=True), metas

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")
