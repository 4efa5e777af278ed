"""What the diagnostics cost: the demo's training with every diagnostic off, then with the defaults on.

Usage: .venv/bin/python benchmarks/diagnostics.py [--data data/digits/data.yaml] [--epochs 3] [--repeats 1]

Both set-ups train the same model on the same data in the same process, alternating (off, on, off, on …) so
that a change of machine load hits both alike. Prints the wall time of each training, the ratio on / off,
and the time spent inside each diagnostics callback (wrapped with a timer), so the figure splits into its
parts. The darknet statistics the loss returns are always computed and count as training.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from pathlib import Path

from yololab.cli import DEMO_DEFAULTS
from yololab.config import build_config
from yololab.data import make_digits
from yololab.diagnostics.callbacks import GradientShare, ReportCallback, ValidationHistograms
from yololab.diagnostics.doctor_callback import DoctorCallback
from yololab.engine.train import train

DEFAULT_DATA = Path("data/digits/data.yaml")
OFF = ["diagnostics.histograms=false", "diagnostics.grad_share_every=0", "diagnostics.doctor=false",
       "diagnostics.report=false"]
TIMED_HOOKS = {
    ValidationHistograms: ("on_validation_epoch_start", "on_validation_batch_end", "on_validation_epoch_end"),
    GradientShare: ("on_train_batch_end",),
    DoctorCallback: ("on_train_epoch_end",),
    ReportCallback: ("on_train_epoch_end",),
}
SECONDS: dict[str, float] = defaultdict(float)


def _timed(cls: type, hook: str) -> None:
    original = getattr(cls, hook)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            SECONDS[cls.__name__] += time.perf_counter() - start

    setattr(cls, hook, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--project", default="runs/bench_diagnostics")
    args = parser.parse_args()
    if args.data == DEFAULT_DATA and not args.data.exists():
        make_digits(args.data.parent, seed=0)
    for cls, hooks in TIMED_HOOKS.items():
        for hook in hooks:
            _timed(cls, hook)

    walls: dict[str, list[float]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for setting, overrides in (("off", OFF), ("on", [])):
            cfg = build_config({**DEMO_DEFAULTS, "project": args.project, "name": f"{setting}{repeat}",
                                "data": {**DEMO_DEFAULTS["data"], "data": str(args.data)},
                                "train": {"epochs": args.epochs}}, overrides)
            start = time.perf_counter()
            train(cfg, exist_ok=True, progress="none")
            walls[setting].append(time.perf_counter() - start)
            print(f"{setting:>3} run {repeat}: {walls[setting][-1]:.1f} s", flush=True)

    off, on = sum(walls["off"]), sum(walls["on"])
    print(f"\n{args.epochs} epochs x {args.repeats} on {args.data} (demo settings), wall time of train()")
    print(f"diagnostics off {off:.1f} s, on {on:.1f} s: ratio on/off {on / off:.3f} ({(on - off) / off:+.1%})")
    print("time inside the diagnostics callbacks (runs with them on), share of the 'on' time:")
    for name, seconds in sorted(SECONDS.items(), key=lambda item: -item[1]):
        print(f"  {name:<22}{seconds:>8.1f} s  {seconds / on:>6.1%}")
    print(f"  {'all callbacks':<22}{sum(SECONDS.values()):>8.1f} s  {sum(SECONDS.values()) / on:>6.1%}")


if __name__ == "__main__":
    main()
