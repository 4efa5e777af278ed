"""Darknet graph: parameter counts against darknet's, wiring, maxpool padding, shapes, rewrites, priors."""

import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from yololab.model import CfgError, Darknet, packaged_cfg, parse_cfg
from yololab.model.layers import MaxPoolLayer, Shape, build_maxpool

DARKNET_CFGS = Path(__file__).parent / "data" / "darknet-cfg"


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [
        # Totals darknet reports for these cfgs (weights, biases, BN scales; no running statistics).
        ("yolov3", None, 61_949_149),
        ("yolov3-tiny", None, 8_852_366),
        ("yolov3-spp", None, 62_998_749),
        ("yolov3-tiny_3l", None, 9_003_087),  # the cfg's own 2 classes
        ("yolov3-voc", 20, 61_626_049),
        ("yolov3.coco-giou-12", None, 61_949_149),  # yolov3's architecture, only the loss keys differ
        # yolov3 at 20 classes is yolov3-voc's architecture.
        ("yolov3", 20, 61_626_049),
        # tiny_3l at 80 classes: the three heads grow by 3*(85-7) = 234 filters on 512, 256, 128 inputs.
        ("yolov3-tiny_3l", 80, 9_003_087 + 234 * (512 + 1) + 234 * (256 + 1) + 234 * (128 + 1)),
    ],
)
def test_parameter_counts_equal_darknet(name, num_classes, expected):
    model = Darknet.from_cfg(DARKNET_CFGS / f"{name}.cfg", num_classes=num_classes)
    assert n_params(model) == expected


def _conv_count(k, cin, cout, bn):
    return k * k * cin * cout + (2 * cout if bn else cout)


def test_packaged_small_cfgs_by_hand():
    # yolov3-tiny-small: (kernel, in, out, batch-norm) written out from the cfg, 10 classes -> heads of 45.
    convs = [(3, 3, 8, 1), (3, 8, 16, 1), (3, 16, 32, 1), (3, 32, 64, 1), (3, 64, 128, 1), (3, 128, 256, 1),
             (3, 256, 192, 1), (1, 192, 96, 1), (3, 96, 192, 1), (1, 192, 45, 0), (1, 96, 64, 1),
             (3, 64 + 128, 128, 1), (1, 128, 45, 0)]
    model = Darknet.from_cfg(packaged_cfg("yolov3-tiny-small"))
    assert n_params(model) == sum(_conv_count(*c) for c in convs)
    assert 500_000 < n_params(model) < 1_500_000
    assert (model.strides, model.num_classes) == ([32, 16], 10)
    assert (model.input_size, model.channels) == ((256, 256), 3)
    small3 = Darknet.from_cfg(packaged_cfg("yolov3-tiny-3l-small"))
    assert small3.strides == [32, 16, 8] and small3.num_classes == 10
    assert 500_000 < n_params(small3) < 1_500_000


