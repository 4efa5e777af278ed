"""Study statistics against values computed by hand or by a naive loop."""

import math

import numpy as np
import pytest

from yololab.study.stats import Summary, bootstrap_ci, paired_differences, signed, summarize, verdict


def _naive_bootstrap(values, resamples, seed, confidence):
    """One resample at a time, and the quantile by hand: sorted means, linear interpolation between ranks."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        picks = [values[int(i)] for i in rng.integers(0, len(values), size=len(values))]
        means.append(sum(picks) / len(picks))
    means.sort()

    def quantile(q):
        position = q * (len(means) - 1)
        below = math.floor(position)
        above = min(below + 1, len(means) - 1)
        return means[below] + (position - below) * (means[above] - means[below])

    tail = (1 - confidence) / 2
    return quantile(tail), quantile(1 - tail)


@pytest.mark.parametrize("values", [[0.31, 0.35, 0.29], [0.1, 0.5, 0.2, 0.9, 0.4]])
def test_bootstrap_matches_a_naive_loop_with_the_same_seed(values):
    low, high = bootstrap_ci(np.array(values), resamples=2000, seed=7)
    naive_low, naive_high = _naive_bootstrap(values, 2000, 7, 0.95)
    assert low == pytest.approx(naive_low, abs=1e-12)
    assert high == pytest.approx(naive_high, abs=1e-12)
    assert min(values) <= low < high <= max(values)


def test_bootstrap_of_two_values_by_hand():
    # Resampling [0, 1]: the mean is 0 with probability 1/4, 0.5 with 1/2, 1 with 1/4. The 2.5 % quantile lies
    # inside the first quarter (0) and the 97.5 % quantile inside the last (1).
    assert bootstrap_ci(np.array([0.0, 1.0])) == (0.0, 1.0)
    # Constant values: every resample has the same mean.
    assert bootstrap_ci(np.array([0.25, 0.25, 0.25])) == pytest.approx((0.25, 0.25))
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([0.3])))


def test_summary_mean_and_sample_sd_by_hand():
    s = summarize([0.2, 0.4, 0.6, None, math.nan])  # missing values are left out, not zeros
    assert s.n == 3
    assert s.mean == pytest.approx(0.4)
    assert s.sd == pytest.approx(0.2)  # sqrt(((-0.2)^2 + 0 + 0.2^2) / (3 - 1))
    one = summarize([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.sd) and math.isnan(one.low)
    assert summarize([]).n == 0


def test_paired_differences_use_only_shared_seeds():
    level = {0: 0.50, 1: 0.60, 2: 0.70}
    baseline = {0: 0.40, 1: 0.45, 3: 0.90}
    diffs = paired_differences(level, baseline)
    assert diffs.keys() == {0, 1}
    assert diffs[0] == pytest.approx(0.10) and diffs[1] == pytest.approx(0.15)
    s = summarize(diffs.values())
    assert s.mean == pytest.approx(0.125)
    assert s.sd == pytest.approx(0.05 / math.sqrt(2))  # |0.10 - 0.15| / sqrt(2) for two values
    # two differences: the bootstrap means are 0.10, 0.125 or 0.15 (probabilities 1/4, 1/2, 1/4)
    assert (s.low, s.high) == pytest.approx((0.10, 0.15))


def test_verdict_sentences():
    better = Summary(3, 0.12, 0.02, 0.08, 0.16)
    assert verdict("obj_loss", "bce", "mse", better) == (
        "obj_loss=bce vs mse: +0.120 mAP@0.5 (95 % CI +0.080…+0.160, 3 seeds): bce is better.")
    worse = Summary(3, -0.05, 0.01, -0.07, -0.03)
    assert verdict("obj_loss", "bce", "mse", worse).endswith(": mse is better.")
    noise = Summary(3, 0.004, 0.02, -0.02, 0.03)
    assert verdict("obj_loss", "bce", "mse", noise) == (
        "obj_loss=bce vs mse: +0.004 mAP@0.5 (95 % CI −0.020…+0.030, 3 seeds): no difference beyond seed noise.")
    two = Summary(2, 0.007, 0.002, 0.002, 0.011)
    assert verdict("box_loss", "mse", "iou", two).endswith(": mse looks better, but 2 seeds are too few to be sure.")
    assert "one seed only" in verdict("f", "a", "b", Summary(1, 0.1, math.nan, math.nan, math.nan))
    assert signed(-0.5) == "−0.500" and signed(math.nan) == "n/a"
