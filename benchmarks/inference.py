"""Inference speed on the CPU: PyTorch (what ``yololab detect`` runs) against ONNX Runtime on the exported graph.

For each packaged cfg at its [net] input size and each batch size, images per second of

- PyTorch: ``yololab.evaluate.runner.predict`` (model forward + box decoding + yololab's NMS), the call that
  ``Detector.predict`` (``yololab detect``, ``yololab.load(run).predict``) makes on a letterboxed batch;
- ONNX Runtime: the graph ``yololab.export.export_model(..., "onnx", with_nms=True)`` writes (forward +
  decoding + ONNX NonMaxSuppression), run in an ``onnx_session`` with the same number of threads.

Letterboxing and image decoding are left out of both (they are the same Python code either way). The two
are timed interleaved (one PyTorch call, one ONNX Runtime call, repeated), so a change in the machine's load
hits them alike; the table gives the median. The models are freshly initialised (the head biases start at
their priors: with detect's default confidence 0.25 nothing passes, so NMS has no work); ``--conf 0.001``
(evaluation's threshold) gives NMS well over a hundred boxes per image, and ``--run RUN`` times a
trained run's best checkpoint with its own thresholds instead. Before timing, each export is checked against
PyTorch (``check_export``) on the timed images.

    .venv/bin/python benchmarks/inference.py [--cfgs NAME,...] [--run RUN] [--batches 1,16] [--repeats N]
                                             [--conf C] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from yololab.config import build_config
from yololab.detect import DEFAULT_IOU, Detector, load
from yololab.engine.train import make_module
from yololab.evaluate.runner import predict
from yololab.evaluate.thresholds import recorded_conf
from yololab.export import check_export, export_model, onnx_session
from yololab.model import Darknet, packaged_cfg, packaged_cfgs

DEFAULT_BATCHES = (1, 16)
DEFAULT_REPEATS = 20  # timed calls per backend and case, after WARMUP untimed ones
WARMUP = 1
SEED = 0
# Paired exported and PyTorch detections agree far closer than this (pixels, scores): a larger gap means the
# two timed pipelines do not compute the same thing.
CHECK_TOL = 1e-2


@dataclass
class Case:
    name: str  # cfg name or run folder
    detector: Detector


def fresh_detector(cfg_name: str, conf: float | None) -> Detector:
    """A Detector for a packaged cfg, freshly initialised (seeded), at the cfg's [net] size, with detect's
    default thresholds (confidence: ``conf`` or detect's default without a thresholds.json)."""
    num_classes = Darknet.from_cfg(packaged_cfg(cfg_name)).num_classes
    torch.manual_seed(SEED)
    module = make_module(build_config({}, [f"model.cfg={cfg_name}"]), [str(i) for i in range(num_classes)])
    model = module.model.eval()
    height, width = model.input_size
    if height != width:
        raise SystemExit(f"{cfg_name}: [net] {width}x{height} is not square")
    return Detector(model=model, coder=module.loss.coder, names=module.names, channels=model.channels, imgsz=height,
                    conf=recorded_conf(None)[0] if conf is None else conf, iou=DEFAULT_IOU,
                    max_det=module.cfg.train.max_det, device=torch.device("cpu"), checkpoint=Path(cfg_name))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def time_case(detector: Detector, batch: int, repeats: int, threads: int, folder: Path) -> dict:
    """Median seconds per call of PyTorch and ONNX Runtime on one random batch, timed interleaved."""
    images = torch.rand(batch, detector.channels, detector.imgsz, detector.imgsz,
                        generator=torch.Generator().manual_seed(SEED))
    args = (detector.conf, detector.iou, detector.max_det)
    path = export_model(detector.model, detector.coder, folder / "model.onnx", "onnx", detector.imgsz, True, *args)
    check = check_export(detector.model, detector.coder, path, "onnx", images, True, *args)
    if check.max_abs_diff > CHECK_TOL:  # unpaired detections are near ties (see match_detections): reported
        raise SystemExit(f"export check failed: {check.detail}, max abs difference {check.max_abs_diff:.3g}")
    session = onnx_session(path, threads)
    feed = {"images": images.numpy()}
    calls = {
        "torch": lambda: predict(detector.model, images, detector.coder, *args),
        "onnxruntime": lambda: session.run(None, feed),
    }
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for repeat in range(WARMUP + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if repeat >= WARMUP:
                seconds[name].append(time.perf_counter() - start)
    detections = sum(len(d) for d in predict(detector.model, images, detector.coder, *args)) / batch
    return {"median": {n: statistics.median(s) for n, s in seconds.items()}, "detections": detections,
            "check": check, "range": {n: (min(s), max(s)) for n, s in seconds.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfgs", default=",".join(packaged_cfgs()), help="packaged cfgs, comma-separated")
    parser.add_argument("--run", type=Path, action="append", help="a trained run folder or .ckpt instead (its "
                        "best checkpoint, size and thresholds; repeatable)")
    parser.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)), help="batch sizes")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed calls per backend and case")
    parser.add_argument("--conf", type=float, default=None, help="score threshold (default: detect's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads of torch and of onnxruntime (default: torch's, one per physical core)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads each, "
          f"{os.cpu_count()} CPUs")
    print(f"load average before: {load_average()}")
    if args.run:
        cases = [Case(str(run), load(run, conf=args.conf)) for run in args.run]
    else:
        cases = [Case(name, fresh_detector(name, args.conf)) for name in args.cfgs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            for batch in batches:
                result = time_case(case.detector, batch, args.repeats, args.threads, Path(tmp))
                rows.append((case, batch, result))
                spread = ", ".join(f"{n} {lo * 1e3:.1f}-{hi * 1e3:.1f} ms" for n, (lo, hi) in result["range"].items())
                print(f"  {case.name} batch {batch}: {spread} per call; export check: {result['check'].detail}",
                      flush=True)
    print(f"load average after: {load_average()}")
    print(f"median of {args.repeats} calls after {WARMUP} warm-up, interleaved; random images; NMS IoU "
          f"{DEFAULT_IOU}\n")
    print("| model | input | batch | conf | detections / image | PyTorch images/s | ONNX Runtime images/s | "
          "ONNX Runtime / PyTorch |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, batch, result in rows:
        det, median = case.detector, result["median"]
        torch_rate, ort_rate = batch / median["torch"], batch / median["onnxruntime"]
        print(f"| {case.name} | {det.imgsz} | {batch} | {det.conf:g} | {result['detections']:.1f} | "
              f"{torch_rate:.1f} | {ort_rate:.1f} | {ort_rate / torch_rate:.2f} |")


if __name__ == "__main__":
    main()