def test_packaged_stride4_cfg_by_hand():
    # yolov3-tiny-4l-small: yolov3-tiny-3l-small's convolutions, then a fourth head: 1x1 64 -> 16 on the stride-8
    # head's features, upsampled and joined to layer 4 (32 filters, stride 4), 3x3 48 -> 32, head 32 -> 45.
    convs = [(3, 3, 8, 1), (3, 8, 16, 1), (3, 16, 32, 1), (3, 32, 64, 1), (3, 64, 128, 1), (3, 128, 256, 1),
             (3, 256, 192, 1), (1, 192, 96, 1), (3, 96, 192, 1), (1, 192, 45, 0),
             (1, 96, 64, 1), (3, 64 + 128, 128, 1), (1, 128, 45, 0),
             (1, 128, 32, 1), (3, 32 + 64, 64, 1), (1, 64, 45, 0),
             (1, 64, 16, 1), (3, 16 + 32, 32, 1), (1, 32, 45, 0)]
    model = Darknet.from_cfg(packaged_cfg("yolov3-tiny-4l-small"))
    assert n_params(model) == sum(_conv_count(*c) for c in convs)
    assert (model.strides, model.num_classes, model.input_size) == ([32, 16, 8, 4], 10, (256, 256))
    # 12 anchors, 3 per head, masks 9-11 / 6-8 / 3-5 / 0-2: the smallest (3 x 4 px) at stride 4, largest at 32.
    sizes = [a.tolist() for a in model.anchors]
    assert sizes[3] == [[3, 4], [4, 5], [6, 8]] and sizes[0] == [[73, 92], [105, 131], [150, 188]]
    flat = [wh for scale in reversed(sizes) for wh in scale]
    assert flat == sorted(flat, key=lambda wh: wh[0] * wh[1])  # finer stride, smaller anchors
    for side in (256, 480):
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, 3, side, side))
        # [B, anchors, H, W, 5 + classes] with H = W = side / stride
        assert [tuple(o.shape) for o in out] == [(1, 3, side // s, side // s, 15) for s in (32, 16, 8, 4)]


@pytest.mark.parametrize(
    ("name", "strides"),
    [("yolov3", [32, 16, 8]), ("yolov3-tiny", [32, 16]), ("yolov3-spp", [32, 16, 8]),
     ("yolov3-tiny_3l", [32, 16, 8])],
)
def test_strides_and_anchors_from_cfg(name, strides):
    sections = parse_cfg(DARKNET_CFGS / f"{name}.cfg")
    yolos = [s for s in sections if s.type == "yolo"]
    model = Darknet(sections)
    assert model.strides == strides and model.max_stride == 32
    for yolo, anchors in zip(yolos, model.anchors, strict=True):
        pairs = [yolo["anchors"][2 * m: 2 * m + 2] for m in yolo["mask"]]
        assert anchors.tolist() == pairs


WIRING = """\
[net]
width=32
height=32
channels=3

# 0: 4 x 32 x 32
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

# 1: 8 x 16 x 16
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=relu

# 2: 4 x 16 x 16
[convolutional]
filters=4
size=1
activation=linear

# 3: 8 x 16 x 16
[convolutional]
filters=8
size=3
pad=1
activation=mish

# 4: 3 + 1
[shortcut]
from=-3
activation=linear

# 5: cat(4, 2) -> 12 channels
[route]
layers=-1, 2

# 6: layer 0 again
[route]
layers=0

# 7: 4 x 16 x 16
[maxpool]
size=2
stride=2

# 8: cat(4, 7) -> 12 channels
[route]
layers=-4,7

# 9: head, 3 * (5 + 2) = 21
[convolutional]
filters=21
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,5, 8,9, 12,14
classes=2
num=3
"""


def _capture_outputs(model):
    outputs = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda _m, _inp, out, i=i: outputs.__setitem__(i, out))
    return outputs


def test_route_and_shortcut_resolution():
    model = Darknet.from_cfg(WIRING)
    assert model.layers[4].sources == [3, 1]  # previous layer, then from=-3 at index 4
    assert model.layers[5].sources == [4, 2]
    assert model.layers[6].sources == [0]
    assert model.layers[8].sources == [4, 7]
    assert [s.c for s in model.shapes[4:9]] == [8, 12, 4, 4, 12]
    assert (model.strides, model.max_stride) == ([2], 2)
    outputs = _capture_outputs(model)
    raw = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(outputs[4], outputs[3] + outputs[1])
    assert torch.equal(outputs[5], torch.cat([outputs[4], outputs[2]], 1))
    assert torch.equal(outputs[6], outputs[0])
    assert torch.equal(outputs[8], torch.cat([outputs[4], outputs[7]], 1))
    assert raw[0].shape == (2, 3, 16, 16, 7)


def test_route_groups_take_a_channel_chunk():
    text = WIRING.replace("layers=-1, 2", "layers=-1, 2\ngroups=2\ngroup_id=1")
    text = text.replace("layers=-4,7", "layers=-4,7,5")  # 8 + 4 + 6 channels
    model = Darknet.from_cfg(text)
    outputs = _capture_outputs(model)
    model(torch.randn(1, 3, 32, 32))
    # darknet's route groups: each input gives its group_id-th half of the channels.
    assert torch.equal(outputs[5], torch.cat([outputs[4][:, 4:], outputs[2][:, 2:]], 1))
    assert outputs[8].shape[1] == 8 + 4 + 6


@pytest.mark.parametrize(
    ("old", "new", "line_key", "message"),
    [
        ("layers=-1, 2", "layers=-1, 6", "layers=", "refers to layer 6"),
        ("layers=-1, 2", "layers=-7", "layers=", "refers to layer -2"),
        ("layers=-4,7", "layers=-4,0", "layers=", "differ in size"),
        ("from=-3", "from=-4", "from=", "darknet's mismatched-shape shortcut"),
        ("filters=21", "filters=20", "[yolo]", r"need 3 \* \(5 \+ 2\) = 21"),
        ("activation=mish", "activation=gelu", "activation=gelu", "not implemented"),
        ("width=32", "width=33", "[net]", "multiples of the network's maximum stride 2"),
    ],
)
def test_graph_errors_name_the_line(old, new, line_key, message):
    text = WIRING.replace(old, new, 1)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.startswith(line_key) and
                (line_key != "layers=" or t == new.split("\n")[0]))
    with pytest.raises(CfgError, match=message) as info:
        Darknet.from_cfg(text)
    assert info.value.line == line


