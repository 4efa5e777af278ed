"""Typed run configuration: pydantic models (unknown keys are errors), YAML in/out, ``--set`` overrides.

The resolved ``RunConfig`` is written beside every run as ``config.yaml`` and is enough to repeat it. Its loss
section is recorded twice, so that the preset a run names and the loss it trained cannot disagree: ``loss`` (every
field) and ``preset`` + ``loss_overrides`` (the fields where ``loss`` differs from the preset). Starting from a
config with another preset (``train --config RUN/config.yaml --preset P``, ``--set preset=P``, a study level)
trains P with the overrides on top.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from yololab.data.augment_config import AugmentConfig
from yololab.diagnostics.config import DiagnosticsConfig
from yololab.diagnostics.doctor import DoctorConfig
from yololab.loss.config import LossConfig
from yololab.loss.presets import PRESETS, preset
from yololab.recipes import RECIPES, recipe

# The preset the studies measured best (docs/loss.md, "Why tf2-yolov3 is the default"): presets.yaml on the digits
# and photo-presets.yaml on photo-like images, 3 seeds each.
DEFAULT_PRESET = "tf2-yolov3"
LOSS_OVERRIDES = "loss_overrides"  # the RunConfig field: "loss.FIELD" -> value where loss differs from the preset
LOSS_PREFIX = "loss."


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, unreadable file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """The dataset and how it is read."""

    data: str | None = Field(None, description="Path of the dataset's data.yaml (ultralytics convention).")
    imgsz: int | None = Field(
        None, gt=0, description="Square network input size in pixels (multiple of the max stride); None = the "
        "cfg's [net] width/height.",
    )
    batch: int = Field(16, gt=0, description="Images per batch (per process under DDP).")
    workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    skip_bad: bool = Field(False, description="Train on the good images when some are bad, listing every "
                           "skipped one; by default any bad image or label stops the run before training.")
    boxes_outside: Literal["refuse", "clip"] = Field(
        "refuse", description="A box partly outside its image: refuse the label line (the default), or clip it "
        "to the image as darknet and ultralytics do; clipped boxes are counted and listed in clipped_boxes.txt.")
    validation_cache: bool = Field(True, description="Reuse the validation of an unchanged dataset "
                                   "(keyed by file paths, sizes, mtimes and label contents).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
                                   description="Training-split augmentation (albumentations; data/augment.py).")


# ultralytics' check_anchors (utils/autoanchor.py) re-fits the anchors when their best possible recall under
# the size-ratio rule is below 0.98.
AUTOANCHOR_BPR = 0.98
AUTOANCHOR_BPR_IOU50 = 0.8  # the doctor's min_bpr_iou50: anchors it would call poor are re-fitted


class ModelConfig(_Strict):
    """The network."""

    cfg: str = Field("yolov3-tiny-3l-small", description="darknet cfg: a path, or the name of a packaged cfg.")
    weights: str | None = Field(
        None, description="Weights a new run starts from: a darknet .weights file (or a prefix such as "
        "darknet53.conv.74), a yololab checkpoint (.ckpt), or a run folder (its best.ckpt, else last.ckpt). Taken "
        "where the layers match: heads of another class count are re-initialised, a 3-channel first convolution "
        "is summed over RGB for a 1-channel cfg; a checkpoint of another cfg gives the layers both cfgs begin with "
        "(e.g. yolov3-tiny-4l-small from a yolov3-tiny-3l-small run), the rest keep their initialisation; any other "
        "difference is an error. Weights only: the optimiser, "
        "epoch and schedule start anew (--resume continues a run).")
    anchors: list[list[list[float]]] | None = Field(
        None, description="Anchors in network-input pixels, one list of [w, h] pairs per [yolo] layer in cfg order, "
        "e.g. [[[81,82],[135,169],[344,319]],[[10,14],[23,27],[37,58]]]; None = the cfg's. Given, they are "
        "used as they are (autoanchor never replaces them); a run whose anchors autoanchor fitted records them "
        "here, so its config.yaml repeats it.")
    autoanchor: bool = Field(
        True, description="At the start of a new run, when the anchors' best possible recall on the training boxes "
        "(share of boxes with an anchor within a size ratio of loss.anchor_t) is below model.autoanchor_bpr, or "
        "the share of boxes whose best anchor has shape IoU > 0.5 is below model.autoanchor_bpr_iou50, fit "
        "k-means anchors (1 - IoU, seeded by train.seed) and train with them if they fit better (ultralytics' "
        "autoanchor). Never with model.anchors given, never on a resume; anchor_fit.json records what was done.")
    autoanchor_bpr: float = Field(
        AUTOANCHOR_BPR, ge=0, le=1, description="Best possible recall below which autoanchor fits anchors "
        "(ultralytics' check_anchors threshold, 0.98).")
    autoanchor_bpr_iou50: float = Field(
        AUTOANCHOR_BPR_IOU50, ge=0, le=1, description="Share of the training boxes whose best anchor has shape IoU "
        "> 0.5 below which autoanchor also fits anchors (the doctor's doctor.min_bpr_iou50 has the same default, "
        "so a run with autoanchor on is not told its anchors fit poorly when k-means fits better); 0 = the "
        "size-ratio rule alone, as ultralytics.")
    head_prior: Literal["labels", "ultralytics", "none"] = Field(
        "ultralytics", description="Initial objectness and class biases of a new model's heads (model/priors.py): "
        "ultralytics = YOLOv5's constants (objectness log(8 / (640 / stride)^2), classes "
        "log(0.6 / (classes - 0.99))); labels = measured on the training labels (per scale logit of the share of "
        "predictions responsible for a box, per class logit of its share of the boxes); none = zero biases "
        "(darknet's, objectness 0.5 everywhere).")

    @field_validator("anchors")
    @classmethod
    def _positive_pairs(cls, anchors: list[list[list[float]]] | None) -> list[list[list[float]]] | None:
        if anchors is None:
            return None
        if not anchors or any(not scale for scale in anchors):
            raise ValueError("model.anchors needs at least one [w, h] pair per [yolo] layer")
        for s, scale in enumerate(anchors):
            for pair in scale:
                if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
                    raise ValueError(f"model.anchors: scale {s} holds {pair}, not a positive [w, h] pair")
        return anchors


class OptimConfig(_Strict):
    """Optimiser and learning-rate schedule (linear warm-up, then cosine)."""

    optimizer: Literal["sgd", "adamw"] = Field("adamw", description="Optimiser: SGD with Nesterov momentum or "
                                               "AdamW.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate, reached at the end of warm-up.")
    momentum: float = Field(0.937, description="SGD momentum / AdamW beta1 (ultralytics' 0.937).")
    weight_decay: float = Field(5e-4, ge=0, description="Applied to conv weights only, not biases or BN.")
    warmup_epochs: float = Field(1.0, ge=0, description="Linear LR warm-up length in epochs.")
    final_lr_fraction: float = Field(0.05, ge=0, le=1, description="Cosine schedule ends at lr * this.")
    grad_clip: float | None = Field(10.0, description="Gradient norm clipping (None disables).")


class TrainConfig(_Strict):
    """The training loop (Lightning Trainer) and the evaluation it runs."""

    epochs: int = Field(30, gt=0, description="Epochs to train (`yololab train --epochs`).")
    seed: int = Field(0, description="Seed of weights, data order and augmentation: same seed, same run.")
    freeze: Literal["backbone"] | StrictInt | None = Field(
        None, description="Freeze the first layers (transfer learning from model.weights): `backbone`, or N for "
        "darknet layers 0..N-1 (N >= 1). The backbone ends at the last [shortcut] before the first [yolo] (darknet-53: "
        "layers 0-74), or without one at the last [maxpool] before it (tiny cfgs: 0-11) (model/freeze.py). "
        "Frozen layers get no gradient, update or weight decay, and their batch norms stay in eval mode: running "
        "statistics frozen, also by precise BN.")
    unfreeze_epoch: int | None = Field(None, gt=0, description="Unfreeze the train.freeze layers at the start of "
                                       "this epoch (0-based); None keeps them frozen. One process only (not DDP).")
    ema: bool = Field(False, description="Keep an exponential moving average of the weights for evaluation.")
    ema_decay: float = Field(0.999, gt=0, lt=1, description="Decay of that average per optimiser step.")
    precision: str = Field("32-true", description="Lightning precision: 32-true, bf16-mixed, 16-mixed.")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu.")
    devices: int | str = Field(1, description="Devices (processes) per node; >1 uses DDP.")
    strategy: str = Field("auto", description="Lightning strategy (auto, ddp, ddp_spawn...).")
    conf_thres: float = Field(0.001, description="Score threshold for mAP evaluation (COCO practice).")
    iou_thres: float = Field(0.6, description="NMS IoU threshold.")
    max_det: int = Field(100, description="Detections kept per image (COCO's maxDets).")
    val_every: int = Field(1, gt=0, description="Validate every N epochs.")
    threads: int | None = Field(None, gt=0, description="CPU threads of torch's operators in the training "
                                "process (torch.set_num_threads); None keeps torch's default (one per physical core). "
                                "DataLoader workers use one each.")
    precise_bn_batches: int = Field(
        8, ge=0, description="Before each validation, re-estimate batch-norm running statistics over up to this "
        "many un-augmented training batches, without gradients (precise BN; engine/precise_bn.py). The "
        "checkpoints then hold the statistics validation used. 0 keeps the running averages, which lag the "
        "weights when an epoch has few steps (docs/diagnostics.md, 'Batch-norm statistics').")
    bn_check: bool = Field(True, description="On the first validation batch, the loss with the running batch-norm "
                           "statistics and with that batch's own statistics (val/bn_check/*): the doctor's "
                           "stale_batch_norm rule reads them.")
    # Beyond one machine (docs/clusters.md): these reach Lightning's Trainer as they are.
    num_nodes: int = Field(1, gt=0, description="Machines (nodes) the run spans; under SLURM it must equal --nodes.")
    accumulate_grad_batches: int = Field(1, gt=0, description="Optimiser step every N batches (a larger "
                                         "effective batch on small GPUs).")
    max_time: str | None = Field(None, pattern=r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$", description="Stop after this much "
                                 "wall time of training (validation included), 'DD:HH:MM:SS' (e.g. '00:11:30:00' "
                                 "for a run that must end inside one 12-hour SLURM slot), "
                                 "counted over the whole run: a resumed run goes on from the time its checkpoint "
                                 "holds, so raise it to continue (docs/clusters.md).")
    cluster: Literal["auto", "slurm"] = Field("auto", description="auto: Lightning detects SLURM, torchrun and "
                                              "the like; slurm: use Lightning's SLURM environment explicitly.")
    slurm_requeue: bool = Field(True, description="Under SLURM (train.cluster auto or slurm), save and requeue the "
                                "job when SLURM sends SIGUSR1 before its time limit (sbatch --signal=SIGUSR1@90; "
                                "Lightning's SLURMEnvironment auto_requeue).")
    # Early stopping on the best-checkpoint metric (val mAP50). ultralytics stops after 100 epochs without
    # improvement; yololab's runs are shorter, so 50: long enough not to cut a run that is still learning.
    patience: int | None = Field(50, gt=0, description="Stop when val mAP50 has not improved for this many "
                                 "epochs (None: never stop early).")
    min_delta: float = Field(0.0, ge=0, description="Smallest rise of val mAP50 that counts as an improvement.")
    loggers: list[Literal["tensorboard", "csv", "mlflow", "wandb"]] = Field(
        ["tensorboard"], description="Where every logged term and statistic goes: tensorboard (RUN/tb), csv "
        "(RUN/csv/metrics.csv), mlflow (pip install 'yololab[mlflow]'), wandb (pip install 'yololab[wandb]').")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (default: the file store RUN/mlruns).")
    wandb_project: str | None = Field(None, description="Weights & Biases project (default: the run's project).")

    @model_validator(mode="after")
    def _freeze_settings(self) -> TrainConfig:
        if isinstance(self.freeze, int) and self.freeze < 1:
            raise ValueError(f"train.freeze={self.freeze}: freeze N layers with N >= 1, or 'backbone'")
        if self.unfreeze_epoch is not None and self.freeze is None:
            raise ValueError("train.unfreeze_epoch needs train.freeze (the layers to unfreeze)")
        several = (isinstance(self.devices, int) and self.devices > 1) or self.num_nodes > 1
        if self.unfreeze_epoch is not None and several:
            raise ValueError("train.unfreeze_epoch does not work with several processes (DDP averages the "
                             "gradients of the parameters that needed them when it started): drop it or train "
                             "on one device")
        return self


class RunConfig(_Strict):
    """A whole run; written beside it as config.yaml."""

    project: str = Field("runs", description="Folder of runs (`--project`).")
    name: str = Field("train", description="Run name: the run is written to PROJECT/NAME/ (`--name`).")
    recipe: str | None = Field(
        None, description="The recipe the run started from (`--recipe NAME`, yololab/recipes.py): its values are "
        "applied like --set items before the run's own --set, and the sections below hold what they resolved to. "
        "None: the defaults.")
    preset: str = Field(DEFAULT_PRESET, description="Loss preset the loss section was resolved from: preset + "
                        "loss_overrides = the loss section.")
    loss_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Written by yololab: every loss field where the loss section differs "
        "from the preset's, as `loss.FIELD: value` (a --set that repeats the preset's value is no override). "
        "`train --config RUN/config.yaml --preset P` trains P with these on top. Edit the loss section or these, "
        "not both: a file where preset + loss_overrides do not give its loss section is refused (docs/loss.md).")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    loss: LossConfig = Field(default_factory=lambda: preset(DEFAULT_PRESET), description="The loss, resolved from "
                             "the preset with any loss.* overrides on top.")
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig, description="What is measured "
                                           "beside training (histograms, gradient shares, doctor, report).")
    doctor: DoctorConfig = Field(default_factory=DoctorConfig, description="Thresholds of the doctor's rules "
                                 "(switched on and off by diagnostics.doctor).")

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, name: str | None) -> str | None:
        if name is not None:
            recipe(name)  # ValueError naming the known ones
        return name

    @model_validator(mode="before")
    @classmethod
    def _loss_of_the_preset(cls, data: Any) -> Any:
        """Without a loss section, the preset's loss (not yololab's)."""
        if isinstance(data, dict) and "loss" not in data:
            data = {**data, "loss": preset(data.get("preset", DEFAULT_PRESET))}
        return data

    @model_validator(mode="after")
    def _record_overrides(self) -> RunConfig:
        """Derive loss_overrides from the loss and the preset; given ones must give the same loss."""
        derived = loss_overrides(self.loss, self.preset)
        if LOSS_OVERRIDES in self.model_fields_set and _apply(self.preset, self.loss_overrides) != self.loss:
            raise ValueError(f"preset {self.preset} with loss_overrides {self.loss_overrides} does not give the loss "
                             f"section (its overrides are {derived})")
        self.loss_overrides = derived
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.project) / self.name


def loss_overrides(loss: LossConfig, preset_name: str) -> dict[str, Any]:
    """``{"loss.FIELD": value}`` (JSON values) for every field where ``loss`` differs from the preset's."""
    reference = preset(preset_name)
    values = loss.model_dump(mode="json")
    return {f"{LOSS_PREFIX}{name}": values[name] for name in LossConfig.model_fields
            if getattr(loss, name) != getattr(reference, name)}


