"""Seeds, paired intervals and the verdict rule on numbers with known answers."""
from __future__ import annotations

import math
import random

import pytest

from lightning_redllm.eval.scaling import fit_power_law
from lightning_redllm.eval.stats import mean_interval, paired_difference, slope_difference, verdict


def test_mean_interval_matches_tables():
    iv = mean_interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302653 (statistics tables)
    assert iv.mean == pytest.approx(2.0) and iv.se == pytest.approx(1 / math.sqrt(3))
    assert iv.hi - iv.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert mean_interval([5.0]).lo is None  # one seed: no interval, never a verdict


def _pairs(mean_diff_in_se: float, n: int = 3):
    """Pairs whose per-seed differences have mean ``k`` standard errors (se = 1) around a shared
    seed effect that the pairing must cancel."""
    spread = [-1.0, 0.0, 1.0] if n == 3 else [(i - (n - 1) / 2) for i in range(n)]
    sd = math.sqrt(sum(s * s for s in spread) / (n - 1))
    diffs = [mean_diff_in_se + s * math.sqrt(n) / sd for s in spread]  # se of their mean == 1
    seed_effect = [10.0, -7.0, 3.0, 0.5, -2.0][:n]
    dec = [5.0 + e for e in seed_effect]
    red = [d + x for d, x in zip(dec, diffs)]
    return red, dec


@pytest.mark.parametrize("k,n,expected", [(3.0, 5, "reproduced"), (-3.0, 5, "opposite"), (0.5, 5, "not resolved"),
                                          (0.5, 3, "not resolved"), (12.0, 3, "reproduced")])
def test_verdict_rule(k, n, expected):
    red, dec = _pairs(k, n)
    iv = paired_difference(red, dec)
    assert iv.se == pytest.approx(1.0) and iv.mean == pytest.approx(k)
    # the study says RedLLM - DecLLM > 0 here (e.g. a RedLLM advantage measured as a higher score)
    assert verdict(iv, +1) == expected
    # the same numbers against the opposite expectation swap reproduced/opposite
    flip = {"reproduced": "opposite", "opposite": "reproduced", "not resolved": "not resolved"}
    assert verdict(iv, -1) == flip[expected]


def test_pairing_cancels_the_shared_seed_effect():
    red, dec = _pairs(3.0, 5)
    paired = paired_difference(red, dec)
    unpaired_se = math.sqrt(mean_interval(red).se ** 2 + mean_interval(dec).se ** 2)
    assert paired.se < unpaired_se / 3  # the seed effect (sd ~6) dominates the unpaired error


def test_slope_difference_interval_covers():
    random.seed(0)
    xs = [1e12 * 2 ** i for i in range(6)]
    hits = 0
    for _ in range(300):
        f1 = fit_power_law(xs, [10 * x ** -0.20 * math.exp(random.gauss(0, 0.02)) for x in xs])
        f2 = fit_power_law(xs, [12 * x ** -0.24 * math.exp(random.gauss(0, 0.02)) for x in xs])
        iv = slope_difference(f1, f2)
        hits += iv.lo <= -0.04 <= iv.hi
    assert 0.90 <= hits / 300 <= 0.99, hits / 300


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pairs"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="expected_sign"):
        verdict(mean_interval([1.0, 2.0]), 0)
