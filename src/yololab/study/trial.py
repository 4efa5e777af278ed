"""One run of a study, as Ray Tune runs it: an ordinary ``train(cfg)`` into ``STUDY/runs/<config>-s<seed>/``,
reporting val mAP@0.5 to Tune after every epoch, then a record (``study_run.json``) that marks it finished.

A run folder with a record is never trained again; one without (the study was killed) continues from its
``last.ckpt`` when there is one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from yololab.study.spec import TRAIN_SHARE, Configuration, StudySpec, resolve, seed_list

RUN_RECORD = "study_run.json"
RUNS_DIR = "runs"  # under the study folder
DEFAULT_WORKERS = 0  # DataLoader processes of a run unless the study sets data.workers: the cores go to trials
FINISHED, STOPPED = "finished", "stopped"  # a record's status: the whole budget, or stopped early by ASHA
TUNE_METRIC = "mAP50"  # what each epoch reports to Ray Tune (ASHA's metric)
TUNE_TIME = "epoch"  # ASHA's time attribute: epochs done
EPOCH_TIME = "time/epoch_s"  # an epoch's wall time on its train row of metrics.jsonl (engine/epoch_time.py)


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, built once by the driver and passed to the trials by Ray."""

    spec: StudySpec
    study_dir: str
    data: str  # the study's data.yaml (absolute)
    threads: int  # torch threads of one run
    gpus: float = 0.0  # GPUs Ray gives one run (execute.trial_gpus)
    accelerator: str | None = None  # train.accelerator of every run when the study decides it ("cpu": no GPU)
    runs: dict[str, tuple[Configuration, int]] = field(default_factory=dict)  # grid: run name -> (config, seed)


@dataclass
class RunRecord:
    """``study_run.json``: which configuration and seed a run folder holds and how it ended."""

    config: str
    levels: dict
    overrides: dict
    seed: int
    status: str
    epochs: int
    minutes: float
    test: dict | None = None
    gpu_ids: list[str] = field(default_factory=list)  # the GPUs Ray gave the run (CUDA_VISIBLE_DEVICES)

    def write(self, run_dir: Path) -> None:
        (run_dir / RUN_RECORD).write_text(json.dumps(asdict(self), indent=2) + "\n")


def run_name(config: str, seed: int) -> str:
    return f"{config}-s{seed}"


def run_dir(study_dir: Path, config: str, seed: int) -> Path:
    return Path(study_dir) / RUNS_DIR / run_name(config, seed)


def read_record(path: Path) -> RunRecord | None:
    """The record of a run folder, None when the run has not finished (or the file is unreadable)."""
    try:
        return RunRecord(**json.loads((path / RUN_RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _gpu_ids() -> list[str]:
    """The GPUs Ray assigned to this trial (it sets CUDA_VISIBLE_DEVICES to them); empty outside Ray."""
    import ray

    if not ray.is_initialized():
        return []
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def _tune_report():
    """Lightning callback reporting the epoch and its val mAP@0.5 to Ray Tune (ASHA decides on them), after the
    run's own epoch end (checkpoint, rows, diagnostics): a trial ASHA stops leaves a whole epoch behind.

    The last epoch is not reported here but by the trial once the run's record is written (``grid_trial``):
    ASHA stops every trial that reports its last epoch, and ``tune.report`` waits for that decision, so a report
    from inside the last epoch would end the run before its test metrics and record."""
    import lightning as L
    from ray import tune

    class TuneReport(L.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            if trainer.current_epoch + 1 >= trainer.max_epochs:
                return
            value = trainer.callback_metrics.get(f"val/{TUNE_METRIC}")
            tune.report({TUNE_TIME: trainer.current_epoch + 1,
                         TUNE_METRIC: float(value) if value is not None else math.nan})

    return TuneReport()


def training_minutes(folder: Path) -> float:
    """Minutes of training of a run folder: the sum of its epochs' wall times (``time/epoch_s`` of the train
    rows of metrics.jsonl: training, validation, checkpoints and diagnostics), each epoch once however often the
    run was killed and resumed; the start-up before the first epoch and the test evaluation are not in it.

    An epoch whose time a kill lost (it struck between the epoch's checkpoint and its time record) counts as
    the mean of the others. NaN when no epoch has a time."""
    from yololab.engine.metrics_log import read_metrics

    path = Path(folder) / "metrics.jsonl"
    rows = [r for r in read_metrics(path) if r.get("split") == "train"] if path.is_file() else []
    times = [float(r[EPOCH_TIME]) for r in rows if r.get(EPOCH_TIME) is not None]
    if not times:
        return math.nan
    return sum(times) / len(times) * len(rows) / 60


def train_run(context: TrialContext, configuration: Configuration, seed: int, report: bool) -> RunRecord:
    """Train (or finish) one run of the study and write its record; returns the record."""
    import torch

    from yololab.engine.train import train
    from yololab.study.data import share_data

    torch.set_num_threads(context.threads)
    study_dir = Path(context.study_dir)
    folder = run_dir(study_dir, configuration.name, seed)
    data = share_data(Path(context.data), configuration.overrides.get(TRAIN_SHARE, 1.0), study_dir)
    cfg = run_config(context.spec, configuration, seed, folder, data, Path(context.data))
    if context.accelerator is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"accelerator": context.accelerator})})
    callbacks = [_tune_report()] if report else []
    if context.spec.budget.minutes:
        from lightning.pytorch.callbacks import Timer

        callbacks.append(Timer(duration=timedelta(minutes=context.spec.budget.minutes), interval="epoch",
                               verbose=False))
    resume = (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "config.yaml").is_file()
    start = time.perf_counter()
    result = train(cfg, resume=resume, exist_ok=True, progress="none", callbacks=callbacks)
    epochs = len({row["epoch"] for row in result.metrics if row["split"] == "train"})
    minutes = training_minutes(folder)
    record = RunRecord(configuration.name, dict(configuration.levels), dict(configuration.overrides), seed,
                       FINISHED, epochs, minutes if math.isfinite(minutes) else (time.perf_counter() - start) / 60,
                       _test_metrics(result.last_checkpoint, cfg) if _has_test(data) else None, _gpu_ids())
    if record.test is not None:
        from yololab.diagnostics.report import TEST_METRICS

        (folder / TEST_METRICS).write_text(json.dumps(record.test, indent=2))
    record.write(folder)
    return record


