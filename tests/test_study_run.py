"""studies/smoke.yaml through Ray Tune on this machine: killed after its first finished run, then run again;
the finished runs are not trained again and the study completes with results.csv and study.html."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_study_tune import ASHA
from yololab.study import load_study, write_results
from yololab.study.execute import run_study
from yololab.study.trial import RUN_RECORD, read_record

SMOKE = Path(__file__).resolve().parents[1] / "studies" / "smoke.yaml"
FIRST_RUN_TIMEOUT_S = 600  # Ray's start and two 1-epoch trainings; the machine may be busy
POLL_S = 0.2
KILL_WAIT_S = 30  # a process being killed while it writes a checkpoint can take a moment to go


def _session_pids(sid: int) -> list[int]:
    """Live processes of the session the killed study started (its Ray processes included; zombies are
    dead already and left for their parent to reap)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if os.getsid(int(entry.name)) == sid and not zombie:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL every process of the study's session, as a crash or an OOM kill of the machine would."""
    for _ in range(round(KILL_WAIT_S / POLL_S)):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(POLL_S)
    raise AssertionError(f"processes of the killed study still alive: {_session_pids(sid)}")


def test_smoke_study_killed_and_resumed(tmp_path):
    project, name = tmp_path / "studies", "smoke"
    runs = project / name / "runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "yololab.cli", "study", "run", str(SMOKE), "--project", str(project),
               "--name", name, "--quiet"]
    child = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + FIRST_RUN_TIMEOUT_S
        while not list(runs.glob(f"*/{RUN_RECORD}")):
            assert child.poll() is None, "the study ended before any run finished"
            assert time.monotonic() < deadline, "no run finished in time"
            time.sleep(POLL_S)
    finally:
        _kill_session(child.pid)
        child.wait()
    finished = {p.parent.name: (p.read_text(), (p.parent / "metrics.jsonl").stat().st_mtime_ns)
                for p in runs.glob(f"*/{RUN_RECORD}")}
    assert 1 <= len(finished) < 4

    study = load_study(SMOKE)
    outcome = run_study(study, project, name, verbose=0)
    assert outcome.failed == []
    assert outcome.skipped == len(finished) and outcome.trained == 4 - len(finished)
    for run, (record, metrics_mtime) in finished.items():  # untouched: not trained again
        assert (runs / run / RUN_RECORD).read_text() == record
        assert (runs / run / "metrics.jsonl").stat().st_mtime_ns == metrics_mtime
    names = sorted(p.name for p in runs.iterdir() if not p.name.startswith("."))  # .cache: data validation
    assert names == ["obj_target=iou-s0", "obj_target=iou-s1", "obj_target=one-s0", "obj_target=one-s1"]
    for run in names:  # ordinary run folders, each trained once for one epoch
        folder = runs / run
        assert {"config.yaml", "metrics.jsonl", "findings.json", "report.html"} <= {p.name for p in folder.iterdir()}
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        assert [line.count('"split": "val"') for line in (folder / "metrics.jsonl").read_text().splitlines()] == [0, 1]
        record = read_record(folder)
        assert record.status == "finished" and record.epochs == 1 and record.test["n_images"] == 4
        assert set(record.test["by_size"]) == {"small", "medium", "large"}  # as `yololab eval` writes it
        assert json.loads((folder / "test_metrics.json").read_text())["mAP50"] == record.test["mAP50"]

    csv_path, page = write_results(study, outcome.study_dir)
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["config"], r["seed"]) for r in rows) == [
        ("obj_target=iou", "0"), ("obj_target=iou", "1"), ("obj_target=one", "0"), ("obj_target=one", "1")]
    assert all(0.0 <= float(r["val_mAP50"]) <= 1.0 and float(r["minutes"]) > 0 for r in rows)
    for r in rows:  # test AP by COCO size, next to the val one, from the run's own test evaluation
        test_small = read_record(runs / f"{r['config']}-s{r['seed']}").test["by_size"]["small"]["mAP50"]
        assert r["test_mAP50_small"] == ("" if math.isnan(test_small) else f"{test_small:.6g}")
    text = page.read_text()
    assert "obj_target=iou vs one:" in text and "2 seeds" in text

    again = run_study(study, project, name, verbose=0)  # a finished study trains nothing and starts no Ray
    assert (again.trained, again.skipped) == (0, 4)

    records = {p.parent.name: p.read_text() for p in runs.glob(f"*/{RUN_RECORD}")}
    grown = run_study(load_study(SMOKE, seeds=3), project, name, verbose=0)  # a third seed: only its runs train
    assert (grown.trained, grown.skipped, grown.failed) == (2, 4, [])
    assert {p.parent.name for p in runs.glob(f"*/{RUN_RECORD}")} == set(records) | {"obj_target=iou-s2",
                                                                                     "obj_target=one-s2"}
    assert all((runs / run / RUN_RECORD).read_text() == record for run, record in records.items())


