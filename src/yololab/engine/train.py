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
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor

from yololab.anchors import (
    APPLIED,
    KMEANS_SUMMARY,
    NO_KMEANS,
    NOT_BETTER,
    OFF,
    PINNED,
    AnchorError,
    BoxSet,
    autoanchor,
    collect_boxes,
)
from yololab.config import ConfigError, RunConfig, save_config
from yololab.data import DataError, DataSpec, load_data_yaml
from yololab.data.size_bins import SizeBins
from yololab.diagnostics.bn_check import BatchNormCheck
from yololab.diagnostics.callbacks import diagnostics_callbacks
from yololab.diagnostics.runfiles import HISTOGRAMS_FILE
from yololab.engine.checkpoint import (
    RUN_CFG,
    AtomicCheckpointIO,
    CheckpointError,
    check_weights_fit,
    load_checkpoint_file,
    remove_stale_temporaries,
)
from yololab.engine.datamodule import YoloDataModule
from yololab.engine.ema import LerpEMA
from yololab.engine.epoch_time import EpochTimer
from yololab.engine.freeze import FreezeSchedule
from yololab.engine.interrupt import InterruptWatch, stopped_error
from yololab.engine.metrics_log import MetricsJsonl, drop_rows_from, read_metrics, restore_rows
from yololab.engine.module import YoloModule
from yololab.engine.precise_bn import PreciseBatchNorm
from yololab.engine.progress import PlainProgress
from yololab.engine.quiet import quiet_lightning
from yololab.engine.transfer import load_start_weights
from yololab.model import net_section, parse_cfg
from yololab.model.build import read_cfg_text, resolve_cfg
from yololab.model.darknet import yolo_anchors
from yololab.model.freeze import FreezeError, frozen_layer_count
from yololab.model.priors import label_priors
from yololab.recipes import suggest_recipe

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
    ema = [LerpEMA(cfg.train.ema_decay)] if cfg.train.ema else []  # a frozen layer's average stays its value
    freeze = [FreezeSchedule(cfg.train.freeze, cfg.train.unfreeze_epoch)] if cfg.train.freeze is not None else []
    precise_bn = PreciseBatchNorm(cfg.train.precise_bn_batches) if cfg.train.precise_bn_batches else None
    timer = EpochTimer(cfg.run_dir / "metrics.jsonl", precise_bn)
    start, diagnostics_start, write_times = timer.callbacks()
    callbacks: list[L.Callback] = [
        InterruptWatch(),  # first: it records an interruption before any other callback's on_exception runs
        *freeze, start, *ema, *([precise_bn] if precise_bn else []),
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


def _cfg_text(cfg: RunConfig) -> str:
    """The cfg text of the run: the cfg file with ``model.anchors`` written in when given (so that the text a
    checkpoint stores builds the model it holds)."""
    try:
        return read_cfg_text(cfg.model.cfg, cfg.model.anchors)
    except ValueError as err:
        raise ConfigError(f"model.anchors do not fit {cfg.model.cfg}: {err}") from None


def make_module(cfg: RunConfig, names: list[str], head_priors: dict[str, list[float]] | None = None,
                start_weights: bool = True, size_bins: SizeBins | None = None) -> YoloModule:
    """A fresh YoloModule for ``cfg`` (with ``model.anchors`` when given), starting from ``model.weights`` when the
    config names some and ``start_weights`` (a resumed run takes its weights from its checkpoint instead): one info
    line says what was loaded and what re-initialised (engine/transfer.py). ``head_priors``
    (``label_priors(...).as_dict()``) for ``model.head_prior=labels``; heads re-initialised because the weights
    have another class count get the same priors. Validation reports AP per ``size_bins`` (the dataset's, if it
    declares any)."""
    module = YoloModule(cfg.model_dump(mode="json"), _cfg_text(cfg), names, head_priors, size_bins)
    if cfg.model.weights and start_weights:
        rank_zero_info(load_start_weights(module.model, cfg.model.weights))
    return module


def _check_freeze(cfg: RunConfig, module: YoloModule) -> None:
    """train.freeze must name layers of the cfg and leave a head to train: one-line ConfigError otherwise."""
    try:
        frozen_layer_count(module.model, cfg.train.freeze)
    except FreezeError as err:
        raise ConfigError(str(err)) from None


def _probe_module(cfg: RunConfig, names: list[str]) -> YoloModule:
    """The run's module on the meta device, for its geometry (channels, strides, cfg anchors) and weight shapes
    before the data is validated: no memory, no random draws, no weights read. Head priors and darknet weights
    are left to the module that trains."""
    model = cfg.model.model_copy(update={"weights": None, "head_prior": "none"})
    config, text = cfg.model_copy(update={"model": model}).model_dump(mode="json"), _cfg_text(cfg)
    with torch.device("meta"):
        return YoloModule(config, text, names)


def _resumed_anchors(cfg: RunConfig, resumed: dict, path: Path) -> RunConfig:
    """A resumed run trains with the anchors its checkpoint was made with (``model.anchors`` of its config, e.g.
    the ones autoanchor fitted), never re-fitted: taken from the checkpoint when ``cfg`` gives none; ConfigError
    when ``cfg`` gives others; CheckpointError for another cfg."""
    model = resumed.get("hyper_parameters", {}).get("config", {}).get("model", {})
    saved = model.get("anchors")
    if model.get("cfg") != cfg.model.cfg:
        raise CheckpointError(path, None, f"{RUN_CFG}: model.cfg {model.get('cfg')}, not {cfg.model.cfg} (a resumed "
                                          "run keeps its cfg: start a new run, e.g. with --set model.weights=RUN)")
    if cfg.model.anchors is None:
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"anchors": saved})})
    if cfg.model.anchors != saved:
        raise ConfigError(f"{path} was trained with model.anchors={saved}: a resumed run keeps its anchors (drop "
                          "--set model.anchors, or start a new run)")
    return cfg


