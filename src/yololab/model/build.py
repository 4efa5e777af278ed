"""Building a model from a cfg given by name or path, or from cfg text stored in a checkpoint."""

from __future__ import annotations

from pathlib import Path

from yololab.model.cfg import packaged_cfg, packaged_cfgs, parse_cfg
from yololab.model.darknet import Darknet, set_num_classes


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


def read_cfg_text(name_or_path: str | Path) -> str:
    return resolve_cfg(name_or_path).read_text()


def build_model(cfg_text: str, num_classes: int, source: str = "<cfg text>") -> Darknet:
    """Darknet built from cfg text (as stored in checkpoints) with ``num_classes`` classes; errors name
    ``source``, the cfg file (or packaged cfg) the text was read from, at the line of the text."""
    sections = parse_cfg(cfg_text, source=str(source))
    set_num_classes(sections, num_classes)
    return Darknet(sections)