@pytest.mark.parametrize("change", [{"epochs": 3}, {"seeds": 1}])
def test_a_different_study_in_the_same_folder_is_refused(tmp_path, change):
    from yololab.study import StudyError
    from yololab.study.execute import _claim

    _claim(load_study(SMOKE), tmp_path / "s")
    with pytest.raises(StudyError, match="holds a different study"):
        _claim(load_study(SMOKE, **change), tmp_path / "s")


GRID = {"description": "", "data": "d.yaml", "budget": {"epochs": 3}, "seeds": 3,
        "factors": {"preset": ["yololab", "darknet"], "loss.obj_target": ["one", "iou"]}, "search": None}
SEARCH = {**GRID, "factors": None, "search": {"samples": 4, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
                                              "seed": 0}}


@pytest.mark.parametrize("new, grown", [
    (GRID, True),
    ({**GRID, "seeds": [0, 1, 2, 3]}, True),                                    # a seed appended
    ({**GRID, "seeds": 5, "description": "more"}, True),
    ({**GRID, "factors": {"preset": ["yololab", "darknet", "tf2-yolov3"], "loss.obj_target": ["one", "iou"]}},
     True),                                                                       # a level appended
    ({**GRID, "seeds": 2}, False),                                                # a seed dropped
    ({**GRID, "seeds": [1, 2, 3]}, False),                                        # other seeds
    ({**GRID, "factors": {"preset": ["tf2-yolov3", "yololab", "darknet"], "loss.obj_target": ["one", "iou"]}},
     False),                                                                      # a new first level: new baseline
    ({**GRID, "factors": {"preset": ["yololab"], "loss.obj_target": ["one", "iou"]}}, False),  # a level dropped
    ({**GRID, "factors": {"preset": ["yololab", "darknet"]}}, False),             # a factor dropped
    ({**GRID, "factors": {"loss.obj_target": ["one", "iou"], "preset": ["yololab", "darknet"]}}, False),  # reordered
    ({**GRID, "budget": {"epochs": 4}}, False),
    ({**GRID, "cpus_per_trial": 4, "gpus_per_trial": 0.5}, True),              # where runs train, not what
    ({**GRID, "data": "other.yaml"}, False),
    ({**GRID, "factors": None, "search": SEARCH["search"]}, False),              # a grid turned search
])
def test_a_study_may_grow_in_its_folder(new, grown):
    from yololab.study.execute import grows

    assert grows(GRID, new) is grown


@pytest.mark.parametrize("search, seeds, grown", [
    ({"samples": 8}, 3, True), ({"samples": 2}, 3, False), ({"samples": 4, "seed": 1}, 3, False),
    ({"samples": 8}, 4, False),                                   # seeds of a search: each trial trains them all
])
def test_a_search_grows_by_samples_only(search, seeds, grown):
    from yololab.study.execute import grows

    new = {**SEARCH, "seeds": seeds, "search": {**SEARCH["search"], **search}}
    assert grows(SEARCH, new) is grown


