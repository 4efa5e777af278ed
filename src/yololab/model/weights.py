"""Darknet ``.weights`` files: read into and write from a ``Darknet`` model.

Layout (darknet parser.c, ``save_weights_upto`` / ``load_weights_upto``): int32 major, minor, revision;
then ``seen`` (images seen in training), int64 when (major*10 + minor) >= 2 and major < 1000 and
minor < 1000, else int32; then for every [convolutional] in cfg order: with batch norm, bias, scale,
running mean, running variance (``filters`` floats each) then the conv weights; without, the conv bias then
the weights. All little-endian float32, nothing else in the file: the sizes come from the cfg.

Only the head convolutions (before each [yolo]) change size with the class count, so the file's class
count can be inferred from its length: a file written for another class count loads everything but the
heads, which are re-initialised. A shorter file that ends exactly on a layer boundary is a prefix
(darknet's ``darknet53.conv.74`` style backbone files) and loads those layers only.

Grey models (cfg ``[net] channels=1``) load 3-channel files: the file does not say its channels, so when its
length fits the model only with a 3-channel first convolution, that convolution's weights ``[F, 3, k, k]``
are read and summed over the input channels into ``[F, 1, k, k]``. On a grey image g the first layer then
computes what the 3-channel model computes on the RGB image (g, g, g) (``sum_input_channels``). Readings with
the model's class count come before those with another one, then the model's own channel count before 3.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from yololab.model.darknet import Darknet
from yololab.model.layers import YOLO_BOX_ENTRIES, ConvLayer, MaxPoolLayer, UpsampleLayer

log = logging.getLogger(__name__)

# Version written by AlexeyAB darknet (version.h: MAJOR 0, MINOR 2, PATCH 5): its seen is 64-bit.
WRITE_VERSION = (0, 2, 5)
FLOAT32 = np.dtype("<f4")
FLOAT_BYTES = 4
VERSION_FORMAT = "<3i"
SEEN64_FORMAT, SEEN32_FORMAT = "<Q", "<I"  # darknet: uint64_t / uint32_t
VERSION_LIMIT = 1000  # darknet reads major/minor >= 1000 as an old transposed format with a 32-bit seen
RGB_CHANNELS = 3  # the input channels of published darknet and ultralytics weights (ImageNet / COCO photos)


class WeightsError(ValueError):
    """A .weights file or checkpoint that does not fit the model; the message names the file."""


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int
    nbytes: int  # header size: 16 or 20 bytes


@dataclass
class WeightsReport:
    """What ``load_darknet_weights`` did. Layer indices are darknet's (0 = first layer after [net])."""

    path: str
    header: WeightsHeader
    file_classes: int | None  # class count the file was written for (None for a prefix file)
    loaded: list[int] = field(default_factory=list)
    reinitialised: list[int] = field(default_factory=list)
    total_conv_layers: int = 0
    summed_channels: int | None = None  # the file's input channels, summed into a 1-channel first convolution
    input_conv: int | None = None  # the layer whose weights were summed

    def summary(self) -> str:
        text = (f"{self.path}: loaded {len(self.loaded)} of {self.total_conv_layers} conv layers "
                f"(seen={self.header.seen})")
        if self.file_classes is not None and self.reinitialised:
            text += (f"; file has {self.file_classes} classes, re-initialised heads at layers "
                     f"{self.reinitialised}")
        elif self.file_classes is None:
            text += f"; prefix file, layers {self.loaded[0]}..{self.loaded[-1]}" if self.loaded else ""
        return text + summed_note(self.summed_channels, self.input_conv)


def summed_note(channels: int | None, layer: int | None) -> str:
    """The part of a load summary that says the first convolution was summed over the source's channels."""
    if channels is None:
        return ""
    return (f"; first convolution (layer {layer}) summed over the file's {channels} input channels for this "
            "1-channel model")


def input_conv_index(model: Darknet) -> int | None:
    """Layer index of the convolution that reads the image (the first one, when only maxpool or upsample layers,
    which keep the channels, come before it, and it is not grouped); None when there is no such layer."""
    for index, layer in enumerate(model.layers):
        if isinstance(layer, ConvLayer):
            return index if layer.conv.groups == 1 else None
        if not isinstance(layer, MaxPoolLayer | UpsampleLayer):
            return None
    return None


