"""train(cfg): builds the data, model, callbacks and Lightning Trainer of a run and fits it.

A run folder (DESIGN.md): config.yaml, checkpoints/{last,best}.ckpt, tb/ (TensorBoard), metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from yololab.anchors import AnchorError, anchor_fit_report
from yololab.config import ConfigError, RunConfig, save_config
from yololab.data import DataError, DataSpec, load_data_yaml
from yololab.data.size_bins import SizeBins
from yololab.diagnostics.bn_check import BatchNormCheck
from yololab.diagnostics.callbacks import diagnostics_callbacks
from yololab.diagnostics.runfiles import HISTOGRAMS_FILE
from yololab.engine.checkpoint import (
    AtomicCheckpointIO,
    check_weights_fit,
    load_checkpoint_file,
    remove_stale_temporaries,
)
from yololab.engine.datamodule import YoloDataModule
from yololab.engine.epoch_time import EpochTimer
from yololab.engine.interrupt import InterruptWatch, stopped_error
from yololab.engine.metrics_log import MetricsJsonl, drop_rows_from, read_metrics, restore_rows
from yololab.engine.module import YoloModule
from yololab.engine.precise_bn import PreciseBatchNorm
from yololab.engine.progress import PlainProgress
from yololab.engine.quiet import quiet_lightning
from yololab.model import load_darknet_weights, net_section, parse_cfg
from yololab.model.build import read_cfg_text, resolve_cfg

BEST_METRIC = "val/mAP50"
VALIDATION_CACHE = Path(".cache") / "validation"  # under the project folder
TB_EVENTS_PREFIX = "events.out.tfevents."  # TensorBoard's event file names
MAX_LISTED_SKIPPED = 20  # skipped images named in the log (all of them go to skipped_images.txt)


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    metrics: list[dict]


class SaveConfigOnceStarted(L.Callback):
    """Writes a resumed run's config.yaml once its first epoch has finished and its checkpoint is written (first
    process only; placed after MetricsJsonl, which writes that checkpoint): new ``--set`` values are kept only
    once they have trained a whole epoch. A run they stop (a non-finite loss at any step of that epoch, a kill)
    resumes with the config.yaml it had, from the checkpoint that config made."""

    def __init__(self, cfg: RunConfig, path: Path):
        self.cfg, self.path, self.saved = cfg, path, False

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.saved and trainer.is_global_zero:
            save_config(self.cfg, self.path)
        self.saved = True


def _callbacks(cfg: RunConfig, progress: str, resume: bool) -> list[L.Callback]:
    ckpt_dir = cfg.run_dir / "checkpoints"
    # EMA swaps its weights in at the validation-epoch start; precise BN then estimates the statistics of the
    # weights validated, before the checkpoints below save them (engine/precise_bn.py).
    ema = [EMAWeightAveraging(decay=cfg.train.ema_decay)] if cfg.train.ema else []
    precise_bn = PreciseBatchNorm(cfg.train.precise_bn_batches) if cfg.train.precise_bn_batches else None
    timer = EpochTimer(cfg.run_dir / "metrics.jsonl", precise_bn)
    start, diagnostics_start, write_times = timer.callbacks()
    callbacks: list[L.Callback] = [
        InterruptWatch(),  # first: it records an interruption before any other callback's on_exception runs
        start, *ema, *([precise_bn] if precise_bn else []),
        *([BatchNormCheck()] if cfg.train.bn_check else []),
        # last.ckpt at every epoch end, whatever the validation schedule, written before the epoch's metrics
        # rows, the doctor and the report (MetricsJsonl saves it): a kill never leaves metrics ahead of it.
        MetricsJsonl(cfg.run_dir / "metrics.jsonl", checkpoint=ckpt_dir / "last.ckpt", resume=resume),
        ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=BEST_METRIC, mode="max", save_top_k=1,
                        enable_version_counter=False, auto_insert_metric_name=False),
        diagnostics_start,
        *diagnostics_callbacks(cfg.diagnostics, cfg.run_dir, cfg.doctor),
        write_times,
    ]
    if resume:
        callbacks.append(SaveConfigOnceStarted(cfg, cfg.run_dir / "config.yaml"))
    if progress == "rich":
        callbacks.append(RichProgressBar())
    elif progress == "plain":
        callbacks.append(PlainProgress())
    if cfg.train.patience is not None:
        callbacks.append(EarlyStopping(
            monitor=BEST_METRIC, mode="max", min_delta=cfg.train.min_delta,
            patience=math.ceil(cfg.train.patience / cfg.train.val_every),  # counted in validations, not epochs
            check_finite=False,  # mAP is NaN on a split without truths: that is not a reason to stop
            verbose=False))
    return callbacks


# Optional logger packages: the extra that installs each.
LOGGER_PACKAGES = {"mlflow": ("mlflow", "yololab[mlflow]"), "wandb": ("wandb", "yololab[wandb]")}


def _loggers(cfg: RunConfig, purge_step: int | None = None) -> list[Logger]:
    """The loggers of ``train.loggers``; every term and statistic the module logs goes to each of them."""
    import importlib.util

    tc, run_dir, out = cfg.train, cfg.run_dir, []
    for name in dict.fromkeys(tc.loggers):
        module, extra = LOGGER_PACKAGES.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.loggers includes {name}, but {module} is not installed: pip install '{extra}'")
        if name == "tensorboard":
            purge = {"purge_step": purge_step} if purge_step is not None else {}
            if purge_step is not None:
                _wait_for_a_later_event_file_name(run_dir / "tb")
            out.append(TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False,
                                         **purge))
        elif name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            out.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            uri = tc.mlflow_uri or (run_dir / "mlruns").resolve().as_uri()
            if tc.mlflow_uri is None:
                # MLflow 3 refuses its file store unless asked for it; the run folder's own store needs no server.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            out.append(MLFlowLogger(experiment_name=cfg.project, run_name=cfg.name, tracking_uri=uri))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(project=tc.wandb_project or cfg.project, name=cfg.name, save_dir=str(run_dir)))
    return out


def _wait_for_a_later_event_file_name(folder: Path) -> None:
    """TensorBoard reads a run's event files in name order, and a name starts with the second its file was
    made (``events.out.tfevents.SECONDS.host.pid.n``): the file of a resumed run, whose first event tells readers
    to drop the events logged past the checkpoint, must sort after those of the run it continues. Waits (under a
    second) when such a file was made in the current second."""
    seconds = [int(parts[3]) for p in folder.glob(f"{TB_EVENTS_PREFIX}*")
               if len(parts := p.name.split(".")) > 3 and parts[3].isdigit()]
    if seconds:
        time.sleep(max(0.0, max(seconds) + 1 - time.time()))


def _plugins(cfg: RunConfig) -> list:
    """Atomic checkpoint writes; the SLURM environment when asked for, or when requeueing is off and Lightning's
    own detection would pick SLURM (its SLURMEnvironment requeues by default). Lightning looks for torchrun
    before SLURM, so torchrun inside a SLURM allocation keeps its environment."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    plugins: list = [AtomicCheckpointIO()]
    tc = cfg.train
    detected_slurm = SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()
    if tc.cluster == "slurm" or (not tc.slurm_requeue and detected_slurm):
        plugins.append(SLURMEnvironment(auto_requeue=tc.slurm_requeue))
    return plugins


