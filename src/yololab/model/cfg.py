"""Darknet ``.cfg`` files: parse, validate, write.

Grammar (darknet's ``read_cfg`` / ``read_option``): ``[section]`` headers, ``key=value`` lines with
whitespace stripped around key and value, ``#`` and ``;`` comments (whole-line; trailing ones are cut
too, which darknet only gets right for numbers), blank lines, comma lists (``anchors``, ``mask``,
``layers`` …). A key repeated in one section keeps its first value, as darknet's ``option_find`` does.

Every key darknet reads for the section types built here is listed in ``SCHEMAS`` with its type, its
darknet default and its role:

- ``model``: implemented by ``Darknet``;
- ``train``: read by darknet's own trainer (or its tracker / NMS) only; accepted and kept, and the
  ``[yolo]`` ones are handed to the loss through ``Darknet.yolo_params``;
- ``fixed``: changes the computation but is not implemented here; allowed only at the value that
  leaves the computation as implemented (``dilation=1``, ``xnor=0`` …), an error otherwise.

A key darknet does not know for a section is a warning (darknet prints "Unused field"), an unknown
section type is an error. Values are stored typed (int, float, str or lists of them) so that
``parse_cfg(write_cfg(sections))`` gives equal sections.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from yololab.errors import FileProblem

COMMENT_CHARS = ("#", ";")
# Aliases darknet's string_to_layer_type accepts, mapped to the names used here.
SECTION_ALIASES = {"conv": "convolutional", "max": "maxpool", "network": "net"}
# Section types darknet knows (AlexeyAB and pjreddie parsers) that are not built here.
UNSUPPORTED_SECTIONS = frozenset({
    "scale_channels", "sam", "crop", "cost", "detection", "region", "Gaussian_yolo", "local", "activation",
    "crnn", "gru", "lstm", "conv_lstm", "history", "rnn", "conn", "connected", "local_avg", "local_avgpool",
    "reorg3d", "reorg", "avg", "avgpool", "dropout", "lrn", "normalization", "batchnorm", "soft", "softmax",
    "contrastive", "empty", "silence", "implicit", "deconvolutional", "deconv", "logistic", "l2norm", "iseg",
})
CFG_PACKAGE, CFG_FOLDER = "yololab.model", "cfgs"  # package data (pyproject: model/cfgs/*.cfg)


class CfgError(FileProblem):
    """A problem in a cfg file, reported as ``file:line: problem`` (line of the key, else of the header)."""


class CfgWarning(UserWarning):
    """A key darknet would ignore (its "Unused field"), or a repeated key whose later value is dropped."""


# --------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Key:
    """One key darknet reads. kind: int, float, str, ints, floats. role: model, train or fixed.

    ``check`` (optional) accepts a value that is implemented; for ``fixed`` keys the default is the only
    accepted value unless ``check`` says otherwise. ``why`` explains a rejected value.
    """

    kind: str
    default: Any = None
    role: str = "model"
    check: Callable[[Any], bool] | None = None
    why: str = "not implemented"

    def accepts(self, value: Any) -> bool:
        if self.check is not None:
            return self.check(value)
        return self.role != "fixed" or value == self.default


def _train(kind: str, default: Any = None) -> Key:
    return Key(kind, default, "train")


def _fixed(kind: str, default: Any = None, why: str = "not implemented") -> Key:
    return Key(kind, default, "fixed", why=why)


# Keys parse_network_cfg_custom reads for every layer after the layer's own parser.
_COMMON = {
    "clip": _train("float", 0.0),
    "onlyforward": _train("int", 0),
    "dont_update": _train("int", 0),
    "burnin_update": _train("int", 0),
    "stopbackward": _train("int", 0),
    "train_only_bn": _train("int", 0),
    "learning_rate": _train("float", 1.0),  # per-layer learning-rate multiplier
    # Both change which floats darknet reads from a .weights file, so the file layout would differ.
    "dontload": _fixed("int", 0, "skips the layer in .weights files; not implemented"),
    "dontloadscales": _fixed("int", 0, "skips batch-norm values in .weights files; not implemented"),
}

_NET = {
    "width": Key("int", 0), "height": Key("int", 0), "channels": Key("int", 0),
    "inputs": _fixed("int", None, "non-image inputs are not implemented"),
    **{k: _train("int") for k in (
        "max_batches", "batch", "subdivisions", "time_steps", "track", "augment_speed", "sgdr_cycle",
        "sgdr_mult", "sequential_subdivisions", "try_fix_nan", "weights_reject_freq", "equidistant_point",
        "use_cuda_graph", "dynamic_minibatch", "optimized_memory", "adam", "max_crop", "min_crop", "flip",
        "blur", "gaussian_noise", "mixup", "cutmix", "mosaic", "letter_box", "mosaic_bound", "contrastive",
        "contrastive_jit_flip", "contrastive_color", "unsupervised", "attention", "burn_in", "step",
        "show_receptive_field", "notruth", "center", "random", "noadjust",
    )},
    **{k: _train("float") for k in (
        "learning_rate", "learning_rate_min", "momentum", "decay", "badlabels_rejection_percentage",
        "num_sigmas_reject_badlabels", "ema_alpha", "loss_scale", "workspace_size_limit_MB", "B1", "B2",
        "eps", "label_smooth_eps", "resize_step", "adversarial_lr", "max_chart_loss", "angle", "aspect",
        "saturation", "exposure", "hue", "power", "scale", "gamma", "max_ratio", "min_ratio", "clip",
    )},
    "policy": _train("str", "constant"),
    "steps": _train("ints"),
    "scales": _train("floats"),
    "seq_scales": _train("floats"),
}

_CONVOLUTIONAL = {
    "filters": Key("int", 1), "size": Key("int", 1), "stride": Key("int", 1),
    "pad": Key("int", 0), "padding": Key("int", 0), "groups": Key("int", 1),
    "activation": Key("str", "logistic"),  # darknet's default
    "batch_normalize": Key("int", 0, check=lambda v: v in (0, 1), why="only 0 or 1 is implemented"),
    "stride_x": _fixed("int", -1, "must equal stride (non-square strides are not implemented)"),
    "stride_y": _fixed("int", -1, "must equal stride (non-square strides are not implemented)"),
    "dilation": _fixed("int", 1), "antialiasing": _fixed("int", 0),
    "assisted_excitation": _fixed("float", 0.0),
    "share_index": _fixed("int", None, "weight sharing is not implemented"),
    "cbn": _fixed("int", 0), "binary": _fixed("int", 0), "xnor": _fixed("int", 0),
    "bin_output": _fixed("int", 0),
    "sway": _fixed("int", 0), "rotate": _fixed("int", 0), "stretch": _fixed("int", 0),
    "stretch_sway": _fixed("int", 0), "flipped": _fixed("int", 0), "coordconv": _fixed("int", 0),
    "reverse": _fixed("float", 0.0),
    "angle": _train("float", 15.0),  # only used by rotate=1
    "dot": _train("float", 0.0), "grad_centr": _train("int", 0),
    "stream": _train("int", -1), "wait_stream": _train("int", -1),  # CUDA stream scheduling
}

_SHORTCUT = {
    "from": Key("ints"),
    "activation": Key("str", "linear"),
    "weights_type": _fixed("str", "none", "weighted shortcuts are not implemented"),
    "weights_normalization": _fixed("str", "none", "weighted shortcuts are not implemented"),
    "alpha": _fixed("float", 1.0), "beta": _fixed("float", 1.0),  # pjreddie's scaled shortcut
}

_ROUTE = {
    "layers": Key("ints"),
    "groups": Key("int", 1, check=lambda v: v >= 1, why="must be >= 1"),
    "group_id": Key("int", 0),
    "stream": _train("int", -1), "wait_stream": _train("int", -1),
}

_UPSAMPLE = {
    "stride": Key("int", 2, check=lambda v: v > 0, why="a negative stride (downsampling) is not implemented"),
    "scale": _fixed("float", 1.0),
}

_MAXPOOL = {
    "stride": Key("int", 1), "size": Key("int"), "padding": Key("int"),  # size: stride, padding: size-1
    "stride_x": Key("int"), "stride_y": Key("int"),  # must equal stride: checked when building
    "maxpool_depth": _fixed("int", 0), "out_channels": _fixed("int", 1), "antialiasing": _fixed("int", 0),
    "maxpool_zero_nonmax": _fixed("int", 0),
}

_YOLO = {
    "mask": Key("ints"), "anchors": Key("floats"),
    "classes": Key("int", 20), "num": Key("int", 1),  # darknet's defaults
    "new_coords": _fixed("int", 0, "new_coords (scaled-YOLOv4 box coding) is not implemented"),
    "embedding_layer": _fixed("int", None, "tracking embeddings are not implemented"),
    **{k: _train("float") for k in (
        "max_delta", "label_smooth_eps", "scale_x_y", "iou_normalizer", "obj_normalizer", "cls_normalizer",
        "delta_normalizer", "beta_nms", "jitter", "resize", "ignore_thresh", "truth_thresh", "iou_thresh",
        "random", "sim_thresh", "track_ciou_norm",
    )},
    **{k: _train("int") for k in (
        "max", "show_details", "objectness_smooth", "focal_loss", "track_history_size", "dets_for_track",
        "dets_for_show",
    )},
    "counters_per_class": _train("ints"),
    "iou_loss": _train("str", "mse"), "iou_thresh_kind": _train("str", "iou"),
    "nms_kind": _train("str", "default"),
    "map": _train("str"),
}

SCHEMAS: dict[str, dict[str, Key]] = {
    "net": _NET,
    "convolutional": {**_COMMON, **_CONVOLUTIONAL},
    "shortcut": {**_COMMON, **_SHORTCUT},
    "route": {**_COMMON, **_ROUTE},
    "upsample": {**_COMMON, **_UPSAMPLE},
    "maxpool": {**_COMMON, **_MAXPOOL},
    "yolo": {**_COMMON, **_YOLO},
}

# Darknet's defaults of the [yolo] training keys (parse_yolo), for readers of ``yolo_params``.
YOLO_TRAINING_DEFAULTS = {
    "jitter": 0.2, "ignore_thresh": 0.5, "truth_thresh": 1.0, "iou_thresh": 1.0, "random": 0.0,
    "iou_loss": "mse", "iou_normalizer": 0.75, "obj_normalizer": 1.0, "cls_normalizer": 1.0,
    "delta_normalizer": 1.0, "scale_x_y": 1.0, "label_smooth_eps": 0.0, "max_delta": float("inf"),
    "iou_thresh_kind": "iou", "nms_kind": "default", "beta_nms": 0.6, "objectness_smooth": 0, "focal_loss": 0,
    "max": 200, "resize": 1.0,
}


# --------------------------------------------------------------------------------------------- sections


@dataclass
class CfgOption:
    """A typed value and the 1-based line it came from (None when set in code)."""

    value: Any
    line: int | None = None


@dataclass
class CfgSection:
    """One ``[type]`` block: its header line and its options in file order (first of duplicates kept)."""

    type: str
    line: int | None = None
    options: dict[str, CfgOption] = field(default_factory=dict)
    file: str = "<string>"

    def __contains__(self, key: str) -> bool:
        return key in self.options

    def __getitem__(self, key: str) -> Any:
        return self.options[key].value

    def get(self, key: str, default: Any = None) -> Any:
        """The value written in the cfg, else ``default``."""
        return self.options[key].value if key in self.options else default

    def value(self, key: str) -> Any:
        """The value written in the cfg, else darknet's default for this section type."""
        if key in self.options:
            return self.options[key].value
        return SCHEMAS[self.type][key].default

    def set(self, key: str, value: Any) -> None:
        """Set a value (keeps the key's position and line if it exists)."""
        if key in self.options:
            self.options[key].value = value
        else:
            self.options[key] = CfgOption(value)

    def remove(self, key: str) -> None:
        self.options.pop(key, None)

    def where(self, key: str | None = None) -> int | None:
        """Line of ``key`` if present, else of the header."""
        if key is not None and key in self.options and self.options[key].line is not None:
            return self.options[key].line
        return self.line

    def error(self, problem: str, key: str | None = None) -> CfgError:
        """A CfgError pointing at ``key`` (or the header) of this section."""
        return CfgError(self.file, self.where(key), f"[{self.type}] {problem}")

    def values(self) -> dict[str, Any]:
        """Plain ``{key: value}`` view (what round-trip comparisons use)."""
        return {k: o.value for k, o in self.options.items()}


