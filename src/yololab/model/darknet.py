"""Darknet: a YOLOv3-family network built from a darknet cfg.

``Darknet.from_cfg(path, num_classes=None, anchors=None)`` parses the cfg, optionally rewrites the class
count and anchors (which rewrites the ``filters`` of the convolution before each ``[yolo]``), and builds
the layers. ``model(images [B, C, H, W])`` returns the raw head outputs, one ``[B, A, H/s, W/s, 5 + C]``
tensor of logits (tx, ty, tw, th, to, classes) per ``[yolo]`` in cfg order, in train and eval mode alike.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from yololab.model.cfg import SCHEMAS, CfgSection, CfgWarning, net_section, parse_cfg, write_cfg
from yololab.model.layers import (
    BUILDERS,
    YOLO_BOX_ENTRIES,
    ConvLayer,
    RouteLayer,
    Shape,
    ShortcutLayer,
    YoloLayer,
    yolo_mask,
)
from yololab.model.priors import (  # noqa: F401 (class_prior, objectness_prior: re-exported)
    HeadPriors,
    class_prior,
    objectness_prior,
    ultralytics_priors,
    zero_priors,
)

# --------------------------------------------------------------------------------------------- cfg rewrites


def _yolo_positions(sections: list[CfgSection]) -> list[int]:
    return [i for i, s in enumerate(sections) if s.type == "yolo"]


def _rewrite_head_filters(sections: list[CfgSection]) -> None:
    """filters = len(mask) * (5 + classes) for the convolution before each [yolo]."""
    for pos in _yolo_positions(sections):
        yolo = sections[pos]
        head = sections[pos - 1]
        if head.type != "convolutional":
            raise yolo.error("the section before [yolo] must be its [convolutional] head to set its filters")
        head.set("filters", len(yolo_mask(yolo)) * (YOLO_BOX_ENTRIES + yolo.value("classes")))


def set_num_classes(sections: list[CfgSection], num_classes: int) -> None:
    """Set ``classes`` of every [yolo] and the filters of its head convolution (in place)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for pos in _yolo_positions(sections):
        yolo = sections[pos]
        yolo.set("classes", int(num_classes))
        counters = yolo.get("counters_per_class")
        if counters is not None and len(counters) != num_classes:
            warnings.warn(f"{yolo.file}:{yolo.where('counters_per_class')}: counters_per_class has "
                          f"{len(counters)} entries for {num_classes} classes; removed",
                          CfgWarning, stacklevel=3)
            yolo.remove("counters_per_class")
    _rewrite_head_filters(sections)


def _anchor_pairs(value: Any) -> list[list[float]]:
    pairs = torch.as_tensor(value, dtype=torch.float64).reshape(-1, 2)
    if not len(pairs) or not bool((pairs > 0).all()):
        raise ValueError(f"anchors must be positive (w, h) pairs, got {value!r}")
    return pairs.tolist()


def _is_per_scale(anchors: Any) -> bool:
    if isinstance(anchors, Tensor):
        return anchors.dim() == 3
    return len(anchors) > 0 and torch.as_tensor(anchors[0], dtype=torch.float64).dim() == 2


def set_anchors(sections: list[CfgSection], anchors: Sequence | Tensor) -> None:
    """Replace the anchors of every [yolo] (in place).

    ``anchors`` is either one [A_i, 2] (w, h) array per [yolo] in cfg order, in input pixels, or one flat
    list of (w, h) pairs ordered like the cfg's ``anchors`` line. Per scale: the full list is rebuilt with
    the scales sorted by mean anchor area (darknet's convention: mask 0,1,2 = smallest anchors) and each
    [yolo] gets a mask over its own anchors. Flat: the masks stay and must index the new list. The head
    filters follow the anchor counts.
    """
    positions = _yolo_positions(sections)
    if _is_per_scale(anchors):
        per_scale = [_anchor_pairs(a) for a in anchors]
        if len(per_scale) != len(positions):
            raise ValueError(f"{len(per_scale)} anchor sets given for {len(positions)} [yolo] layers")
        mean_area = [sum(w * h for w, h in pairs) / len(pairs) for pairs in per_scale]
        order = sorted(range(len(per_scale)), key=mean_area.__getitem__)
        full: list[list[float]] = []
        masks: dict[int, list[int]] = {}
        for i in order:
            masks[i] = list(range(len(full), len(full) + len(per_scale[i])))
            full += per_scale[i]
        for i, pos in enumerate(positions):
            sections[pos].set("mask", masks[i])
    else:
        full = _anchor_pairs(anchors)
        for pos in positions:
            mask = yolo_mask(sections[pos]) if "mask" in sections[pos] else []
            if any(m >= len(full) for m in mask):
                raise ValueError(f"{len(full)} anchors given but the [yolo] at {sections[pos].file}:"
                                 f"{sections[pos].line} has mask {mask}")
    for pos in positions:
        sections[pos].set("anchors", [v for pair in full for v in pair])
        sections[pos].set("num", len(full))
    _rewrite_head_filters(sections)


