"""Darknet .weights io: hand-built files, bit-exact round trip, other class counts, prefixes, bad files."""

import struct

import pytest
import torch

from yololab.model import Darknet, load_darknet_weights, packaged_cfg, save_darknet_weights
from yololab.model.weights import WeightsError

# 1 input channel; conv 0 batch-normalised (2 filters, 1x1): 4*2 BN values + 2 weights = 10 floats;
# conv 1 is the head, 1 anchor * (5 + 1 class) = 6 filters on 2 inputs: 6 biases + 12 weights = 18 floats.
MICRO = """\
[net]
width=2
height=2
channels=1
[convolutional]
batch_normalize=1
filters=2
size=1
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
MICRO_FLOATS = 28


def _randomise(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and "anchors" not in name:
                tensor.copy_(torch.randn(tensor.shape, generator=gen).abs() + 0.1 if "running_var" in name
                             else torch.randn(tensor.shape, generator=gen))
    return model


def _conv_state(model, index):
    return {k: v.clone() for k, v in model.layers[index].state_dict().items() if "num_batches" not in k}


@pytest.mark.parametrize(
    ("version", "seen_format", "seen"),
    [
        ((0, 1, 0), "<I", 3_000_000_000),  # major*10 + minor = 1 < 2: 32-bit
        ((0, 2, 5), "<q", 2**40),  # 64-bit
        ((1, 0, 0), "<q", 7),  # 10 >= 2: 64-bit
        ((1000, 2, 0), "<I", 9),  # major >= 1000: 32-bit
        ((0, 1000, 0), "<I", 11),  # minor >= 1000: 32-bit
    ],
)
def test_hand_built_file_and_seen_width(tmp_path, version, seen_format, seen):
    values = [0.25 + i for i in range(MICRO_FLOATS)]
    path = tmp_path / "micro.weights"
    path.write_bytes(struct.pack("<3i", *version) + struct.pack(seen_format, seen)
                     + struct.pack(f"<{MICRO_FLOATS}f", *values))
    model = Darknet.from_cfg(MICRO)
    report = load_darknet_weights(model, path)
    assert (report.header.major, report.header.minor, report.header.seen) == (*version[:2], seen)
    assert report.loaded == [0, 1] and report.reinitialised == [] and report.file_classes == 1
    bn, conv0, head = model.layers[0].bn, model.layers[0].conv, model.layers[1].conv
    assert bn.bias.tolist() == values[0:2]
    assert bn.weight.tolist() == values[2:4]
    assert bn.running_mean.tolist() == values[4:6]
    assert bn.running_var.tolist() == values[6:8]
    assert conv0.weight.flatten().tolist() == values[8:10]
    assert head.bias.tolist() == values[10:16]
    assert head.weight.flatten().tolist() == values[16:28]  # [out, in] row-major
    assert head.weight[1, 0, 0, 0].item() == values[18]


def test_header_width_mismatch_is_detected(tmp_path):
    # A 64-bit seen under a version that darknet reads as 32-bit leaves 4 stray bytes: one float too many.
    path = tmp_path / "bad.weights"
    path.write_bytes(struct.pack("<3iq", 0, 1, 0, 5) + struct.pack(f"<{MICRO_FLOATS}f", *range(MICRO_FLOATS)))
    with pytest.raises(WeightsError, match=rf"{path.name}: expected {MICRO_FLOATS} floats.*found 29"):
        load_darknet_weights(Darknet.from_cfg(MICRO), path)


def test_round_trip_is_bit_exact(tmp_path):
    source = _randomise(Darknet.from_cfg(packaged_cfg("yolov3-tiny-3l-small")))
    path = save_darknet_weights(source, tmp_path / "model.weights", seen=123_456)
    n_floats = sum(p.numel() for p in source.parameters()) + sum(
        2 * layer.bn.num_features for _, layer in source.conv_layers() if layer.bn is not None)
    assert path.stat().st_size == 20 + 4 * n_floats  # 3 int32 + int64 header, then float32 only
    target = Darknet.from_cfg(packaged_cfg("yolov3-tiny-3l-small"))
    report = load_darknet_weights(target, path)
    assert report.header.seen == 123_456 and report.header.nbytes == 20
    expected = {k: v for k, v in source.state_dict().items() if "num_batches" not in k}
    got = target.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_first_floats_follow_darknet_order(tmp_path):
    model = _randomise(Darknet.from_cfg(MICRO))
    data = save_darknet_weights(model, tmp_path / "m.weights").read_bytes()
    assert struct.unpack_from("<3iQ", data) == (0, 2, 5, 0)
    floats = struct.unpack_from(f"<{MICRO_FLOATS}f", data, 20)
    bn = model.layers[0].bn
    order = [bn.bias, bn.weight, bn.running_mean, bn.running_var, model.layers[0].conv.weight,
             model.layers[1].conv.bias, model.layers[1].conv.weight]
    assert torch.equal(torch.tensor(floats), torch.cat([t.detach().flatten() for t in order]))


def test_other_class_count_loads_all_but_heads(tmp_path):
    source = _randomise(Darknet.from_cfg(packaged_cfg("yolov3-tiny-small"), num_classes=80))
    path = save_darknet_weights(source, tmp_path / "coco.weights")
    target = Darknet.from_cfg(packaged_cfg("yolov3-tiny-small"), num_classes=20)
    report = load_darknet_weights(target, path)
    # yolov3-tiny layout: convs at 0,2,4,6,8,10 (between maxpools), 12,13,14, head 15; 18, 21, head 22.
    assert report.file_classes == 80
    assert report.loaded == [0, 2, 4, 6, 8, 10, 12, 13, 14, 18, 21]
    assert report.reinitialised == [15, 22]
    for index in report.loaded:
        want, got = _conv_state(source, index), _conv_state(target, index)
        assert all(torch.equal(got[k], want[k]) for k in want), index
    for index in report.reinitialised:
        bias = target.layers[index].conv.bias.view(3, 25)
        assert target.layers[index].conv.out_channels == 75
        # Class prior ln(0.6 / (20 - 0.99)) = ln(0.031562...) = -3.45579...
        assert torch.allclose(bias[:, 5:], torch.tensor(-3.45579), atol=1e-4)
    assert "80 classes" in report.summary()


def test_prefix_file_loads_leading_layers(tmp_path):
    source = _randomise(Darknet.from_cfg(packaged_cfg("yolov3-tiny-small")))
    full = save_darknet_weights(source, tmp_path / "full.weights").read_bytes()
    # conv 0: 8 filters on 3 channels, 3x3 -> 4*8 + 8*27 = 248; conv 2: 16 on 8 -> 4*16 + 16*72 = 1216.
    prefix = tmp_path / "backbone.conv.2"
    prefix.write_bytes(full[:20 + 4 * (248 + 1216)])
    target = Darknet.from_cfg(packaged_cfg("yolov3-tiny-small"))
    untouched = _conv_state(target, 4)
    report = load_darknet_weights(target, prefix)
    assert report.loaded == [0, 2] and report.file_classes is None
    assert all(torch.equal(_conv_state(target, 2)[k], v) for k, v in _conv_state(source, 2).items())
    assert all(torch.equal(_conv_state(target, 4)[k], v) for k, v in untouched.items())
    assert "loaded 2 of 13 conv layers" in report.summary()


def test_truncated_and_short_files_are_clear_errors(tmp_path):
    data = save_darknet_weights(Darknet.from_cfg(MICRO), tmp_path / "m.weights").read_bytes()
    cut = tmp_path / "cut.weights"
    cut.write_bytes(data[:-8])
    with pytest.raises(WeightsError, match=rf"cut.weights: expected {MICRO_FLOATS} floats .* found 26"):
        load_darknet_weights(Darknet.from_cfg(MICRO), cut)
    cut.write_bytes(data[:-2])
    with pytest.raises(WeightsError, match="not a whole number of float32"):
        load_darknet_weights(Darknet.from_cfg(MICRO), cut)
    cut.write_bytes(data[:10])
    with pytest.raises(WeightsError, match="too short"):
        load_darknet_weights(Darknet.from_cfg(MICRO), cut)
