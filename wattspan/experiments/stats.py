"""Statistics of repeated measurements: summaries, bootstrap intervals, outliers, rank test.

No scipy: the few pieces needed are short and are checked against published values in the
tests. Every random step takes a seed, so the same data always gives the same intervals.

* **Bootstrap CI** (percentile method): resample the values with replacement ``resamples``
  times, take the statistic of each resample, report its ``(1-level)/2`` and ``(1+level)/2``
  quantiles. With 5-10 repetitions it is a little narrower than nominal; it needs no
  normality, which run times (skewed right, with slow outliers) do not have.
* **Outliers**: modified z-score ``0.6745 (x - median) / MAD`` above 3.5 (Iglewicz and
  Hoaglin); where the MAD is 0 the mean absolute deviation (times 1.2533) stands in for it.
* **Mann-Whitney U** (two-sided): exact distribution for samples without ties up to 20 + 20
  values (counting arrangements), otherwise the normal approximation with the tie-corrected
  variance and a continuity correction, as scipy's ``method="asymptotic"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95
ALPHA = 0.05
OUTLIER_Z = 3.5
EXACT_MAX = 20


@dataclass(slots=True)
class Summary:
    n: int
    mean: float
    median: float
    sd: float
    min: float
    max: float
    ci_low: float
    ci_high: float
    #: indices (into the values given, in the order given) of the outliers
    outliers: list[int] = field(default_factory=list)
    hint: str | None = None

    @property
    def rel_ci(self) -> float:
        """Half the CI's width relative to the mean (0.05: +-5 %)."""
        if not self.mean or math.isnan(self.ci_low):
            return math.nan
        return (self.ci_high - self.ci_low) / 2.0 / abs(self.mean)


def _values(values: Sequence[float]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(v)], float)


