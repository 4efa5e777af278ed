"""From a study's rows to its numbers: per configuration mean ± sd and CI, and per factor level the paired
difference against the baseline over the same seeds, with its verdict sentence."""

from __future__ import annotations

import math
from dataclasses import dataclass

from yololab.study.results import RunRow
from yololab.study.spec import Study, short_key
from yololab.study.stats import Summary, paired_differences, summarize, verdict
from yololab.study.trial import FINISHED

METRICS = ("val_mAP50", "val_mAP50_95", "test_mAP50")  # summarised per configuration
METRIC_LABELS = {"val_mAP50": "mAP@0.5", "val_mAP50_95": "mAP@0.5:0.95", "test_mAP50": "test mAP@0.5"}


@dataclass
class ConfigStats:
    name: str
    levels: dict
    finished: int
    stopped: int  # stopped early by ASHA: not in the statistics
    summaries: dict[str, Summary]  # metric -> summary over the finished seeds
    minutes: float  # mean minutes per finished run


@dataclass
class Comparison:
    factor: str
    level: str
    baseline_level: str
    config: str
    baseline: str
    diffs: dict[str, Summary]  # metric -> summary of the paired differences (level - baseline)
    sentence: str


def configuration_names(study: Study, rows: list[RunRow]) -> list[str]:
    """Grid order, or (a search) the order the rows come in."""
    names = [c.name for c in study.configurations]
    for row in rows:
        if row.config not in names:
            names.append(row.config)
    return names


def per_seed(rows: list[RunRow], config: str, metric: str) -> dict[int, float]:
    """seed -> metric of the finished runs of ``config`` that have it."""
    return {r.seed: getattr(r, metric) for r in rows
            if r.config == config and r.status == FINISHED and getattr(r, metric) is not None}


def config_stats(study: Study, rows: list[RunRow]) -> list[ConfigStats]:
    out = []
    for name in configuration_names(study, rows):
        mine = [r for r in rows if r.config == name]
        finished = [r for r in mine if r.status == FINISHED]
        levels = mine[0].levels if mine else next(c.levels for c in study.configurations if c.name == name)
        minutes = [r.minutes for r in finished if math.isfinite(r.minutes)]
        out.append(ConfigStats(name, levels, len(finished), len(mine) - len(finished),
                               {m: summarize(per_seed(rows, name, m).values()) for m in METRICS},
                               sum(minutes) / len(minutes) if minutes else math.nan))
    return out


def comparisons(study: Study, rows: list[RunRow]) -> list[Comparison]:
    """Per factor, each level other than the baseline's: the configuration that differs from the baseline in
    that factor only, paired with the baseline seed by seed. Empty for a search (no baseline)."""
    if study.baseline is None:
        return []
    by_levels = {tuple(sorted(c.levels.items())): c for c in study.configurations}
    out = []
    for factor, levels in study.factors.items():
        base_level = study.baseline.levels[factor]
        for level in levels:
            if level == base_level:
                continue
            other = by_levels.get(tuple(sorted({**study.baseline.levels, factor: level}.items())))
            if other is None:
                continue
            diffs = {m: summarize(paired_differences(per_seed(rows, other.name, m),
                                                     per_seed(rows, study.baseline.name, m)).values())
                     for m in METRICS}
            sentence = verdict(short_key(factor), level, base_level, diffs["val_mAP50"])
            out.append(Comparison(factor, level, base_level, other.name, study.baseline.name, diffs, sentence))
    return out
