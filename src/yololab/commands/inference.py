"""``yololab eval``, ``yololab detect`` and ``yololab export``: a trained run put to use.

Heavy modules (torch, Lightning, matplotlib, onnx) are imported inside the commands, so ``yololab --help``
does not load them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from yololab.commands.messages import fail

console = Console()
CHECK_IMAGES = 4  # images of the run's validation split that an export is checked on
PLOT_FILES = {"pr": "pr_curve.png", "f1": "f1_curve.png", "confusion": "confusion_matrix.png"}
WeightsOption = Annotated[str, typer.Option("--weights", help="Checkpoint of a run folder: best (best val mAP50), "
                                                              "last, or a .ckpt path.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or mps.")]


def _fail(message: str) -> None:
    fail(console, message)


def metrics_file(split: str) -> str:
    """``<split>_metrics.json`` in the run folder; ``test_metrics.json`` is what the report's summary reads."""
    return f"{split}_metrics.json"


# ------------------------------------------------------------------------------------------------ eval
def evaluate_run(run_or_ckpt: Path, data: Path | None, split: str, batch: int, imgsz: int | None,
                 weights: str = "best", device: str = "cpu", with_thresholds: bool = False) -> Any:
    """COCO metrics of a checkpoint on a split (default: the run's own dataset); with ``with_thresholds``
    returns ``(metrics, threshold analysis)``."""
    from yololab.data import load_data_yaml
    from yololab.detect import resolve_checkpoint, resolve_device
    from yololab.engine.checkpoint import load_module
    from yololab.engine.split_predictions import split_map
    from yololab.evaluate.thresholds import threshold_analysis

    checkpoint, _ = resolve_checkpoint(run_or_ckpt, weights)
    module = load_module(checkpoint)
    cfg = module.cfg
    spec = load_data_yaml(data or Path(cfg.data.data or ""))
    size = imgsz or cfg.data.imgsz
    result, dets, truths = split_map(module, spec, split, batch, size, resolve_device(device))
    metrics = {**result, "split": split, "weights": str(checkpoint), "input_size": size}
    if not with_thresholds:
        return metrics
    return metrics, threshold_analysis(dets, truths, module.names)


def size_table(result: dict) -> Table:
    """AP by object size: COCO's small / medium / large, then the dataset's own size bins (if it has any)."""
    table = Table(title=f"AP by object size (box area w*h in pixels² of the {result.get('input_size', '')} px "
                        "network input, after letterbox; both ends included)")
    for col in ("size", "area", "truths", "AP50", "AP50_95"):
        table.add_column(col)
    rows = [(f"COCO {name}", r) for name, r in result["by_size"].items()]
    rows += [(f"bin {name}", r) for name, r in result["by_bin"].items()]  # AP@0.5 only
    for name, r in rows:
        lo, hi = r["area"]
        ap50_95 = f"{r['mAP50_95']:.4f}" if "mAP50_95" in r else "-"
        table.add_row(escape(name), f"{lo:g} - {hi:g}", str(r["n_truths"]), f"{r['mAP50']:.4f}", ap50_95)
    return table


def _write_threshold_plots(analysis: dict, folder: Path) -> list[Path]:
    from yololab.diagnostics.threshold_plots import confusion_figure, f1_figure, pr_figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, make in (("pr", pr_figure), ("f1", f1_figure), ("confusion", confusion_figure)):
        path = folder / PLOT_FILES[key]
        make(analysis).savefig(path, dpi=100)
        written.append(path)
    return written