def _finished_run(study_dir: Path, study, seed: int, trained_with: dict | None = None, **changes) -> Path:
    """A run folder of the study's first configuration as a finished trial leaves it (config.yaml and record),
    trained with the configuration's overrides plus ``trained_with`` and its config changed by ``changes`` (a
    RunConfig section -> field updates, or a top-level field -> value)."""
    from dataclasses import replace

    from yololab.config import save_config
    from yololab.study.data import study_data
    from yololab.study.trial import FINISHED, RunRecord, run_config, run_dir

    configuration = study.configurations[0]
    folder = run_dir(study_dir, configuration.name, seed)
    folder.mkdir(parents=True)
    trained = replace(configuration, overrides={**configuration.overrides, **(trained_with or {})})
    data = study_data(study.spec, study_dir)
    cfg = run_config(study.spec, trained, seed, folder, data, data)
    for key, value in changes.items():
        section = getattr(cfg, key)
        cfg = cfg.model_copy(update={key: section.model_copy(update=value) if isinstance(value, dict) else value})
    save_config(cfg, folder / "config.yaml")
    RunRecord(configuration.name, configuration.levels, configuration.overrides, seed, FINISHED, 1, 0.1).write(folder)
    return folder


def test_finished_runs_trained_under_another_default_are_refused(tmp_path):
    """smoke.yaml's base names no preset: runs trained when the default preset was another one measure another
    study, and the folder says which field changed instead of mixing them in."""
    from yololab.config import DEFAULT_PRESET
    from yololab.study import StudyError
    from yololab.study.execute import _claim

    study, study_dir = load_study(SMOKE), tmp_path / "s"
    _claim(study, study_dir)
    other = next(name for name in ("yololab", "darknet") if name != DEFAULT_PRESET)
    folder = _finished_run(study_dir, study, 0, trained_with={"preset": other})
    with pytest.raises(StudyError) as raised:
        _claim(study, study_dir)
    message = str(raised.value)
    assert message.startswith(f"{folder / 'config.yaml'}: ")
    assert f"preset: '{other}' then, '{DEFAULT_PRESET}' now" in message and "another --name" in message