# Where a run lives (a study folder may be moved) and on which device it trained (what Ray gave it): not compared
# with what its configuration resolves to now.
PLACE_FIELDS = ("project", "name", "data.data", "train.accelerator")
FITTED_ANCHORS = "model.anchors"  # written into config.yaml by the anchor fit when the configuration has none


def run_config(spec: StudySpec, configuration: Configuration, seed: int, folder: Path, data: Path,
               full_data: Path):
    """The RunConfig of one run: the configuration resolved on the study's base, into ``folder``, on ``data``
    (the study's data ``full_data`` or a share of it), with the run's seed and the study's budget."""
    cfg = resolve(spec, configuration.overrides)
    workers = cfg.data.workers if _sets(spec, "data.workers") else DEFAULT_WORKERS
    epochs, warmup = budget_epochs(spec, cfg, data, full_data)
    return cfg.model_copy(update={
        "project": str(folder.parent), "name": folder.name,
        "data": cfg.data.model_copy(update={"data": str(data), "workers": workers}),
        "train": cfg.train.model_copy(update={"seed": seed, "epochs": epochs}),
        "optim": cfg.optim.model_copy(update={"warmup_epochs": warmup}),
    })


def budget_epochs(spec: StudySpec, cfg, data: Path, full_data: Path) -> tuple[int, float]:
    """(epochs, LR warm-up epochs) of a run on ``data`` with ``cfg``'s batch. A budget in steps gives the fewest
    whole epochs whose optimiser steps reach it, and a warm-up of as many steps as ``optim.warmup_epochs`` of the
    whole training set (``full_data``): runs on a share of the images train as many steps and warm up as long
    as runs on all of them."""
    budget = spec.budget
    if budget.steps is None:
        return budget.epochs, cfg.optim.warmup_epochs
    run_steps, full_steps = (steps_per_epoch(path, cfg) for path in (data, full_data))
    return math.ceil(budget.steps / run_steps), cfg.optim.warmup_epochs * full_steps / run_steps


def steps_per_epoch(data: Path, cfg) -> int:
    """Optimiser steps of one epoch over the training images of ``data``: batches of ``data.batch`` (the last
    one partial), one step per ``train.accumulate_grad_batches`` of them."""
    from yololab.data import load_data_yaml

    batches = math.ceil(len(load_data_yaml(data).splits["train"]) / cfg.data.batch)
    return math.ceil(batches / cfg.train.accumulate_grad_batches)


