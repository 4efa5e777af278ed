"""End to end on a handful of small digit images: train, resume, evaluate, detect; DDP with 2 CPU processes."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from yololab.cli import app
from yololab.config import build_config
from yololab.data import make_digits
from yololab.engine.module import YoloModule
from yololab.engine.train import train

DDP_TIMEOUT_S = 240
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")  # the ports the kernel hands out for port 0
FIXED_PORTS = range(20000, 30000)  # under Linux's default ephemeral range (32768-60999)
SMALL = ["data.imgsz=128", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-3l-small"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory.mktemp("digits"), tiny=True, seed=1)


def _config(data: Path, project: Path, name: str, epochs: int, extra=()):
    return build_config({"project": str(project), "name": name, "data": {"data": str(data)},
                         "train": {"epochs": epochs}}, [*SMALL, *extra])


def test_train_resume_eval_detect(digits, tmp_path):
    result = train(_config(digits, tmp_path, "run", 1), progress="none")
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "report.html").stat().st_size > 0 and (run / "histograms.jsonl").exists()
    assert isinstance(json.loads((run / "findings.json").read_text()), list)
    fit = json.loads((run / "anchor_fit.json").read_text())
    assert 0 < fit["mean_best_iou"] <= 1 and fit["n_truths"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in rows] == [(0, "train"), (0, "val")]
    n_scales = 3
    for row in rows:
        for i in range(n_scales):
            for term in ("box", "obj", "noobj", "cls"):
                assert f"loss/{term}/s{i}" in row, (row["split"], term, i)
    assert 0.0 <= rows[1]["mAP50"] <= 1.0
    assert result.last_checkpoint.exists()

    # Resume for a second epoch: the epoch counter and optimiser step continue.
    first_step = rows[0]["step"]
    train(_config(digits, tmp_path, "run", 2), resume=True, progress="none")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in rows][-2:] == [(1, "train"), (1, "val")]
    assert rows[-1]["step"] == 2 * first_step
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 * first_step

    runner = CliRunner()
    out = tmp_path / "test_metrics.json"
    res = runner.invoke(app, ["eval", str(run), "--split", "test", "--batch", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    metrics = json.loads(out.read_text())
    assert metrics["n_images"] == 4 and 0.0 <= metrics["mAP50"] <= 1.0

    images = digits.parent / "images" / "test"
    res = runner.invoke(app, ["detect", str(run), str(images), "--out", str(tmp_path / "det"), "--conf", "0.01"])
    assert res.exit_code == 0, res.output
    detections = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert len(detections) == 4 and len(list((tmp_path / "det").glob("*.png"))) == 4
    for record in detections:
        for det in record["detections"]:
            x1, y1, x2, y2 = det["box_xyxy"]
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]


def test_resume_matches_an_unbroken_run(digits, tmp_path):
    """Two epochs in one go and one epoch + resume give the same weights (same data order, same augmentations,
    same state), with mosaic and every other augmentation on."""
    augmented = ["data.augment.enabled=true", "data.augment.mosaic=0.5"]
    train(_config(digits, tmp_path, "straight", 2, augmented), progress="none")
    train(_config(digits, tmp_path, "broken", 1, augmented), progress="none")
    train(_config(digits, tmp_path, "broken", 2, augmented), resume=True, progress="none")
    a = YoloModule.load_from_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt").state_dict()
    b = YoloModule.load_from_checkpoint(tmp_path / "broken" / "checkpoints" / "last.ckpt").state_dict()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_bad_label_stops_before_training(digits, tmp_path):
    import shutil

    copy = tmp_path / "bad"
    shutil.copytree(digits.parent, copy)
    (copy / "data.yaml").write_text((copy / "data.yaml").read_text().replace(str(digits.parent), str(copy)))
    label = sorted((copy / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "3 0.5 0.5 nan 0.1\n")
    with pytest.raises(ValueError, match=rf"{label.name}:\d+"):
        train(_config(copy / "data.yaml", tmp_path, "bad", 1), progress="none")
    assert not (tmp_path / "bad" / "checkpoints").exists()

    # With the skip policy the run goes on without that image, and says so.
    result = train(_config(copy / "data.yaml", tmp_path, "skip", 1, ["data.skip_bad=true"]), progress="none")
    skipped = (tmp_path / "skip" / "skipped_images.txt").read_text().splitlines()
    image = str(copy / "images" / "train" / label.with_suffix(".png").name)
    assert len(skipped) == 1 and skipped[0].startswith(image + "\t") and "non-finite" in skipped[0]
    assert result.last_checkpoint.exists()


def _port_outside_the_ephemeral_range() -> int:
    """A free TCP port the kernel never gives to a bind to port 0. Lightning's own choice of MASTER_PORT is such a
    kernel-chosen port, free when chosen but bound only later by rank 0; the Ray sessions of tests running beside
    this one (pytest-xdist) bind many kernel-chosen ports, and one taking it leaves rank 1 waiting for a rank 0
    that has failed."""
    low = int(PORT_RANGE.read_text().split()[0]) if PORT_RANGE.is_file() else FIXED_PORTS.stop
    for port in FIXED_PORTS:
        if port >= low:
            break
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port under the kernel's ephemeral range")


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test written for Linux")
def test_ddp_two_cpu_processes(digits, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_port_outside_the_ephemeral_range())}
    cmd = [sys.executable, "-m", "yololab.cli", "train", "--data", str(digits), "--epochs", "1",
           "--project", str(tmp_path), "--name", "ddp", "--progress", "none",
           *[f"--set={s}" for s in SMALL],
           "--set", "train.devices=2", "--set", "train.strategy=ddp", "--set", "train.accelerator=cpu"]
    # Own process group, so a hang kills Lightning's worker process too, not only the launcher.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    errors = [line for line in stderr.splitlines() if "Error" in line]  # the first failure, above rank 1's retries
    assert proc.returncode == 0, "\n".join(errors[:10]) + stdout[-3000:] + stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in rows] == [(0, "train"), (0, "val")]  # written once, by rank 0
    # 16 training images, batch 4 per process, 2 processes: 2 optimiser steps per epoch.
    assert rows[0]["step"] == 2


def test_ema_bf16_and_cfg_input_size(digits, tmp_path):
    """EMA weights and bf16 autocast train and evaluate; without data.imgsz the cfg's [net] size is used."""
    cfg = build_config({"project": str(tmp_path), "name": "ema", "data": {"data": str(digits)},
                        "train": {"epochs": 1}},
                       ["data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-small", "train.ema=true",
                        "train.precision=bf16-mixed"])
    result = train(cfg, progress="none")
    saved = (tmp_path / "ema" / "config.yaml").read_text()
    assert "imgsz: 256" in saved  # yolov3-tiny-small's [net] width=height=256
    val = next(m for m in result.metrics if m["split"] == "val")
    assert all(v is None or abs(v) < float("inf") for k, v in val.items() if k.startswith("loss/"))
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=False)
    assert any("EMAWeightAveraging" in key for key in ckpt["callbacks"])
