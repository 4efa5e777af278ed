"""The Trainer yololab builds: cluster settings reach Lightning (simulated 2-node SLURM allocation), loggers
(MLflow's local file store read back, CSV), and early stopping on val mAP50."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from run_fixtures import untrained_run
from yololab.config import ConfigError, build_config
from yololab.data import make_digits
from yololab.engine.train import make_trainer, max_time_seconds, train

SMALL = ["data.imgsz=128", "data.batch=4", "data.workers=0", "model.cfg=yolov3-tiny-3l-small"]
# What `srun` exports on the first task of `sbatch --nodes=2 --ntasks-per-node=1`: the variables Lightning's
# SLURMEnvironment reads (ranks, node list, task counts, job id and name).
SLURM_TWO_NODES = {
    "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_NODEID": "0",
    "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "yololab",
    "SLURM_NODELIST": "gpu[07-08]",
}


def _cfg(tmp_path: Path, *overrides: str, data: str | None = None):
    return build_config({"project": str(tmp_path), "name": "run", "data": {"data": data}}, [*SMALL, *overrides])


@pytest.fixture
def slurm_two_nodes(monkeypatch):
    for key in ("SLURM_JOB_NAME", "LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in SLURM_TWO_NODES.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("cluster", ["auto", "slurm"])
def test_two_node_slurm_allocation_builds_a_trainer(slurm_two_nodes, tmp_path, cluster):
    cfg = _cfg(tmp_path, "train.num_nodes=2", "train.devices=1", "train.strategy=ddp", "train.accelerator=cpu",
               f"train.cluster={cluster}", "train.accumulate_grad_batches=4", "optim.grad_clip=5.0",
               "train.max_time='00:11:30:00'")
    trainer = make_trainer(cfg)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert (trainer.num_nodes, trainer.world_size, trainer.global_rank) == (2, 2, 0)
    assert environment.main_address == "gpu07" and environment.world_size() == 2
    # what Lightning's launcher checks when fit() starts the processes: no refusal
    environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    assert trainer.accumulate_grad_batches == 4 and trainer.gradient_clip_val == 5.0
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    assert timer._duration == timedelta(hours=11, minutes=30).total_seconds()


def test_without_num_nodes_lightning_refuses_the_same_allocation(slurm_two_nodes, tmp_path):
    """The refusal the config used to run into: the SLURM variables are read, and 1 node != --nodes=2."""
    cfg = _cfg(tmp_path, "train.devices=1", "train.strategy=ddp", "train.accelerator=cpu")
    trainer = make_trainer(cfg)
    with pytest.raises(ValueError, match="num_nodes=1"):  # checked by the launcher when fit() starts
        trainer.strategy.cluster_environment.validate_settings(num_devices=trainer.num_devices,
                                                               num_nodes=trainer.num_nodes)


@pytest.mark.parametrize("cluster", ["auto", "slurm"])
@pytest.mark.parametrize("requeue", [True, False])
def test_slurm_requeue_reaches_the_environment_whatever_the_cluster_setting(slurm_two_nodes, tmp_path, cluster,
                                                                           requeue):
    # under auto, Lightning's own detected SLURMEnvironment requeues (its default): false must still turn it off
    cfg = _cfg(tmp_path, "train.num_nodes=2", "train.strategy=ddp", "train.accelerator=cpu",
               f"train.cluster={cluster}", f"train.slurm_requeue={str(requeue).lower()}")
    environment = make_trainer(cfg).strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is requeue


def test_torchrun_inside_a_slurm_allocation_keeps_its_environment(slurm_two_nodes, monkeypatch, tmp_path):
    # what torchrun --nproc_per_node=2 exports to its first process (Lightning looks for it before SLURM)
    for key, value in {"TORCHELASTIC_RUN_ID": "r1", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0",
                       "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    cfg = _cfg(tmp_path, "train.devices=2", "train.strategy=ddp", "train.accelerator=cpu",
               "train.slurm_requeue=false")
    trainer = make_trainer(cfg)
    assert isinstance(trainer.strategy.cluster_environment, TorchElasticEnvironment)
    assert trainer.world_size == 2


def test_max_time_format_is_checked_when_the_config_is_built(tmp_path):
    assert max_time_seconds("01:02:03:04") == ((1 * 24 + 2) * 60 + 3) * 60 + 4
    with pytest.raises(ConfigError, match=r"train\.max_time"):
        _cfg(tmp_path, "train.max_time='11:30:00'")  # hours, minutes, seconds without the days


def test_resume_with_max_time_used_up_is_refused(tmp_path):
    """Lightning's Timer is restored from the checkpoint with the training time it holds; a run resumed with a
    max_time it has already used would stop before its first step."""
    import torch

    data = make_digits(tmp_path / "digits", tiny=True, seed=1)
    run = untrained_run(data, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    timer = Timer(duration="00:00:02:00")
    timer._offset = 150.0  # what load_state_dict sets: 150 s trained before
    checkpoint["callbacks"] = {timer.state_key: timer.state_dict()}
    torch.save(checkpoint, last)
    cfg = _cfg(tmp_path, "train.max_time='00:00:02:00'", data=str(data))
    with pytest.raises(ConfigError, match=r"last\.ckpt: the run has trained 150 s, train\.max_time 00:00:02:00 is "
                                          r"used up"):
        train(cfg, resume=True, progress="none")


def test_missing_logger_package_is_a_clear_config_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match=r"wandb is not installed: pip install 'yololab\[wandb\]'"):
        make_trainer(_cfg(tmp_path, "train.loggers=[tensorboard, wandb]"))


def test_early_stopping_default_is_documented_and_off_switch_works(tmp_path):
    stopper = next(c for c in make_trainer(_cfg(tmp_path)).callbacks if isinstance(c, EarlyStopping))
    assert stopper.patience == 50 and stopper.monitor == "val/mAP50" and stopper.mode == "max"
    # patience is in epochs; Lightning counts validations
    stopper = next(c for c in make_trainer(_cfg(tmp_path, "train.val_every=4")).callbacks
                   if isinstance(c, EarlyStopping))
    assert stopper.patience == 13
    assert not any(isinstance(c, EarlyStopping) for c in make_trainer(_cfg(tmp_path, "train.patience=null")).callbacks)


def test_early_stop_and_mlflow_csv_loggers_on_a_tiny_run(tmp_path):
    """min_delta 0.5 cannot be reached in two epochs, so patience 1 stops the run after epoch 1 of 5; every
    logged value reaches MLflow's file store and the CSV file, equal to what metrics.jsonl holds."""
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny comes with the dev extra: pip install -e '.[dev]'")
    data = make_digits(tmp_path / "digits", tiny=True, seed=1)
    cfg = _cfg(tmp_path, "train.epochs=5", "train.patience=1", "train.min_delta=0.5",
               "train.loggers=[tensorboard, csv, mlflow]", "diagnostics.histograms=false", "diagnostics.report=false",
               "diagnostics.doctor=false", "train.precise_bn_batches=0", data=str(data))
    result = train(cfg, progress="none")
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in rows] == [(0, "train"), (0, "val"), (1, "train"), (1, "val")]

    client = mlflow.tracking.MlflowClient((result.run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == str(tmp_path)]
    (run,) = client.search_runs([experiment.experiment_id])
    val = [r for r in rows if r["split"] == "val"]
    for key in ("loss/total", "loss/obj/s0", "loss/noobj/s2", "stat/iou_prior/s1", "mAP50"):
        history = sorted(client.get_metric_history(run.info.run_id, f"val/{key}"), key=lambda m: m.step)
        assert [m.value for m in history] == pytest.approx([r[key] for r in val], rel=1e-5), key
    logged = set(run.data.metrics)
    for row in rows:  # every term and statistic of every split
        prefix = row["split"] + "/"
        wanted = {prefix + k for k, v in row.items() if k.startswith(("loss/", "stat/")) and v is not None}
        assert wanted <= logged, sorted(wanted - logged)[:5]

    with (result.run_dir / "csv" / "metrics.csv").open() as handle:
        csv_rows = [r for r in csv.DictReader(handle) if r.get("val/mAP50")]
    assert [float(r["val/mAP50"]) for r in csv_rows] == pytest.approx([r["mAP50"] for r in val])
