"""What `yololab train --progress plain` prints: complete lines without carriage returns, without Lightning's
tips and deprecation warning, and a FLOP count that matches a count by hand."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yololab.data import make_digits
from yololab.model import Darknet, packaged_cfg

IMGSZ = 64
CFG = "yolov3-tiny-3l-small"
HUMAN_UNITS = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> subprocess.CompletedProcess:
    root = tmp_path_factory.mktemp("plain")
    data = make_digits(root / "digits", tiny=True, seed=2)
    cmd = [sys.executable, "-c", "from yololab.cli import main; main()", "train", "--data", str(data),
           "--cfg", CFG, "--epochs", "2", "--imgsz", str(IMGSZ), "--batch", "8", "--project", str(root),
           "--name", "run", "--progress", "plain", "--set", "data.workers=0", "--set", "diagnostics.report=false",
           "--set", "train.threads=1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_plain_progress_is_one_line_per_epoch(plain_run):
    assert plain_run.returncode == 0, plain_run.stderr[-2000:]
    out = plain_run.stdout + plain_run.stderr
    assert "\r" not in out
    epochs = [line for line in plain_run.stdout.splitlines() if line.startswith("epoch ")]
    # 16 training images in batches of 8: 2 steps per epoch, fewer than the step-line interval.
    assert [line.split(" done in ")[0] for line in epochs] == ["epoch 0 [1/2]", "epoch 1 [2/2]"]
    assert all("train loss" in line and "val mAP@0.5" in line for line in epochs)


def test_no_lightning_tips_or_deprecation_warning(plain_run):
    out = plain_run.stdout + plain_run.stderr
    assert "Tip:" not in out and "litlogger" not in out and "LeafSpec" not in out
    assert "GPU available" in plain_run.stderr  # Lightning's other start-up lines are kept


def _conv_flops(model: Darknet, imgsz: int) -> int:
    """2 x multiply-adds of every convolution on one image, from its output size: the naive count."""
    total = 0

    def count(conv: torch.nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k_h, k_w = conv.kernel_size
        total += 2 * output.numel() * (conv.in_channels // conv.groups) * k_h * k_w

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, model.channels, imgsz, imgsz))
    for hook in hooks:
        hook.remove()
    return total


def test_model_summary_counts_the_flops(plain_run):
    match = re.search(r"Total FLOPs: ([\d.]+) ?([KMBGT]?)", plain_run.stdout)
    assert match, plain_run.stdout[:3000]
    printed = float(match[1]) * HUMAN_UNITS[match[2]]
    expected = _conv_flops(Darknet.from_cfg(Path(packaged_cfg(CFG)), num_classes=10), IMGSZ)
    assert expected > 0
    assert printed == pytest.approx(expected, rel=0.01)  # printed with three significant digits
