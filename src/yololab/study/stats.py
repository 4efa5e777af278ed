"""The statistics of a study: mean ± sd over seeds, a percentile-bootstrap confidence interval of the mean,
paired differences against the baseline over the same seeds, and the verdict sentence they support."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the same numbers give the same interval
CONFIDENCE = 0.95
# Below this many paired seeds a percentile bootstrap cannot be wider than the differences seen (two values give
# the interval [min, max]): a one-sided interval is then reported as a lean, not a finding.
MIN_SEEDS_FOR_VERDICT = 3


@dataclass(frozen=True)
class Summary:
    """Mean, sample sd (n - 1) and the bootstrap CI of the mean of ``n`` values; sd and CI are NaN for n < 2."""

    n: int
    mean: float
    sd: float
    low: float
    high: float


def bootstrap_ci(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap of the mean of ``values`` [n]: ``resamples`` draws of n indices with replacement
    from ``numpy.random.default_rng(seed)`` (one row of ``integers(0, n, (resamples, n))`` per draw), and the
    (1 - confidence) / 2 and (1 + confidence) / 2 quantiles (numpy's linear interpolation) of their means."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def summarize(values) -> Summary:
    """Summary of the finite values (a run without a val mAP is left out, not counted as 0)."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if values.size == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    sd = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return Summary(int(values.size), float(values.mean()), sd, *bootstrap_ci(values))


def paired_differences(values: dict[int, float], baseline: dict[int, float]) -> dict[int, float]:
    """seed -> value - baseline value, over the seeds both have (finite)."""
    return {seed: values[seed] - baseline[seed] for seed in sorted(values.keys() & baseline.keys())
            if _finite(values[seed]) and _finite(baseline[seed])}


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def signed(value: float, digits: int = 3) -> str:
    """``+0.120`` / ``−0.020`` (a real minus sign, as in print)."""
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:+.{digits}f}"
    return text.replace("-", "−")


def verdict(factor: str, level: str, baseline_level: str, diff: Summary, metric: str = "mAP@0.5") -> str:
    """One plain sentence: the mean paired difference, its CI, the seeds, and what it means.

    Better (worse) when the whole CI lies above (below) 0; otherwise no difference beyond seed noise."""
    head = f"{factor}={level} vs {baseline_level}"
    if diff.n == 0:
        return f"{head}: no paired runs finished, nothing to compare."
    if diff.n < 2:
        return (f"{head}: {signed(diff.mean)} {metric} on one seed only: "
                "cannot tell an effect from seed noise without more seeds.")
    numbers = (f"{signed(diff.mean)} {metric} (95 % CI {signed(diff.low)}…{signed(diff.high)}, "
               f"{diff.n} seeds)")
    winner = level if diff.low > 0 else baseline_level if diff.high < 0 else None
    if winner is not None and diff.n < MIN_SEEDS_FOR_VERDICT:
        return f"{head}: {numbers}: {winner} looks better, but {diff.n} seeds are too few to be sure."
    if winner is not None:
        return f"{head}: {numbers}: {winner} is better."
    return f"{head}: {numbers}: no difference beyond seed noise."
