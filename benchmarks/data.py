"""Is the training loader fast enough to keep the model busy?

Images per second of the training loader (read + decode + augmentation + letterbox to 416 + collate, batch 16,
2 worker processes) next to images per second of one training step of the small model (yolov3-tiny-3l-small,
10 classes, batch 16 at 416: forward + ``YoloLoss`` with the ``yololab`` preset + backward + optimizer step).
Target: loader / train step >= 2, so the loader is not the bottleneck.

    .venv/bin/python benchmarks/data.py [--data D.yaml ...] [--batches N] [--steps N] [--workers N]
                                        [--no-augment] [--threads N]

Without ``--data`` it makes two small datasets in a temporary folder and measures the loader on each: the MNIST
digits (RGB, written at 416 px) and the sparse detector-like images (grey 480 px, converted to RGB by the
loader). The loader and the train step are timed one after the other, not at the same time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from yololab.data import YoloDataset, collate, load_data_yaml, make_digits
from yololab.data.augment import AugmentConfig, build_transform
from yololab.data.sparse import make_sparse
from yololab.loss import YoloLoss, preset
from yololab.model import Darknet, packaged_cfg

IMAGE_SIZE = 416
BATCH = 16
WORKERS = 2
CHANNELS = 3  # the packaged cfg's [net] channels
NUM_CLASSES = 10
CFG_NAME = "yolov3-tiny-3l-small"
LR = 3e-3  # the demo's AdamW learning rate
TARGET_RATIO = 2.0  # the loader should deliver at least twice what the train step consumes
DEFAULT_BATCHES = 20  # timed loader batches, after one warm-up batch (which also starts the workers)
DEFAULT_STEPS = 3  # timed train steps, after one warm-up step
SEED = 0


def make_datasets(folder: Path, n_images: int) -> dict[str, Path]:
    """Small digits and sparse datasets (train split only matters) -> {name: data.yaml}."""
    return {
        "digits 416 RGB": make_digits(folder / "digits", n_train=n_images, n_val=1, n_test=1, img_size=IMAGE_SIZE,
                                      seed=SEED),
        "sparse 480 grey": make_sparse(folder / "sparse", n_train=n_images, n_val=1, n_test=1, seed=SEED,
                                       workers=1),
    }


def loader_images_per_s(data_yaml: Path, batches: int, workers: int, augment: bool) -> float:
    """Images per second over ``batches`` batches of the shuffled training loader, after one warm-up batch."""
    spec = load_data_yaml(data_yaml)
    transform = build_transform(AugmentConfig(), CHANNELS, seed=SEED) if augment else None
    dataset = YoloDataset(spec.splits["train"], spec.num_classes, IMAGE_SIZE, channels=CHANNELS, transform=transform)
    if len(dataset) < (batches + 1) * BATCH:
        raise SystemExit(f"{data_yaml}: {len(dataset)} training images, need {(batches + 1) * BATCH}")
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, collate_fn=collate,
                        generator=torch.Generator().manual_seed(SEED))
    batch_iter = iter(loader)
    next(batch_iter)  # warm-up: starts the workers
    start = time.perf_counter()
    n_images = sum(len(next(batch_iter)[0]) for _ in range(batches))
    return n_images / (time.perf_counter() - start)


def train_step_images_per_s(data_yaml: Path, steps: int) -> float:
    """Images per second of forward + loss + backward + optimizer step on one real batch (median step)."""
    spec = load_data_yaml(data_yaml)
    dataset = YoloDataset(spec.splits["train"][:BATCH], spec.num_classes, IMAGE_SIZE, channels=CHANNELS)
    images, targets, _ = collate([dataset[i] for i in range(BATCH)])
    torch.manual_seed(SEED)
    model = Darknet.from_cfg(packaged_cfg(CFG_NAME), num_classes=NUM_CLASSES).train()
    loss = YoloLoss(preset("yololab"), model.anchors, model.strides, NUM_CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(model(images), targets).total.backward()
        optimizer.step()

    step()  # warm-up
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return BATCH / statistics.median(seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", help="data.yaml to load (repeatable); default: "
                        "temporary digits and sparse datasets")
    parser.add_argument("--batches", type=int, default=DEFAULT_BATCHES, help="timed loader batches")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed train steps")
    parser.add_argument("--workers", type=int, default=WORKERS, help="loader worker processes")
    parser.add_argument("--no-augment", action="store_true", help="measure the loader without augmentation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the train step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    augment = "off" if args.no_augment else "AugmentConfig() defaults (flips, affine, HSV; mosaic off)"
    print(f"loader: batch {BATCH} at {IMAGE_SIZE}, {args.workers} workers, augmentation {augment}, "
          f"{args.batches} batches after 1 warm-up")
    print(f"train step: {CFG_NAME}, {NUM_CLASSES} classes, batch {BATCH} at {IMAGE_SIZE}, preset yololab, AdamW, "
          f"median of {args.steps} after 1 warm-up\n")

    with tempfile.TemporaryDirectory() as tmp:
        n_images = (args.batches + 1) * BATCH
        datasets = ({str(p): p for p in args.data} if args.data else make_datasets(Path(tmp), n_images))
        loader_rates = {name: loader_images_per_s(path, args.batches, args.workers, not args.no_augment)
                        for name, path in datasets.items()}
        train_rate = train_step_images_per_s(next(iter(datasets.values())), args.steps)

    print("| dataset | loader images/s | train step images/s | ratio | >= 2 |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, rate in loader_rates.items():
        ratio = rate / train_rate
        print(f"| {name} | {rate:.1f} | {train_rate:.1f} | {ratio:.1f} | {'yes' if ratio >= TARGET_RATIO else 'NO'} |")


if __name__ == "__main__":
    main()
