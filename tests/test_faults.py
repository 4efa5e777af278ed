"""Fault injection: kill -9 at random moments of an epoch and of a checkpoint write, SIGINT and SIGTERM after
and during an epoch, resume of a copied run folder. After each: last.ckpt loads, the resume continues from it,
metrics.jsonl has every (epoch, split) exactly once and matches the checkpoint, and no temporary file is left.

Tiny runs (8 images of 64 px, 2 steps an epoch) in child processes of a forkserver (tests/fault_injection.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fault_injection import (
    STEPS_PER_EPOCH,
    TINY,
    finish,
    start_cli,
    start_training,
    tiny_config,
    wait_for_rows,
)
from yololab.cli import app
from yololab.data import make_digits
from yololab.engine.checkpoint import load_checkpoint_file
from yololab.engine.train import train

SPLITS = ("train", "val")
KILL_SEEDS = (0, 1, 2)
WRITE_SEEDS = (0, 1, 2, 3)
MAX_KILL_DELAY_S = 0.6  # about one tiny epoch here
SIGNAL_EXIT = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory.mktemp("tiny"), n_train=8, n_val=4, n_test=4, img_size=64, seed=0)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-epoch run (not to be changed by tests: copy it)."""
    project = tmp_path_factory.mktemp("reference")
    train(tiny_config(tiny_data, project, "ref", 2), progress="none")
    return project / "ref"


def _raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*.tmp")]


def assert_never_ahead(run_dir: Path) -> int:
    """Right after a kill: the checkpoint loads, and metrics.jsonl is never ahead of it (at most one epoch
    behind, the rows the checkpoint holds). Returns the checkpoint's epoch."""
    ckpt = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    epochs = {r["epoch"] for r in _raw_rows(run_dir / "metrics.jsonl")}
    assert max(epochs) <= ckpt["epoch"], (epochs, ckpt["epoch"])
    assert max(epochs) >= ckpt["epoch"] - 1
    return ckpt["epoch"]


TIME_PREFIX = "time/"  # engine/epoch_time.py


def assert_consistent(run_dir: Path, epochs: int) -> None:
    """A run that finished ``epochs`` epochs, whatever happened to it on the way."""
    ckpt = load_checkpoint_file(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == epochs - 1
    assert ckpt["global_step"] == epochs * STEPS_PER_EPOCH
    rows = _raw_rows(run_dir / "metrics.jsonl")
    keys = [(r["epoch"], r["split"]) for r in rows]
    assert sorted(keys) == [(e, s) for e in range(epochs) for s in SPLITS]  # each exactly once
    assert all(r["step"] == (r["epoch"] + 1) * STEPS_PER_EPOCH for r in rows)
    # Wall times (time/*) are measured after the checkpoint that closes the epoch and added to its rows then:
    # they are records of the run, not training state, so the checkpoint's rows hold everything else.
    last_rows = [{k: v for k, v in r.items() if not k.startswith(TIME_PREFIX)}
                 for r in rows if r["epoch"] == epochs - 1]
    assert last_rows == ckpt["callbacks"]["MetricsJsonl"]["epoch_rows"]
    assert all(k.startswith(TIME_PREFIX) for r in rows if r["epoch"] == epochs - 1 for k in r if k not in
               next(c for c in ckpt["callbacks"]["MetricsJsonl"]["epoch_rows"] if c["split"] == r["split"]))
    histogram_epochs = [r["epoch"] for r in _raw_rows(run_dir / "histograms.jsonl")]
    assert histogram_epochs == list(range(epochs))
    assert _temporaries(run_dir) == []


def _resume(data: Path, run_dir: Path, epochs: int) -> None:
    train(tiny_config(data, run_dir.parent, run_dir.name, epochs), resume=True, progress="none")


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_kill_9_at_a_random_moment_of_an_epoch(tiny_data, tmp_path, seed):
    rng = np.random.default_rng(seed)
    cfg = tiny_config(tiny_data, tmp_path, "run", 4)
    child = start_training(cfg)
    if wait_for_rows(child, cfg.run_dir / "metrics.jsonl", 2):  # epoch 1 is on disk
        child.join(rng.uniform(0, MAX_KILL_DELAY_S))
        child.kill()
    finish(child)
    assert_never_ahead(cfg.run_dir)
    _resume(tiny_data, cfg.run_dir, 4)
    assert_consistent(cfg.run_dir, 4)


@pytest.mark.parametrize("seed", WRITE_SEEDS)
def test_kill_9_during_a_checkpoint_write(tiny_data, reference, tmp_path, seed):
    rng = np.random.default_rng(seed)
    size = (reference / "checkpoints" / "last.ckpt").stat().st_size
    # the 2nd or 3rd epoch's save; in the data, before the rename, or between it and the metrics rows
    kill = {"save_number": int(rng.integers(2, 4)), "where": str(rng.choice(["write", "write", "rename", "after"])),
            "byte": int(rng.integers(0, size))}
    cfg = tiny_config(tiny_data, tmp_path, "run", 4)
    assert finish(start_training(cfg, kill)) == -signal.SIGKILL, kill  # it was killed where asked
    epoch = assert_never_ahead(cfg.run_dir)
    assert epoch == kill["save_number"] - (1 if kill["where"] == "after" else 2), kill
    if kill["where"] != "after":
        assert _temporaries(cfg.run_dir)  # what a killed write leaves, until the resume removes it
    _resume(tiny_data, cfg.run_dir, 4)
    assert_consistent(cfg.run_dir, 4)


def _signal_argv(data: Path, project: Path, name: str, workers: int) -> list[str]:
    sets = [f"--set={item}" for item in [*TINY, f"data.workers={workers}"]]
    return ["train", "--data", str(data), "--epochs", "30", "--project", str(project), "--name", name,
            "--progress", "none", *sets]


@pytest.mark.parametrize(("name", "moment"), [("SIGINT", "after"), ("SIGINT", "during"),
                                              ("SIGTERM", "after"), ("SIGTERM", "during")])
def test_signal_after_and_during_an_epoch(tiny_data, tmp_path, name, moment):
    run_dir = tmp_path / "run"
    log = tmp_path / "log.txt"
    # SIGTERM during an epoch with a DataLoader worker: the worker's death must not hide the signal.
    workers = 1 if (name, moment) == ("SIGTERM", "during") else 0
    child = start_cli(_signal_argv(tiny_data, tmp_path, "run", workers), log)
    assert wait_for_rows(child, run_dir / "metrics.jsonl", 2)
    child.join(0.0 if moment == "after" else MAX_KILL_DELAY_S / 2)
    os.kill(child.pid, getattr(signal, name))
    assert finish(child) == SIGNAL_EXIT[name]
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"interrupted by {name}" in errors[0], log.read_text()
    assert errors[0].endswith(f"continue with: yololab train --project {tmp_path} --name run --resume")
    assert "Traceback" not in log.read_text()
    epoch = assert_never_ahead(run_dir)
    _resume(tiny_data, run_dir, epoch + 2)
    assert_consistent(run_dir, epoch + 2)


def test_resume_of_a_copied_run_folder_trains_the_copy(tiny_data, reference, tmp_path):
    original = tmp_path / "a"
    shutil.copytree(reference, original)
    shutil.copytree(original, tmp_path / "b")
    before = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["train", "--project", str(tmp_path), "--name", "b", "--resume",
                                      "--epochs", "3", "--progress", "none"])
    assert result.exit_code == 0, result.output
    after = {p.relative_to(original): p.read_bytes() for p in original.rglob("*") if p.is_file()}
    assert after == before  # the original run is untouched
    assert_consistent(tmp_path / "b", 3)
