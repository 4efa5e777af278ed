"""Building a model from a cfg given by name or path, or from cfg text stored in a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from yololab.model.cfg import format_cfg, packaged_cfg, packaged_cfgs, parse_cfg
from yololab.model.darknet import Darknet, set_anchors, set_num_classes
from yololab.model.priors import HeadPriors


def resolve_cfg(name_or_path: str | Path) -> Path:
    """A cfg file path, or the name of a packaged cfg (with or without ``.cfg``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name.removesuffix(".cfg")
    if name in packaged_cfgs():
        return packaged_cfg(name)
    raise FileNotFoundError(
        f"cfg {str(name_or_path)!r} is neither a file nor a packaged cfg ({', '.join(packaged_cfgs())})"
    )


def read_cfg_text(name_or_path: str | Path, anchors: Sequence | None = None) -> str:
    """The text of a cfg (file or packaged name). ``anchors``: one ``[A, 2]`` (w, h) pixel list per [yolo]
    in cfg order (``model.anchors``) written into it (``set_anchors``; the text is then re-formatted without
    its comments); ValueError when they do not fit the cfg's [yolo] layers."""
    path = resolve_cfg(name_or_path)
    text = path.read_text()
    if anchors is None:
        return text
    sections = parse_cfg(text, source=str(path))
    set_anchors(sections, anchors)
    return format_cfg(sections)


def build_model(cfg_text: str, num_classes: int, source: str = "<cfg text>",
                head_priors: HeadPriors | str = "ultralytics") -> Darknet:
    """Darknet built from cfg text (as stored in checkpoints) with ``num_classes`` classes; errors name
    ``source``, the cfg file (or packaged cfg) the text was read from, at the line of the text.
    ``head_priors``: the heads' initial biases (``Darknet``)."""
    sections = parse_cfg(cfg_text, source=str(source))
    set_num_classes(sections, num_classes)
    return Darknet(sections, head_priors)