def config_drift(spec: StudySpec, folder: Path, record: RunRecord, full_data: Path) -> dict[str, tuple]:
    """Fields whose value in a finished run's config.yaml differs from what its configuration, seed and the budget
    give now: dotted key -> (trained with, given now), top-level keys first. Not empty when a default changed
    since the run trained (e.g. the default preset of a base that names none): such a run no longer measures the
    configuration of its name. Where the run lives and anchors it fitted itself are not compared."""
    from yololab.config import dotted, load_config

    trained = load_config(folder / "config.yaml")
    configuration = Configuration(record.config, record.levels, record.overrides)
    now = run_config(spec, configuration, record.seed, folder, Path(trained.data.data), full_data)
    trained, now = (dotted(cfg.model_dump(mode="json")) for cfg in (trained, now))
    ignored = set(PLACE_FIELDS) | ({FITTED_ANCHORS} if now.get(FITTED_ANCHORS) is None else set())
    keys = sorted(trained.keys() | now.keys(), key=lambda key: (key.count("."), key))  # preset before loss.*
    return {key: (trained.get(key), now.get(key)) for key in keys
            if key not in ignored and trained.get(key) != now.get(key)}


def _sets(spec: StudySpec, key: str) -> bool:
    return key in spec.base.set or any(key in level for level in (spec.factors or {}).values())


def _has_test(data_yaml: Path) -> bool:
    from yololab.data import load_data_yaml

    return "test" in load_data_yaml(data_yaml).splits


def _test_metrics(checkpoint: Path, cfg) -> dict:
    """COCO metrics of the run's last checkpoint on the test split (the weights its last val row measured), as
    ``yololab eval`` writes them: APs by COCO's sizes and by the data's size bins included."""
    from yololab.data import load_data_yaml
    from yololab.engine.checkpoint import load_module
    from yololab.engine.split_predictions import split_map

    result, _, _ = split_map(load_module(checkpoint), load_data_yaml(cfg.data.data), "test", cfg.data.batch,
                             cfg.data.imgsz)
    return {**result, "split": "test", "weights": str(checkpoint), "input_size": cfg.data.imgsz}


# --------------------------------------------------------------------------------------------- Ray entry points


def grid_trial(params: dict, context: TrialContext) -> None:
    """A Ray Tune trial of a grid: ``params["run"]`` is the name of one (configuration, seed) run."""
    from ray import tune

    configuration, seed = context.runs[params["run"]]
    record = train_run(context, configuration, seed, report=True)
    value = final_val(run_dir(Path(context.study_dir), configuration.name, seed)).get(TUNE_METRIC)
    tune.report({TUNE_TIME: record.epochs, TUNE_METRIC: value if value is not None else math.nan})


def search_trial(params: dict, context: TrialContext) -> None:
    """A Ray Tune trial of a search: one sampled configuration trained over every seed in turn (seeds already
    recorded are not trained again); reports the mean final val mAP@0.5 over the seeds done, the searcher's
    objective."""
    from ray import tune

    from yololab.study.spec import config_name

    levels = {key: _level_text(value) for key, value in params.items()}
    configuration = Configuration(config_name(levels), levels, dict(params))
    write_sample(Path(context.study_dir), configuration)
    finals = []
    for seed in seed_list(context.spec.seeds):
        record = read_record(run_dir(Path(context.study_dir), configuration.name, seed))
        record = record or train_run(context, configuration, seed, report=False)
        finals.append(final_val(run_dir(Path(context.study_dir), configuration.name, seed)).get(TUNE_METRIC))
        done = [v for v in finals if v is not None]
        tune.report({SEARCH_OBJECTIVE: sum(done) / len(done) if done else math.nan, "seeds": len(finals)})


SEARCH_OBJECTIVE = "objective"
SAMPLES_DIR = "samples"  # under the study folder: one JSON per configuration a search has asked for


def write_sample(study_dir: Path, configuration: Configuration) -> None:
    """``samples/<config>.json``: a sampled configuration, written before its first run trains, so that a
    search killed before any of its seeds finished continues it instead of forgetting it."""
    folder = Path(study_dir) / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{configuration.name}.json").write_text(json.dumps(asdict(configuration), indent=2) + "\n")


def read_samples(study_dir: Path) -> list[Configuration]:
    """The configurations a search has asked for (unreadable files are skipped), in name order."""
    found = []
    for path in sorted((Path(study_dir) / SAMPLES_DIR).glob("*.json")):
        try:
            found.append(Configuration(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return found


def _level_text(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def final_val(folder: Path) -> dict:
    """The last val row of a run's metrics.jsonl ({} when there is none)."""
    from yololab.engine.metrics_log import read_metrics

    path = folder / "metrics.jsonl"
    rows = [r for r in read_metrics(path) if r.get("split") == "val"] if path.is_file() else []
    return rows[-1] if rows else {}