def sum_input_channels(weight: Tensor) -> Tensor:
    """Conv weights ``[F, C, k, k]`` -> ``[F, 1, k, k]``, summed over the C input channels: convolving a grey
    image g with the sum gives what the C-channel weights give on the image (g, ..., g), the same bias and
    batch norm following (convolution is linear in its input channels)."""
    return weight.sum(dim=1, keepdim=True)


def seen_is_64bit(major: int, minor: int) -> bool:
    """darknet's rule for the width of ``seen``."""
    return (major * 10 + minor) >= 2 and major < VERSION_LIMIT and minor < VERSION_LIMIT


def read_header(data: bytes, path: str) -> WeightsHeader:
    """Parse the version and ``seen`` at the start of ``data``."""
    version_bytes = struct.calcsize(VERSION_FORMAT)
    if len(data) < version_bytes:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a darknet weights header")
    major, minor, revision = struct.unpack_from(VERSION_FORMAT, data)
    seen_format = SEEN64_FORMAT if seen_is_64bit(major, minor) else SEEN32_FORMAT
    nbytes = version_bytes + struct.calcsize(seen_format)
    if len(data) < nbytes:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a darknet weights header")
    (seen,) = struct.unpack_from(seen_format, data, version_bytes)
    return WeightsHeader(major, minor, revision, seen, nbytes)


def conv_tensors(layer: ConvLayer) -> list[Tensor]:
    """The tensors of one [convolutional] in file order."""
    if layer.bn is not None:
        bn = layer.bn
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, layer.conv.weight]
    return [layer.conv.bias, layer.conv.weight]


def _numel(layer: ConvLayer) -> int:
    return sum(t.numel() for t in conv_tensors(layer))


def _file_numel(model: Darknet, index: int, layer: ConvLayer, channels: int) -> int:
    """Floats of conv layer ``index`` in a file whose first convolution reads ``channels`` input channels."""
    numel = _numel(layer)
    if channels != model.channels and index == input_conv_index(model):
        weight = layer.conv.weight  # [F, model.channels, k, k]
        numel += weight.numel() // weight.shape[1] * (channels - weight.shape[1])
    return numel


@dataclass(frozen=True)
class _Plan:
    file_classes: int | None
    n_layers: int  # how many conv layers the file holds (all, or a prefix)
    channels: int  # input channels of the file's first convolution


def _plan_any(model: Darknet, n_floats: int, path: str) -> _Plan:
    """How the file's floats map to the model's conv layers. Readings, in this order of preference: the model's
    class count, another class count, a prefix; each first with the model's own input channels, then (for a
    1-channel model) with a 3-channel first convolution. A small network can fit two readings (a 1-channel file
    of another class count, a 3-channel one of the model's): the model's class count wins."""
    channel_counts = [model.channels]
    if model.channels == 1 and input_conv_index(model) is not None:
        channel_counts.append(RGB_CHANNELS)
    readings = [_readings(model, n_floats, channels) for channels in channel_counts]
    for kind in range(len(readings[0])):
        for plans in readings:
            if plans[kind] is not None:
                return plans[kind]
    fixed, per_class_unit, expected = _sizes(model, model.channels)
    convs = model.conv_layers()
    grey = f"; a 3-channel file for this 1-channel model has {_sizes(model, RGB_CHANNELS)[2]}" \
        if len(channel_counts) > 1 else ""
    raise WeightsError(
        f"{path}: expected {expected} floats after the header for this model ({len(convs)} conv layers, "
        f"{model.num_classes} classes; {fixed} + {per_class_unit} x (5 + classes) for another class count, "
        f"or a prefix ending on a layer boundary{grey}), found {n_floats}"
    )


def _sizes(model: Darknet, channels: int) -> tuple[int, int, int]:
    """(floats of the layers other than heads, floats of all heads per unit of 5 + classes, floats of the whole
    model) in a file whose first convolution reads ``channels`` input channels."""
    convs = model.conv_layers()
    heads = dict(zip(model.head_indices, model.yolo_layers, strict=True))
    fixed = sum(_file_numel(model, i, layer, channels) for i, layer in convs if i not in heads)
    # Floats of all heads per unit of (5 + classes): anchors x (weights per filter + bias or 4 BN values).
    per_class_unit = sum(
        yolo.num_anchors * (layer.conv.weight[0].numel() + (4 if layer.bn is not None else 1))
        for i, layer in convs if i in heads for yolo in [heads[i]]
    )
    return fixed, per_class_unit, fixed + per_class_unit * (YOLO_BOX_ENTRIES + model.num_classes)