def max_time_seconds(max_time: str) -> float:
    """'DD:HH:MM:SS' (train.max_time) -> seconds."""
    days, hours, minutes, seconds = (int(part) for part in max_time.split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60.0 + seconds


def _check_time_left(cfg: RunConfig, resumed: dict, path: Path) -> None:
    """A resumed run whose checkpoint has used up train.max_time would stop before its first step: refused."""
    if cfg.train.max_time is None:
        return
    trained = resumed.get("callbacks", {}).get("Timer", {}).get("time_elapsed", {}).get("train")
    if trained is not None and trained >= max_time_seconds(cfg.train.max_time):
        raise ConfigError(f"{path}: the run has trained {trained:.0f} s, train.max_time {cfg.train.max_time} is "
                          "used up (it counts the whole run): resume with a larger --set train.max_time=DD:HH:MM:SS")


def make_trainer(cfg: RunConfig, progress: str = "none", extra: list[L.Callback] | None = None, resume: bool = False,
                 purge_step: int | None = None) -> L.Trainer:
    """The Lightning Trainer of a run: devices, nodes, precision, accumulation, clipping, time limit, loggers,
    callbacks (checkpoints, metrics, diagnostics, early stopping) and cluster environment. ``purge_step``: on a
    resume, TensorBoard drops the events logged at or past it."""
    tc = cfg.train
    return L.Trainer(
        default_root_dir=cfg.run_dir,
        max_epochs=tc.epochs,
        max_time=tc.max_time,
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        precision=tc.precision,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip,
        check_val_every_n_epoch=tc.val_every,
        logger=_loggers(cfg, purge_step),
        callbacks=[*_callbacks(cfg, progress, resume), *(extra or [])],
        plugins=_plugins(cfg),
        enable_progress_bar=progress != "none",
        log_every_n_steps=10,
        num_sanity_val_steps=1,
    )


def _net_size(cfg_name: str) -> int:
    """Square input size from a cfg's [net] width and height (they must agree for yololab's square inputs)."""
    net = net_section(parse_cfg(resolve_cfg(cfg_name)))
    width, height = int(net.get("width", 0)), int(net.get("height", 0))
    if width != height or width <= 0:
        raise net.error(f"width {width} and height {height}: set data.imgsz explicitly", "width")
    return width


def _list_skipped(skipped: list[tuple[Path, str]], path: Path) -> None:
    """The skip policy is explicit and counted: every skipped image and why, in the log and in a file."""
    if not skipped:
        return
    # surrogateescape: a file name that is not UTF-8 is written back as the bytes it has on disk.
    path.write_text("".join(f"{image}\t{reason}\n" for image, reason in skipped), errors="surrogateescape")
    shown = "\n".join(f"  {image}: {reason}" for image, reason in skipped[:MAX_LISTED_SKIPPED])
    more = f"\n  ... and {len(skipped) - MAX_LISTED_SKIPPED} more" if len(skipped) > MAX_LISTED_SKIPPED else ""
    rank_zero_warn(f"skipped {len(skipped)} bad images (data.skip_bad=true), all listed in {path}:\n{shown}{more}")


def _list_clipped(clipped: list[DataError], path: Path) -> None:
    """Boxes clipped to their image (data.boxes_outside=clip), like skipped images: counted, listed, in a file."""
    if not clipped:
        return
    path.write_text("".join(f"{note}\n" for note in clipped), errors="surrogateescape")
    shown = "\n".join(f"  {note}" for note in clipped[:MAX_LISTED_SKIPPED])
    more = f"\n  ... and {len(clipped) - MAX_LISTED_SKIPPED} more" if len(clipped) > MAX_LISTED_SKIPPED else ""
    rank_zero_warn(f"clipped {len(clipped)} boxes to their image (data.boxes_outside=clip), all listed in "
                   f"{path}:\n{shown}{more}")


def _anchor_fit(cfg: RunConfig, spec: DataSpec, module: YoloModule) -> dict | None:
    """How the configured anchors fit the training boxes (the doctor reads it); None when there is nothing
    to fit. ``spec`` is the validated dataset (bad images already left out under the skip policy)."""
    try:
        fit = anchor_fit_report(spec, module.model.anchors, module.model.strides, cfg.data.imgsz,
                                cfg.loss.anchor_t, cfg.data.boxes_outside)
    except AnchorError as err:  # e.g. a train split of background images only: report, do not stop
        rank_zero_info(f"anchor fit not computed: {err}")
        return None
    fit["data"] = str(cfg.data.data)
    return fit


def _write_anchor_fit(fit: dict | None, path: Path) -> None:
    if fit is None:
        return
    path.write_text(json.dumps(fit, indent=2))
    rank_zero_info(f"anchor fit: mean best IoU {fit['mean_best_iou']:.3f}, best possible recall "
                   f"{fit['bpr_iou50']:.3f} at IoU 0.5 and {fit['bpr_ratio']:.3f} at ratio < {fit['anchor_t']:g} "
                   f"({path})")


def make_module(cfg: RunConfig, names: list[str], size_bins: SizeBins | None = None) -> YoloModule:
    """A fresh YoloModule for ``cfg``, starting from darknet weights when the config names some; validation
    reports AP per ``size_bins`` (the dataset's, if it declares any)."""
    module = YoloModule(cfg.model_dump(mode="json"), read_cfg_text(cfg.model.cfg), names, size_bins)
    if cfg.model.weights:
        load_darknet_weights(module.model, cfg.model.weights)
    return module


def _say_early_stop(trainer: L.Trainer) -> None:
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.stopped_epoch > 0:
        rank_zero_info(f"early stopping after epoch {stopper.stopped_epoch}: {BEST_METRIC} did not improve on "
                       f"{float(stopper.best_score):.4f} for {stopper.wait_count} validations "
                       "(train.patience; best.ckpt holds the best epoch)")


def _check_input_size(cfg: RunConfig, module: YoloModule) -> None:
    stride = max(module.model.strides)
    if cfg.data.imgsz % stride:
        below, above = cfg.data.imgsz // stride * stride, (cfg.data.imgsz // stride + 1) * stride
        raise ConfigError(f"data.imgsz {cfg.data.imgsz} is not a multiple of the cfg's maximum stride {stride}: "
                          f"use {below or above} or {above}")


def _check_splits(spec: DataSpec) -> None:
    if "val" not in spec.splits:
        raise DataError(spec.yaml_path, None, "no 'val' split: training validates every epoch (add 'val: "
                                              "images/val', or make one with 'yololab data split')")


def _check_same_optimizer(resumed: dict, cfg: RunConfig, path: Path) -> None:
    """A resumed run goes on with the optimiser whose state its checkpoint holds (AdamW's moments are no SGD
    momentum): ConfigError when ``--set optim.optimizer`` asks for the other one."""
    saved = resumed.get("hyper_parameters", {}).get("config", {}).get("optim", {}).get("optimizer")
    if saved is not None and saved != cfg.optim.optimizer:
        raise ConfigError(f"{path} holds the optimiser state of optim.optimizer={saved}: a resumed run keeps it (drop "
                          f"--set optim.optimizer={cfg.optim.optimizer}, or start a new run)")


def _prepare_folder(cfg: RunConfig, resume: bool, skipped: list, clipped: list[DataError], fit: dict | None,
                    resumed: dict | None) -> None:
    """The run folder, written only once everything has been validated (first process only)."""
    run_dir = cfg.run_dir
    if not resume and (run_dir / "config.yaml").exists():
        shutil.rmtree(run_dir)  # --exist-ok (train() refuses a run folder otherwise)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(run_dir / "checkpoints"):
        rank_zero_info(f"removed {stale}, left by a checkpoint write that was killed")
    if resumed is not None:
        # Histograms past the checkpoint's epoch belong to an epoch that will run again (metrics.jsonl is put
        # in line by MetricsJsonl itself, from the rows the checkpoint holds).
        drop_rows_from(run_dir / HISTOGRAMS_FILE, resumed["epoch"] + 1)
    else:
        save_config(cfg, run_dir / "config.yaml")
    _list_skipped(skipped, run_dir / "skipped_images.txt")
    _list_clipped(clipped, run_dir / "clipped_boxes.txt")
    _write_anchor_fit(fit, run_dir / "anchor_fit.json")


def train(cfg: RunConfig, resume: bool = False, exist_ok: bool = False, progress: str = "rich",
          callbacks: list[L.Callback] | None = None) -> TrainResult:
    """Fit a run. ``resume`` continues from ``checkpoints/last.ckpt`` (weights, optimiser, schedule, epoch,
    EMA and callback state); ``exist_ok`` replaces an existing run folder; ``progress`` is rich, plain or
    none; ``callbacks`` are added after the run's own (a study's time limit and its reports to Ray Tune).
    Everything is validated before the run folder is touched. A run stopped by SIGINT, SIGTERM or a
    non-finite loss raises RunStopped (one line: what is kept and how to resume)."""
    run_dir = cfg.run_dir
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise FileNotFoundError(f"cannot resume: {last} does not exist")
    # Under DDP, Lightning re-runs this command in each extra process: only the first one prepares the folder.
    first_process = rank_zero_only.rank == 0
    if first_process and not resume and not exist_ok and (run_dir / "config.yaml").exists():
        raise FileExistsError(f"{run_dir} already holds a run: use --resume, --exist-ok or another --name")
    if cfg.data.data is None:
        raise ConfigError("no dataset: set data.data (the path of a data.yaml), e.g. --data my/data.yaml")

    quiet_lightning()
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    spec = load_data_yaml(cfg.data.data)  # read once: the data module takes it as it is
    _check_splits(spec)
    if cfg.data.imgsz is None:  # the cfg's [net] height decides
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"imgsz": _net_size(cfg.model.cfg)})})
    module = make_module(cfg, spec.names, spec.size_bins)
    _check_input_size(cfg, module)
    resumed = load_checkpoint_file(last) if resume else None
    if resumed is not None:
        check_weights_fit(resumed, module, last)
        _check_same_optimizer(resumed, cfg, last)
        _check_time_left(cfg, resumed, last)
    # One input of the run's size: Lightning's model summary counts the FLOPs of a forward pass on it.
    module.example_input_array = torch.zeros(1, module.model.channels, cfg.data.imgsz, cfg.data.imgsz)
    # The cfg's [net] channels decide how images are read (1 for single-channel detector images).
    data = YoloDataModule(spec, cfg.data.imgsz, cfg.data.batch, cfg.data.workers,
                          channels=module.model.channels, seed=cfg.train.seed, augment=cfg.data.augment,
                          boxes_outside=cfg.data.boxes_outside)
    cache_dir = Path(cfg.project) / VALIDATION_CACHE if cfg.data.validation_cache else None
    clipped: list[DataError] = []
    lines, skipped = data.validate(cache_dir=cache_dir, skip_bad=cfg.data.skip_bad, clipped=clipped)
    for line in lines:
        rank_zero_info(line)
    if first_process:
        _prepare_folder(cfg, resume, skipped, clipped, _anchor_fit(cfg, data.spec, module), resumed)

    # TensorBoard drops the events a killed run logged past the checkpoint, so a repeated epoch is not drawn twice.
    purge_step = resumed["global_step"] if resumed is not None else None
    trainer = make_trainer(cfg, progress, callbacks, resume=resume, purge_step=purge_step)
    _fit(trainer, module, data, last if resume else None, trainer.callbacks, resumed)
    if resumed is not None and resumed["epoch"] + 1 >= cfg.train.epochs and first_process:
        _catch_up_finished(cfg, resumed)
    _say_early_stop(trainer)
    best = run_dir / "checkpoints" / "best.ckpt"
    metrics_path = run_dir / "metrics.jsonl"
    return TrainResult(run_dir, best if best.exists() else None, last,
                       read_metrics(metrics_path) if metrics_path.exists() else [])


