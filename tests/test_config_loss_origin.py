"""The preset a run records and the loss it trains cannot disagree: config.yaml holds the loss section and
preset + loss_overrides, ``--config RUN/config.yaml --preset P`` trains P with the run's overrides, and a file
edited in one place and not the other is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from yololab.cli import _train_config, app
from yololab.config import ConfigError, RunConfig, build_config, load_config, save_config
from yololab.data import make_digits
from yololab.loss import PRESETS, preset

SMALL = ["data.imgsz=128", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-3l-small"]


def _darknet_run(tmp_path: Path) -> Path:
    """config.yaml of a darknet run with loss.obj_weight=2 (darknet's own obj_weight is 1)."""
    path = tmp_path / "darknet" / "config.yaml"
    path.parent.mkdir()
    save_config(build_config({"preset": "darknet", "name": "darknet"}, ["loss.obj_weight=2"]), path)
    return path


def test_set_loss_field_is_recorded_as_an_override(tmp_path):
    cfg = build_config({"preset": "darknet"}, ["loss.obj_weight=2", "loss.ignore_thresh=0.7", "train.epochs=1"])
    # ignore_thresh 0.7 is darknet's own value: not an override
    assert cfg.loss_overrides == {"loss.obj_weight": 2.0}
    save_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["preset"] == "darknet"
    assert written["loss_overrides"] == {"loss.obj_weight": 2.0}
    assert written["loss"]["obj_weight"] == 2.0 and written["loss"]["ignore_thresh"] == 0.7


def test_config_with_another_preset_trains_that_preset_with_the_overrides(tmp_path):
    run = _darknet_run(tmp_path)
    cfg = _train_config(None, None, "yololab", None, None, None, str(tmp_path), "again", run, [])
    assert cfg.preset == "yololab"
    assert cfg.loss == preset("yololab", obj_weight=2.0)
    assert cfg.loss.ignore_thresh == 0.5 != preset("darknet").ignore_thresh
    assert cfg.loss_overrides == {"loss.obj_weight": 2.0}
    # without --preset: the run's own loss, whole
    same = _train_config(None, None, None, None, None, None, str(tmp_path), "again", run, [])
    assert (same.preset, same.loss) == ("darknet", load_config(run).loss)
    # --set on top, and --set preset=P as --preset P
    more = _train_config(None, None, None, None, None, None, str(tmp_path), "again", run,
                         ["preset=ultralytics", "loss.cls_weight=0.25"])
    assert more.loss == preset("ultralytics", obj_weight=2.0, cls_weight=0.25)


def test_an_override_equal_to_the_new_presets_value_drops_out(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(build_config({"preset": "yololab"}, ["loss.ignore_thresh=0.7"]), path)
    cfg = build_config(load_config(path).model_dump(mode="json"), ["preset=darknet"])
    assert cfg.loss == preset("darknet") and cfg.loss_overrides == {}


def test_train_cli_with_config_and_preset_trains_and_records_the_preset(tmp_path):
    """A one-epoch run: the config.yaml written and the loss in the checkpoint are yololab's + obj_weight 2."""
    digits = make_digits(tmp_path / "digits", tiny=True, seed=1)
    run = _darknet_run(tmp_path)
    args = ["train", "--config", str(run), "--preset", "yololab", "--data", str(digits), "--epochs", "1",
            "--project", str(tmp_path), "--name", "yololab", "--progress", "none",
            *[a for item in [*SMALL, "diagnostics.report=false", "diagnostics.doctor=false"]
              for a in ("--set", item)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "yololab" / "config.yaml").read_text())
    assert written["preset"] == "yololab" and written["loss_overrides"] == {"loss.obj_weight": 2.0}
    assert written["loss"] == preset("yololab", obj_weight=2.0).model_dump(mode="json")
    ckpt = torch.load(tmp_path / "yololab" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert RunConfig(**ckpt["hyper_parameters"]["config"]).loss == preset("yololab", obj_weight=2.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_and_preset_plus_overrides_give_the_loss(tmp_path, name):
    cfg = build_config({"preset": name, "name": "x"}, ["optim.lr=0.01", "loss.noobj_weight=0.5",
                                                       "loss.label_smoothing=0.02"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    loaded = load_config(path)
    assert loaded == cfg
    assert preset(name, **{k.removeprefix("loss."): v for k, v in loaded.loss_overrides.items()}) == loaded.loss
    assert set(loaded.loss_overrides) <= {"loss.noobj_weight", "loss.label_smoothing"}


def test_file_without_overrides_derives_them_and_one_without_loss_resolves_it(tmp_path):
    data = build_config({"preset": "keras-yolo3"}, ["loss.cls_weight=3"]).model_dump(mode="json")
    older = tmp_path / "older.yaml"  # written before loss_overrides existed
    older.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "loss_overrides"}))
    assert load_config(older).loss_overrides == {"loss.cls_weight": 3.0}
    short = tmp_path / "short.yaml"  # preset + overrides, no loss section
    short.write_text(yaml.safe_dump({"preset": "keras-yolo3", "loss_overrides": {"loss.cls_weight": 3}}))
    assert load_config(short).loss == preset("keras-yolo3", cls_weight=3)
    partial = tmp_path / "partial.yaml"  # a hand-written partial loss section sits on the preset, not on yololab
    partial.write_text("preset: darknet\nloss:\n  cls_weight: 3\n")
    assert load_config(partial).loss == preset("darknet", cls_weight=3)
    assert RunConfig(preset="darknet").loss == preset("darknet")


def test_hand_edited_disagreement_is_one_line_naming_file_and_field(tmp_path):
    data = build_config({"preset": "darknet"}, ["loss.obj_weight=2"]).model_dump(mode="json")
    data["loss"]["cls_weight"] = 4.0  # the loss section edited, loss_overrides not
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "loss.cls_weight" in message
    data["preset"] = "yololab"  # the preset edited by hand, nothing else
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match="preset yololab with loss_overrides does not give the loss section"):
        load_config(path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss_overrides:\n  loss.no_such_field: 1\n")
    with pytest.raises(ConfigError, match=r"loss\.no_such_field"):
        load_config(bad)