def bootstrap_ci(
    values: Sequence[float],
    level: float = LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    statistic: str = "mean",
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (or ``"median"``); NaNs for under 2 values."""
    x = _values(values)
    if len(x) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    samples = x[idx]
    stats = samples.mean(axis=1) if statistic == "mean" else np.median(samples, axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mad_outliers(values: Sequence[float], threshold: float = OUTLIER_Z) -> list[int]:
    """Indices of the values whose modified z-score exceeds ``threshold``."""
    x = _values(values)
    if len(x) < 3:
        return []
    med = float(np.median(x))
    dev = np.abs(x - med)
    mad = float(np.median(dev))
    if mad > 0:
        z = 0.6745 * dev / mad
    else:
        mean_ad = float(dev.mean())
        if mean_ad == 0:
            return []
        z = dev / (1.253314 * mean_ad)
    return [int(i) for i in np.flatnonzero(z > threshold)]


def warmup_hint(values: Sequence[float], outliers: Sequence[int]) -> str | None:
    """A hint when the first measured repetitions look like they were still warming up:
    the first one is a slow outlier, or the first third is clearly slower than the rest."""
    x = _values(values)
    if len(x) < 3:
        return None
    med = float(np.median(x))
    if 0 in outliers and x[0] > med:
        return (
            f"the first measured repetition is a slow outlier ({x[0] / med - 1:+.0%} vs the "
            "median): the warm-up may be too short"
        )
    if len(x) >= 6:
        k = len(x) // 3
        head, tail = x[:k], x[k:]
        # Every early value above every later one would be U = len(head) * len(tail).
        u = mann_whitney(head, tail)
        if head.mean() > tail.mean() * 1.05 and u.p < ALPHA:
            return (
                f"the first {k} repetitions are {head.mean() / tail.mean() - 1:+.0%} slower "
                "than the rest: the warm-up may be too short"
            )
    return None


def describe(
    values: Sequence[float], seed: int = 0, resamples: int = DEFAULT_RESAMPLES
) -> Summary | None:
    """Summary of ``values`` in the order they were measured (None when there are none)."""
    x = _values(values)
    if len(x) == 0:
        return None
    lo, hi = bootstrap_ci(x, seed=seed, resamples=resamples)
    out = mad_outliers(x)
    return Summary(
        n=len(x),
        mean=float(x.mean()),
        median=float(np.median(x)),
        sd=float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        min=float(x.min()),
        max=float(x.max()),
        ci_low=lo,
        ci_high=hi,
        outliers=out,
        hint=warmup_hint(x, out),
    )


# -- Mann-Whitney U -----------------------------------------------------------------------


@dataclass(slots=True)
class RankTest:
    u: float  # U of the first sample: pairs where it is larger, ties counting one half
    p: float  # two-sided
    method: str  # "exact" or "normal"


def _ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mid-ranks (1-based) of ``x`` and the sizes of its groups of ties."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), float)
    sorted_x = x[order]
    ties = []
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        ties.append(j - i + 1)
        i = j + 1
    return ranks, np.asarray(ties, float)


@lru_cache(maxsize=64)
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """How many of the C(n1+n2, n1) arrangements give each U = 0..n1*n2 (no ties)."""
    # f[m][u] over n2 grows one element at a time: the recurrence
    # f(n1, n2, u) = f(n1 - 1, n2, u - n2) + f(n1, n2 - 1, u).
    table = [[[1]] + [[1] for _ in range(n2)]]  # table[a][b] = counts for (a, b); a = 0 row
    for a in range(1, n1 + 1):
        row = [[1]]  # b = 0: U is 0 in one way
        for b in range(1, n2 + 1):
            size = a * b + 1
            counts = [0] * size
            left = table[a - 1][b]  # last element from sample 1: it beats all b of sample 2
            for u, c in enumerate(left):
                counts[u + b] += c
            for u, c in enumerate(row[b - 1]):  # last element from sample 2
                counts[u] += c
            row.append(counts)
        table.append(row)
    return tuple(table[n1][n2])


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> RankTest:
    """Two-sided Mann-Whitney U test of ``a`` against ``b``."""
    x, y = _values(a), _values(b)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return RankTest(math.nan, math.nan, "none")
    ranks, ties = _ranks(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    has_ties = bool((ties > 1).any())
    if not has_ties and n1 <= EXACT_MAX and n2 <= EXACT_MAX:
        counts = _u_counts(n1, n2)
        total = math.comb(n1 + n2, n1)
        u = round(u1)
        lower = sum(counts[: u + 1]) / total
        upper = sum(counts[u:]) / total
        return RankTest(u1, min(1.0, 2.0 * min(lower, upper)), "exact")
    n = n1 + n2
    mu = n1 * n2 / 2.0
    tie_term = float((ties**3 - ties).sum()) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:
        return RankTest(u1, 1.0, "normal")
    z = (abs(u1 - mu) - 0.5) / math.sqrt(var)
    p = math.erfc(max(z, 0.0) / math.sqrt(2.0))
    return RankTest(u1, min(1.0, p), "normal")


def u_variance(n1: int, n2: int, ties: Sequence[int]) -> float:
    """The tie-corrected variance of U under the null (what :func:`mann_whitney` uses)."""
    t = np.asarray(ties, float)
    n = n1 + n2
    return n1 * n2 / 12.0 * ((n + 1) - float((t**3 - t).sum()) / (n * (n - 1)))


# -- against a baseline ---------------------------------------------------------------------


@dataclass(slots=True)
class Versus:
    """A configuration against its baseline for one metric."""

    ratio: float  # mean / baseline mean
    ci_low: float
    ci_high: float
    u: float
    p: float
    method: str
    verdict: str  # "lower", "higher" or "no significant difference"


def ratio_ci(
    a: Sequence[float],
    b: Sequence[float],
    level: float = LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """mean(a) / mean(b) and its percentile bootstrap interval (both resampled)."""
    x, y = _values(a), _values(b)
    if len(x) == 0 or len(y) == 0 or y.mean() == 0:
        return (math.nan, math.nan, math.nan)
    ratio = float(x.mean() / y.mean())
    if len(x) < 2 or len(y) < 2:
        return (ratio, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    my = y[rng.integers(0, len(y), size=(resamples, len(y)))].mean(axis=1)
    ok = my != 0
    r = mx[ok] / my[ok]
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return ratio, float(lo), float(hi)


def versus(
    a: Sequence[float], baseline: Sequence[float], seed: int = 0, alpha: float = ALPHA
) -> Versus | None:
    """``a`` against ``baseline``: ratio of means with its CI, and the rank test's verdict."""
    if len(_values(a)) == 0 or len(_values(baseline)) == 0:
        return None
    ratio, lo, hi = ratio_ci(a, baseline, seed=seed)
    t = mann_whitney(a, baseline)
    if not math.isnan(t.p) and t.p < alpha and not math.isnan(ratio) and ratio != 1.0:
        verdict = "lower" if ratio < 1.0 else "higher"
    else:
        verdict = "no significant difference"
    return Versus(ratio, lo, hi, t.u, t.p, t.method, verdict)


def verdict_words(metric: str, verdict: str) -> str:
    """``lower``/``higher`` in the words of the metric (faster / slower for times)."""
    if verdict not in ("lower", "higher"):
        return verdict
    if "latency" in metric:
        return "lower latency" if verdict == "lower" else "higher latency"
    if metric.endswith("_per_second"):
        return "lower throughput" if verdict == "lower" else "higher throughput"
    if metric.endswith("_per_joule"):
        return "less per joule" if verdict == "lower" else "more per joule"
    if metric.endswith("seconds"):
        return "faster" if verdict == "lower" else "slower"
    if "energy" in metric or metric.endswith("joules"):
        return "less energy" if verdict == "lower" else "more energy"
    if metric.endswith("bytes"):
        return "less memory" if verdict == "lower" else "more memory"
    return verdict
