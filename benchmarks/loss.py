"""What the loss costs, against a memory floor and (optionally) against the network it trains.

For every loss preset: forward + backward of ``YoloLoss`` alone on random raw outputs shaped like yolov3's
three heads (batch 16, 416x416: grids 13, 26, 52, 3 anchors each), in a dense case (80 classes, 10 truths per
image, 160 in all) and a sparse one (1 class, 3 truths per image). The floor is what any loss must do at
least: read the head outputs once and write their gradient once. It is measured as forward + backward of the
sum of the raw outputs (one read, then one full-size gradient write), round-robin with the presets, and
each preset's ratio to it is printed. Target: every preset at most 5x the floor.

    .venv/bin/python benchmarks/loss.py [--repeats N] [--quick] [--threads N] [--profile PRESET] [--network]

``--network`` also times one forward + backward step of yolov3-tiny (two heads) and prints the loss's share
of it. ``--profile PRESET`` prints the torch operators that take the time in that preset's loss. The ratio
uses medians; the minimum is printed as the least disturbed figure. The load average is printed before and
after, as the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from yololab.loss import PRESETS, YoloLoss, preset
from yololab.model import Darknet

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "tests" / "data" / "darknet-cfg" / "yolov3-tiny.cfg"
BATCH = 16
IMAGE_SIZE = 416  # yolov3.cfg's and yolov3-tiny.cfg's width and height
YOLOV3_ANCHORS = (  # yolov3.cfg, pixels at 416, in the order of its [yolo] layers
    ((116, 90), (156, 198), (373, 326)), ((30, 61), (62, 45), (59, 119)), ((10, 13), (16, 30), (33, 23)))
YOLOV3_STRIDES = (32, 16, 8)
FLOOR_TARGET = 5.0  # every preset at most 5x the memory floor
SEED = 0
# Box sides drawn uniformly in this range, as fractions of the input side (about 8 to 208 pixels at 416).
MIN_BOX_SIDE, MAX_BOX_SIDE = 0.02, 0.5

TARGET_SHARE = 0.02  # the loss should cost at most 2 % of the network step...
STRETCH_SHARE = 0.01  # ...ideally at most 1 %

LOSS_WARMUP = 3
DEFAULT_REPEATS = 20
QUICK_REPEATS = 5
# The network step takes seconds on a small CPU: one warm-up, then a few timed steps per case.
NET_WARMUP = 1
NET_REPEATS = 3
QUICK_NET_REPEATS = 1
PROFILE_STEPS = 5
PROFILE_ROWS = 15


@dataclass(frozen=True)
class Case:
    name: str
    num_classes: int
    truths_per_image: int


CASES = (
    Case("dense", num_classes=80, truths_per_image=10),  # COCO's class count
    Case("sparse", num_classes=1, truths_per_image=3),  # a single-class detector on sparse images
)


def random_targets(case: Case, generator: torch.Generator) -> Tensor:
    """[BATCH * truths_per_image, 6] (image, class, cx, cy, w, h) normalised, every box inside the image."""
    n = BATCH * case.truths_per_image
    image = torch.arange(BATCH).repeat_interleave(case.truths_per_image).float()
    cls = torch.randint(case.num_classes, (n,), generator=generator).float()
    wh = MIN_BOX_SIDE + (MAX_BOX_SIDE - MIN_BOX_SIDE) * torch.rand(n, 2, generator=generator)
    centre = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=generator)
    return torch.cat((image[:, None], cls[:, None], centre, wh), 1)


def random_raw(anchors, strides, num_classes: int, generator: torch.Generator) -> list[Tensor]:
    """Leaf logits shaped like the heads: per scale [BATCH, A, S/stride, S/stride, 5 + C]."""
    return [
        torch.randn(BATCH, len(a), IMAGE_SIZE // s, IMAGE_SIZE // s, 5 + num_classes, generator=generator)
        .requires_grad_(True)
        for a, s in zip(anchors, strides, strict=True)
    ]


def floor_step(raw: list[Tensor]) -> Callable[[], None]:
    """One read of every head output (their sum) and one write of its full-size gradient (backward)."""

    def step() -> None:
        for r in raw:
            r.grad = None
        torch.stack([r.sum() for r in raw]).sum().backward()

    return step


def median_ms(step: Callable[[], None], warmup: int, repeats: int) -> float:
    """Median wall time of ``step`` in milliseconds over ``repeats`` calls after ``warmup`` calls."""
    return statistics.median(interleaved_ms({"step": step}, warmup, repeats)["step"])


def interleaved_ms(steps: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall times in ms of every step, run round-robin (one call of each per round) so that a change in the
    load of a shared machine hits all of them alike. ``warmup`` untimed rounds first."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def loss_step(loss: YoloLoss, raw: list[Tensor], targets: Tensor) -> Callable[[], None]:
    def step() -> None:
        for r in raw:
            r.grad = None
        loss(raw, targets).total.backward()

    return step


def network_step(model: Darknet, images: Tensor) -> Callable[[], None]:
    """model(images) -> sum of all raw outputs -> backward: the network's own cost, no loss."""

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.stack([r.sum() for r in model(images)]).sum().backward()

    return step