def _readings(model: Darknet, n_floats: int, channels: int) -> tuple[_Plan | None, _Plan | None, _Plan | None]:
    """The file read as (the model's class count, another class count, a prefix) for a first convolution of
    ``channels`` inputs; None where the length does not fit that reading."""
    convs = model.conv_layers()
    fixed, per_class_unit, expected = _sizes(model, channels)
    same = _Plan(model.num_classes, len(convs), channels) if n_floats == expected else None
    rest = n_floats - fixed
    other = None
    if rest > 0 and rest % per_class_unit == 0 and rest // per_class_unit > YOLO_BOX_ENTRIES:
        other = _Plan(rest // per_class_unit - YOLO_BOX_ENTRIES, len(convs), channels)
    prefix, total = None, 0
    for k, (index, layer) in enumerate(convs[:-1], start=1):
        total += _file_numel(model, index, layer, channels)
        if total == n_floats:
            prefix = _Plan(None, k, channels)
            break
    return same, other, prefix


def load_darknet_weights(model: Darknet, path: str | Path) -> WeightsReport:
    """Load a darknet .weights file into ``model`` (in place) and return what was loaded.

    A file for another class count loads every layer but the heads, which are re-initialised with the bias
    priors; a prefix file loads its layers only; a 1-channel model takes a 3-channel file's first convolution
    summed over its input channels. Raises WeightsError naming the file and the expected and found float
    counts when the length fits none of these.
    """
    path = Path(path)
    data = path.read_bytes()
    header = read_header(data, str(path))
    body = data[header.nbytes:]
    if len(body) % FLOAT_BYTES:
        raise WeightsError(f"{path}: {len(body)} bytes after the header is not a whole number of float32")
    floats = np.frombuffer(body, dtype=FLOAT32)
    plan = _plan_any(model, len(floats), str(path))
    convs = model.conv_layers()
    report = WeightsReport(str(path), header, plan.file_classes, total_conv_layers=len(convs))
    summed = input_conv_index(model) if plan.channels != model.channels else None
    if summed is not None:
        report.summed_channels, report.input_conv = plan.channels, summed
    reinit_heads = plan.file_classes is not None and plan.file_classes != model.num_classes
    heads = model.head_indices
    offset = 0
    with torch.no_grad():
        for index, layer in convs[:plan.n_layers]:
            if reinit_heads and index in heads:
                yolo = model.yolo_layers[heads.index(index)]
                per_filter = layer.conv.weight[0].numel() + (4 if layer.bn is not None else 1)
                offset += yolo.num_anchors * (YOLO_BOX_ENTRIES + plan.file_classes) * per_filter
                report.reinitialised.append(index)
                continue
            for tensor in conv_tensors(layer):
                shape = list(tensor.shape)
                if index == summed and tensor is layer.conv.weight:
                    shape[1] = plan.channels  # [F, 3, k, k] in the file
                numel = math.prod(shape)
                chunk = torch.from_numpy(floats[offset:offset + numel].copy()).view(shape)
                tensor.copy_(sum_input_channels(chunk) if shape != list(tensor.shape) else chunk)
                offset += numel
            report.loaded.append(index)
    if reinit_heads:
        model.reset_heads([heads.index(i) for i in report.reinitialised])
    log.info(report.summary())
    return report


def save_darknet_weights(model: Darknet, path: str | Path, seen: int = 0) -> Path:
    """Write ``model`` as a darknet .weights file (version 0.2.5, 64-bit ``seen``)."""
    path = Path(path)
    with path.open("wb") as f:
        f.write(struct.pack(VERSION_FORMAT, *WRITE_VERSION))
        f.write(struct.pack(SEEN64_FORMAT, seen))
        for _, layer in model.conv_layers():
            for tensor in conv_tensors(layer):
                f.write(tensor.detach().float().cpu().numpy().astype(FLOAT32).tobytes())
    return path
