"""Run configuration: overrides, strictness, YAML round trip; the LR schedule by hand."""

import math

import pytest

from yololab.config import build_config, load_config, parse_overrides, save_config
from yololab.engine.schedule import warmup_cosine


def test_overrides_parse_nested_yaml_values():
    assert parse_overrides(["train.epochs=3", "loss.scale_weights=[4, 1, 0.4]", "loss.box_loss=mse"]) == {
        "train": {"epochs": 3}, "loss": {"scale_weights": [4, 1, 0.4], "box_loss": "mse"},
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"])


def test_preset_then_overrides():
    cfg = build_config({"preset": "darknet"}, ["loss.box_loss=giou", "train.epochs=2"])
    assert cfg.loss.box_loss == "giou"
    assert cfg.loss.ignore_thresh == 0.7  # from the darknet preset
    assert cfg.train.epochs == 2


def test_unknown_keys_are_errors():
    with pytest.raises(ValueError, match="invalid configuration"):
        build_config({}, ["train.epoch=3"])
    with pytest.raises(ValueError, match="invalid configuration"):
        build_config({}, ["loss.box=mse"])


def test_doctor_thresholds_are_a_section_that_reaches_the_callback(tmp_path):
    from yololab.diagnostics.callbacks import diagnostics_callbacks
    from yololab.diagnostics.doctor_callback import DoctorCallback

    cfg = build_config({}, ["doctor.unfound_iou_gain=0.2", "doctor.settle_epochs=2"])
    assert (cfg.doctor.unfound_iou_gain, cfg.doctor.settle_epochs, cfg.doctor.unfound_separation) == (0.2, 2, 2.0)
    with pytest.raises(ValueError, match="invalid configuration"):
        build_config({}, ["doctor.no_such_threshold=1"])
    (doctor,) = [c for c in diagnostics_callbacks(cfg.diagnostics, tmp_path, cfg.doctor)
                 if isinstance(c, DoctorCallback)]
    assert doctor.cfg == cfg.doctor


def test_yaml_round_trip(tmp_path):
    cfg = build_config({"preset": "keras-yolo3", "name": "x"}, ["optim.lr=0.01"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_warmup_cosine_by_hand():
    # 10 warm-up steps of 100: step 0 -> 1/10, step 9 -> 1; then cosine to 0.1 at step 100.
    assert warmup_cosine(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.1) == pytest.approx(1.0)
    midway = 10 + 45  # half of the 90 cosine steps
    assert warmup_cosine(midway, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(150, 100, 10, 0.1) == pytest.approx(0.1)
