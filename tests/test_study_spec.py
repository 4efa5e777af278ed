"""Study files: the shipped ones load, designs expand as documented, and a bad file is one line naming the
file, the line and the key."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from yololab.cli import app
from yololab.study import StudyError, load_study
from yololab.study.spec import TRAIN_SHARE

STUDIES = Path(__file__).resolve().parents[1] / "studies"
GOOD = """\
data: data/digits/data.yaml
base:
  cfg: yolov3-tiny-3l-small
  set: {data.imgsz: 128}
budget:
  epochs: 2
seeds: 2
factors:
  loss.obj_loss: [bce, mse]
  loss.obj_weight: [1.0, 5.0]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_load(path):
    study = load_study(path)
    assert study.seeds
    assert study.configurations or study.spec.search is not None


def test_grid_is_every_combination_with_the_first_levels_as_baseline(tmp_path):
    study = load_study(_write(tmp_path, GOOD))
    assert [c.name for c in study.configurations] == [
        "obj_loss=bce+obj_weight=1.0", "obj_loss=bce+obj_weight=5.0", "obj_loss=mse+obj_weight=1.0",
        "obj_loss=mse+obj_weight=5.0"]
    assert study.baseline.name == "obj_loss=bce+obj_weight=1.0"
    assert study.seeds == [0, 1]
    assert study.configurations[3].overrides == {"loss.obj_loss": "mse", "loss.obj_weight": 5.0}


def test_one_at_a_time_design_and_a_chosen_baseline(tmp_path):
    text = GOOD + "design: one_at_a_time\nbaseline: {loss.obj_loss: mse}\n"
    study = load_study(_write(tmp_path, text))
    assert [c.name for c in study.configurations] == ["baseline", "obj_loss=bce", "obj_weight=5.0"]
    assert [c.levels for c in study.configurations] == [
        {"loss.obj_loss": "mse", "loss.obj_weight": "1.0"}, {"loss.obj_loss": "bce", "loss.obj_weight": "1.0"},
        {"loss.obj_loss": "mse", "loss.obj_weight": "5.0"}]
    assert study.baseline.name == "baseline"


def test_named_levels_and_training_share(tmp_path):
    text = GOOD.replace("  loss.obj_weight: [1.0, 5.0]\n",
                        "  warmup:\n    - {name: 'off', set: {optim.warmup_epochs: 0}}\n"
                        "    - {name: 'on', set: {optim.warmup_epochs: 1, loss.warmup_batches: 10}}\n"
                        f"  {TRAIN_SHARE}: [0.25, 1.0]\n")
    study = load_study(_write(tmp_path, text))
    assert len(study.configurations) == 8
    on = next(c for c in study.configurations if c.levels["warmup"] == "on")
    assert on.overrides["loss.warmup_batches"] == 10 and on.overrides[TRAIN_SHARE] == 0.25


BAD = [
    # (what is changed in GOOD, the key the error names, a piece of the problem, the line it names)
    (("budget:\n  epochs: 2\n", "budget:\n  epochs: 2\n  epoch: 3\n"), "budget.epoch", "Extra inputs", 7),
    (("loss.obj_loss:", "loss.obj_los:"), "factors.loss.obj_los", "unknown config field 'obj_los'", 9),
    (("loss.obj_weight: [1.0, 5.0]", "preset: [yololab, nope]"), "factors.preset", "unknown preset 'nope'", 10),
    (("loss.obj_weight: [1.0, 5.0]", "loss.obj_weight: []"), "factors.loss.obj_weight", "empty grid", 10),
    (("factors:\n  loss.obj_loss: [bce, mse]\n  loss.obj_weight: [1.0, 5.0]\n", ""), "", "empty grid", None),
    (("factors:\n  loss.obj_loss: [bce, mse]\n  loss.obj_weight: [1.0, 5.0]\n", "factors: {}\n"), "factors",
     "empty grid", 8),
    (("[bce, mse]", "[bce, msee]"), "factors", "obj_loss", 8),
    (("{data.imgsz: 128}", "{data.imgsze: 128}"), "base.set.data.imgsze", "unknown config field", 4),
    (("seeds: 2", "seeds: [1, 1]"), "seeds", "distinct seeds", 7),
    (("budget:\n  epochs: 2\n", "budget:\n  epochs: 0\n"), "budget.epochs", "greater than 0", 6),
    (("budget:\n  epochs: 2\n", "budget:\n  minutes: 2\n"), "budget", "give epochs or steps", 5),
    (("budget:\n  epochs: 2\n", "budget:\n  epochs: 2\n  steps: 100\n"), "budget", "give epochs or steps", 5),
    (("budget:\n  epochs: 2\n", "budget:\n  steps: 100\nasha: {grace_epochs: 1}\n"), "",
     "asha needs a budget in epochs", None),
]