@pytest.mark.parametrize("changes, refused", [
    ({}, None),                                                          # as the runner writes it
    ({"model": {"anchors": [[[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]] * 3}}, None),  # fitted by the run itself
    ({"project": "/moved/runs", "name": "elsewhere"}, None),            # the study folder was moved
    ({"train": {"accelerator": "cpu"}}, None),                          # a run kept off a machine's GPUs
    ({"train": {"precision": "bf16-mixed"}}, "train.precision: 'bf16-mixed' then, '32-true' now"),
    ({"train": {"epochs": 7}}, "train.epochs: 7 then, 1 now"),
    ({"data": {"workers": 3}}, "data.workers: 3 then, 0 now"),
    ({"optim": {"warmup_epochs": 2.0}}, "optim.warmup_epochs: 2.0 then, 1.0 now"),
])
def test_what_is_compared_in_a_finished_run(tmp_path, changes, refused):
    """Where a run lives and the anchors it fitted are its own; every other field, the runner's loader
    processes, epochs and warm-up included, must be what the study gives now."""
    from yololab.study import StudyError
    from yololab.study.execute import _claim

    study, study_dir = load_study(SMOKE), tmp_path / "s"
    _claim(study, study_dir)
    _finished_run(study_dir, study, 0, **changes)
    _finished_run(study_dir, study, 1)
    if refused is None:
        _claim(study, study_dir)
    else:
        with pytest.raises(StudyError, match=refused):
            _claim(study, study_dir)


STEPS_STUDY = """\
description: a budget in steps over two shares of the training images
data:
  make: digits
  options: {tiny: true, seed: 1}
base:
  cfg: yolov3-tiny-3l-small
  set: {data.imgsz: 128, data.batch: 8, diagnostics.grad_share_every: 0}
budget: {steps: 4}
seeds: 1
factors:
  data.train_share: [1.0, 0.5]
"""


def test_a_budget_in_steps_trains_every_share_as_many_steps_on_one_lr_schedule(tmp_path):
    """16 training images at batch 8 are 2 steps an epoch, their half 1: a budget of 4 steps is 2 epochs of all
    the images and 4 of the half, and the warm-up (1 epoch of all the images) is 2 steps in both. So both runs
    take the same learning rate at every one of their 4 steps, read from each run's lr.jsonl."""
    from yololab.study.data import study_data
    from yololab.study.trial import TrialContext, train_run

    path = tmp_path / "steps.yaml"
    path.write_text(STEPS_STUDY)
    study, study_dir = load_study(path), tmp_path / "study"
    context = TrialContext(study.spec, str(study_dir), str(study_data(study.spec, study_dir)), threads=1)
    schedules = {}
    for configuration in study.configurations:
        record = train_run(context, configuration, 0, report=False)
        folder = study_dir / "runs" / f"{configuration.name}-s0"
        rows = [json.loads(line) for line in (folder / "lr.jsonl").read_text().splitlines()]
        schedules[configuration.name] = [lr for row in rows for lr in row["lr"]]
        assert record.epochs == len(rows)
    assert {name: len(lrs) for name, lrs in schedules.items()} == {"train_share=1.0": 4, "train_share=0.5": 4}
    assert schedules["train_share=0.5"] == pytest.approx(schedules["train_share=1.0"], rel=1e-9)
    lrs = schedules["train_share=1.0"]
    assert lrs[0] == pytest.approx(lrs[1] / 2) and lrs[1] == max(lrs)  # a warm-up of 2 steps: half, then the peak
    epochs = {name: read_record(study_dir / "runs" / f"{name}-s0").epochs for name in schedules}
    assert epochs == {"train_share=1.0": 2, "train_share=0.5": 4}


def test_a_folder_written_before_a_new_study_field_continues(tmp_path):
    """A study.yaml written by a yololab whose study files had fewer fields (here: no budget.steps) holds the
    same study as the file now gives; a changed value in it is still refused."""
    import yaml

    from yololab.study import StudyError
    from yololab.study.execute import STUDY_FILE, _claim

    study, study_dir = load_study(SMOKE), tmp_path / "s"
    _claim(study, study_dir)
    written = yaml.safe_load((study_dir / STUDY_FILE).read_text())
    del written["budget"]["steps"]
    (study_dir / STUDY_FILE).write_text(yaml.safe_dump(written))
    _claim(study, study_dir)
    written["budget"] = {"epochs": 2}
    (study_dir / STUDY_FILE).write_text(yaml.safe_dump(written))
    with pytest.raises(StudyError, match="holds a different study"):
        _claim(study, study_dir)


# test_study_tune's ASHA study (one run at a time, each takes every core) at 4 epochs: Ctrl+C after the first
# run's first epoch leaves it mid-training and the second unstarted.
INTERRUPTED_ASHA = ASHA.replace("budget: {epochs: 2}", "budget: {epochs: 4}")


def test_ctrl_c_says_so_and_leaves_the_interrupted_runs_to_the_next_call(tmp_path):
    """Ray Tune returns normally after Ctrl+C: the study says which runs did not finish and exits 130, and an
    ASHA study does not record the interrupted run as one ASHA stopped (it would never be trained again)."""
    assert INTERRUPTED_ASHA != ASHA
    study_file = tmp_path / "asha.yaml"
    study_file.write_text(INTERRUPTED_ASHA)
    runs = tmp_path / "studies" / "asha" / "runs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "yololab.cli", "study", "run", str(study_file), "--project",
               str(tmp_path / "studies"), "--name", "asha", "--quiet"]
    child = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + FIRST_RUN_TIMEOUT_S
        while not list(runs.glob("*/checkpoints/last.ckpt")):  # the first run's first epoch ended
            assert child.poll() is None, "the study ended before its first epoch"
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(POLL_S)
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=FIRST_RUN_TIMEOUT_S)
    finally:
        _kill_session(child.pid)
    assert child.returncode == 130, output[-3000:]
    assert "0 runs trained" in output and "interrupted: 2 runs did not finish" in output, output[-3000:]
    (started,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert started.name == "lr=0.01-s0" and read_record(started) is None  # not recorded as stopped
    assert (started / "checkpoints" / "last.ckpt").is_file()  # the next call continues it from here