def eval_command(
    run: Annotated[Path, typer.Argument(help="Run folder or .ckpt file.")],
    data: Annotated[Path | None, typer.Option("--data", help="data.yaml (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate: train, val or test.")] = "test",
    batch: Annotated[int, typer.Option()] = 16,
    imgsz: Annotated[int | None, typer.Option(help="Input size (default: the run's).")] = None,
    weights: WeightsOption = "best",
    device: DeviceOption = "cpu",
    out: Annotated[Path | None, typer.Option(help="Also write the metrics as JSON here.")] = None,
) -> None:
    """COCO mAP@0.5 and mAP@0.5:0.95 per class and per object size on a whole split, and the confidence
    threshold with the best F1.

    AP by size: COCO's small (< 32²), medium and large (> 96²) box areas, and the data.yaml's own size_bins
    when it declares some, all in pixels² of the network input after letterbox.

    On a run folder it writes RUN/<split>_metrics.json (test_metrics.json is what the report shows), records
    the best-F1 confidence in RUN/thresholds.json (detect's default; the val split's is preferred) and the
    PR, F1 and confusion-matrix plots in RUN/eval/<split>/, and refreshes RUN/report.html.

    Example: yololab eval runs/demo --split val
    """
    from yololab.detect import DetectError, resolve_checkpoint, run_folder_of
    from yololab.evaluate.thresholds import record_thresholds

    try:
        checkpoint, note = resolve_checkpoint(run, weights)
        console.print(f"using {escape(note)}")
        result, analysis = evaluate_run(checkpoint, data, split, batch, imgsz, device=device, with_thresholds=True)
    except (DetectError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    title = f"{run} on {split}: mAP@0.5 {result['mAP50']:.4f}  mAP@0.5:0.95 {result['mAP50_95']:.4f}"
    table = Table(title=title)
    for col in ("class", "AP50", "AP50_95", "truths"):
        table.add_column(col)
    for cls, row in result["per_class"].items():
        table.add_row(str(cls), f"{row['AP50']:.4f}", f"{row['AP50_95']:.4f}", str(row["n_truths"]))
    console.print(table)
    console.print(size_table(result))
    if analysis["best_conf"] is None:
        console.print("F1 is 0 at every confidence (nothing found at IoU 0.5): no threshold recorded")
    else:
        console.print(f"best F1 {analysis['best_f1']:.3f} (mean over classes, IoU 0.5) at confidence "
                      f"{analysis['best_conf']:.2f}")
    folder = run_folder_of(checkpoint)
    if folder is not None:
        (folder / metrics_file(split)).write_text(json.dumps(result, indent=2))
        record_thresholds(folder, split, analysis)
        plots = _write_threshold_plots(analysis, folder / "eval" / split)
        console.print(f"wrote {folder / metrics_file(split)}, {folder / 'thresholds.json'}, "
                      f"{', '.join(p.name for p in plots)} in {plots[0].parent}")
        if (folder / "report.html").exists():
            from yololab.diagnostics.report import write_report

            write_report(folder)
    if out:
        out.write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------------------------ detect
def detect_command(
    run: Annotated[Path, typer.Argument(help="Run folder or .ckpt file.")],
    sources: Annotated[list[str], typer.Argument(help="Images, videos, folders or glob patterns ('imgs/*.jpg').")],
    out: Annotated[Path, typer.Option(help="Output folder: annotated PNGs / MP4s, detections.json, "
                                           "coco_results.json.")] = Path("runs/detect"),
    conf: Annotated[float | None, typer.Option(help="Score threshold (default: the run's best-F1 confidence "
                                                    "recorded by eval, else 0.25).")] = None,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.45,
    imgsz: Annotated[int | None, typer.Option(help="Input size (default: the run's).")] = None,
    weights: WeightsOption = "best",
    device: DeviceOption = "cpu",
    batch: Annotated[int, typer.Option(help="Images (or video frames) per forward pass.")] = 16,
    save: Annotated[bool, typer.Option(help="Write annotated images and videos (JSON is always written).")] = True,
) -> None:
    """Detect objects in images and videos: boxes drawn to PNG / MP4, detections in source pixels as JSON.

    Example: yololab detect runs/demo data/digits/images/test clip.mp4 'more/*.jpg' --out runs/detect --device cpu
    """
    from yololab.detect import DetectError, detect_sources, list_sources, load

    try:
        paths = list_sources(sources)
        detector = load(run, weights=weights, device=device, conf=conf, iou=iou, imgsz=imgsz)
        console.print(f"using {escape(detector.weights_note)}")
        console.print(f"confidence {detector.conf:g}: {escape(detector.conf_source)}; NMS IoU {detector.iou:g} on "
                      f"{detector.device}")
        summary = detect_sources(detector, paths, out, batch=batch, save_images=save)
    except (DetectError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    frames = f" and {summary.frames} video frames" if summary.frames else ""
    console.print(f"{summary.images} images{frames}: {summary.detections} detections -> {out} "
                  "(detections.json, coco_results.json)")


# ------------------------------------------------------------------------------------------------ export
def _check_images(module, imgsz: int):
    """Up to CHECK_IMAGES letterboxed images of the run's val split as ``[B, C, S, S]``, else random ones."""
    import torch

    from yololab.data import letterbox, load_data_yaml, read_image

    try:
        paths = load_data_yaml(module.cfg.data.data).splits.get("val", [])[:CHECK_IMAGES]
    except (OSError, ValueError, TypeError):
        paths = []
    if not paths:
        generator = torch.Generator().manual_seed(0)
        return torch.rand(CHECK_IMAGES, module.model.channels, imgsz, imgsz, generator=generator), "random images"
    arrays = [letterbox(read_image(p, module.model.channels), (imgsz, imgsz))[0] for p in paths]
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]).float() / 255.0
    return batch, f"{len(paths)} images of the val split"


