"""Study files: a YAML naming the dataset, the base config, the budget, the seeds, the baseline and the factors
(a grid of configurations) or a search space, read into typed models and expanded into configurations.

Every problem is one line ``file:line: key: problem`` (``StudyError``), the key written dotted as in the file.
"""

from __future__ import annotations

import difflib
import itertools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from yololab.config import ConfigError, RunConfig, build_config, dotted, load_config, parse_overrides
from yololab.errors import FileProblem
from yololab.loss.presets import PRESETS

TRAIN_SHARE = "data.train_share"  # a study-level factor: the share of the training images a run trains on
STUDY_KEYS = {TRAIN_SHARE}  # keys a study understands beyond the RunConfig fields
DEFAULT_SEEDS = 3
UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.=+,-]")  # characters a configuration's folder name may not hold


class StudyError(FileProblem):
    """A study file that cannot be run; the message names the file, line and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MakeData(_Strict):
    """Data generated for the study (into STUDY_DIR/data/ the first time) instead of an existing data.yaml."""

    make: Literal["digits", "sparse", "photo"] = Field(
        description="Generator: yololab data make digits / sparse / photo.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of make_digits / "
                                    "make_sparse / make_photo, e.g. {tiny: true, seed: 1}.")


class BaseSpec(_Strict):
    """The configuration every run starts from; factors change it."""

    config: str | None = Field(None, description="A run's config.yaml to start from (as yololab train --config).")
    cfg: str | None = Field(None, description="darknet cfg path or packaged cfg name (model.cfg).")
    preset: str | None = Field(None, description="Loss preset.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted config keys -> values, as --set.")


class BudgetSpec(_Strict):
    """How long each run trains: a number of epochs, or of optimiser steps (darknet's ``max_batches``) for runs
    whose epochs differ in length, e.g. shares of the training data. Either may be capped in minutes."""

    epochs: int | None = Field(None, gt=0, description="Epochs of every run (the length of its LR schedule).")
    steps: int | None = Field(None, gt=0, description="Optimiser steps of every run instead of epochs: a run "
                              "trains the fewest whole epochs of its own training images that reach them, and "
                              "its LR warm-up lasts as many steps as optim.warmup_epochs of the study's whole "
                              "training set.")
    minutes: float | None = Field(None, gt=0, description="Wall-clock limit per run: training stops at the "
                                  "first epoch end past it (Lightning's Timer).")

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> BudgetSpec:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give epochs or steps (one of them)")
        return self

    def describe(self) -> str:
        """``3 epochs``, ``375 steps, at most 30 min per run``."""
        count, unit = (self.epochs, "epoch") if self.epochs is not None else (self.steps, "step")
        text = f"{count} {unit}{'s' if count != 1 else ''}"
        return text + (f", at most {self.minutes:g} min per run" if self.minutes else "")


class AshaSpec(_Strict):
    """Ray Tune's ASHA early stopping on val mAP@0.5 (a grid only: one trial per run)."""

    grace_epochs: int = Field(1, gt=0, description="Epochs every run trains before it may be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="ASHA's eta: one run in eta goes on at each rung.")


class Level(_Strict):
    """A factor level that changes several fields at once, under one name."""

    name: str
    set: dict[str, Any]


class SearchSpec(_Strict):
    """A search instead of a grid: Optuna's TPE samples ``samples`` configurations from ``space``."""

    samples: int = Field(gt=0, description="Configurations to sample (each trained over every seed).")
    space: dict[str, dict[Literal["uniform", "loguniform", "int", "choice"], list]] = Field(
        description="key -> {uniform: [low, high]} | {loguniform: [low, high]} | {int: [low, high]} | "
        "{choice: [values]}")
    seed: int = Field(0, description="Seed of the TPE sampler.")


class StudySpec(_Strict):
    description: str = ""
    data: str | MakeData = Field(description="A data.yaml path (relative to the working folder) or {make: ...}.")
    base: BaseSpec = Field(default_factory=BaseSpec)
    budget: BudgetSpec
    seeds: int | list[int] = Field(DEFAULT_SEEDS, description="A number of seeds (0..n-1) or a list.")
    design: Literal["grid", "one_at_a_time"] = Field(
        "grid", description="'grid': every combination of the factor levels; 'one_at_a_time': the baseline and, "
        "per factor, each other level with the other factors at their baseline level.")
    factors: dict[str, list[Any]] | None = None
    baseline: dict[str, Any] | None = Field(None, description="factor -> level (value or level name); "
                                            "default: the first level of every factor.")
    search: SearchSpec | None = None
    asha: AshaSpec | None = None
    cpus_per_trial: int = Field(1, gt=0, description="CPU cores (and torch threads) of one run.")
    gpus_per_trial: float | None = Field(
        None, ge=0, description="GPUs of one run; a fraction shares a GPU between runs (0.5: two per GPU). "
        "Default: 1 when Ray sees GPUs, else 0. With 0 on a machine with GPUs the runs train on the CPU.")

    @model_validator(mode="after")
    def _grid_or_search(self) -> StudySpec:
        if self.factors is None and self.search is None:
            raise ValueError("empty grid: give factors (key -> levels) or a search")
        if self.factors is not None and self.search is not None:
            raise ValueError("give factors or a search, not both")
        if self.search is not None and self.asha is not None:
            raise ValueError("asha needs a grid: a search trains all seeds of a sample in one trial")
        if self.asha is not None and self.budget.steps is not None:
            raise ValueError("asha needs a budget in epochs: it stops runs at epoch rungs shared by all runs")
        return self


@dataclass(frozen=True)
class Configuration:
    """One point of the study: a name (its runs' folder prefix), the level of each factor, and the config
    overrides it applies on top of the base (dotted key -> value, ``data.train_share`` included)."""

    name: str
    levels: dict[str, str]
    overrides: dict[str, Any]


@dataclass
class Study:
    """A validated study file."""

    path: Path
    spec: StudySpec
    configurations: list[Configuration]  # empty for a search: its configurations are sampled
    baseline: Configuration | None
    seeds: list[int]
    factors: dict[str, list[str]] = field(default_factory=dict)  # factor -> level names in file order

    @property
    def name(self) -> str:
        return self.path.stem


# --------------------------------------------------------------------------------------------- loading


def load_study(path: str | Path, data: str | None = None, epochs: int | None = None,
               seeds: int | None = None, base_set: list[str] | None = None) -> Study:
    """Read and check a study file; ``data`` (a data.yaml), ``epochs`` and ``seeds`` (a number) replace the
    file's, and ``base_set`` (``--set`` items, ``key=value``) goes over its ``base.set``: the same study on other
    data, e.g. at that data's image size. Raises StudyError."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(path, None, "no such study file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise StudyError(path, mark.line + 1 if mark else None, f"not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise StudyError(path, None, "expected a mapping (data, base, budget, seeds, factors or search)")
    if data is not None:
        raw["data"] = data
    if epochs is not None:
        raw["budget"] = {**_without_steps(raw.get("budget")), "epochs": epochs}
    if seeds is not None:
        raw["seeds"] = seeds
    if base_set:
        _set_base(raw, base_set, path)
    where = _Locator(path, text)
    try:
        spec = StudySpec(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(str(p) for p in first["loc"] if not _is_union_tag(p))
        raise where.error(loc, first["msg"].removeprefix("Value error, ")) from None
    return _expand(spec, where)


def _set_base(raw: dict, items: list[str], path: Path) -> None:
    """``--set`` items over the study's ``base.set`` (in place)."""
    try:
        values = dotted(parse_overrides(items))
    except ConfigError as err:
        raise StudyError(path, None, str(err)) from None
    if raw.get("base") is None:
        raw["base"] = {}
    base = raw["base"]
    current = (base.get("set") or {}) if isinstance(base, dict) else None
    if isinstance(current, dict):  # anything else is left for the validation to name
        base["set"] = {**current, **values}


def _without_steps(budget) -> dict:
    """A budget mapping without its steps (an epoch count given on the command line replaces them)."""
    return {k: v for k, v in budget.items() if k != "steps"} if isinstance(budget, dict) else {}


def _is_union_tag(part) -> bool:
    """pydantic names the member of a union it tried (``str``, ``MakeData``) inside the error's location."""
    return isinstance(part, str) and (part in ("str", "int", "list[int]") or part[:1].isupper())


class _Locator:
    """Turns a dotted key of the study file into ``StudyError(file, line, "key: problem")``."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.root = yaml.compose(text)

    def line(self, keys: tuple[str, ...]) -> int | None:
        node, line = self.root, None
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if str(k.value) == key]
                if not match:
                    break
                line, node = match[0][0].start_mark.line + 1, match[0][1]
            elif isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
                node = node.value[int(key)]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def error(self, keys: tuple[str, ...], problem: str) -> StudyError:
        return StudyError(self.path, self.line(keys), f"{'.'.join(keys)}: {problem}" if keys else problem)


def locate(path: Path, keys: tuple[str, ...], problem: str) -> StudyError:
    """``StudyError`` naming the line of ``keys`` in the study file ``path`` (no line if it cannot be read)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return StudyError(path, None, f"{'.'.join(keys)}: {problem}")
    return _Locator(Path(path), text).error(keys, problem)


# --------------------------------------------------------------------------------------------- checks


def check_key(key: str) -> str | None:
    """None when ``key`` (dotted) names a RunConfig field or a study key, else the problem."""
    if key in STUDY_KEYS:
        return None
    model: Any = RunConfig
    for i, part in enumerate(key.split(".")):
        fields = _model_of(model)
        if fields is None:
            return f"unknown config field ({'.'.join(key.split('.')[:i])} has no sub-fields)"
        if part not in fields.model_fields:
            close = difflib.get_close_matches(part, list(fields.model_fields), n=3)
            return f"unknown config field {part!r}" + (f" (did you mean {' or '.join(close)}?)" if close else "")
        model = fields.model_fields[part].annotation
    return None


def _model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``LossConfig``, ``AugmentConfig | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        found = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return found[0] if found else None
    return None


def _check_overrides(overrides: dict[str, Any], where: _Locator, keys: tuple[str, ...]) -> None:
    for key, value in overrides.items():
        problem = check_key(key)
        if problem:
            raise where.error((*keys, key), problem)
        if key == "preset" and value not in PRESETS:
            raise where.error((*keys, key), f"unknown preset {value!r} (known: {', '.join(sorted(PRESETS))})")
        if key == TRAIN_SHARE and not (isinstance(value, int | float) and 0 < value <= 1):
            raise where.error((*keys, key), f"a share of the training images is in (0, 1], got {value!r}")


def run_overrides(spec: StudySpec, overrides: dict[str, Any]) -> list[str]:
    """``--set`` items of a run: the base (cfg, preset, set) then the configuration's overrides, study keys
    left out (they are applied to the data, not the config)."""
    items = {**({"model.cfg": spec.base.cfg} if spec.base.cfg else {}),
             **({"preset": spec.base.preset} if spec.base.preset else {}), **spec.base.set, **overrides}
    return [f"{key}={_yaml_scalar(value)}" for key, value in items.items() if key not in STUDY_KEYS]


def _yaml_scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def resolve(spec: StudySpec, overrides: dict[str, Any]) -> RunConfig:
    """The RunConfig of a configuration (project, name and data are filled in by the runner)."""
    base = load_config(spec.base.config).model_dump(mode="json") if spec.base.config else {}
    return build_config(base, run_overrides(spec, overrides))


# --------------------------------------------------------------------------------------------- expansion


def _levels(key: str, values: list, where: _Locator) -> list[tuple[str, dict[str, Any]]]:
    """(level name, overrides) of each level of factor ``key``."""
    if not values:
        raise where.error(("factors", key), "empty grid: a factor needs at least one level")
    levels = []
    for i, value in enumerate(values):
        if isinstance(value, dict):
            try:
                level = Level(**value)
            except ValidationError as err:
                first = err.errors()[0]
                raise where.error(("factors", key, str(i), *map(str, first["loc"])), first["msg"]) from None
            _check_overrides(level.set, where, ("factors", key, str(i), "set"))
            levels.append((level.name, level.set))
        else:
            _check_overrides({key: value}, where, ("factors",))
            levels.append((_yaml_scalar(value), {key: value}))
    names = [name for name, _ in levels]
    if len(set(names)) < len(names):
        raise where.error(("factors", key), f"two levels with the same name in {names}")
    return levels


def short_key(key: str) -> str:
    """The last part of a dotted key: what a configuration's name shows (``loss.obj_loss`` -> ``obj_loss``)."""
    return key.rsplit(".", 1)[-1]


def config_name(levels: dict[str, str]) -> str:
    """``obj_loss=bce+warmup=on``: safe as a folder name."""
    text = "+".join(f"{short_key(k)}={v}" for k, v in levels.items()) or "base"
    return UNSAFE_NAME.sub("_", text)


def _combinations(spec: StudySpec, factor_levels: dict[str, list], baseline: dict[str, str]) -> list[dict]:
    """Level name per factor of each configuration of the design."""
    keys = list(factor_levels)
    if spec.design == "grid":
        return [dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*([name for name, _ in factor_levels[k]] for k in keys))]
    combos = [dict(baseline)]
    for key in keys:
        combos += [{**baseline, key: name} for name, _ in factor_levels[key] if name != baseline[key]]
    return combos


BASELINE_NAME = "baseline"  # a one-at-a-time design names its configurations by what differs from it


def _name(spec: StudySpec, combo: dict[str, str], baseline: dict[str, str]) -> str:
    """A grid configuration is named by all its levels; a one-at-a-time one by the level that differs."""
    if spec.design == "grid":
        return config_name(combo)
    changed = {key: name for key, name in combo.items() if name != baseline[key]}
    return config_name(changed) if changed else BASELINE_NAME


def _expand(spec: StudySpec, where: _Locator) -> Study:
    _check_overrides(spec.base.set, where, ("base", "set"))
    if spec.base.preset is not None:
        _check_overrides({"preset": spec.base.preset}, where, ("base",))
    seeds = seed_list(spec.seeds)
    if not seeds or len(set(seeds)) < len(seeds):
        raise where.error(("seeds",), f"need one or more distinct seeds, got {spec.seeds!r}")
    if spec.search is not None:
        for key, dist in spec.search.space.items():
            _check_overrides({key: 0.5} if key == TRAIN_SHARE else {}, where, ("search", "space", key))
            problem = check_key(key)
            if problem:
                raise where.error(("search", "space", key), problem)
            if len(dist) != 1:
                raise where.error(("search", "space", key), "give one distribution (uniform, loguniform, int, choice)")
        _check_resolves(spec, {}, where, ("base",))
        return Study(where.path, spec, [], None, seeds)
    if not spec.factors:
        raise where.error(("factors",), "empty grid: give at least one factor with levels")
    factor_levels = {key: _levels(key, values, where) for key, values in spec.factors.items()}
    baseline = _baseline(spec, factor_levels, where)
    configurations = []
    for combo in _combinations(spec, factor_levels, baseline):
        overrides: dict[str, Any] = {}
        for key, name in combo.items():
            overrides.update(dict(factor_levels[key])[name])
        configuration = Configuration(_name(spec, combo, baseline), combo, overrides)
        _check_resolves(spec, overrides, where, ("factors",))
        configurations.append(configuration)
    names = [c.name for c in configurations]
    if len(set(names)) < len(names):
        raise where.error(("factors",), "two configurations have the same name: rename the levels")
    base_config = next(c for c in configurations if c.levels == baseline)
    return Study(where.path, spec, configurations, base_config, seeds,
                 {key: [name for name, _ in levels] for key, levels in factor_levels.items()})


def seed_list(seeds: int | list[int]) -> list[int]:
    """A study's ``seeds`` field as the list of seeds: ``seeds: 3`` means 0, 1, 2."""
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def _baseline(spec: StudySpec, factor_levels: dict[str, list], where: _Locator) -> dict[str, str]:
    chosen = {key: levels[0][0] for key, levels in factor_levels.items()}
    for key, value in (spec.baseline or {}).items():
        if key not in factor_levels:
            raise where.error(("baseline", key), f"not a factor of this study (factors: {', '.join(factor_levels)})")
        name = value if isinstance(value, str) and value in dict(factor_levels[key]) else _yaml_scalar(value)
        if name not in dict(factor_levels[key]):
            raise where.error(("baseline", key), f"{value!r} is not one of its levels "
                              f"({', '.join(n for n, _ in factor_levels[key])})")
        chosen[key] = name
    return chosen


def _check_resolves(spec: StudySpec, overrides: dict[str, Any], where: _Locator, keys: tuple[str, ...]) -> None:
    try:
        resolve(spec, overrides)
    except (ConfigError, ValueError) as err:
        detail = err.__context__ if isinstance(err.__context__, ValidationError) else None
        if detail is not None:
            first = detail.errors()[0]
            problem = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        else:
            problem = str(err).splitlines()[0]
        raise where.error(keys, f"invalid configuration {overrides or ''}: {problem}".replace(" :", ":")) from None
