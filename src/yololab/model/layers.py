"""Darknet layers as torch modules, and their builders from cfg sections.

Each builder takes a section, the layer's index and the shapes of the layers before it, and returns the
module and its output ``Shape``. Shapes are computed with darknet's integer formulas at the cfg's
``[net]`` size, and ``Shape.stride`` tracks the downsampling factor analytically (conv and maxpool
strides multiply it, upsample divides it), so no dummy forward pass is needed.

Layer indices follow darknet: 0 is the first section after ``[net]``; a negative index in ``layers=`` or
``from=`` is relative to the layer that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yololab.model.cfg import CfgSection

# Running-statistics momentum: darknet's GPU batch norm uses .01 (batchnorm_layer.c), which needs ~500 steps
# before evaluation-mode statistics are usable; ultralytics' YOLOv3/v5 use .03, which suits short runs and
# fine-tuning on few images. torch's momentum has the meaning of cudnn's exponential average factor.
BN_MOMENTUM = 0.03
BN_EPS = 1e-5  # darknet's epsilon
LEAKY_SLOPE = 0.1  # darknet's leaky_activate: x > 0 ? x : .1 * x
YOLO_BOX_ENTRIES = 5  # tx, ty, tw, th, objectness before the class logits


def _activation(name: str) -> nn.Module | None:
    """Module for a darknet activation name (activations.c), or None if not implemented here."""
    factories = {
        "linear": nn.Identity,
        "leaky": lambda: nn.LeakyReLU(LEAKY_SLOPE),
        "relu": nn.ReLU,
        "logistic": nn.Sigmoid,
        "mish": nn.Mish,  # x * tanh(softplus(x)), as darknet's mish_yashas
        "swish": nn.SiLU,  # x * sigmoid(x)
        "tanh": nn.Tanh,
        "relu6": nn.ReLU6,
        "elu": nn.ELU,  # alpha 1, as darknet's elu_activate
    }
    factory = factories.get(name)
    return factory() if factory else None


ACTIVATIONS = ("linear", "leaky", "relu", "logistic", "mish", "swish", "tanh", "relu6", "elu")


@dataclass(frozen=True)
class Shape:
    """Output of a layer at the cfg's input size: channels, height, width, downsampling factor."""

    c: int
    h: int
    w: int
    stride: Fraction
    is_yolo: bool = False


# --------------------------------------------------------------------------------------------- modules