def _naive_maxpool(x, size, stride, before, out_h, out_w):
    """Darknet's loop (maxpool_layer.c): max over in-bounds cells of each window, offset -before."""
    out = torch.empty(x.shape[0], x.shape[1], out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            y0, x0 = i * stride - before, j * stride - before
            ys = slice(max(y0, 0), min(y0 + size, x.shape[2]))
            xs = slice(max(x0, 0), min(x0 + size, x.shape[3]))
            out[:, :, i, j] = x[:, :, ys, xs].amax(dim=(2, 3))
    return out


@pytest.mark.parametrize(
    ("size", "stride", "h", "out", "before"),
    # darknet: padding defaults to size - 1, left offset padding // 2,
    # out = (h + padding - size) // stride + 1
    [(2, 1, 7, 7, 0), (2, 2, 13, 7, 0), (2, 2, 8, 4, 0), (5, 1, 9, 9, 2), (13, 1, 6, 6, 6), (3, 2, 9, 5, 1)],
)
def test_maxpool_matches_darknet_loop(size, stride, h, out, before):
    text = f"[net]\nwidth={h}\nheight={h}\nchannels=2\n[maxpool]\nsize={size}\nstride={stride}\n"
    sections = parse_cfg(text)
    layer, shape = build_maxpool(sections[1], 0, [], Shape(2, h, h, Fraction(1)))
    assert isinstance(layer, MaxPoolLayer) and (shape.h, shape.w) == (out, out)
    x = -torch.rand(3, 2, h, h) - 1.0  # all negative: zero padding would leak zeros into the max
    expected = _naive_maxpool(x, size, stride, before, out, out)
    assert torch.equal(layer(x), expected)


def test_tiny_maxpool_size2_stride1_keeps_size():
    model = Darknet.from_cfg(DARKNET_CFGS / "yolov3-tiny.cfg")
    pool = model.layers[11]
    assert (pool.size, pool.stride) == (2, 1)
    assert model.shapes[10].h == model.shapes[11].h == 416 // 32


def test_output_shapes_small_input_train_and_eval():
    model = Darknet.from_cfg(packaged_cfg("yolov3-tiny-small"))
    x = torch.rand(2, 3, 64, 96)
    for mode in (True, False):
        model.train(mode)
        raw = model(x)
        assert [tuple(r.shape) for r in raw] == [(2, 3, 2, 3, 15), (2, 3, 4, 6, 15)]
    big = Darknet.from_cfg(DARKNET_CFGS / "yolov3.cfg").eval()
    with torch.no_grad():
        raw = big(torch.rand(1, 3, 64, 64))
    assert [tuple(r.shape) for r in raw] == [(1, 3, 2, 2, 85), (1, 3, 4, 4, 85), (1, 3, 8, 8, 85)]


def test_bad_input_size_is_a_clear_error():
    model = Darknet.from_cfg(packaged_cfg("yolov3-tiny-small"))
    with pytest.raises(ValueError, match="multiples of the maximum stride 32"):
        model(torch.rand(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.rand(1, 1, 64, 64))


def test_single_channel_cfg():
    text = WIRING.replace("channels=3", "channels=1")
    model = Darknet.from_cfg(text)
    assert model.channels == 1 and model(torch.rand(1, 1, 32, 32))[0].shape == (1, 3, 16, 16, 7)


def test_yolo_layer_layout_matches_darknet_entry_index():
    model = Darknet.from_cfg(WIRING).eval()
    outputs = _capture_outputs(model)
    raw = model(torch.randn(2, 3, 32, 32))[0]
    conv = outputs[9]  # [B, A*(5+C), H, W]
    b, a, y, x, k = 1, 2, 5, 11, 6
    assert raw[b, a, y, x, k] == conv[b, a * 7 + k, y, x]
    per_anchor = torch.stack([conv[:, i * 7:(i + 1) * 7] for i in range(3)], 1)  # [B, A, 7, H, W]
    assert torch.equal(raw, per_anchor.permute(0, 1, 3, 4, 2))


def test_class_rewrite_changes_head_filters():
    model = Darknet.from_cfg(DARKNET_CFGS / "yolov3-tiny.cfg", num_classes=20)
    heads = [model.layers[i].conv.out_channels for i in model.head_indices]
    assert heads == [75, 75]  # 3 * (5 + 20)
    assert model.head_indices == [15, 22]
    assert [model.sections[i + 1]["filters"] for i in model.head_indices] == [75, 75]
    assert [s["classes"] for s in model.sections if s.type == "yolo"] == [20, 20]


def test_anchor_rewrite_per_scale_and_flat(tmp_path):
    per_scale = [torch.tensor([[90.0, 80.0], [120.0, 100.0], [200.0, 150.0], [300.0, 280.0]]),
                 torch.tensor([[10.0, 12.0], [20.0, 25.0], [30.0, 40.0], [50.0, 60.0]])]
    model = Darknet.from_cfg(DARKNET_CFGS / "yolov3-tiny.cfg", num_classes=3, anchors=per_scale)
    assert [model.layers[i].conv.out_channels for i in model.head_indices] == [32, 32]  # 4 * (5 + 3)
    assert all(torch.equal(a, b) for a, b in zip(model.anchors, per_scale, strict=True))
    yolos = [s for s in model.sections if s.type == "yolo"]
    # The smaller anchors take indices 0..3, as darknet's cfgs order them.
    assert [y["mask"] for y in yolos] == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert yolos[0]["num"] == 8 and yolos[0]["anchors"][:2] == [10.0, 12.0]

    again = Darknet.from_cfg(model.to_cfg(tmp_path / "rewritten.cfg"))
    assert n_params(again) == n_params(model)
    assert all(torch.equal(a, b) for a, b in zip(again.anchors, per_scale, strict=True))

    flat = [(5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
    model = Darknet.from_cfg(DARKNET_CFGS / "yolov3-tiny.cfg", anchors=flat)
    assert model.anchors[0].tolist() == [[11, 12], [13, 14], [15, 16]]  # mask 3,4,5
    assert model.anchors[1].tolist() == [[5, 6], [7, 8], [9, 10]]  # mask 0,1,2
    with pytest.raises(ValueError, match="3 anchor sets given for 2"):
        Darknet.from_cfg(DARKNET_CFGS / "yolov3-tiny.cfg", anchors=[per_scale[0]] * 3)
    with pytest.raises(ValueError, match="mask"):
        Darknet.from_cfg(DARKNET_CFGS / "yolov3-tiny.cfg", anchors=flat[:4])


def test_head_bias_priors():
    model = Darknet.from_cfg(DARKNET_CFGS / "yolov3-tiny.cfg")
    # Objectness log(8 / (640 / s)^2): s=32 -> ln(8 / 400) = ln(0.02); s=16 -> ln(8 / 1600) = ln(0.005).
    # Classes log(0.6 / (80 - 0.99)) = ln(0.6 / 79.01).
    for index, objectness in zip(model.head_indices, (math.log(0.02), math.log(0.005)), strict=True):
        bias = model.layers[index].conv.bias.view(3, 85)
        assert torch.all(bias[:, :4] == 0)
        assert torch.allclose(bias[:, 4], torch.tensor(objectness))
        assert torch.allclose(bias[:, 5:], torch.tensor(math.log(0.6 / 79.01)))
    assert abs(math.log(0.02) - (-3.912023005428146)) < 1e-12


def test_anchors_follow_to_and_yolo_params():
    model = Darknet.from_cfg(DARKNET_CFGS / "yolov3.coco-giou-12.cfg")
    assert model.to(torch.float64).anchors[0].dtype == torch.float64
    assert model.yolo_params[0] == {"jitter": 0.3, "ignore_thresh": 0.7, "truth_thresh": 1.0, "random": 1.0,
                                    "iou_normalizer": 0.5, "iou_loss": "giou"}
    assert len(model.yolo_params) == 3
