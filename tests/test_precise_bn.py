"""Precise BN: the re-estimated statistics against a naive average, the model left as it was, and on a tiny
run where the running statistics lag, validation that agrees with batch statistics and checkpoints that hold
what validation used."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from yololab.config import build_config
from yololab.data import YoloDataset, collate, make_digits
from yololab.engine.module import YoloModule
from yololab.engine.precise_bn import batch_statistics, estimate_bn_statistics
from yololab.engine.train import train
from yololab.evaluate import coco_map
from yololab.evaluate.runner import evaluate_loader, predict, truths_in_pixels


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=0.03), nn.ReLU(),
                         nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2, momentum=0.03))


def test_statistics_are_the_average_of_the_batch_statistics():
    net = _net().eval()
    batches = [torch.randn(5, 3, 6, 6) * (k + 1) + k for k in range(3)]
    # naive: the first BN's input is the first conv's output; average its per-batch mean and unbiased variance
    with torch.no_grad():
        inputs = [net[0](b) for b in batches]
    means = torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0)
    variances = torch.stack([x.var((0, 2, 3), unbiased=True) for x in inputs]).mean(0)
    assert estimate_bn_statistics(net, iter(batches)) == 3
    torch.testing.assert_close(net[1].running_mean, means)
    torch.testing.assert_close(net[1].running_var, variances)
    assert net[1].momentum == 0.03 and not net.training and not net[1].training
    assert all(p.grad is None for p in net.parameters())


def test_no_batches_keep_the_old_statistics():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert estimate_bn_statistics(net, iter([])) == 0
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_batch_statistics_normalise_by_the_batch_and_change_nothing():
    net = _net().eval()
    x = torch.randn(4, 3, 6, 6) * 3 + 2
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad(), batch_statistics(net):
        out = net(x)
    with torch.no_grad():  # by hand: the first BN normalises conv1(x) by its own mean and biased variance
        h = net[0](x)
        h = (h - h.mean((0, 2, 3), keepdim=True)) / (h.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
        h = net[3](torch.relu(h * net[1].weight[:, None, None] + net[1].bias[:, None, None]))
        h = (h - h.mean((0, 2, 3), keepdim=True)) / (h.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
        expected = h * net[4].weight[:, None, None] + net[4].bias[:, None, None]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert not net.training
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])


# ------------------------------------------------------------------------------------------ tiny run
IMGSZ = 64
N_TRAIN = 8  # one batch: one optimiser step per epoch, so the running statistics (momentum 0.03) lag far behind
EPOCHS = 15  # measured: without precise BN val mAP50 0.003 vs 0.443 with batch statistics; with it 0.440
OVERRIDES = [f"data.imgsz={IMGSZ}", f"data.batch={N_TRAIN}", "data.workers=0", "data.augment.enabled=false",
             "optim.lr=0.01", "optim.warmup_epochs=0", "diagnostics.report=false", "diagnostics.histograms=false",
             "diagnostics.grad_share_every=0", "diagnostics.doctor=false", f"train.epochs={EPOCHS}"]


def _map_with_batch_statistics(module: YoloModule, images: torch.Tensor, targets: torch.Tensor) -> float:
    tc = module.cfg.train
    module.eval()
    with torch.no_grad(), batch_statistics(module.model):
        dets = predict(module.model, images, module.loss.coder, tc.conf_thres, tc.iou_thres, tc.max_det)
    return coco_map(dets, truths_in_pixels(targets, len(images), (IMGSZ, IMGSZ)), num_classes=10)["mAP50"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    data_yaml = make_digits(root, N_TRAIN, 4, 4, img_size=IMGSZ, seed=2)
    # validation reads the training images: the question is whether validation shows what the weights can do
    data_yaml.write_text(data_yaml.read_text().replace("val: images/val", "val: images/train"))
    return data_yaml


def _run(digits, tmp_path, precise: int):
    cfg = build_config({"project": str(tmp_path), "name": f"precise{precise}", "data": {"data": str(digits)}},
                       [*OVERRIDES, f"train.precise_bn_batches={precise}"])
    result = train(cfg, progress="none")
    module = YoloModule.load_from_checkpoint(result.last_checkpoint, map_location="cpu")
    data = YoloDataset(sorted((digits.parent / "images" / "train").glob("*.png")), 10, IMGSZ)
    images, targets, _ = collate([data[i] for i in range(len(data))])
    val = [row for row in result.metrics if row["split"] == "val"]
    return result, module, images, targets, val[-1]


def test_validation_agrees_with_batch_statistics_and_checkpoints_hold_its_statistics(digits, tmp_path):
    result, module, images, targets, last = _run(digits, tmp_path, precise=0)
    lagging_map, lagging_batch_map = last["mAP50"], _map_with_batch_statistics(module, images, targets)
    assert lagging_batch_map > 2 * lagging_map + 0.1, (lagging_map, lagging_batch_map)  # the lag is real here
    assert last["bn_check/loss_running"] > last["bn_check/loss_batch"]

    result, module, images, targets, last = _run(digits, tmp_path, precise=1)
    batch_map = _map_with_batch_statistics(module, images, targets)
    assert last["mAP50"] == pytest.approx(batch_map, abs=0.1), (last["mAP50"], batch_map)
    # the checkpoint holds the statistics validation used: evaluating it gives the logged mAP
    loader = torch.utils.data.DataLoader(YoloDataset(sorted((digits.parent / "images" / "train").glob("*.png")),
                                                     10, IMGSZ), batch_size=N_TRAIN, collate_fn=collate)
    tc = module.cfg.train
    again = evaluate_loader(module.model, loader, module.loss.coder, module.names, tc.conf_thres, tc.iou_thres,
                            tc.max_det)["mAP50"]
    assert again == pytest.approx(last["mAP50"], abs=1e-6)
    train_rows = [row for row in result.metrics if row["split"] == "train"]
    for row in train_rows:  # wall times: all there, non-negative, parts within the whole
        times = {k: v for k, v in row.items() if k.startswith("time/")}
        assert set(times) == {"time/train_s", "time/val_s", "time/precise_bn_s", "time/save_s",
                              "time/diagnostics_s", "time/epoch_s"}
        assert min(times.values()) >= 0 and math.isfinite(times["time/epoch_s"])
        parts = times["time/train_s"] + times["time/val_s"] + times["time/save_s"] + times["time/diagnostics_s"]
        assert parts <= times["time/epoch_s"] + 1e-6 and times["time/precise_bn_s"] <= times["time/val_s"]
    assert all(row["time/precise_bn_s"] > 0 for row in train_rows)
