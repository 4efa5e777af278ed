"""``yololab config``: the resolved run configuration, or the reference of every field (``--list``), read from
the pydantic models themselves; docs/config.md is the same reference in Markdown (``--markdown``)."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import types
from dataclasses import dataclass
from typing import Annotated, Literal, Union, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel

from yololab.config import ConfigError, RunConfig, build_config
from yololab.loss.presets import PRESETS

DEFAULT_PRESET = RunConfig.model_fields["preset"].default
PIPE_WIDTH = 100  # text width of --list when the output is not a terminal
INDENT = "    "
# annotated_types constraint attributes (pydantic Field(gt=...)) and how the reference writes them.
BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
EXIT_ERROR = 2  # the exit status of every yololab command on bad input


@dataclass(frozen=True)
class FieldDoc:
    """One leaf field of the run config: its ``--set`` key, type, default in a resolved config, description."""

    key: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class SectionDoc:
    """A config model: its key (``""`` for the top level, ``data.augment`` ...), docstring and leaf fields."""

    key: str
    doc: str
    fields: list[FieldDoc]


def type_text(annotation: object) -> str:
    """A field's annotation as the reference writes it: ``int | None``, ``'sgd' | 'adamw'``, ``list[float]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is Annotated:  # e.g. StrictInt: the type, without pydantic's constraints
        return type_text(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_text(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list) -> str:
    parts = [f"{sign} {getattr(item, name)}" for item in metadata for name, sign in BOUNDS.items()
             if getattr(item, name, None) is not None]
    return ", ".join(parts)


def config_reference(preset: str = DEFAULT_PRESET) -> list[SectionDoc]:
    """Every section and leaf field of RunConfig, with the defaults of a run built with loss preset ``preset``."""
    resolved = build_config({"preset": preset})
    sections: list[SectionDoc] = []

    def walk(model: BaseModel, key: str) -> None:
        fields = []
        nested = []
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            full = f"{key}.{name}" if key else name
            if isinstance(value, BaseModel):
                nested.append((value, full))
                continue
            bounds = _bounds(info.metadata)
            kind = type_text(info.annotation) + (f", {bounds}" if bounds else "")
            default = json.dumps(model.model_dump(mode="json")[name])
            fields.append(FieldDoc(full, kind, default, " ".join((info.description or "").split())))
        doc = " ".join((type(model).__doc__ or "").split())
        sections.append(SectionDoc(key, doc, fields))
        for value, full in nested:
            walk(value, full)

    walk(resolved, "")
    return sections


def preset_differences(base: str = DEFAULT_PRESET) -> dict[str, dict[str, object]]:
    """``{preset: {loss field: value}}``: where each loss preset differs from ``base``."""
    reference = build_config({"preset": base}).loss.model_dump(mode="json")
    out = {}
    for name in PRESETS:
        values = build_config({"preset": name}).loss.model_dump(mode="json")
        out[name] = {k: v for k, v in values.items() if v != reference[k]}
    return out


def render_text(sections: list[SectionDoc], width: int) -> str:
    """Plain lines: ``key = default  (type)`` and the description wrapped below it, section by section."""
    lines = []
    for section in sections:
        lines += textwrap.wrap(f"[{section.key or 'top level'}] {section.doc}", width, subsequent_indent=INDENT)
        for f in section.fields:
            lines += textwrap.wrap(f"{f.key} = {f.default}  ({f.type})", width, subsequent_indent=INDENT * 2)
            lines += textwrap.wrap(f.description, width, initial_indent=INDENT, subsequent_indent=INDENT)
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(preset: str = DEFAULT_PRESET) -> str:
    """docs/config.md: every field of every section, then what each loss preset changes."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the pydantic models by `yololab config --list --markdown > docs/config.md`;",
        "     tests/test_config_reference.py checks that this file is up to date. -->",
        "",
        "Every field of a run's `config.yaml`. Set one with `yololab train --set KEY=VALUE` (values are YAML:",
        "`--set train.threads=2`, `--set loss.scale_weights=[4,1,0.4]`, `--set model.weights=null`), or write",
        "the sections in a YAML file given to `--config`. Unknown keys are errors. Defaults are those of a",
        f"run with the `{preset}` loss preset; `yololab config --list --preset NAME` lists another preset's, and",
        "`yololab config --preset NAME --set KEY=VALUE` prints the whole resolved configuration.",
        "",
    ]
    for section in config_reference(preset):
        lines += [f"## `{section.key}`" if section.key else "## Top level", "", section.doc, "",
                  "| key | type | default | description |", "| --- | --- | --- | --- |"]
        lines += [f"| `{f.key}` | {_cell(f.type)} | `{_cell(f.default)}` | {_cell(f.description)} |"
                  for f in section.fields]
        lines.append("")
    lines += ["## Loss presets", "", f"`--preset NAME` starts the `loss` section from a preset (loss/presets.py, "
              "where each one names its source); these are the fields where each differs from "
              f"`{preset}`.", "", "| preset | differs in |", "| --- | --- |"]
    for name, changes in preset_differences(preset).items():
        text = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in changes.items()) or "(the reference above)"
        lines.append(f"| `{name}` | {_cell(text)} |")
    return "\n".join(lines) + "\n"


def config_command(
    list_: Annotated[bool, typer.Option("--list", help="List every field: key, default, type, description.")]
    = False,
    markdown: Annotated[bool, typer.Option(help="With --list: the Markdown of docs/config.md.")] = False,
    preset: Annotated[str, typer.Option(help="Loss preset the defaults are resolved from.")] = DEFAULT_PRESET,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key=value (dotted), as in train.")]
    = None,
) -> None:
    """Print the resolved run configuration as YAML (what `yololab train` with the same --preset and --set
    would write to config.yaml), or with --list the reference of every field.

    Example: yololab config --list --preset darknet
    """
    try:
        if not list_:
            cfg = build_config({"preset": preset}, set_ or [])
            typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
        elif markdown:
            typer.echo(render_markdown(preset), nl=False)
        else:
            width = shutil.get_terminal_size().columns if sys.stdout.isatty() else PIPE_WIDTH
            typer.echo(render_text(config_reference(preset), width))
    except (ConfigError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
