"""Train/val/test splits that keep the class mix of every part close to the whole dataset's.

Each image is put in a stratum by its most frequent class (background images form a stratum of their
own); each stratum is split on its own, so every part gets its share of every stratum to within one image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from yololab.data.splits import DEFAULT_FRACTIONS, split_indices

BACKGROUND = -1  # the stratum of images without objects


def dominant_class(classes: np.ndarray | Sequence[int]) -> int:
    """The most frequent class id (the smallest on a tie), or ``BACKGROUND`` for no objects."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if classes.size == 0:
        return BACKGROUND
    if classes.min() < 0:
        raise ValueError(f"class ids must be >= 0, got {classes.min()}")
    return int(np.bincount(classes).argmax())  # argmax returns the first, i.e. smallest, of a tie


def stratified_split_indices(
    labels_per_image: Sequence[np.ndarray | Sequence[int]],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Split image indices into disjoint parts covering ``range(len(labels_per_image))``, stratified by
    each image's :func:`dominant_class`.

    A stratum of ``n`` images gives part ``i`` either ``floor(n * fractions[i])`` or one more image
    (largest remainder first, ties broken at random), so each part holds its share of every stratum to
    within one image, and part sizes add up to ``n``. Images are drawn from the stratum in a random order.
    Randomness comes from ``numpy.random.default_rng(seed)`` only: the same input and seed give the same
    split.

    Args:
        labels_per_image: the class ids of each image's objects (1-D, empty for a background image).
        fractions: part fractions (train, val, test), >= 0, summing to 1.
        seed: random seed.

    Returns:
        One sorted int64 index array per fraction, in the order of ``fractions``.
    """
    n = len(labels_per_image)
    split_indices(n, fractions, seed)  # validates fractions with its error messages
    fractions = np.asarray(fractions, dtype=np.float64)
    strata = np.array([dominant_class(c) for c in labels_per_image], dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for stratum in np.unique(strata):  # sorted: a stable order of random draws
        members = rng.permutation(np.flatnonzero(strata == stratum))
        sizes = _part_sizes(len(members), fractions, rng)
        bounds = np.cumsum([0, *sizes])
        for part, (a, b) in enumerate(itertools.pairwise(bounds)):
            parts[part].append(members[a:b])
    return tuple(np.sort(np.concatenate([np.zeros(0, np.int64), *p])).astype(np.int64) for p in parts)


def _part_sizes(n: int, fractions: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Largest-remainder apportionment of ``n`` items: each size is within one of ``n * fraction``."""
    exact = n * fractions
    sizes = [math.floor(v) for v in exact]
    remainders = exact - sizes
    # Order by remainder, largest first; a random key breaks ties, so no part is always favoured.
    order = np.lexsort((rng.random(len(fractions)), -remainders))
    for part in order[: n - sum(sizes)]:
        sizes[part] += 1
    return sizes