class ConvLayer(nn.Module):
    """[convolutional]: conv (no bias when batch-normalised) -> batch norm -> activation."""

    def __init__(self, in_channels: int, filters: int, size: int, stride: int, padding: int, groups: int,
                 batch_normalize: bool, activation: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, filters, size, stride, padding, groups=groups,
                              bias=not batch_normalize)
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_normalize else None
        self.act = _activation(activation)
        self.activation = activation
        self.sources = [-1]

    @property
    def frozen(self) -> bool:
        """Whether the layer is frozen (transfer learning, ``model/freeze.py``): its parameters need no gradient."""
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> ConvLayer:
        """As ``nn.Module.train``, except that a frozen layer keeps its batch norm in eval mode: it normalises
        with its running statistics and never updates them (the usual practice of transfer learning)."""
        super().train(mode)
        if mode and self.bn is not None and self.frozen:
            self.bn.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPoolLayer(nn.Module):
    """[maxpool] with darknet's padding: ``padding`` values in total, ``padding // 2`` of them left/top.

    darknet (maxpool_layer.c) takes the max over in-bounds values only, so padding is -inf, not zero;
    out = (in + padding - size) // stride + 1. size 2 / stride 1 (padding 1) pads right/bottom only and
    keeps the size.
    """

    def __init__(self, size: int, stride: int, padding: int):
        super().__init__()
        self.size, self.stride, self.padding = size, stride, padding
        before = padding // 2
        self.pad = (before, padding - before, before, padding - before)  # left, right, top, bottom
        self.sources = [-1]

    def forward(self, x: Tensor) -> Tensor:
        if self.padding:
            x = F.pad(x, self.pad, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class UpsampleLayer(nn.Module):
    """[upsample]: nearest-neighbour by an integer stride."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride
        self.sources = [-1]

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class RouteLayer(nn.Module):
    """[route]: channel concatenation of earlier layers (``sources``: absolute indices).

    With ``groups`` > 1 each input contributes its ``group_id``-th channel chunk (darknet's route groups).
    """

    def __init__(self, sources: list[int], groups: int = 1, group_id: int = 0):
        super().__init__()
        self.sources = sources
        self.groups, self.group_id = groups, group_id

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if self.groups > 1:
            inputs = [x.chunk(self.groups, dim=1)[self.group_id] for x in inputs]
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)


class ShortcutLayer(nn.Module):
    """[shortcut]: previous layer + the ``from`` layers (same shape), then the activation."""

    def __init__(self, sources: list[int], activation: str):
        super().__init__()
        self.sources = sources  # previous layer first, then the from= layers
        self.act = _activation(activation)
        self.activation = activation

    def forward(self, inputs: list[Tensor]) -> Tensor:
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return self.act(out)


class YoloLayer(nn.Module):
    """[yolo]: [B, A*(5+C), H, W] -> [B, A, H, W, 5+C] raw logits (tx, ty, tw, th, to, classes).

    darknet's entry index is ``anchor*(5+C)*H*W + entry*H*W + cell``, hence the view before the permute.
    ``anchors`` [A, 2] input pixels is a buffer, so it follows ``.to()``.
    """

    def __init__(self, anchors: Tensor, num_classes: int, stride: int, mask: list[int]):
        super().__init__()
        self.register_buffer("anchors", anchors.float().reshape(-1, 2))
        self.num_classes = num_classes
        self.stride = stride
        self.mask = list(mask)
        self.sources = [-1]

    @property
    def num_anchors(self) -> int:
        return len(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        x = x.view(b, self.num_anchors, YOLO_BOX_ENTRIES + self.num_classes, h, w)
        return x.permute(0, 1, 3, 4, 2).contiguous()


# --------------------------------------------------------------------------------------------- builders


def resolve_sources(section: CfgSection, key: str, index: int, shapes: list[Shape]) -> list[int]:
    """Absolute layer indices of ``key`` (``layers`` or ``from``): negative ones count back from ``index``."""
    if key not in section:
        raise section.error(f"needs '{key}=' (the layers it reads)")
    sources = []
    for ref in section[key]:
        source = index + ref if ref < 0 else ref
        if not 0 <= source < index:
            raise section.error(f"{key}={ref} refers to layer {source}; only layers 0..{index - 1} come "
                                f"before layer {index}", key)
        if shapes[source].is_yolo:
            raise section.error(f"{key}={ref} refers to the [yolo] layer {source}; not supported", key)
        sources.append(source)
    return sources


def _previous(section: CfgSection, index: int, shapes: list[Shape], input_shape: Shape) -> Shape:
    if index == 0:
        return input_shape
    if shapes[index - 1].is_yolo:
        raise section.error(f"layer {index} reads the [yolo] layer before it; only [route] may follow [yolo]")
    return shapes[index - 1]


def _check_positive(section: CfgSection, out: int, what: str) -> None:
    if out < 1:
        raise section.error(f"output {what} would be {out} (input too small for size/stride)")


def build_convolutional(section: CfgSection, index: int, shapes: list[Shape], inp: Shape):
    x = _previous(section, index, shapes, inp)
    filters, size, stride, groups = (section.value(k) for k in ("filters", "size", "stride", "groups"))
    for key in ("stride_x", "stride_y"):
        if key in section and section[key] >= 1 and section[key] != stride:
            raise section.error(f"{key}={section[key]} differs from stride={stride}; not implemented", key)
    if min(filters, size, stride, groups) < 1:
        raise section.error("filters, size, stride and groups must be >= 1")
    if x.c % groups or filters % groups:
        raise section.error(f"groups={groups} must divide input channels {x.c} and filters {filters}",
                            "groups")
    padding = size // 2 if section.value("pad") else section.value("padding")
    activation = section.value("activation")
    if _activation(activation) is None:
        raise section.error(f"activation {activation!r} is not implemented; use one of {ACTIVATIONS}",
                            "activation")
    out_h = (x.h + 2 * padding - size) // stride + 1
    out_w = (x.w + 2 * padding - size) // stride + 1
    _check_positive(section, min(out_h, out_w), "size")
    layer = ConvLayer(x.c, filters, size, stride, padding, groups, bool(section.value("batch_normalize")),
                      activation)
    return layer, Shape(filters, out_h, out_w, x.stride * stride)


def build_maxpool(section: CfgSection, index: int, shapes: list[Shape], inp: Shape):
    x = _previous(section, index, shapes, inp)
    stride = section.value("stride")
    size = section.get("size", stride)
    padding = section.get("padding", size - 1)  # darknet's default
    for key in ("stride_x", "stride_y"):
        if section.get(key, stride) != stride:
            raise section.error(f"{key}={section[key]} differs from stride={stride}; not implemented", key)
    if min(size, stride) < 1 or padding < 0:
        raise section.error("size and stride must be >= 1 and padding >= 0")
    out_h = (x.h + padding - size) // stride + 1
    out_w = (x.w + padding - size) // stride + 1
    _check_positive(section, min(out_h, out_w), "size")
    return MaxPoolLayer(size, stride, padding), Shape(x.c, out_h, out_w, x.stride * stride)


def build_upsample(section: CfgSection, index: int, shapes: list[Shape], inp: Shape):
    x = _previous(section, index, shapes, inp)
    stride = section.value("stride")
    return UpsampleLayer(stride), Shape(x.c, x.h * stride, x.w * stride, x.stride / stride)


def build_route(section: CfgSection, index: int, shapes: list[Shape], inp: Shape):
    sources = resolve_sources(section, "layers", index, shapes)
    groups, group_id = section.value("groups"), section.value("group_id")
    if not 0 <= group_id < groups:
        raise section.error(f"group_id={group_id} must be in 0..{groups - 1}", "group_id")
    first = shapes[sources[0]]
    for s in sources:
        if (shapes[s].h, shapes[s].w, shapes[s].stride) != (first.h, first.w, first.stride):
            raise section.error(f"layers {sources[0]} ({first.h}x{first.w}) and {s} "
                                f"({shapes[s].h}x{shapes[s].w}) differ in size", "layers")
        if shapes[s].c % groups:
            raise section.error(f"groups={groups} does not divide the {shapes[s].c} channels of layer {s}",
                                "groups")
    channels = sum(shapes[s].c for s in sources) // groups
    return RouteLayer(sources, groups, group_id), Shape(channels, first.h, first.w, first.stride)


def build_shortcut(section: CfgSection, index: int, shapes: list[Shape], inp: Shape):
    if index == 0:
        raise section.error("a [shortcut] cannot be the first layer")
    x = _previous(section, index, shapes, inp)
    sources = [index - 1, *resolve_sources(section, "from", index, shapes)]
    for s in sources[1:]:
        if (shapes[s].c, shapes[s].h, shapes[s].w) != (x.c, x.h, x.w):
            other = shapes[s]
            raise section.error(f"layer {s} is {other.c}x{other.h}x{other.w} but the previous layer is "
                                f"{x.c}x{x.h}x{x.w}; darknet's mismatched-shape shortcut is not implemented",
                                "from")
    activation = section.value("activation")
    if _activation(activation) is None:
        raise section.error(f"activation {activation!r} is not implemented; use one of {ACTIVATIONS}",
                            "activation")
    return ShortcutLayer(sources, activation), x


def yolo_mask(section: CfgSection) -> list[int]:
    """The anchor indices of a [yolo] section (darknet: all ``num`` anchors when ``mask`` is absent)."""
    return list(section.get("mask", range(section.value("num"))))


def build_yolo(section: CfgSection, index: int, shapes: list[Shape], inp: Shape):
    x = _previous(section, index, shapes, inp)
    classes, num = section.value("classes"), section.value("num")
    anchors = section.get("anchors")
    if anchors is None or len(anchors) != 2 * num:
        found = "none" if anchors is None else f"{len(anchors)} values"
        raise section.error(f"anchors must hold num={num} (w,h) pairs = {2 * num} values; found {found}",
                            "anchors")
    mask = yolo_mask(section)
    if any(not 0 <= m < num for m in mask):
        raise section.error(f"mask {mask} must index the num={num} anchors", "mask")
    if classes < 1:
        raise section.error("classes must be >= 1", "classes")
    expected = len(mask) * (YOLO_BOX_ENTRIES + classes)
    if x.c != expected:
        raise section.error(f"the layer before has {x.c} filters; mask {mask} and classes={classes} need "
                            f"{len(mask)} * (5 + {classes}) = {expected}")
    if x.stride.denominator != 1:
        raise section.error(f"downsampling factor {x.stride} is not an integer")
    all_anchors = torch.tensor(anchors, dtype=torch.float32).reshape(num, 2)
    layer = YoloLayer(all_anchors[mask], classes, int(x.stride), mask)
    return layer, Shape(x.c, x.h, x.w, x.stride, is_yolo=True)


BUILDERS = {
    "convolutional": build_convolutional,
    "maxpool": build_maxpool,
    "upsample": build_upsample,
    "route": build_route,
    "shortcut": build_shortcut,
    "yolo": build_yolo,
}
