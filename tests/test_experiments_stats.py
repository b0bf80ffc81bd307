"""Statistics of the experiments harness against published values and known distributions.

Mann-Whitney U: the exact and asymptotic p-values of scipy's documented example (the
``males``/``females`` data of ``scipy.stats.mannwhitneyu``: U = 17, exact p = 1/9, asymptotic
p = 0.11134688653314041), the all-separated case (p = 2 / C(10, 5)), a brute-force count of
every arrangement for the exact distribution, and the tie-corrected variance against the
exact permutation variance of U. Bootstrap: the 95 % interval of seeded normal samples
contains the true mean in the large majority of trials, and is not so wide that it always does.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from wattspan.experiments import stats
from wattspan.experiments.model import ModelError, fit, parse_assignments

MALES = [19, 22, 16, 29, 24]
FEMALES = [20, 11, 17, 12]


def test_mann_whitney_matches_scipy_documented_example() -> None:
    t = stats.mann_whitney(MALES, FEMALES)
    assert t.method == "exact"
    assert t.u == 17.0
    assert t.p == pytest.approx(1 / 9, rel=1e-12)


def test_mann_whitney_normal_approximation_matches_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "EXACT_MAX", 0)  # force the asymptotic path on the same data
    t = stats.mann_whitney(MALES, FEMALES)
    assert t.method == "normal"
    assert t.p == pytest.approx(0.11134688653314041, rel=1e-9)


def test_mann_whitney_fully_separated_samples() -> None:
    t = stats.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert t.u == 0.0
    assert t.p == pytest.approx(2 / math.comb(10, 5))
    assert stats.mann_whitney([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]).u == 25.0


def _brute_force_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact p by enumerating every split of the pooled values."""
    pooled = a + b
    n1 = len(a)

    def u_of(x: list[float], y: list[float]) -> float:
        return sum((xi > yj) + 0.5 * (xi == yj) for xi in x for yj in y)

    u_obs = u_of(a, b)
    us = []
    for idx in itertools.combinations(range(len(pooled)), n1):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        us.append(u_of(x, y))
    lower = sum(u <= u_obs for u in us) / len(us)
    upper = sum(u >= u_obs for u in us) / len(us)
    return min(1.0, 2 * min(lower, upper))


def test_exact_distribution_equals_enumeration() -> None:
    rng = np.random.default_rng(3)
    for n1, n2 in ((3, 4), (5, 5), (2, 7), (6, 4)):
        a = rng.normal(0, 1, n1).tolist()
        b = rng.normal(0.8, 1, n2).tolist()
        t = stats.mann_whitney(a, b)
        assert t.method == "exact"
        assert t.p == pytest.approx(_brute_force_p(a, b), abs=1e-12)


def test_tie_corrected_variance_is_the_exact_permutation_variance() -> None:
    a = [1.0, 2.0, 2.0, 3.0, 5.0]
    b = [2.0, 3.0, 3.0, 4.0, 5.0, 5.0]
    pooled = a + b
    us = []
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        us.append(sum((xi > yj) + 0.5 * (xi == yj) for xi in x for yj in y))
    ties = [list(pooled).count(v) for v in sorted(set(pooled))]
    assert stats.u_variance(len(a), len(b), ties) == pytest.approx(statistics.pvariance(us))
    t = stats.mann_whitney(a, b)
    assert t.method == "normal"  # ties: no exact table
    assert 0.0 < t.p < 1.0


def test_bootstrap_ci_covers_the_true_mean_in_most_seeded_trials() -> None:
    rng = np.random.default_rng(12345)
    trials, hits = 200, 0
    widths = []
    for i in range(trials):
        x = rng.normal(10.0, 2.0, 20)
        lo, hi = stats.bootstrap_ci(x, seed=i, resamples=1000)
        hits += lo <= 10.0 <= hi
        widths.append(hi - lo)
    coverage = hits / trials
    # Nominal 95 %; the percentile bootstrap with n = 20 is a little under it.
    assert 0.85 <= coverage <= 0.99, coverage
    # The width is what a t interval would give (2 * 2.09 * 2 / sqrt(20) ~ 1.87), not more.
    assert 1.4 < float(np.mean(widths)) < 2.0


