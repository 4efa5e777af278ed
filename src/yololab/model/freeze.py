"""Freezing the first layers of a Darknet for transfer learning (``train.freeze``).

``train.freeze`` is ``"backbone"`` or a number N: the first N layers of the cfg, darknet indices 0..N-1, are
frozen. The backbone of a darknet cfg is defined here as the layers up to and including

- the last ``[shortcut]`` before the first ``[yolo]``, when there is one: darknet-53 is a stack of residual
  blocks, its last one ends at layer 74 in yolov3.cfg, yolov3-spp.cfg and yolov3-voc.cfg, which is
  darknet's own ``darknet53.conv.74`` (75 layers, 0..74); the neck after it (SPP's pooling included) has
  no residual block;
- otherwise the last ``[maxpool]`` before the first ``[yolo]``: the tiny trunk is conv + maxpool stages,
  and its last maxpool (stride 1) is layer 11 in yolov3-tiny.cfg and yolov3-tiny_3l.cfg and the packaged
  cfgs (12 layers, 0..11; ultralytics' yolov3-tiny.yaml backbone ends at the same maxpool). AlexeyAB's
  ``yolov3-tiny.conv.15`` file holds three more layers, the first head's neck.

The rule "the deepest layer every [yolo] depends on" does not give darknet-53: in yolov3.cfg every head
reads layer 79 (the later heads through ``[route] layers=-4``), which is inside the first head's neck.

Frozen layers: ``requires_grad`` False on their parameters (the optimiser then gives them no update and no
weight decay), and their batch norms in eval mode: they normalise with their running statistics and never
update them (``ConvLayer.train``), which precise BN and the batch-norm check leave alone as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from yololab.model.cfg import CfgSection
    from yololab.model.darknet import Darknet

BACKBONE = "backbone"


class FreezeError(ValueError):
    """A ``train.freeze`` that does not fit the model's cfg; the message is one line."""


def backbone_layers(sections: list[CfgSection]) -> int:
    """How many leading layers of a parsed cfg (``parse_cfg``: [net] first) form the backbone (see the module
    docstring): layers 0..returned - 1. FreezeError when the cfg has no [yolo], or neither a [shortcut] nor a
    [maxpool] before its first one."""
    layers = sections[1:]  # darknet layer i is section i + 1
    yolos = [i for i, section in enumerate(layers) if section.type == "yolo"]
    if not yolos:
        raise FreezeError(f"{sections[0].file}: train.freeze=backbone needs a [yolo] layer in the cfg")
    for kind in ("shortcut", "maxpool"):
        ends = [i for i, section in enumerate(layers[:yolos[0]]) if section.type == kind]
        if ends:
            return ends[-1] + 1
    raise FreezeError(f"{sections[0].file}: train.freeze=backbone needs a [shortcut] or [maxpool] before the first "
                      f"[yolo] (layer {yolos[0]}) to know where the backbone ends: set train.freeze to a number of "
                      "layers")


def frozen_layer_count(model: Darknet, freeze: str | int | None) -> int:
    """The number N of leading layers ``freeze`` means for ``model`` (0 for None). FreezeError when N goes
    beyond the cfg's layers or freezes every head (nothing would train)."""
    if freeze is None:
        return 0
    count = backbone_layers(model.sections) if freeze == BACKBONE else int(freeze)
    source = model.sections[0].file
    if count > len(model.layers):
        raise FreezeError(f"{source}: train.freeze={freeze} is beyond the cfg's {len(model.layers)} layers "
                          f"(0..{len(model.layers) - 1})")
    last_head = model.head_indices[-1]
    if count > last_head:
        raise FreezeError(f"{source}: train.freeze={freeze} freezes layers 0..{count - 1}, every head convolution "
                          f"included (the last is layer {last_head}): nothing would train")
    return count


def set_frozen(model: Darknet, count: int) -> None:
    """Freeze layers 0..count-1 of ``model`` and unfreeze the rest (in place): ``requires_grad`` of their
    parameters, and the train/eval mode of their batch norms as ``ConvLayer.train`` keeps it."""
    for index, layer in enumerate(model.layers):
        for parameter in layer.parameters():
            parameter.requires_grad_(index >= count)
        layer.train(layer.training)


def trainable_parameters(model: Darknet) -> tuple[int, int]:
    """(trainable, all) parameter element counts of ``model``."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
