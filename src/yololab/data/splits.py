"""Deterministic train/val/test splits of item indices."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test, the usual 80/10/10
# Slack for fractions that do not sum to exactly 1 in binary floating point (0.7 + 0.2 + 0.1).
_SUM_TOLERANCE = 1e-6
# n * fraction can land just below an integer in floating point (0.29 * 100 = 28.999...); this keeps
# the floor from losing an item there without ever rounding a genuine fraction up.
_FLOOR_EPS = 1e-9


def split_indices(
    n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Split ``range(n)`` at random into disjoint parts that together cover it.

    Part ``i`` (for ``i >= 1``) gets ``floor(n * fractions[i])`` indices; the first part (train)
    gets the remainder, so no index is lost to rounding. The permutation comes from
    ``numpy.random.default_rng(seed)``: the same ``(n, fractions, seed)`` gives the same split.

    Returns:
        One sorted int64 array per fraction, in the order of ``fractions``.
    """
    if n < 0:
        raise ValueError(f"split_indices: n must be >= 0, got {n}")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"split_indices: fractions must be finite and >= 0, got {fractions}")
    if abs(sum(fractions) - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"split_indices: fractions must sum to 1, got {fractions} (sum {sum(fractions)})")

    sizes = [math.floor(n * f + _FLOOR_EPS) for f in fractions[1:]]
    sizes.insert(0, n - sum(sizes))
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *sizes])
    return tuple(np.sort(order[a:b]).astype(np.int64) for a, b in itertools.pairwise(bounds))