def yolo_anchors(sections: list[CfgSection]) -> list[list[list[float]]]:
    """The anchors of every [yolo] in cfg order, as the model holds them: per [yolo] its masked ``[A, 2]``
    (w, h) input-pixel pairs, read from the cfg (so also for a model built on the meta device)."""
    out = []
    for pos in _yolo_positions(sections):
        pairs = _anchor_pairs(sections[pos].value("anchors"))
        out.append([pairs[m] for m in yolo_mask(sections[pos])])
    return out


# --------------------------------------------------------------------------------------------- model


class Darknet(nn.Module):
    """A network built from darknet cfg sections (see ``from_cfg``).

    Attributes: ``sections`` (the cfg, with the classes/anchors actually used; ``to_cfg`` writes it),
    ``layers`` (one module per cfg layer), ``input_size`` (h, w) and ``channels`` from ``[net]``,
    ``anchors`` (list of [A, 2] input-pixel buffers per head), ``strides`` (per head), ``num_classes``,
    ``yolo_params`` (per head, the [yolo] training keys written in the cfg), ``max_stride`` (input H and W
    must be multiples of it), ``head_indices`` (layer index of each head convolution), ``head_priors`` (the
    initial objectness and class biases of the heads; ``init_head_biases`` and ``reset_heads`` use them).

    ``head_priors``: a ``HeadPriors`` (e.g. ``label_priors`` of the training labels), or "ultralytics"
    (YOLOv5's constants, the default) or "none" (darknet's zero biases); see ``yololab.model.priors``.
    """

    def __init__(self, sections: list[CfgSection], head_priors: HeadPriors | str = "ultralytics"):
        super().__init__()
        net = net_section(sections)
        height, width, channels = (net.value(k) for k in ("height", "width", "channels"))
        for key, v in (("height", height), ("width", width), ("channels", channels)):
            if v < 1:
                raise net.error(f"needs a positive '{key}=' (got {v})", key)
        self.sections = sections
        self.input_size = (height, width)
        self.channels = channels
        self.shapes = self._build(sections[1:], Shape(channels, height, width, Fraction(1)))
        self.yolo_indices = [i for i, layer in enumerate(self.layers) if isinstance(layer, YoloLayer)]
        self._check_heads(net)
        self._keep = {j for layer in self.layers for j in layer.sources
                      if isinstance(layer, (RouteLayer, ShortcutLayer))}
        self.head_priors = self._priors(head_priors)
        self.init_head_biases()

    def _priors(self, head_priors: HeadPriors | str) -> HeadPriors:
        if isinstance(head_priors, HeadPriors):
            head_priors.check(len(self.yolo_indices), self.num_classes)
            return head_priors
        if head_priors == "ultralytics":
            return ultralytics_priors(self.strides, self.num_classes)
        if head_priors == "none":
            return zero_priors(len(self.yolo_indices), self.num_classes)
        raise ValueError(f"head priors must be HeadPriors, 'ultralytics' or 'none', got {head_priors!r}")

    def _build(self, layer_sections: list[CfgSection], inp: Shape) -> list[Shape]:
        shapes: list[Shape] = []
        layers = []
        for index, section in enumerate(layer_sections):
            if section.type == "net":
                raise section.error("only the first section may be [net]")
            layer, shape = BUILDERS[section.type](section, index, shapes, inp)
            layers.append(layer)
            shapes.append(shape)
        self.layers = nn.ModuleList(layers)
        return shapes

    def _check_heads(self, net: CfgSection) -> None:
        sections = self.sections[1:]
        if not self.yolo_indices:
            raise net.error("the cfg has no [yolo] layer")
        for i in self.yolo_indices:
            if i == 0 or not isinstance(self.layers[i - 1], ConvLayer):
                raise sections[i].error("the layer before [yolo] must be a [convolutional] head")
        classes = {self.layers[i].num_classes for i in self.yolo_indices}
        if len(classes) > 1:
            first = sections[self.yolo_indices[0]]
            raise first.error(f"[yolo] layers disagree on classes: {sorted(classes)}")
        # Every layer's size must stay an integer: H must be a multiple of each factor's numerator.
        self.max_stride = math.lcm(*(s.stride.numerator for s in self.shapes))
        height, width = self.input_size
        if height % self.max_stride or width % self.max_stride:
            raise net.error(f"width={width} and height={height} must be multiples of the network's maximum "
                            f"stride {self.max_stride}")
        for i in self.yolo_indices:
            grid = (self.shapes[i].h, self.shapes[i].w)
            if grid != (height // self.layers[i].stride, width // self.layers[i].stride):
                raise sections[i].error(f"grid {grid} at stride {self.layers[i].stride} does not tile the "
                                        f"{height}x{width} input (check size/pad/padding before it)")

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def from_cfg(cls, path: str | Path, num_classes: int | None = None,
                 anchors: Sequence | Tensor | None = None, head_priors: HeadPriors | str = "ultralytics") -> Darknet:
        """Build from a cfg file (or cfg text). ``num_classes`` / ``anchors`` override the cfg's (see
        ``set_num_classes`` and ``set_anchors``); the head filters are rewritten to match. ``head_priors`` as
        in the class docstring."""
        sections = parse_cfg(path)
        if num_classes is not None:
            set_num_classes(sections, num_classes)
        if anchors is not None:
            set_anchors(sections, anchors)
        return cls(sections, head_priors)

    def to_cfg(self, path: str | Path) -> Path:
        """Write the cfg this model was built from (with its actual classes, filters and anchors)."""
        return write_cfg(self.sections, path)

    # ----------------------------------------------------------------------------------------- heads

    @property
    def yolo_layers(self) -> list[YoloLayer]:
        return [self.layers[i] for i in self.yolo_indices]

    @property
    def head_indices(self) -> list[int]:
        """Layer index of the convolution feeding each [yolo] (the only layers that depend on classes)."""
        return [i - 1 for i in self.yolo_indices]

    @property
    def anchors(self) -> list[Tensor]:
        return [layer.anchors for layer in self.yolo_layers]

    @property
    def strides(self) -> list[int]:
        return [layer.stride for layer in self.yolo_layers]

    @property
    def num_classes(self) -> int:
        return self.yolo_layers[0].num_classes

    @property
    def yolo_params(self) -> list[dict[str, Any]]:
        schema = SCHEMAS["yolo"]
        training = {k for k, spec in schema.items() if spec.role == "train"}
        return [{k: v for k, v in self.sections[i + 1].values().items() if k in training}
                for i in self.yolo_indices]

    def conv_layers(self) -> list[tuple[int, ConvLayer]]:
        """(layer index, module) of every [convolutional], in cfg order (the .weights file order)."""
        return [(i, layer) for i, layer in enumerate(self.layers) if isinstance(layer, ConvLayer)]

    @torch.no_grad()
    def init_head_biases(self, heads: Sequence[int] | None = None) -> None:
        """Box biases 0 (darknet's), objectness and class biases from ``head_priors``.

        ``heads``: positions in ``head_indices`` (default all). With a batch-normalised head the prior goes
        into the batch-norm bias, which plays the role of the conv bias.
        """
        for h in range(len(self.yolo_indices)) if heads is None else heads:
            yolo = self.yolo_layers[h]
            conv = self.layers[self.head_indices[h]]
            bias = (conv.bn.bias if conv.bn is not None else conv.conv.bias).view(yolo.num_anchors, -1)
            bias[:, :4] = 0.0
            bias[:, 4] = self.head_priors.objectness[h]
            bias[:, YOLO_BOX_ENTRIES:] = torch.tensor(self.head_priors.classes, dtype=bias.dtype, device=bias.device)

    @torch.no_grad()
    def reset_heads(self, heads: Sequence[int] | None = None) -> None:
        """Re-initialise head convolutions (torch's default init) and their bias priors (``head_priors``, also
        for darknet .weights of another class count)."""
        for h in range(len(self.yolo_indices)) if heads is None else heads:
            conv = self.layers[self.head_indices[h]]
            conv.conv.reset_parameters()
            if conv.bn is not None:
                conv.bn.reset_parameters()
        self.init_head_biases(heads)

    # ----------------------------------------------------------------------------------------- forward

    def check_input(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected images [B, {self.channels}, H, W], got {list(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(f"input height and width ({h}x{w}) must be multiples of the maximum stride "
                             f"{self.max_stride}")

    def forward(self, images: Tensor) -> list[Tensor]:
        """images [B, C, H, W] -> list over [yolo] layers of raw logits [B, A, H/s, W/s, 5 + C]."""
        self.check_input(images)
        kept: dict[int, Tensor] = {}
        raw: list[Tensor] = []
        x = images
        for i, layer in enumerate(self.layers):
            if isinstance(layer, (RouteLayer, ShortcutLayer)):
                x = layer([kept[j] for j in layer.sources])
            else:
                x = layer(x)
                if isinstance(layer, YoloLayer):
                    raw.append(x)
            if i in self._keep:
                kept[i] = x
        return raw