def profile(name: str, step: Callable[[], None]) -> None:
    """Print the operators with the largest self CPU time over PROFILE_STEPS steps (after one warm-up)."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILE_STEPS):
            step()
    print(f"\n### profile: {name} (times summed over {PROFILE_STEPS} steps)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=PROFILE_ROWS))


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed loss repeats per preset and case (default {DEFAULT_REPEATS}, "
                             f"--quick {QUICK_REPEATS})")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, one timed network step per case")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--profile", metavar="PRESET", choices=sorted(PRESETS),
                        help="also print the operator profile of this preset's loss")
    parser.add_argument("--network", action="store_true", help="also time a yolov3-tiny step (two heads)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    net_repeats = QUICK_NET_REPEATS if args.quick else NET_REPEATS
    if args.threads:
        torch.set_num_threads(args.threads)

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}, load average (1, 5, 15 min) {load()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          f"({affinity} usable)")
    print(f"batch {BATCH} at {IMAGE_SIZE}x{IMAGE_SIZE}, yolov3 heads (strides {YOLOV3_STRIDES})")
    print(f"loss and floor: median of {repeats} after {LOSS_WARMUP} warm-up rounds, interleaved\n")

    start = time.perf_counter()
    rows = []
    for case in CASES:
        generator = torch.Generator().manual_seed(SEED)
        anchors = [torch.tensor(a, dtype=torch.float32) for a in YOLOV3_ANCHORS]
        targets = random_targets(case, generator)
        raw = random_raw(anchors, YOLOV3_STRIDES, case.num_classes, generator)
        steps = {"floor": floor_step(raw)}
        steps.update({
            name: loss_step(YoloLoss(preset(name), anchors, YOLOV3_STRIDES, case.num_classes), raw, targets)
            for name in PRESETS
        })
        times = interleaved_ms(steps, LOSS_WARMUP, repeats)
        floor = statistics.median(times.pop("floor"))
        for name, t in times.items():
            rows.append((name, case.name, statistics.median(t), min(t), floor))
        if args.profile:
            profile(f"{args.profile}, {case.name}", steps[args.profile])
    dense_mb = sum(r.numel() for r in random_raw(anchors, YOLOV3_STRIDES, 80, generator)) * 4 / 1e6
    print(f"head outputs: dense {dense_mb:.0f} MB read + the same written\n")

    print(f"| preset | case | loss ms (median) | loss ms (min) | floor ms | × floor | ≤ {FLOOR_TARGET:g}× |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name, case_name, loss_ms, loss_min, floor in rows:
        ratio = loss_ms / floor
        print(f"| {name} | {case_name} | {loss_ms:.1f} | {loss_min:.1f} | {floor:.1f} | {ratio:.2f} | "
              f"{'yes' if ratio <= FLOOR_TARGET else 'no'} |")
    if args.network:
        network_shares(rows, net_repeats)
    print(f"\n{time.perf_counter() - start:.0f} s; load average after: {load()}")


def network_shares(rows: list[tuple[str, str, float, float, float]], net_repeats: int) -> None:
    """The loss's share of one yolov3-tiny forward + backward step on the same batch size and input."""
    net_ms = {}
    for case in CASES:
        generator = torch.Generator().manual_seed(SEED)
        model = Darknet.from_cfg(CFG, num_classes=case.num_classes).train()
        images = torch.rand(BATCH, model.channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        net_ms[case.name] = median_ms(network_step(model, images), NET_WARMUP, net_repeats)
    print(f"\nyolov3-tiny step (sum of raw outputs as loss): median of {net_repeats} after {NET_WARMUP} warm-up")
    print("| preset | case | loss ms | tiny step ms | share % | ≤ 2 % | ≤ 1 % |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- |")
    for name, case_name, loss_ms, _, _ in rows:
        share = loss_ms / net_ms[case_name]
        print(f"| {name} | {case_name} | {loss_ms:.1f} | {net_ms[case_name]:.0f} | {100 * share:.2f} | "
              f"{'yes' if share <= TARGET_SHARE else 'no'} | {'yes' if share <= STRETCH_SHARE else 'no'} |")


if __name__ == "__main__":
    main()
