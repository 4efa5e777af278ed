"""The generated configuration reference (`yololab config --list`, docs/config.md) and train --help defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from yololab.cli import app
from yololab.commands.config_reference import config_reference, render_markdown, type_text
from yololab.config import DEFAULT_PRESET, RunConfig, build_config
from yololab.loss import preset

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the leaves of a dumped config, found without the reference's walker."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("scale_weights", "loss_overrides"):  # the dict-valued leaves
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def reference_fields(preset_name: str = DEFAULT_PRESET) -> dict:
    return {f.key: f for section in config_reference(preset_name) for f in section.fields}


def test_docs_config_md_is_up_to_date():
    assert DOC.read_text() == render_markdown(), (
        "docs/config.md is out of date: run `yololab config --list --markdown > docs/config.md`")


def test_every_field_is_listed_with_its_default_and_a_description():
    dumped = flatten(RunConfig().model_dump(mode="json"))
    fields = reference_fields()
    assert set(fields) == set(dumped)
    for key, value in dumped.items():
        assert json.loads(fields[key].default) == value, key
    assert [k for k, f in fields.items() if not f.description] == []


def test_defaults_follow_the_preset():
    darknet = reference_fields("darknet")
    assert json.loads(darknet["loss.ignore_thresh"].default) == preset("darknet").ignore_thresh == 0.7
    assert json.loads(reference_fields()["loss.obj_loss"].default) == preset(DEFAULT_PRESET).obj_loss == "focal"
    assert json.loads(reference_fields("yololab")["loss.box_weight"].default) == preset("yololab").box_weight == 0.05


@pytest.mark.parametrize(("annotation", "text"), [
    (int, "int"), (int | None, "int | None"), (list[float], "list[float]"),
    (RunConfig.model_fields["train"].annotation.model_fields["devices"].annotation, "int | str"),
])
def test_type_text(annotation, text):
    assert type_text(annotation) == text


def test_type_and_bounds_of_fields():
    fields = reference_fields()
    assert fields["train.epochs"].type == "int, > 0"
    assert fields["optim.optimizer"].type == "'sgd' | 'adamw'"
    assert fields["data.augment.fliplr"].type == "float, >= 0, <= 1"


def test_config_list_prints_plain_complete_lines():
    result = CliRunner().invoke(app, ["config", "--list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "train.epochs = 30  (int, > 0)" in lines
    assert "train.threads = null  (int | None, > 0)" in lines
    assert all(len(line) <= 100 for line in lines)  # not a terminal: wrapped at 100 columns, never cut


def test_config_without_list_prints_the_resolved_yaml():
    result = CliRunner().invoke(app, ["config", "--preset", "darknet", "--set", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == build_config({"preset": "darknet"}, ["train.epochs=3"]).model_dump(
        mode="json")
    bad = CliRunner().invoke(app, ["config", "--set", "train.epoch=3"])
    assert bad.exit_code == 2


def test_train_help_shows_the_defaults():
    text = " ".join(CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output.split())
    for flag, default in (("--epochs", "30"), ("--batch", "16"), ("--cfg", "yolov3-tiny-3l-small"),
                          ("--preset", DEFAULT_PRESET), ("--imgsz", "the cfg's [net] width")):
        assert flag in text and f"[default: ({default})]" in text, (flag, text)


def test_threads_setting_is_validated():
    assert build_config({}, ["train.threads=2"]).train.threads == 2
    with pytest.raises(ValueError, match="threads"):
        build_config({}, ["train.threads=0"])
