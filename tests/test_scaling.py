"""Scaling fits: the Student-t quantile, recovery of known exponents within the interval (and the
interval's coverage), per-family fits and the plot."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_redllm.eval.scaling import fit_power_law, scaling_fits, student_t_cdf, student_t_ppf
from test_extrapolation import assert_valid_png


def test_t_quantiles_match_the_tables():
    # two-sided 95% critical values (any statistics table)
    for dof, t in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281), (30, 2.0423), (1000, 1.9623)]:
        assert student_t_ppf(0.975, dof) == pytest.approx(t, abs=1e-4)
    assert student_t_ppf(0.995, 4) == pytest.approx(4.6041, abs=1e-4)
    assert student_t_ppf(0.025, 7) == pytest.approx(-student_t_ppf(0.975, 7))
    assert student_t_cdf(student_t_ppf(0.8, 6), 6) == pytest.approx(0.8, abs=1e-10)
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 7, 50):
        for q in (0.6, 0.9, 0.975, 0.999):
            assert student_t_ppf(q, dof) == pytest.approx(stats.t.ppf(q, dof), rel=1e-8)


def test_recovers_known_exponents_within_the_interval():
    rng = np.random.default_rng(0)
    c = np.geomspace(1e15, 1e19, 6)
    for a, b in [(30.0, 0.20), (55.0, 0.24), (8.0, 0.05)]:
        loss = a * c ** (-b) * np.exp(rng.normal(0, 0.01, c.size))
        fit = fit_power_law(c, loss)
        lo, hi = fit.b_ci
        assert lo < b < hi
        assert fit.b == pytest.approx(b, abs=0.01)
        assert fit.a_ci[0] < a < fit.a_ci[1]
        assert hi - lo < 0.02  # a tight interval: the test would notice a fit that ignores the data
    exact = fit_power_law(c, 30.0 * c ** -0.2)
    assert exact.b == pytest.approx(0.2, abs=1e-12) and exact.a == pytest.approx(30.0, rel=1e-9)
    assert exact.r2 == pytest.approx(1.0)


def test_interval_coverage_is_nominal():
    """Over many noisy replicates with 5 points (3 degrees of freedom) the 95% interval holds the true
    exponent ~95% of the time: a normal quantile (1.96 instead of t = 3.18) would cover only ~86%,
    and an interval with a wrong standard error would miss by more."""
    rng = np.random.default_rng(1)
    c = np.geomspace(1e6, 1e9, 5)
    hits, n = 0, 600
    for _ in range(n):
        loss = 12.0 * c ** -0.24 * np.exp(rng.normal(0, 0.05, c.size))
        lo, hi = fit_power_law(c, loss).b_ci
        hits += lo < 0.24 < hi
    assert 0.92 <= hits / n <= 0.98


def test_fit_refuses_bad_input():
    for x, y in [([1.0], [1.0]), ([1.0, 2.0], [1.0, -1.0]), ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])]:
        with pytest.raises(ValueError):
            fit_power_law(x, y)
    two = fit_power_law([1.0, 10.0], [2.0, 1.0])
    assert two.b_ci is None and two.b == pytest.approx(math.log10(2.0))


def test_scaling_fits_per_family_and_plot(tmp_path):
    points = []
    for fam, biattn, b in [("decllm", False, 0.20), ("redllm", False, 0.24), ("decllm", True, 0.22)]:
        for i, n in enumerate([1e6, 3e6, 1e7, 3e7]):
            flops = 6 * n * 2e9
            points.append({"family": fam, "bidirectional_prefix": biattn, "parameters": n, "flops": flops,
                           "loss": 40.0 * flops ** -b * (1 + 0.003 * (-1) ** i)})
    res = scaling_fits(points)
    assert set(res["families"]) == {"decllm", "redllm", "decllm+biattn"}
    for fam, b in [("decllm", 0.20), ("redllm", 0.24), ("decllm+biattn", 0.22)]:
        f = res["families"][fam]["flops"]
        assert f["b_ci"][0] < b < f["b_ci"][1]
        assert res["families"][fam]["parameters"]["b"] == pytest.approx(b, abs=0.01)  # C proportional to N here
    single = scaling_fits([{"family": "redllm", "parameters": 1e6, "flops": 1e12, "loss": 3.0}])
    assert single["families"]["redllm"]["flops"] is None and "no fit" in single["families"]["redllm"]["note"]

    from lightning_redllm.eval.plots import plot_scaling

    (png,) = plot_scaling(res, tmp_path)
    assert png.name == "scaling.png"
    assert_valid_png(png)
    plot_scaling(single, tmp_path / "single")  # points without a fit still plot
    assert_valid_png(tmp_path / "single" / "scaling.png")