def _anchors_and_priors(cfg: RunConfig, spec: DataSpec, probe: YoloModule,
                        resumed: dict | None) -> tuple[RunConfig, dict | None, dict | None]:
    """What a run reads from its training boxes, read once from the validated dataset ``spec``: for a new run,
    autoanchor's decision (``cfg`` gains ``model.anchors`` when it applies a fit) and the anchor fit of
    anchor_fit.json; with ``model.head_prior=labels``, the head priors (of the anchors trained with). Returns
    (cfg, anchor fit or None, head priors or None). A resumed run keeps its anchors (no fit) and the priors its
    checkpoint holds."""
    labels = cfg.model.head_prior == "labels"
    stored = resumed.get("hyper_parameters", {}).get("head_priors") if resumed is not None else None
    if resumed is not None and (not labels or stored is not None):
        return cfg, None, stored if labels else None
    boxes = collect_boxes(spec, "train", cfg.data.imgsz, cfg.data.boxes_outside)
    anchors = [torch.as_tensor(a) for a in yolo_anchors(probe.model.sections)]
    fit = None
    if resumed is None:
        cfg, fit, anchors = _autoanchor(cfg, boxes, anchors, probe.model.strides)
        _say_recipe(cfg, boxes)
    priors = None
    if labels:
        priors = label_priors(boxes.wh, boxes.classes, boxes.n_images, anchors, probe.model.strides,
                              cfg.data.imgsz, len(spec.names)).as_dict()
    return cfg, fit, priors


def _say_recipe(cfg: RunConfig, boxes: BoxSet) -> None:
    """One line when the training boxes look like the data a recipe other than the run's was measured on."""
    if not len(boxes.wh):
        return
    found = suggest_recipe(boxes.wh.max(dim=1).values, cfg.recipe)
    if found is not None:
        rank_zero_info(f"{found.reason}: --recipe {found.recipe.name} was measured better on such data "
                       f"({found.recipe.data}; {found.recipe.measured}); this run uses "
                       f"{'recipe ' + cfg.recipe if cfg.recipe else 'the defaults'}")


def _autoanchor(cfg: RunConfig, boxes: BoxSet, anchors: list[Tensor],
                strides: list[int]) -> tuple[RunConfig, dict | None, list[Tensor]]:
    """Autoanchor on the training boxes -> (cfg, the anchor_fit.json dict or None, the anchors to train with)."""
    mc = cfg.model
    try:
        result = autoanchor(boxes.wh, anchors, strides, cfg.loss.anchor_t, mc.autoanchor_bpr,
                            iou_threshold=mc.autoanchor_bpr_iou50, enabled=mc.autoanchor, pinned=mc.anchors is not None,
                            seed=cfg.train.seed)
    except AnchorError as err:  # e.g. a train split of background images only: report, do not stop
        rank_zero_info(f"anchor fit not computed: {err}")
        return cfg, None, anchors
    if result.applied:
        cfg = cfg.model_copy(update={"model": mc.model_copy(update={"anchors": [a.tolist() for a in result.anchors]})})
    fit = {"data": str(cfg.data.data), "split": "train", "img_size": int(cfg.data.imgsz), **result.fit}
    if result.fitted is not None:
        fit["kmeans"] = {key: result.fitted[key] for key in KMEANS_SUMMARY}
    fit["autoanchor"] = result.record()
    return cfg, fit, result.anchors