def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder or .ckpt file.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    nms: Annotated[bool, typer.Option("--nms", help="Put class-aware NMS in the graph (output [D, 7]).")] = False,
    imgsz: Annotated[int | None, typer.Option(help="Fixed input size (default: the run's).")] = None,
    weights: WeightsOption = "best",
    conf: Annotated[float | None, typer.Option(help="NMS score threshold (default: the run's best-F1 "
                                                    "confidence, else 0.25).")] = None,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold.")] = 0.45,
    out: Annotated[Path | None, typer.Option(help="Output file (default: RUN/export/model.onnx or "
                                                  "model.torchscript.pt).")] = None,
) -> None:
    """Export the model with box decoding (and optional NMS) as one graph with a dynamic batch.

    The file is then run (onnxruntime / torch.jit) against PyTorch on the same images and the largest
    difference printed.

    Example: yololab export runs/demo --format onnx --nms
    """
    from yololab.detect import DetectError, resolve_checkpoint, run_folder_of
    from yololab.engine.checkpoint import load_module
    from yololab.evaluate.thresholds import recorded_conf
    from yololab.export import FILE_NAMES, FORMATS, check_export, export_model

    if fmt not in FORMATS:
        _fail(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    try:
        checkpoint, note = resolve_checkpoint(run, weights)
    except DetectError as err:
        _fail(str(err))
    console.print(f"using {escape(note)}")
    module = load_module(checkpoint)
    size = imgsz or module.cfg.data.imgsz
    folder = run_folder_of(checkpoint)
    if conf is None:
        conf, source = recorded_conf(folder)
        if nms:
            console.print(f"NMS confidence {conf:.2f}: {escape(source)}")
    target = out or (folder or checkpoint.parent) / "export" / FILE_NAMES[fmt]
    max_det = module.cfg.train.max_det
    export_model(module.model, module.loss.coder, target, fmt, size, nms, conf, iou, max_det)
    images, what = _check_images(module, size)
    check = check_export(module.model, module.loss.coder, target, fmt, images, nms, conf, iou, max_det)
    runtime = "onnxruntime" if fmt == "onnx" else "torch.jit.load"
    console.print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB, input [B, {module.model.channels}, "
                  f"{size}, {size}], {'detections [D, 7]' if nms else 'predictions [B, N, 5 + C]'})")
    console.print(f"checked in {runtime} against PyTorch on {what}: max abs difference {check.max_abs_diff:.3g} "
                  f"({check.detail})")
