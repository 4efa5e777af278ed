"""Recipes: applied under the flags and --set given with them, recorded, suggested by the training boxes."""

from dataclasses import replace

import pytest

from yololab import recipes
from yololab.cli import _train_config
from yololab.config import ConfigError, build_config, load_config, save_config
from yololab.recipes import TINY_BOX_PX, TINY_BOX_SHARE, Recipe, suggest_recipe

TRIAL = Recipe("sparse", "test data", {"preset": "darknet", "model.cfg": "yolov3-tiny-small", "data.imgsz": 320,
                                       "loss.obj_weight": 3.0, "model.head_prior": "labels"}, "a test",
               beats_default=True)


@pytest.fixture
def trial_recipe(monkeypatch):
    monkeypatch.setitem(recipes.RECIPES, "sparse", TRIAL)
    return TRIAL


def test_a_recipe_sets_its_values_and_the_items_given_with_it_win(trial_recipe, tmp_path):
    cfg = build_config({}, ["recipe=sparse", "data.imgsz=256"])
    assert (cfg.recipe, cfg.preset, cfg.model.cfg, cfg.model.head_prior) == ("sparse", "darknet", "yolov3-tiny-small",
                                                                           "labels")
    assert cfg.data.imgsz == 256  # the --set given with it wins
    assert cfg.loss.obj_weight == 3.0 and cfg.loss.ignore_thresh == 0.7  # darknet's, with the recipe's override
    assert cfg.loss_overrides == {"loss.obj_weight": 3.0}
    # The command line's flags win too: --cfg and --preset over the recipe's.
    cli = _train_config(None, "yolov3-tiny-3l-small", "yololab", None, None, None, None, None, None, [],
                        recipe="sparse")
    assert (cli.model.cfg, cli.preset, cli.data.imgsz, cli.loss.obj_weight) == ("yolov3-tiny-3l-small", "yololab",
                                                                                320, 3.0)
    # config.yaml records the recipe and what it resolved to; loading it applies nothing again.
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    resumed = build_config(again.model_dump(mode="json"), ["data.imgsz=320"])
    assert resumed.model.cfg == "yolov3-tiny-small" and resumed.loss.obj_weight == 3.0


def test_unknown_recipes_are_one_line_errors(trial_recipe):
    with pytest.raises(ConfigError, match="unknown recipe 'dense'; available: sparse"):
        build_config({}, ["recipe=dense"])
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_config_text = {"recipe": "dense"}
        build_config(load_config_text, [])


def test_suggestion_from_the_share_of_tiny_boxes(trial_recipe):
    below, above = TINY_BOX_PX - 0.5, TINY_BOX_PX + 0.5
    # 1 tiny box in 5 is exactly the threshold share; 1 in 6 is under it.
    assert TINY_BOX_SHARE == pytest.approx(1 / 5)
    found = suggest_recipe([below, above, above, above, above], None)
    assert found is not None and found.recipe is TRIAL
    assert found.reason == f"20% of the training boxes are under {TINY_BOX_PX:g} px"
    assert suggest_recipe([below] + [above] * 5, None) is None
    assert suggest_recipe([below] * 5, "sparse") is None  # already in use
    assert suggest_recipe([], None) is None


def test_the_shipped_sparse_recipe_is_the_measured_preset():
    """studies/sparse480.yaml measured the darknet preset better than the default preset (tf2-yolov3) and
    keras-yolo3 on 480-px sparse images (docs/studies.md): the shipped recipe trains it and is suggested."""
    cfg = build_config({}, ["recipe=sparse"])
    assert (cfg.recipe, cfg.preset, cfg.loss_overrides) == ("sparse", "darknet", {})
    assert "sparse480.yaml" in recipes.RECIPES["sparse"].measured
    assert build_config({}, []).preset != "darknet" and recipes.RECIPES["sparse"].beats_default
    assert suggest_recipe([TINY_BOX_PX - 0.5] * 5, None).recipe is recipes.RECIPES["sparse"]


def test_a_recipe_not_measured_better_than_the_default_is_not_suggested(monkeypatch):
    tiny = [TINY_BOX_PX - 0.5] * 5
    monkeypatch.setitem(recipes.RECIPES, "sparse", replace(TRIAL, beats_default=False))
    assert suggest_recipe(tiny, None) is None
    monkeypatch.setitem(recipes.RECIPES, "sparse", TRIAL)
    assert suggest_recipe(tiny, None).recipe is TRIAL