def _write_anchor_fit(fit: dict | None, path: Path) -> None:
    """anchor_fit.json and one line: the fit, or what autoanchor did and why."""
    if fit is None:
        return
    path.write_text(json.dumps(fit, indent=2))
    rank_zero_info(_anchor_line(fit, path))


def _anchor_line(fit: dict, path: Path) -> str:
    auto, t = fit["autoanchor"], fit["anchor_t"]
    old, new = auto["configured"], auto["fitted"]

    def numbers(of: dict) -> str:
        return (f"best possible recall {of['bpr_ratio']:.3f} (ratio < {t:g}) and {of['bpr_iou50']:.3f} (IoU > 0.5), "
                f"mean best IoU {of['mean_best_iou']:.3f}")

    which = "the anchors of model.anchors" if auto["pinned"] else "the cfg's anchors"
    limits = (f"model.autoanchor_bpr={auto['threshold']:g}, model.autoanchor_bpr_iou50="
              f"{auto.get('iou_threshold', 0.0):g}")
    poor = f"{which} fit the training boxes poorly ({numbers(old)}; limits {limits})"
    if auto["reason"] == APPLIED:
        return (f"autoanchor: k-means anchors replace the cfg's: best possible recall {old['bpr_ratio']:.3f} -> "
                f"{new['bpr_ratio']:.3f} (ratio < {t:g}) and {old['bpr_iou50']:.3f} -> {new['bpr_iou50']:.3f} "
                f"(IoU > 0.5), mean best IoU {old['mean_best_iou']:.3f} -> {new['mean_best_iou']:.3f}; config.yaml "
                f"holds them as model.anchors ({path})")
    if auto["reason"] == PINNED:
        return (f"anchor fit: {poor}; k-means anchors would reach {numbers(new)}: kept as given; drop model.anchors "
                f"to let yololab fit them ({path})")
    if auto["reason"] == OFF:
        return (f"anchor fit: {poor}; k-means anchors would reach {numbers(new)}: kept, as model.autoanchor is "
                f"false; --set model.autoanchor=true to let yololab fit them ({path})")
    if auto["reason"] == NOT_BETTER:
        return f"anchor fit: {poor}; k-means anchors do no better ({numbers(new)}): kept ({path})"
    if auto["reason"] == NO_KMEANS:
        return f"anchor fit: {poor}; k-means could not run ({auto['kmeans_error']}): kept ({path})"
    return (f"anchor fit: mean best IoU {fit['mean_best_iou']:.3f}, best possible recall {fit['bpr_iou50']:.3f} at "
            f"IoU 0.5 and {fit['bpr_ratio']:.3f} at ratio < {t:g} ({path})")


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
    spec = load_data_yaml(cfg.data.data)  # read once: the data module takes it as it is
    _check_splits(spec)
    if cfg.data.imgsz is None:  # the cfg's [net] height decides
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"imgsz": _net_size(cfg.model.cfg)})})
    resumed = load_checkpoint_file(last) if resume else None
    if resumed is not None:
        cfg = _resumed_anchors(cfg, resumed, last)
    probe = _probe_module(cfg, spec.names)
    _check_input_size(cfg, probe)
    _check_freeze(cfg, probe)
    if resumed is not None:
        check_weights_fit(resumed, probe, last)
        _check_same_optimizer(resumed, cfg, last)
        _check_time_left(cfg, resumed, last)
    # The cfg's [net] channels decide how images are read (1 for single-channel detector images).
    data = YoloDataModule(spec, cfg.data.imgsz, cfg.data.batch, cfg.data.workers,
                          channels=probe.model.channels, seed=cfg.train.seed, augment=cfg.data.augment,
                          boxes_outside=cfg.data.boxes_outside)
    cache_dir = Path(cfg.project) / VALIDATION_CACHE if cfg.data.validation_cache else None
    clipped: list[DataError] = []
    lines, skipped = data.validate(cache_dir=cache_dir, skip_bad=cfg.data.skip_bad, clipped=clipped)
    for line in lines:
        rank_zero_info(line)
    cfg, fit, head_priors = _anchors_and_priors(cfg, data.spec, probe, resumed)
    # Seeded right before the weights are drawn: the same seed and config give the same weights, whatever the
    # validation and autoanchor did before.
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    module = make_module(cfg, spec.names, head_priors, start_weights=not resume, size_bins=spec.size_bins)
    # One input of the run's size: Lightning's model summary counts the FLOPs of a forward pass on it.
    module.example_input_array = torch.zeros(1, module.model.channels, cfg.data.imgsz, cfg.data.imgsz)
    if first_process:
        _prepare_folder(cfg, resume, skipped, clipped, fit, resumed)

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