def test_bootstrap_is_seeded() -> None:
    x = [1.03, 2.71, 3.14, 4.47, 10.2, 0.57, 6.62, 1.41]
    assert stats.bootstrap_ci(x, seed=7) == stats.bootstrap_ci(x, seed=7)
    assert stats.bootstrap_ci(x, seed=7) != stats.bootstrap_ci(x, seed=8)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0]))


def test_describe_and_outliers() -> None:
    x = [1.00, 1.02, 0.98, 1.01, 0.99, 1.60]
    s = stats.describe(x)
    assert s is not None
    assert s.n == 6
    assert s.mean == pytest.approx(statistics.mean(x))
    assert s.median == pytest.approx(statistics.median(x))
    assert s.sd == pytest.approx(statistics.stdev(x))
    assert (s.min, s.max) == (0.98, 1.60)
    assert s.outliers == [5]
    assert s.ci_low < s.mean < s.ci_high
    assert stats.mad_outliers([1.0, 1.01, 0.99, 1.0]) == []


def test_warmup_hint_for_a_slow_first_repetition() -> None:
    slow_first = [1.5, 1.0, 1.01, 0.99, 1.0, 1.02]
    s = stats.describe(slow_first)
    assert s is not None and s.outliers == [0]
    assert s.hint is not None and "warm-up" in s.hint
    steady = stats.describe([1.0, 1.01, 0.99, 1.0, 1.02, 0.98])
    assert steady is not None and steady.hint is None
    # A slow last repetition is an outlier but says nothing about the warm-up.
    late = stats.describe([1.0, 1.01, 0.99, 1.0, 1.02, 1.5])
    assert late is not None and late.outliers == [5] and late.hint is None


def test_versus_baseline_verdicts() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(1.0, 0.02, 10)
    faster = rng.normal(0.8, 0.02, 10)
    same = rng.normal(1.0, 0.02, 10)
    v = stats.versus(faster, base, seed=0)
    assert v is not None and v.verdict == "lower"
    assert v.ci_low < v.ratio < v.ci_high and v.ci_high < 1.0
    assert v.ratio == pytest.approx(faster.mean() / base.mean())
    assert stats.verdict_words("wall_seconds", v.verdict) == "faster"
    w = stats.versus(base, faster, seed=0)
    assert w is not None and w.verdict == "higher"
    n = stats.versus(same, base, seed=0)
    assert n is not None and n.verdict == "no significant difference"
    assert n.ci_low < 1.0 < n.ci_high


def test_model_fits_linear_scaling_and_predicts_held_out_value() -> None:
    rng = np.random.default_rng(0)
    data = []
    for n in (1000, 4000):  # 2000 is held out
        for impl, k in (("a", 0.0), ("b", 0.01)):
            for _ in range(5):
                data.append(({"n": n, "impl": impl}, 0.02 + k + 1e-5 * n + rng.normal(0, 1e-4)))
    m = fit(data, "wall_seconds", ["n", "impl"], method="linear")
    assert m.encoding.numeric == {"n": "lin"}
    for impl, k in (("a", 0.0), ("b", 0.01)):
        true = 0.02 + k + 1e-5 * 2000
        assert m.predict({"n": 2000, "impl": impl}) == pytest.approx(true, rel=0.02)
    assert m.cv_r2 > 0.95 and m.cv_mape < 0.05
    with pytest.raises(ModelError, match="impl"):
        m.predict({"n": 2000, "impl": "c"})


def test_model_finds_a_logarithmic_parameter() -> None:
    data = [({"n": n}, 1.0 + 0.5 * math.log(n)) for n in (10, 100, 1000, 10000) for _ in range(3)]
    m = fit(data, "t", ["n"], method="linear")
    assert m.encoding.numeric == {"n": "log"}
    assert m.predict({"n": 300}) == pytest.approx(1.0 + 0.5 * math.log(300), rel=1e-6)


def test_parse_assignments() -> None:
    assert parse_assignments(["n=10,impl=hash", "x=1.5", "ok=true"]) == {
        "n": 10,
        "impl": "hash",
        "x": 1.5,
        "ok": True,
    }
    with pytest.raises(ModelError):
        parse_assignments(["novalue"])