def _catch_up_finished(cfg: RunConfig, resumed: dict) -> None:
    """A run stopped after the checkpoint of its last epoch but before that epoch's rows, findings or report
    were written: Lightning has nothing left to train and calls no epoch hook, so they are brought up to date
    here from the checkpoint."""
    from yololab.diagnostics.doctor import diagnose_run
    from yololab.diagnostics.report import write_report

    state = resumed.get("callbacks", {}).get(MetricsJsonl.__qualname__, {})
    restore_rows(cfg.run_dir / "metrics.jsonl", list(state.get("epoch_rows", [])), resumed["epoch"] + 1,
                 state.get("lr_row"))
    if cfg.diagnostics.doctor:
        diagnose_run(cfg.run_dir, cfg.doctor)
    if cfg.diagnostics.report:
        write_report(cfg.run_dir)


def _fit(trainer: L.Trainer, module: YoloModule, data: YoloDataModule, ckpt: Path | None,
         callbacks: list[L.Callback], resumed: dict | None) -> None:
    """``trainer.fit``; an interruption or a non-finite loss becomes one RunStopped line."""
    watch = next(c for c in callbacks if isinstance(c, InterruptWatch))
    metrics = next(c for c in callbacks if isinstance(c, MetricsJsonl))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    except (Exception, KeyboardInterrupt, SystemExit) as err:
        watch.on_uncaught(trainer, err)
        if watch.stop is None:
            raise
        saved = metrics.saved_epochs or (resumed["epoch"] + 1 if resumed is not None else 0)
        if saved == 0 and trainer.is_global_zero:
            shutil.rmtree(module.cfg.run_dir, ignore_errors=True)  # a new run with nothing to resume: as if never run
        raise stopped_error(watch.stop, module.cfg.run_dir, saved) from err