@pytest.mark.parametrize(("change", "key", "problem", "line"), BAD, ids=[b[2] + " " + b[1] for b in BAD])
def test_bad_study_file_is_one_line_naming_file_key_and_line(tmp_path, change, key, problem, line):
    path = _write(tmp_path, GOOD.replace(*change))
    assert path.read_text() != GOOD
    with pytest.raises(StudyError) as caught:
        load_study(path)
    message = str(caught.value)
    assert "\n" not in message
    where = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(where + (f"{key}: " if key else "")), message
    assert problem in message


def test_cli_prints_the_one_line_and_exits_2(tmp_path):
    path = _write(tmp_path, GOOD.replace("loss.obj_loss:", "loss.obj_los:"))
    result = CliRunner().invoke(app, ["study", "run", str(path), "--project", str(tmp_path / "p")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "factors.loss.obj_los" in lines[0] and "study.yaml:9" in lines[0]
    assert not (tmp_path / "p").exists()  # nothing started, nothing written


def test_missing_file(tmp_path):
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "absent.yaml")


def test_a_budget_in_steps_and_epochs_from_the_command_line(tmp_path):
    path = _write(tmp_path, GOOD.replace("budget:\n  epochs: 2\n", "budget:\n  steps: 375\n  minutes: 30\n"))
    budget = load_study(path).spec.budget
    assert (budget.steps, budget.epochs, budget.describe()) == (375, None, "375 steps, at most 30 min per run")
    budget = load_study(path, epochs=4).spec.budget  # --epochs replaces the steps, keeps the cap
    assert (budget.steps, budget.epochs, budget.describe()) == (None, 4, "4 epochs, at most 30 min per run")


def test_set_from_the_command_line_goes_over_the_base(tmp_path):
    path = _write(tmp_path, GOOD)
    study = load_study(path, base_set=["data.imgsz=320", "data.augment.enabled=false", "optim.lr=0.003"])
    assert study.spec.base.set == {"data.imgsz": 320, "data.augment.enabled": False, "optim.lr": 0.003}
    no_base = _write(tmp_path, GOOD.replace("base:\n  cfg: yolov3-tiny-3l-small\n  set: {data.imgsz: 128}\n", ""))
    assert load_study(no_base, base_set=["data.imgsz=320"]).spec.base.set == {"data.imgsz": 320}
    with pytest.raises(StudyError, match=r"study\.yaml: --set expects key=value, got 'data\.imgsz'"):
        load_study(path, base_set=["data.imgsz"])
    with pytest.raises(StudyError, match=r"base\.set\.data\.imgz: unknown config field 'imgz' \(did you mean imgsz"):
        load_study(path, base_set=["data.imgz=320"])


def test_cli_set_is_checked_before_anything_runs(tmp_path):
    path = _write(tmp_path, GOOD)
    result = CliRunner().invoke(app, ["study", "run", str(path), "--project", str(tmp_path / "p"),
                                      "--set", "data.imgz=1"])
    assert result.exit_code == 2 and "unknown config field 'imgz'" in result.output
    assert not (tmp_path / "p").exists()