# --------------------------------------------------------------------------------------------- parsing


def _strip_comment(line: str) -> str:
    cut = min((i for i in (line.find(c) for c in COMMENT_CHARS) if i >= 0), default=len(line))
    return line[:cut].strip()


def _convert(raw: str, kind: str) -> Any:
    """Typed value of ``raw`` for ``kind``; raises ValueError with the reason."""
    if kind in ("ints", "floats"):
        items = [s.strip() for s in raw.split(",")]
        if any(not s for s in items):
            raise ValueError(f"empty item in the list {raw!r}")
        return [_convert(s, kind[:-1]) for s in items]
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


def _read_lines(path_or_text: str | Path, source: str | None = None) -> tuple[str, list[str]]:
    if source is not None:  # cfg text read from the file ``source``: errors name that file
        return source, str(path_or_text).splitlines()
    if isinstance(path_or_text, Path) or "\n" not in str(path_or_text):
        path = Path(path_or_text)
        try:
            return str(path), path.read_text(encoding="utf-8-sig").splitlines()
        except OSError as exc:
            raise CfgError(path, None, f"cannot read cfg file: {exc.strerror or exc}") from exc
    return "<string>", str(path_or_text).splitlines()


def _parse_header(text: str, file: str, number: int) -> CfgSection:
    if not text.endswith("]"):
        raise CfgError(file, number, f"section header {text!r} has no closing ']'")
    name = text[1:-1].strip()
    name = SECTION_ALIASES.get(name, name)
    if name in UNSUPPORTED_SECTIONS:
        raise CfgError(file, number, f"section type [{name}] is a darknet layer that is not implemented here")
    if name not in SCHEMAS:
        raise CfgError(file, number, f"unknown section type [{name}]; known: {', '.join(sorted(SCHEMAS))}")
    return CfgSection(name, number, {}, file)


