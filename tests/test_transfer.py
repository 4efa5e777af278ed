"""Transfer learning: start weights from a checkpoint or run folder, grey models from 3-channel weights, frozen
layers (backbone ranges of the official cfgs, optimiser, precise BN, EMA, a tiny run with an unfreeze and a
resume on each side of it)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.optim.swa_utils import get_ema_avg_fn

from run_fixtures import untrained_run
from yololab.config import ConfigError, build_config
from yololab.data import make_digits
from yololab.engine.ema import LerpEMA
from yololab.engine.module import optimizer_settings
from yololab.engine.precise_bn import estimate_bn_statistics
from yololab.engine.train import make_module, train
from yololab.engine.transfer import load_start_weights
from yololab.model import Darknet, packaged_cfg, parse_cfg, save_darknet_weights
from yololab.model.build import build_model, read_cfg_text
from yololab.model.freeze import backbone_layers, set_frozen, trainable_parameters
from yololab.model.weights import WeightsError, load_darknet_weights

CFGS = Path("/work/shared/darknet-cfg")
SMALL = ["data.imgsz=128", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-3l-small"]
TINY_BACKBONE = 12  # see test_backbone_layers
TINY_3L_HEADS = [15, 22, 29]  # the convolutions before the [yolo] layers 16, 23, 30 of yolov3-tiny-3l-small


# darknet-53 by hand from yolov3.cfg: 1 stem conv, then 5 stages of one stride-2 conv and n residual blocks of
# 3 sections each ([convolutional] 1x1, [convolutional] 3x3, [shortcut]), n = 1, 2, 8, 8, 4:
# 1 + 5 + 3 * 23 = 75 layers (0..74), the last [shortcut] at 74 = darknet's darknet53.conv.74.
# tiny by hand from yolov3-tiny.cfg: 6 x ([convolutional], [maxpool]) = 12 layers (0..11), the last [maxpool]
# (size 2, stride 1) at layer 11, before [convolutional] filters=1024.
@pytest.mark.parametrize(("cfg", "layers"), [
    (CFGS / "yolov3.cfg", 75), (CFGS / "yolov3-spp.cfg", 75), (CFGS / "yolov3-voc.cfg", 75),
    (CFGS / "yolov3.coco-giou-12.cfg", 75), (CFGS / "yolov3-tiny.cfg", 12), (CFGS / "yolov3-tiny_3l.cfg", 12),
    (packaged_cfg("yolov3-tiny-small"), TINY_BACKBONE), (packaged_cfg("yolov3-tiny-3l-small"), TINY_BACKBONE),
])
def test_backbone_layers(cfg, layers):
    sections = parse_cfg(cfg)
    assert backbone_layers(sections) == layers
    assert sections[layers].type in ("shortcut", "maxpool")  # section i + 1 is layer i


# ------------------------------------------------------------------------------------------------ grey images
def _micro(channels: int, filters: int = 2) -> str:
    """A 4x4 network: a 3x3 batch-normalised first convolution, a 1x1 head, one [yolo]."""
    return f"""[net]
