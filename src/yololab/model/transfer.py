"""Starting a Darknet from the weights of another one (a yololab checkpoint's ``state_dict``).

Taken layer by layer where the shapes match: every ``[convolutional]``'s conv weights and bias and its batch
norm (parameters and running statistics). Two differences are allowed, as for darknet ``.weights``
(``model/weights.py``):

- a head convolution (the one before a ``[yolo]``) whose output channels say another class count: it is
  re-initialised (``Darknet.reset_heads``: torch's init and the bias priors);
- the first convolution of a 1-channel model (cfg ``[net] channels=1``) from a 3-channel source: its weights
  are summed over the input channels (``sum_input_channels``).

When the file's own cfg is known (a checkpoint keeps the cfg text it was built from), the two cfgs may differ
after a common beginning, as darknet's ``partial`` prefix files and ultralytics' transfer of matching layers
allow: the layers up to the first section that differs in type or options (``[yolo]`` sections are compared by
type only, head convolutions without ``filters``, which follow the class count) are loaded, the rest keep this
run's initialisation, e.g. ``yolov3-tiny-4l-small`` from a ``yolov3-tiny-3l-small`` run (the
same layers, and a fourth scale after them) or the reverse. The common beginning must hold at least one
convolution.

Anything else that differs (another cfg, when the file's cfg is not known) is a WeightsError naming the file and
the first layer that differs; nothing is loaded then. The anchors of ``[yolo]`` layers are not taken: the new
run's cfg decides them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from yololab.model.cfg import CfgSection
from yololab.model.darknet import Darknet
from yololab.model.layers import YOLO_BOX_ENTRIES, ConvLayer
from yololab.model.weights import RGB_CHANNELS, WeightsError, input_conv_index, sum_input_channels, summed_note

LAYER_PREFIX = "layers."  # Darknet's state-dict keys: layers.<index>.<module>.<tensor>


@dataclass
class TransferReport:
    """What ``transfer_state`` did. Layer indices are darknet's (0 = first layer after [net])."""

    path: str
    file_classes: int
    loaded: list[int] = field(default_factory=list)
    reinitialised: list[int] = field(default_factory=list)
    total_conv_layers: int = 0
    summed_channels: int | None = None
    input_conv: int | None = None
    common_layers: int | None = None  # layers 0 .. common_layers - 1 taken when the cfgs differ after them
    first_difference: str = ""  # what differs at layer common_layers, when they do

    def summary(self) -> str:
        text = f"{self.path}: loaded {len(self.loaded)} of {self.total_conv_layers} conv layers"
        if self.reinitialised:
            text += f"; file has {self.file_classes} classes, re-initialised heads at layers {self.reinitialised}"
        if self.common_layers is not None:
            text += (f"; the cfgs agree on layers 0-{self.common_layers - 1} only ({self.first_difference}): the "
                     "rest keep this run's initialisation")
        return text + summed_note(self.summed_channels, self.input_conv)


