"""The sparse-data case study of docs/case-study-sparse.md: same data, model and budget, five loss set-ups.

Usage: .venv/bin/python benchmarks/case_study.py [--out runs/case_study] [--epochs 8] [--runs NAME,NAME]

1. ``yololab data make sparse`` at 256 px (1,500 / 250 / 250 images, seed 0) and a copy of it whose labels
   are written y-first (``class cy cx h w``: x and y swapped, the mis-encoding of the trials).
2. Anchors fitted to the training boxes by k-means (``yololab anchors --write-cfg``) into the packaged
   ``yolov3-tiny-3l-small`` cfg, used by every run.
3. Runs: keras-yolo3 as the seeds' team used it (MSE objectness, obj_scale 5 and 50: loss weights 25 and
   2,500 since the scale sits inside the square), ultralytics, yololab, and yololab on the mis-encoded labels;
   then yololab and ultralytics again with the change the doctor suggested for them.
4. The doctor's findings of each run, ``compare.html`` over all runs, excerpt PNGs (statistics, gradient
   shares, histograms of all runs overlaid), ``summary.json`` and a table of the final numbers.
``--summarise-only`` redoes step 4 on finished runs (anchor fit, findings and reports with the current code).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from yololab.anchors import anchor_fit_report
from yololab.commands.anchors import anchors_command
from yololab.config import build_config
from yololab.data import make_sparse
from yololab.diagnostics import plots
from yololab.diagnostics.doctor import DoctorConfig, diagnose_run, false_positives_per_truth
from yololab.diagnostics.report import compare_runs, load_run, write_report
from yololab.engine.train import train
from yololab.model import Darknet

IMGSZ = 256
SPLITS = {"train": 1500, "val": 250, "test": 250}
BASE_CFG = "yolov3-tiny-3l-small"
LR = 3e-3
SUMMARY_STATS = ("iou", "iou_prior", "obj_pos", "obj_neg")  # last val epoch, per scale, in summary.json
# name -> (dataset, preset, extra overrides)
RUNS = {
    "keras-obj5": ("sparse", "keras-yolo3", ["loss.obj_weight=25"]),
    "keras-obj50": ("sparse", "keras-yolo3", ["loss.obj_weight=2500"]),
    "ultralytics": ("sparse", "ultralytics", []),
    "yololab": ("sparse", "yololab", []),
    "yololab-swapped-xy": ("swapped", "yololab", []),
    # the doctor's suggestion for the two runs with low but well-separated objectness, applied
    "yololab-obj2": ("sparse", "yololab", ["loss.obj_weight=2"]),
    "ultralytics-obj2-one": ("sparse", "ultralytics", ["loss.obj_weight=2", "loss.obj_target=one"]),
}


def swap_xy(src: Path, dst: Path) -> None:
    """Copy a YOLO dataset to ``dst`` with every label line rewritten ``class cy cx h w`` (images linked,
    other files such as caches left out)."""
    if dst.exists():
        shutil.rmtree(dst)
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".txt" and "labels" in path.parts:
            lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
            target.write_text("".join(f"{c} {y} {x} {h} {w}\n" for c, x, y, w, h in lines))
        elif path.name == "data.yaml":
            target.write_text(path.read_text().replace(str(src.resolve()), str(dst.resolve())))
        elif "images" in path.parts:
            target.symlink_to(path.resolve())


def fitted_cfg(data_yaml: Path, out: Path) -> Path:
    """``yololab anchors DATA --cfg BASE_CFG --write-cfg OUT``: the base cfg with k-means anchors."""
    anchors_command(data_yaml, img_size=IMGSZ, cfg=BASE_CFG, write_cfg_path=out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/case_study"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--summarise-only", action="store_true", help="re-read finished runs, train nothing")
    args = parser.parse_args()
    data = {"sparse": args.out / "data" / "sparse", "swapped": args.out / "data" / "sparse-swapped-xy"}
    if not (data["sparse"] / "data.yaml").exists():
        make_sparse(data["sparse"], SPLITS["train"], SPLITS["val"], SPLITS["test"], img_size=IMGSZ, seed=0)
    if not (data["swapped"] / "data.yaml").exists():
        swap_xy(data["sparse"], data["swapped"])
    model_cfg = fitted_cfg(data["sparse"] / "data.yaml", args.out / "sparse.cfg")

    names = args.runs.split(",")
    if not args.summarise_only:
        for name in names:
            dataset, preset, extra = RUNS[name]
            cfg = build_config({"preset": preset, "project": str(args.out / "runs"), "name": name,
                                "data": {"data": str(data[dataset] / "data.yaml"), "imgsz": IMGSZ, "batch": 16},
                                "model": {"cfg": str(model_cfg)}, "train": {"epochs": args.epochs}},
                               [f"optim.lr={LR}", *extra])
            start = time.perf_counter()
            train(cfg, exist_ok=True, progress="none")
            print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    summarise(args.out, names, data, model_cfg)


def summarise(out: Path, names: list[str], data: dict[str, Path], model_cfg: Path) -> None:
    """Refresh each run's anchor fit, findings and report with the current code, then write summary.json,
    compare.html and the excerpt PNGs of docs/case-study-sparse.md."""
    model = Darknet.from_cfg(model_cfg)
    summary, runs, run_dirs = [], [], [out / "runs" / name for name in names]
    fp_conf = DoctorConfig().fp_conf  # the confidence the doctor counts false positives at
    for name, run_dir in zip(names, run_dirs, strict=True):
        fit = anchor_fit_report(data[RUNS[name][0]] / "data.yaml", model.anchors, model.strides, IMGSZ)
        (run_dir / "anchor_fit.json").write_text(json.dumps(fit, indent=2))
        findings = diagnose_run(run_dir)
        write_report(run_dir)
        run = load_run(run_dir)
        runs.append(run)
        val = [row for row in run.rows if row["split"] == "val"][-1]
        scales = sorted({k.split("/")[-1] for k in val if k.startswith("stat/iou/")})
        summary.append({
            "run": name, "mAP50": val["mAP50"], "mAP50_95": val["mAP50_95"],
            **{f"{stat}/{s}": val.get(f"stat/{stat}/{s}") for stat in SUMMARY_STATS for s in scales},
            **{f"fp_per_truth/{s}": false_positives_per_truth(run.histograms, int(s[1:]), fp_conf).get(val["epoch"])
               for s in scales},
            "findings": [f"{f.severity} {f.rule}" + (f" s{f.scale}" if f.scale is not None else "")
                         for f in findings]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    compare_runs(run_dirs, out / "compare.html")
    curves = [(run.label, run.rows) for run in runs]
    plots.stats_grid(curves).savefig(out / "stats.png", dpi=plots.DPI)
    plots.grad_share_grid(curves, model.strides).savefig(out / "grad_shares.png", dpi=plots.DPI)
    plots.histogram_grid([(run.label, run.histograms) for run in runs]).savefig(out / "histograms.png", dpi=plots.DPI)

    print(f"\n{IMGSZ} px, batch 16, AdamW lr {LR:g}; last epoch on the {SPLITS['val']} validation images")
    print(f"{'run':<20}{'mAP50':>7}{'mAP50_95':>9}   findings")
    for row in summary:
        print(f"{row['run']:<20}{row['mAP50']:>7.3f}{row['mAP50_95']:>9.3f}   {'; '.join(row['findings'])}")


if __name__ == "__main__":
    main()