def _add_option(section: CfgSection, text: str, number: int) -> None:
    file = section.file
    key, sep, raw = text.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise CfgError(file, number, f"expected 'key=value', got {text!r}")
    if not raw:
        raise CfgError(file, number, f"key {key!r} has no value")
    if key in section.options:
        warnings.warn(
            f"{file}:{number}: [{section.type}] {key!r} repeats line {section.options[key].line}; "
            "darknet keeps the first value, this one is ignored",
            CfgWarning, stacklevel=3,
        )
        return
    spec = SCHEMAS[section.type].get(key)
    if spec is None:
        warnings.warn(f"{file}:{number}: [{section.type}] unused field {key!r} (darknet does not read it)",
                      CfgWarning, stacklevel=3)
        section.options[key] = CfgOption(raw, number)
        return
    try:
        value = _convert(raw, spec.kind)
    except ValueError as exc:
        raise CfgError(file, number, f"[{section.type}] {key}={raw!r} is not {spec.kind}: {exc}") from None
    if not spec.accepts(value):
        raise CfgError(file, number, f"[{section.type}] {key}={raw}: {spec.why}")
    section.options[key] = CfgOption(value, number)


def parse_cfg(path_or_text: str | Path, source: str | None = None) -> list[CfgSection]:
    """Parse a darknet cfg (a ``Path``, a path string, or cfg text containing a newline). With ``source``,
    ``path_or_text`` is the text of the cfg file ``source`` (named in errors and warnings).

    Returns the sections in file order. Raises CfgError (``file:line: problem``) for an unknown or
    unimplemented section type, a line that is not ``key=value``, a key before any section, a value of
    the wrong type, or a known key set to a value that is not implemented. Warns (CfgWarning) on keys
    darknet does not read and on repeated keys.
    """
    file, lines = _read_lines(path_or_text, source)
    sections: list[CfgSection] = []
    for number, line in enumerate(lines, start=1):
        text = _strip_comment(line)
        if not text:
            continue
        if text.startswith("["):
            sections.append(_parse_header(text, file, number))
        elif not sections:
            raise CfgError(file, number, f"{text!r} comes before any [section] header")
        else:
            _add_option(sections[-1], text, number)
    if not sections:
        raise CfgError(file, None, "no [section] found")
    return sections