def _layer_state(state: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """The entries of layer ``index`` in a Darknet state dict, keyed by the rest of their name."""
    prefix = f"{LAYER_PREFIX}{index}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _file_layers(state: dict[str, Tensor]) -> set[int]:
    return {int(k.split(".")[1]) for k in state if k.startswith(LAYER_PREFIX) and k.split(".")[1].isdigit()}


def _shapes(tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _head_classes(model: Darknet, index: int, have: dict[str, tuple[int, ...]],
                  want: dict[str, tuple[int, ...]]) -> int | None:
    """The class count of the file's head at layer ``index`` when it differs from the model's only by the
    number of output channels A * (5 + classes); None otherwise."""
    if index not in model.head_indices or set(have) != set(want):
        return None
    if any(h[1:] != w[1:] for h, w in ((have[k], want[k]) for k in want)):
        return None
    outputs = {have[k][0] for k in want}
    anchors = model.yolo_layers[model.head_indices.index(index)].num_anchors
    if len(outputs) != 1 or outputs.pop() % anchors:
        return None
    classes = have["conv.weight"][0] // anchors - YOLO_BOX_ENTRIES
    return classes if classes >= 1 else None


def _summable(model: Darknet, index: int, have: dict[str, tuple[int, ...]],
              want: dict[str, tuple[int, ...]]) -> bool:
    """Whether layer ``index`` is a 1-channel model's first convolution and the file's is the same with 3 inputs."""
    if model.channels != 1 or index != input_conv_index(model) or set(have) != set(want):
        return False
    wanted = dict(want, **{"conv.weight": (want["conv.weight"][0], RGB_CHANNELS, *want["conv.weight"][2:])})
    return have == wanted


def _differs(path: str, index: int, kind: str, have: dict, want: dict) -> WeightsError:
    """The one-line error for the first layer of the file that does not fit the model."""
    if not have:
        what = "it is not in the file"
    elif not want:
        what = "the file has weights for it, this model none"
    else:
        key = next(k for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k))
        what = (f"{key} is {list(have[key]) if key in have else 'missing'} in the file, "
                f"{list(want[key]) if key in want else 'absent'} in the model")
    return WeightsError(f"{path}: layer {index} ({kind}) differs from this run's cfg: {what} (another cfg? only the "
                        "heads' class count and 3 -> 1 input channels may differ)")


HEAD_SIZE_OPTION = "filters"  # a head convolution's filters follow the class count, which may differ


def _difference(mine: CfgSection, theirs: CfgSection, head: bool) -> str | None:
    """What makes two cfg layer sections build different layers, up to what transfer allows to differ (a
    ``[yolo]``'s anchors and options, a head's filters); None when they build the same layer."""
    if mine.type != theirs.type:
        return f"[{theirs.type}] in the file's cfg, [{mine.type}] in this run's"
    if mine.type == "yolo":
        return None
    ignored = {HEAD_SIZE_OPTION} if head else set()
    a, b = mine.values(), theirs.values()
    key = next((k for k in sorted(set(a) | set(b)) if k not in ignored and a.get(k) != b.get(k)), None)
    if key is None:
        return None
    return f"[{mine.type}] {key}={b.get(key, '(unset)')} in the file's cfg, {a.get(key, '(unset)')} in this run's"


def common_layers(model: Darknet, source_sections: list[CfgSection]) -> tuple[int, str]:
    """How many leading layers the model's cfg and the file's (``[net]`` first, as parsed) build alike, and what
    differs at the first layer that does not ("" when one cfg is the other's beginning or both are alike)."""
    mine, theirs = model.sections[1:], source_sections[1:]
    for index, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if (what := _difference(a, b, index in model.head_indices)) is not None:
            return index, f"layer {index}: {what}"
    count = min(len(mine), len(theirs))
    return count, "" if len(mine) == len(theirs) else f"the file's cfg has {len(theirs)} layers, this run's {len(mine)}"


def transfer_state(model: Darknet, state: dict[str, Tensor], path: str,
                   source_sections: list[CfgSection] | None = None) -> TransferReport:
    """Load a Darknet ``state`` (keys ``layers.<i>....``, e.g. a checkpoint's ``model.`` entries with the prefix
    removed) into ``model`` in place, as the module docstring says; ``source_sections`` the file's parsed cfg
    when known (then only the layers both cfgs begin with are taken). WeightsError naming ``path`` and the first
    layer that differs, before anything is loaded."""
    model_state = model.state_dict()
    convs = dict(model.conv_layers())
    report = TransferReport(path, model.num_classes, total_conv_layers=len(convs))
    taken = len(model.layers)
    if source_sections is not None:
        taken, difference = common_layers(model, source_sections)
        if not any(index < taken for index in convs):
            raise WeightsError(f"{path}: nothing in common with this run's cfg ({difference or 'no convolution'})")
        if difference:
            report.common_layers, report.first_difference = taken, difference
        state = {k: v for k, v in state.items() if not k.startswith(LAYER_PREFIX) or int(k.split(".")[1]) < taken}
    extra = sorted(_file_layers(state) - set(range(len(model.layers))))
    if extra:
        raise WeightsError(f"{path}: layer {extra[0]} is in the file but this run's cfg has {len(model.layers)} "
                           "layers (another cfg?)")
    plan: list[tuple[int, ConvLayer, dict[str, Tensor], bool]] = []
    for index, layer in enumerate(model.layers[:taken]):
        have_tensors = _layer_state(state, index)
        if index not in convs:
            if set(_layer_state(model_state, index)) - {"anchors"} or set(have_tensors) - {"anchors"}:
                raise _differs(path, index, type(layer).__name__, _shapes(have_tensors),
                               _shapes(_layer_state(model_state, index)))
            continue
        have, want = _shapes(have_tensors), _shapes(_layer_state(model_state, index))
        if have == want:
            plan.append((index, layer, have_tensors, False))
        elif (classes := _head_classes(model, index, have, want)) is not None:
            report.file_classes = classes
            report.reinitialised.append(index)
        elif _summable(model, index, have, want):
            plan.append((index, layer, have_tensors, True))
            report.summed_channels, report.input_conv = RGB_CHANNELS, index
        else:
            raise _differs(path, index, "[convolutional]", have, want)
    with torch.no_grad():
        for index, layer, tensors, summed in plan:
            own = layer.state_dict()
            for key, value in tensors.items():
                own[key].copy_(sum_input_channels(value) if summed and key == "conv.weight" else value)
            report.loaded.append(index)
    if report.reinitialised:
        model.reset_heads([model.head_indices.index(i) for i in report.reinitialised])
    return report
