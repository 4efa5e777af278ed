"""The stride-4 packaged cfg trains with the loss over its four scales; objects of a few pixels land on stride 4."""

from __future__ import annotations

import json
import math

import torch

from yololab.loss import YoloLoss, preset
from yololab.model import Darknet, packaged_cfg
from yololab.recipes import TINY_BOX_PX, TINY_BOX_SHARE

IMG = 128
STEPS = 12
LR = 3e-3


def test_stride4_cfg_trains_a_few_steps():
    torch.manual_seed(0)
    model = Darknet.from_cfg(packaged_cfg("yolov3-tiny-4l-small"), num_classes=2)
    loss_fn = YoloLoss(preset("yololab"), model.anchors, model.strides, num_classes=2)
    images = torch.zeros(2, 3, IMG, IMG)
    # (image, class, cx, cy, w, h) normalised: two 4 x 4 px objects and one 60 x 40 px object, drawn in.
    targets = torch.tensor([[0, 0, 0.25, 0.25, 4 / IMG, 4 / IMG], [1, 1, 0.7, 0.3, 4 / IMG, 4 / IMG],
                            [1, 0, 0.5, 0.6, 60 / IMG, 40 / IMG]])
    for i, _, cx, cy, w, h in targets.tolist():
        x1, y1, x2, y2 = (round(v * IMG) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        images[int(i), :, y1:y2, x1:x2] = 1.0
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR)
    totals = []
    for _ in range(STEPS):
        breakdown = loss_fn(model(images), targets)
        assert math.isfinite(breakdown.total.item())
        optimiser.zero_grad()
        breakdown.total.backward()
        optimiser.step()
        totals.append(breakdown.total.item())
    assert totals[-1] < 0.5 * totals[0], totals
    assert sorted({k.split("/")[1] for k in breakdown.terms}) == ["s0", "s1", "s2", "s3"]
    # 4 x 4 px objects fit the 3 x 4 .. 6 x 8 anchors of the stride-4 head (scale 3), the 60 x 40 one a coarser head.
    assert breakdown.stats["n_pos/s3"].item() >= 2
    assert sum(breakdown.stats[f"n_pos/s{s}"].item() for s in range(3)) >= 1


SPARSE_IMG = 128  # generated image side
TRAIN_IMGSZ = 64  # network input: the letterbox halves every side, so areas shrink by 4
BINS = {"3x2-5x4": [6 / 4, 20 / 4], "6x6-40x40": [36 / 4, 1600 / 4], "40x30-200x150": [1200 / 4, 128 * 128 / 4]}


def test_sparse_run_logs_evaluates_and_reports_ap_by_size(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from typer.testing import CliRunner

    from yololab.cli import app
    from yololab.config import build_config
    from yololab.data import make_sparse
    from yololab.engine.train import train

    data = make_sparse(tmp_path / "sparse", n_train=8, n_val=4, n_test=4, img_size=SPARSE_IMG, seed=1, workers=1)
    cfg = build_config({"project": str(tmp_path), "name": "run", "data": {"data": str(data)},
                        "train": {"epochs": 1}},
                       [f"data.imgsz={TRAIN_IMGSZ}", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-4l-small",
                        "diagnostics.report=false"])
    with caplog.at_level("INFO"):
        train(cfg, progress="none")
    run = tmp_path / "run"
    # The training boxes' longer sides in input pixels, from the label files: the share under TINY_BOX_PX names
    # the sparse recipe in one line.
    sides = [max(float(w), float(h)) * TRAIN_IMGSZ for f in sorted((data.parent / "labels" / "train").glob("*.txt"))
             for _, _, _, w, h in (line.split() for line in f.read_text().splitlines())]
    tiny = sum(side < TINY_BOX_PX for side in sides) / len(sides)
    assert tiny >= TINY_BOX_SHARE
    assert (f"{tiny:.0%} of the training boxes are under {TINY_BOX_PX:g} px: --recipe sparse was measured better "
            "on such data") in caplog.text
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert val["split"] == "val" and "loss/obj/s3" in val  # four scales trained and validated
    size_keys = [f"{m}_{s}" for s in ("small", "medium", "large") for m in ("mAP50", "mAP50_95")]
    bin_keys = [f"bin/{b}/mAP50" for b in BINS]
    assert all(k in val for k in size_keys + bin_keys), sorted(val)
    assert all(val[k] is None or 0 <= val[k] <= 1 for k in size_keys + bin_keys)
    tags = EventAccumulator(str(run / "tb")).Reload().Tags()["scalars"]
    assert {f"val/{k}" for k in size_keys + bin_keys} <= set(tags)

    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval", str(run), "--split", "test", "--batch", "4", "--weights", "last",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "AP by object size" in res.output and "bin 3x2-5x4" in res.output and "COCO small" in res.output
    metrics = json.loads(out.read_text())
    assert list(metrics["by_size"]) == ["small", "medium", "large"]
    assert {name: r["area"] for name, r in metrics["by_bin"].items()} == BINS
    assert metrics["input_size"] == TRAIN_IMGSZ
    # Truths per bin counted from the label files by hand: box area in input pixels = (w * 64) * (h * 64).
    areas = [float(w) * TRAIN_IMGSZ * float(h) * TRAIN_IMGSZ
             for f in sorted((data.parent / "labels" / "test").glob("*.txt"))
             for _, _, _, w, h in (line.split() for line in f.read_text().splitlines())]
    for name, (lo, hi) in BINS.items():
        assert metrics["by_bin"][name]["n_truths"] == sum(lo - 1e-6 <= a <= hi + 1e-6 for a in areas), name
    assert metrics["by_size"]["small"]["n_truths"] == sum(a <= 32 ** 2 for a in areas)