width=4
height=4
channels={channels}
[convolutional]
batch_normalize=1
filters={filters}
size=3
stride=1
pad=1
activation=leaky
[convolutional]
filters=6
size=1
activation=linear
[yolo]
mask=0
anchors=1,1
classes=1
num=1
"""


def _rgb_source() -> Darknet:
    """The 3-channel network with first-layer weights (f + 1) * (c + 1) / 10 for filter f and input channel c."""
    model = Darknet.from_cfg(_micro(3))
    with torch.no_grad():
        f = torch.arange(2.0).view(2, 1, 1, 1) + 1
        c = torch.arange(3.0).view(1, 3, 1, 1) + 1
        model.layers[0].conv.weight.copy_((f * c / 10).expand(2, 3, 3, 3))
        model.layers[0].bn.running_mean.copy_(torch.tensor([0.25, -0.5]))
    return model


def _check_grey(rgb: Darknet, grey: Darknet) -> None:
    g = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    # Summed weights: (f + 1) * (1 + 2 + 3) / 10 = 0.6 (f + 1); a constant grey 0.5 at an inner pixel (all 9
    # taps inside the image): 9 * 0.6 * (f + 1) * 0.5 = 2.7 and 5.4.
    half = torch.full((1, 1, 4, 4), 0.5)
    assert grey.layers[0].conv(half)[0, :, 1, 1].tolist() == pytest.approx([2.7, 5.4], rel=1e-6)
    assert torch.allclose(grey.layers[0].conv(g), rgb.layers[0].conv(g.expand(1, 3, 4, 4)), atol=1e-6)
    assert torch.equal(grey.layers[0].bn.running_mean, torch.tensor([0.25, -0.5]))


def test_grey_model_from_three_channel_darknet_weights(tmp_path):
    rgb = _rgb_source()
    path = save_darknet_weights(rgb, tmp_path / "rgb.weights")
    grey = Darknet.from_cfg(_micro(1))
    report = load_darknet_weights(grey, path)
    assert report.loaded == [0, 1] and report.summed_channels == 3
    assert "summed over the file's 3 input channels" in report.summary()
    _check_grey(rgb, grey)


def test_grey_model_from_three_channel_checkpoint(tmp_path):
    rgb = _rgb_source()
    path = tmp_path / "rgb.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in rgb.state_dict().items()}, "epoch": 4}, path)
    grey = Darknet.from_cfg(_micro(1))
    line = load_start_weights(grey, path)
    assert "loaded 2 of 2 conv layers" in line and "summed over the file's 3 input channels" in line
    assert "trained 5 epochs; weights only" in line and "\n" not in line
    _check_grey(rgb, grey)


def test_checkpoint_of_another_cfg_names_the_first_layer_that_differs(tmp_path):
    other = Darknet.from_cfg(_micro(3, filters=4))
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}}, path)
    model = Darknet.from_cfg(_micro(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"other.ckpt: layer 0 \(\[convolutional\]\) differs .*bn.bias is \[4\] "
                                           r"in the file, \[2\] in the model") as err:
        load_start_weights(model, path)
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


def test_run_folder_transfer_to_another_class_count_reinitialises_heads_only(tmp_path):
    data = make_digits(tmp_path / "digits", tiny=True, seed=1)  # 10 classes
    run = untrained_run(data, tmp_path / "runs", seed=3)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    cfg = build_config({"project": str(tmp_path / "runs"), "name": "new", "data": {"data": str(data)}},
                       [*SMALL, f"model.weights={run}"])
    module = make_module(cfg, ["a", "b"])  # 2 classes: heads of 3 * (5 + 2) = 21 outputs
    model = module.model
    for index, layer in model.conv_layers():
        if index in TINY_3L_HEADS:
            assert layer.conv.out_channels == 21
            # class prior ln(0.6 / (2 - 0.99)) = ln(0.594059...) = -0.520784
            classes = layer.conv.bias.view(3, 7)[:, 5:]
            assert torch.allclose(classes, torch.tensor(-0.520784), atol=1e-5)
            continue
        for key, value in layer.state_dict().items():
            assert torch.equal(value, best[f"model.layers.{index}.{key}"]), (index, key)  # best.ckpt, not last
        assert not torch.equal(layer.conv.weight, last[f"model.layers.{index}.conv.weight"])
    line = load_start_weights(Darknet.from_cfg(packaged_cfg("yolov3-tiny-3l-small"), num_classes=2), run)
    # 16 convolutions: 0, 2, .., 10 between the maxpools, 12-15, 18, 21, 22 and 25, 28, 29; 3 of them heads
    assert f"loaded 13 of 16 conv layers; file has 10 classes, re-initialised heads at layers {TINY_3L_HEADS}" in line


# ------------------------------------------------------------------------------------------------ another cfg
TINY_3L_LAYERS = 31  # yolov3-tiny-3l-small: 31 layers; yolov3-tiny-4l-small is the same 31, then a stride-4 scale


def _cfg_checkpoint(path: Path, cfg: str, classes: int) -> tuple[Darknet, str]:
    """A checkpoint of a randomly initialised packaged ``cfg`` with its cfg text, as a run writes it."""
    text = read_cfg_text(cfg)
    model = build_model(text, num_classes=classes)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"cfg_text": text}}, path)
    return model, text


def _layer_tensors(model: Darknet, index: int) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.layers[index].state_dict().items()}


@pytest.mark.parametrize(("source_cfg", "target_cfg"), [("yolov3-tiny-3l-small", "yolov3-tiny-4l-small"),
                                                        ("yolov3-tiny-4l-small", "yolov3-tiny-3l-small")])
def test_checkpoint_of_a_cfg_that_shares_the_beginning_loads_the_common_layers(tmp_path, source_cfg, target_cfg):
    torch.manual_seed(0)
    source, _ = _cfg_checkpoint(tmp_path / "source.ckpt", source_cfg, classes=10)
    torch.manual_seed(1)
    target = build_model(read_cfg_text(target_cfg), num_classes=10)
    before = {i: _layer_tensors(target, i) for i in range(len(target.layers))}
    line = load_start_weights(target, tmp_path / "source.ckpt")
    convs = dict(target.conv_layers())
    for index in range(len(target.layers)):  # the file's convolutions where both cfgs have them, else untouched
        expected = _layer_tensors(source, index) if index < TINY_3L_LAYERS and index in convs else before[index]
        assert {k: v.shape for k, v in target.layers[index].state_dict().items()} == \
            {k: v.shape for k, v in expected.items()}
        assert all(torch.equal(v, expected[k]) for k, v in target.layers[index].state_dict().items()), index
    assert f"loaded 16 of {len(convs)} conv layers; the cfgs agree on layers 0-30 only" in line
    assert "\n" not in line


def test_checkpoint_of_a_cfg_with_nothing_in_common_is_refused(tmp_path):
    other = Darknet.from_cfg(_micro(3, filters=4))
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()},
                "hyper_parameters": {"cfg_text": _micro(3, filters=4)}}, path)
    model = Darknet.from_cfg(_micro(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match=r"other.ckpt: nothing in common with this run's cfg \(layer 0: "
                                           r"\[convolutional\] filters=4 in the file's cfg, 2 in this run's\)"):
        load_start_weights(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


# ------------------------------------------------------------------------------------------------ frozen layers
def _state(model: torch.nn.Module, layers: range) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if int(k.split(".")[1]) in layers}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimiser_leaves_frozen_layers_alone_and_takes_them_up_after_unfreezing(optimizer):
    torch.manual_seed(0)
    model = Darknet.from_cfg(_micro(3)).train()
    set_frozen(model, 1)
    assert not model.layers[0].bn.training and model.layers[1].training
    assert trainable_parameters(model) == (6 + 2 * 6, 6 + 2 * 6 + 2 * 27 + 2 + 2)  # head 6 bias + 12 weights
    oc = build_config({}, [f"optim.optimizer={optimizer}", "optim.weight_decay=0.1"]).optim
    decay, no_decay = [p for p in model.parameters() if p.ndim > 1], [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": ps, **s} for ps, s in zip((decay, no_decay), optimizer_settings(oc), strict=True)]
    opt = (torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True) if optimizer == "sgd"
           else torch.optim.AdamW(groups, lr=0.1))
    frozen = _state(model, range(1))
    images = torch.rand(2, 3, 4, 4)
    for _ in range(3):
        opt.zero_grad()
        sum(r.pow(2).sum() for r in model(images)).backward()
        opt.step()
    assert all(torch.equal(v, frozen[k]) for k, v in _state(model, range(1)).items())  # weights and BN statistics
    conv0 = model.layers[0].conv.weight
    assert conv0 not in opt.state or not opt.state[conv0]
    set_frozen(model, 0)
    assert model.layers[0].bn.training
    opt.zero_grad()
    sum(r.pow(2).sum() for r in model(images)).backward()
    opt.step()
    assert not torch.equal(conv0, frozen["layers.0.conv.weight"]) and bool(torch.isfinite(conv0).all())
    if optimizer == "adamw":
        assert float(opt.state[conv0]["step"]) == 1  # its moments start at its first gradient


def test_precise_bn_keeps_frozen_statistics_and_uses_them():
    torch.manual_seed(0)
    model = Darknet.from_cfg(_micro(3, filters=2))
    set_frozen(model, 1)
    frozen = _state(model, range(1))
    images = [torch.rand(2, 3, 4, 4) * 5 for _ in range(2)]
    assert estimate_bn_statistics(model, images) == 0  # the only batch norm is frozen: nothing to estimate
    assert all(torch.equal(v, frozen[k]) for k, v in _state(model, range(1)).items())

    deeper = Darknet.from_cfg(_micro(3).replace("[convolutional]\nfilters=6", "[convolutional]\nbatch_normalize=1\n"
                                                "filters=2\nsize=1\nactivation=leaky\n[convolutional]\nfilters=6"))
    set_frozen(deeper, 1)
    frozen = _state(deeper, range(1))
    trained_mean = deeper.layers[1].bn.running_mean.clone()
    assert estimate_bn_statistics(deeper, images) == 2
    assert all(torch.equal(v, frozen[k]) for k, v in _state(deeper, range(1)).items())
    assert not torch.equal(deeper.layers[1].bn.running_mean, trained_mean)
    # layer 1's statistics are those of layer 0 normalised with its frozen running statistics (eval mode)
    with torch.no_grad():
        deeper.eval()
        inputs = [deeper.layers[1].conv(deeper.layers[0](x)) for x in images]
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    assert torch.allclose(deeper.layers[1].bn.running_mean, expected, atol=1e-6)


def test_freeze_config_errors(tmp_path):
    data = make_digits(tmp_path / "digits", tiny=True, seed=1)
    with pytest.raises(ConfigError, match=r"train\.unfreeze_epoch needs train\.freeze"):
        build_config({}, ["train.unfreeze_epoch=2"])
    with pytest.raises(ConfigError, match="several processes"):
        build_config({}, ["train.freeze=backbone", "train.unfreeze_epoch=2", "train.devices=2"])
    for bad in ("0", "true", "neck"):
        with pytest.raises(ConfigError):
            build_config({}, [f"train.freeze={bad}"])
    for value, message in (("40", r"train.freeze=40 is beyond the cfg's 31 layers \(0..30\)"),
                           ("30", "every head convolution included")):
        cfg = build_config({"project": str(tmp_path), "name": "r", "data": {"data": str(data)}},
                           [*SMALL, f"train.freeze={value}"])
        with pytest.raises(ConfigError, match=message) as err:
            train(cfg, progress="none")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "r").exists()  # refused before anything was written


class _Recorder(L.Callback):
    """The model's state at the start and end of training, the trainable count at the start, and whether every
    frozen batch norm stayed in eval mode at each training step."""

    def __init__(self):
        self.start = self.end = None
        self.trainable = None
        self.frozen_bn_modes: list[bool] = []

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
        self.trainable = trainable_parameters(pl_module.model)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.frozen_bn_modes += [layer.bn.training for layer in pl_module.model.layers[:TINY_BACKBONE]
                                 if getattr(layer, "bn", None) is not None and layer.frozen]

    def on_train_end(self, trainer, pl_module):
        self.end = {k: v.clone() for k, v in pl_module.model.state_dict().items()}


def _split(state: dict, frozen: bool) -> dict:
    return {k: v for k, v in state.items() if (int(k.split(".")[1]) < TINY_BACKBONE) == frozen}


def test_freeze_backbone_unfreeze_and_resume_on_each_side(tmp_path, caplog):
    data = make_digits(tmp_path / "digits", tiny=True, seed=1)
    start = untrained_run(data, tmp_path / "start")

    def run(epochs: int, resume: bool) -> _Recorder:
        cfg = build_config({"project": str(tmp_path), "name": "ft", "data": {"data": str(data)},
                            "train": {"epochs": epochs}},
                           [*SMALL, f"model.weights={start}", "train.freeze=backbone", "train.unfreeze_epoch=1",
                            "train.ema=true", "optim.weight_decay=0.01"])
        recorder = _Recorder()
        train(cfg, resume=resume, progress="none", callbacks=[recorder])
        return recorder

    # Epoch 0, frozen: a new run from the start run's best.ckpt.
    first = run(1, resume=False)
    best = torch.load(start / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, best[f"model.{k}"]) for k, v in first.start.items() if "anchors" not in k)
    trainable, total = first.trainable
    lines = [r.getMessage() for r in caplog.records]
    assert f"start weights {start / 'checkpoints' / 'best.ckpt'}: loaded 16 of 16 conv layers" in lines
    assert (f"trainable parameters: {trainable:,} of {total:,}; layers 0..11 frozen (train.freeze=backbone, until "
            "epoch 1)") in lines
    assert trainable == sum(v.numel() for k, v in first.start.items() if int(k.split(".")[1]) >= TINY_BACKBONE
                            and k.endswith(("conv.weight", "conv.bias", "bn.weight", "bn.bias")))
    assert trainable < total and first.frozen_bn_modes and not any(first.frozen_bn_modes)
    frozen_start, frozen_end = _split(first.start, True), _split(first.end, True)
    assert all(torch.equal(frozen_end[k], v) for k, v in frozen_start.items())  # weights, BN statistics, counts
    assert not torch.equal(first.end["layers.12.conv.weight"], first.start["layers.12.conv.weight"])
    assert not torch.equal(first.end["layers.12.bn.running_mean"], first.start["layers.12.bn.running_mean"])
    # the checkpoint holds the EMA weights: a frozen layer's average is its value, bit for bit
    saved = torch.load(tmp_path / "ft" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(saved["state_dict"][f"model.{k}"], v) for k, v in frozen_start.items())
    assert saved["epoch"] == 0

    # Resumed before the unfreeze epoch: frozen at the start, unfrozen at epoch 1.
    caplog.clear()
    second = run(2, resume=True)
    assert second.trainable == first.trainable
    assert (f"epoch 1: unfroze layers 0..11 (train.unfreeze_epoch=1); trainable parameters: {total:,} of {total:,}"
            in [r.getMessage() for r in caplog.records])
    assert not any("start weights" in r.getMessage() for r in caplog.records)  # a resume takes its checkpoint's
    changed = [k for k, v in _split(second.end, True).items()
               if v.is_floating_point() and not torch.equal(v, frozen_start[k])]
    assert "layers.0.conv.weight" in changed and "layers.10.bn.running_var" in changed
    assert all(math.isfinite(float(v.float().abs().max())) for v in second.end.values())

    # Resumed after it: unfrozen from the start.
    third = run(3, resume=True)
    assert third.trainable == (total, total)


def test_missing_sources_and_the_lerp_ema(tmp_path):
    model = Darknet.from_cfg(_micro(3))
    with pytest.raises(FileNotFoundError, match="neither a file nor a run folder"):
        load_start_weights(model, tmp_path / "missing.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/best\.ckpt"):
        load_start_weights(model, tmp_path / "empty")
    # the EMA's average of an unchanged weight stays that weight; Lightning's default formula moves it
    ema = LerpEMA(0.999)
    assert set(ema._kwargs) == {"multi_avg_fn"} and ema.state_key == "EMAWeightAveraging"
    weights = torch.randn(10_000)
    lerp = [weights.clone()]
    ema._kwargs["multi_avg_fn"](lerp, [weights], 1)
    assert torch.equal(lerp[0], weights)
    assert not torch.equal(get_ema_avg_fn(0.999)(weights.clone(), weights, 1), weights)