def _override_fields(overrides: Any, where: str) -> dict[str, Any]:
    """``{"loss.obj_weight": 2}`` -> ``{"obj_weight": 2}``; ConfigError for anything that is not loss.FIELD."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: {LOSS_OVERRIDES} must be a mapping of loss.FIELD: value, got "
                          f"{type(overrides).__name__}")
    fields = {}
    for key, value in overrides.items():
        name = str(key).removeprefix(LOSS_PREFIX)
        if not str(key).startswith(LOSS_PREFIX) or name not in LossConfig.model_fields:
            raise ConfigError(f"{where}: {LOSS_OVERRIDES} key {key!r} is not loss.FIELD with FIELD a loss setting")
        fields[name] = value
    return fields


def _apply(preset_name: str, overrides: dict[str, Any]) -> LossConfig:
    """The preset's loss with ``{"loss.FIELD": value}`` overrides on top."""
    return preset(preset_name, **_override_fields(overrides, LOSS_OVERRIDES))


def _loss_dict(section: Any) -> dict[str, Any]:
    """A loss section (a mapping of fields or a LossConfig) as a dict."""
    return section.model_dump() if isinstance(section, BaseModel) else dict(section or {})


def resolve_loss(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """A config dict with its loss section complete and without loss_overrides (RunConfig derives them).

    The loss is the preset's fields <- loss_overrides (used when there is no loss section) <- the loss section
    (whole or partial; a field's value replaces the preset's whole). Given both, preset + loss_overrides must give the
    loss section: a file edited in one place and not the other is refused in one line (``where`` names it)."""
    name = raw.get("preset", DEFAULT_PRESET)
    if name not in PRESETS:
        raise ConfigError(f"{where}: unknown loss preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    section = raw.get("loss")
    if section is not None and not isinstance(section, dict | BaseModel):
        raise ConfigError(f"{where}: the loss section must be a mapping of loss fields, got {type(section).__name__}")
    out = {k: v for k, v in raw.items() if k != LOSS_OVERRIDES}
    reference = preset(name).model_dump()
    if LOSS_OVERRIDES not in raw:
        out["loss"] = {**reference, **_loss_dict(section)}
        return out
    fields = _override_fields(raw[LOSS_OVERRIDES], where)
    try:
        recorded = LossConfig(**{**reference, **fields})
    except ValidationError as err:
        raise ConfigError(f"{where}: {LOSS_OVERRIDES} on preset {name} are not a valid loss: "
                          f"{err.errors()[0]['msg']}") from None
    if section is None:
        out["loss"] = recorded.model_dump()
        return out
    out["loss"] = {**reference, **_loss_dict(section)}
    try:
        written = LossConfig(**out["loss"])
    except ValidationError:
        return out  # RunConfig reports the bad field
    differ = [f"loss.{f}" for f in LossConfig.model_fields if getattr(written, f) != getattr(recorded, f)]
    if differ:
        raise ConfigError(f"{where}: preset {name} with {LOSS_OVERRIDES} does not give the loss section "
                          f"({', '.join(differ)} differ): delete {LOSS_OVERRIDES} to train the loss section as "
                          f"written, or the loss section to train the preset with {LOSS_OVERRIDES}")
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["train.epochs=3", "loss.box_loss=mse"] -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.002, …}`` of a nested config dict (a RunConfig's ``model_dump``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= dotted(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def build_config(base: dict[str, Any] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Resolve a RunConfig: defaults <- base dict <- ``--set`` overrides.

    The loss is the final preset (``--set preset=P`` replaces the base's) <- the base's loss overrides, i.e. the
    fields where the base's loss differs from the base's own preset (see ``resolve_loss``) <- ``--set loss.*``.
    So a base with a whole loss section, such as a loaded config.yaml, given another preset trains that preset
    with the base's overrides, never the base's preset under the other one's name."""
    base = resolve_loss(base or {}, "invalid configuration")
    try:
        base_loss = LossConfig(**base["loss"])
    except ValidationError as err:
        raise ConfigError(f"invalid configuration:\n{err}") from None
    changes = _with_recipe(parse_overrides(overrides or []))
    loss_changes = changes.pop("loss", {})
    raw = _merge(base, changes)
    # A loss field's value replaces the one below it whole (a scale_weights dict is not merged key by key).
    base_overrides = loss_overrides(base_loss, base.get("preset", DEFAULT_PRESET))
    raw["loss"] = {**_override_fields(base_overrides, LOSS_OVERRIDES), **_loss_dict(loss_changes)}
    raw = resolve_loss(raw, "invalid configuration")
    try:
        cfg = RunConfig(**raw)
    except ValidationError as err:
        raise ConfigError(f"invalid configuration:\n{err}") from None
    _reject_non_finite(cfg.model_dump(), "invalid configuration")
    return cfg


def _with_recipe(changes: dict[str, Any]) -> dict[str, Any]:
    """``--set`` changes with the values of the recipe they name (``recipe=NAME``) underneath: the recipe is
    applied once, when it is chosen, and the changes given with it win over it."""
    name = changes.get("recipe")
    if name is None:
        return changes
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available: {', '.join(sorted(RECIPES)) or 'none yet'}")
    return _merge(parse_overrides(RECIPES[name].set_items()), changes)


def _reject_non_finite(values: dict[str, Any], where: str, prefix: str = "") -> None:
    """ConfigError for the first NaN or infinite number: no field of a run means anything with one. The loss
    section is checked, not loss_overrides, its derived copy: the error names the field the user set."""
    for key, value in values.items():
        if not prefix and key == LOSS_OVERRIDES:
            continue
        if isinstance(value, dict):
            _reject_non_finite(value, where, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {prefix}{key} = {value} is not a finite number")


def load_config(path: str | Path) -> RunConfig:
    """Read a config.yaml written by ``save_config`` (or by hand)."""
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got a {type(data).__name__}")
    data = resolve_loss(data, str(path))
    try:
        cfg = RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid configuration:\n{err}") from None
    _reject_non_finite(cfg.model_dump(), str(path))
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