def net_section(sections: list[CfgSection]) -> CfgSection:
    """The ``[net]`` section, which must come first; CfgError at the first section's header otherwise."""
    if not sections:
        raise CfgError("<cfg>", None, "no [section] found")
    if sections[0].type != "net":
        first = sections[0]
        raise CfgError(first.file, first.line, f"the first section must be [net], found [{first.type}]")
    return sections[0]


# --------------------------------------------------------------------------------------------- writing


def _format_scalar(value: Any) -> str:
    if isinstance(value, float):
        # Integral floats as integers (anchors "10,14"); others with repr, the shortest exact form.
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def format_value(value: Any) -> str:
    """Cfg text of one value: lists comma-separated."""
    if isinstance(value, (list, tuple)):
        return ",".join(_format_scalar(v) for v in value)
    return _format_scalar(value)


def format_cfg(sections: list[CfgSection]) -> str:
    """Cfg text for ``sections`` (comments are not kept)."""
    blocks = []
    for section in sections:
        lines = [f"[{section.type}]"] + [f"{k}={format_value(o.value)}" for k, o in section.options.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def write_cfg(sections: list[CfgSection], path: str | Path) -> Path:
    """Write ``sections`` as a darknet cfg file; ``parse_cfg`` of it gives equal types and values."""
    path = Path(path)
    path.write_text(format_cfg(sections), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- packaged


def packaged_cfgs() -> list[str]:
    """Names (file names without ``.cfg``) of the cfgs shipped with yololab (``model/cfgs/*.cfg``)."""
    root = resources.files(CFG_PACKAGE).joinpath(CFG_FOLDER)
    return sorted(p.name.removesuffix(".cfg") for p in root.iterdir() if p.name.endswith(".cfg"))


def packaged_cfg(name: str) -> Path:
    """Path of a shipped cfg, by file name with or without ``.cfg`` (e.g. ``"yolov3-tiny-small"``)."""
    stem = name.removesuffix(".cfg")
    if stem not in packaged_cfgs():
        raise FileNotFoundError(f"no packaged cfg {name!r}; available: {', '.join(packaged_cfgs())}")
    return Path(str(resources.files(CFG_PACKAGE).joinpath(CFG_FOLDER, f"{stem}.cfg")))
