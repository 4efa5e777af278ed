"""Compare loss presets on the same data and budget: final val mAP and per-scale statistics.

Usage: .venv/bin/python benchmarks/presets.py [--data data/digits/data.yaml] [--epochs 4]
       [--presets yololab,darknet,keras-yolo3,ultralytics] [--project runs/presets]
Makes the digits data first when the default data.yaml is missing. Prints one row per preset.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from yololab.config import build_config
from yololab.data import make_digits
from yololab.engine.train import train

DEFAULT_DATA = Path("data/digits/data.yaml")
DEFAULT_PRESETS = "yololab,darknet,keras-yolo3,tf2-yolov3,ultralytics,paper"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--presets", default=DEFAULT_PRESETS)
    parser.add_argument("--project", default="runs/presets")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra key=value")
    args = parser.parse_args()
    if args.data == DEFAULT_DATA and not args.data.exists():
        make_digits(args.data.parent, seed=0)

    rows = []
    for name in args.presets.split(","):
        cfg = build_config({"preset": name, "project": args.project, "name": name,
                            "data": {"data": str(args.data)}, "train": {"epochs": args.epochs}},
                           ["optim.lr=0.003", *args.overrides])
        start = time.perf_counter()
        result = train(cfg, exist_ok=True, progress="none")
        val = [m for m in result.metrics if m["split"] == "val"][-1]
        scales = sorted({k.split("/")[-1] for k in val if k.startswith("stat/iou/")})
        ious = " ".join(f"{val.get(f'stat/iou/{s}') or float('nan'):.2f}" for s in scales)
        obj = " ".join(f"{val.get(f'stat/obj_pos/{s}') or float('nan'):.2f}" for s in scales)
        rows.append((name, val["mAP50"], val["mAP50_95"], ious, obj, time.perf_counter() - start))

    print(f"\n{args.epochs} epochs on {args.data}, lr 3e-3 (AdamW, warm-up + cosine)")
    print(f"{'preset':<18}{'mAP50':>8}{'mAP50_95':>10}  {'val IoU per scale':<20}{'val obj_pos per scale':<24}{'s':>6}")
    for name, m50, m5095, ious, obj, secs in rows:
        print(f"{name:<18}{m50:>8.3f}{m5095:>10.3f}  {ious:<20}{obj:<24}{secs:>6.0f}")


if __name__ == "__main__":
    main()
