"""A performance model: a measured figure as a function of the experiment's parameters.

``linear``: least squares (numpy) on an intercept, each numeric parameter transformed as
``p``, ``log p`` or both, and each categorical parameter one-hot encoded. The transform of
every numeric parameter is chosen by cross-validated MAPE among those candidates, so
``time = a + b * rows`` and ``time = a + b * log(rows)`` are both found where they fit.
``gbr``: scikit-learn's gradient boosting on the raw parameters (when scikit-learn is
installed). ``auto`` fits both where it can and keeps the one with the lower CV MAPE.

Cross-validation holds out whole configurations (k folds over the distinct parameter
combinations, k = min(folds, configurations)), so the reported R² and MAPE say how well the
model predicts a configuration it has not seen; with fewer than three configurations the
folds are over repetitions instead.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHODS = ("auto", "linear", "gbr")
ALIASES = {
    "time": "wall_seconds",
    "wall": "wall_seconds",
    "cpu": "cpu_seconds",
    "energy": "energy_joules",
    "memory": "peak_rss_bytes",
    "rss": "peak_rss_bytes",
    "throughput": "events_per_second",
    "latency": "window_latency_p99_seconds",
}
_COMPLEXITY = {"lin": 0, "log": 1, "lin+log": 2}
#: relative CV error within which a simpler transform is preferred
SIMPLER_MARGIN = 0.05
#: more candidate transform combinations than this: every numeric parameter gets ``lin+log``
MAX_CANDIDATES = 81


class ModelError(ValueError):
    """The data cannot give a model (no rows, a target never measured, bad parameters)."""


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(slots=True)
class Encoding:
    """How parameters become a feature row."""

    numeric: dict[str, str]  # name -> "lin" | "log" | "lin+log"
    categorical: dict[str, list[Any]]  # name -> levels (the first is the reference)

    def names(self) -> list[str]:
        out = ["1"]
        for p, t in self.numeric.items():
            if "lin" in t.split("+"):
                out.append(p)
            if "log" in t.split("+"):
                out.append(f"log({p})")
        for p, levels in self.categorical.items():
            out += [f"{p}={lv}" for lv in levels[1:]]
        return out

    def row(self, params: Mapping[str, Any]) -> list[float]:
        out = [1.0]
        for p, t in self.numeric.items():
            if p not in params:
                raise ModelError(f"give a value for {p}")
            v = params[p]
            if not _is_num(v):
                raise ModelError(f"{p} must be a number, got {v!r}")
            parts = t.split("+")
            if "lin" in parts:
                out.append(float(v))
            if "log" in parts:
                if v <= 0:
                    raise ModelError(f"{p} = {v} has no logarithm (the model uses log({p}))")
                out.append(math.log(v))
        for p, levels in self.categorical.items():
            if p not in params:
                raise ModelError(f"give a value for {p} (one of {', '.join(map(str, levels))})")
            v = params[p]
            if v not in levels:
                raise ModelError(f"{p} = {v!r} was not measured ({', '.join(map(str, levels))})")
            out += [1.0 if v == lv else 0.0 for lv in levels[1:]]
        return out

    def raw_row(self, params: Mapping[str, Any]) -> list[float]:
        """Untransformed features (for tree models): numbers as they are, one-hot levels."""
        out = []
        for p in self.numeric:
            if p not in params or not _is_num(params[p]):
                raise ModelError(f"give a number for {p}")
            out.append(float(params[p]))
        for p, levels in self.categorical.items():
            v = params.get(p)
            if v not in levels:
                raise ModelError(f"{p} = {v!r} was not measured ({', '.join(map(str, levels))})")
            out += [1.0 if v == lv else 0.0 for lv in levels]
        return out


@dataclass(slots=True)
class Model:
    target: str
    method: str
    encoding: Encoding
    n_rows: int
    n_configs: int
    folds: int
    cv_r2: float
    cv_mape: float
    coef: list[float] = field(default_factory=list)
    _gbr: Any = None
    alternatives: dict[str, dict[str, float]] = field(default_factory=dict)

    def predict(self, params: Mapping[str, Any]) -> float:
        if self.method == "gbr":
            return float(self._gbr.predict(np.asarray([self.encoding.raw_row(params)]))[0])
        return float(np.dot(self.encoding.row(params), self.coef))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": self.target,
            "method": self.method,
            "rows": self.n_rows,
            "configurations": self.n_configs,
            "folds": self.folds,
            "cv_r2": self.cv_r2,
            "cv_mape": self.cv_mape,
            "transforms": self.encoding.numeric,
            "categories": self.encoding.categorical,
            "alternatives": self.alternatives,
        }
        if self.method == "linear":
            d["coefficients"] = dict(zip(self.encoding.names(), self.coef, strict=True))
        return d


def _have_sklearn() -> bool:
    try:
        import sklearn.ensemble  # noqa: F401
    except ImportError:
        return False
    return True


def _folds(groups: list[str], k: int, seed: int) -> list[np.ndarray]:
    """Index arrays of the held-out rows of each fold (whole groups held out together)."""
    distinct = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = [distinct[i] for i in rng.permutation(len(distinct))]
    which = {g: i % k for i, g in enumerate(order)}
    g = np.asarray([which[x] for x in groups])
    return [np.flatnonzero(g == f) for f in range(k)]


def _scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - pred) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else -math.inf)
    nz = y != 0
    mape = float(np.mean(np.abs((y[nz] - pred[nz]) / y[nz]))) if nz.any() else math.nan
    return r2, mape


def _lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return coef


def _cv_linear(
    enc: Encoding, params: list[Mapping[str, Any]], y: np.ndarray, folds: list[np.ndarray]
) -> tuple[float, float]:
    x = np.asarray([enc.row(p) for p in params])
    pred = np.empty_like(y)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        pred[test] = x[test] @ _lstsq(x[train], y[train])
    return _scores(y, pred)


def _gbr_model(seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(random_state=seed, n_estimators=200, max_depth=2)


def _cv_gbr(
    enc: Encoding,
    params: list[Mapping[str, Any]],
    y: np.ndarray,
    folds: list[np.ndarray],
    seed: int,
) -> tuple[float, float]:
    x = np.asarray([enc.raw_row(p) for p in params])
    pred = np.empty_like(y)
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        pred[test] = _gbr_model(seed).fit(x[train], y[train]).predict(x[test])
    return _scores(y, pred)


def fit(
    data: Sequence[tuple[Mapping[str, Any], float]],
    target: str,
    parameters: Sequence[str] | None = None,
    method: str = "auto",
    folds: int = 5,
    seed: int = 0,
) -> Model:
    """Fits ``target`` on the parameters of ``data`` (``(params, value)`` per repetition)."""
    if method not in METHODS:
        raise ModelError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if method == "gbr" and not _have_sklearn():
        raise ModelError("method gbr needs scikit-learn: pip install scikit-learn")
    rows = [(p, float(v)) for p, v in data if _is_num(v) and math.isfinite(v)]
    if not rows:
        raise ModelError(f"no measured values of {target}")
    names = list(parameters) if parameters is not None else list(rows[0][0])
    numeric: dict[str, list[str]] = {}
    categorical: dict[str, list[Any]] = {}
    for p in names:
        values = [r[0].get(p) for r in rows]
        distinct = list(dict.fromkeys(json.dumps(v) for v in values))
        if len(distinct) < 2:
            continue  # constant here: nothing to learn from it
        if all(_is_num(v) for v in values):
            cands = ["lin"]
            if all(v > 0 for v in values):
                cands += ["log", "lin+log"]
            numeric[p] = cands
        else:
            categorical[p] = [json.loads(d) for d in distinct]
    params = [r[0] for r in rows]
    y = np.asarray([r[1] for r in rows])
    groups = [json.dumps({p: r[0].get(p) for p in names}, sort_keys=True) for r in rows]
    n_configs = len(set(groups))
    if n_configs >= 3:
        k = max(2, min(folds, n_configs))
        fold_idx = _folds(groups, k, seed)
    else:
        k = max(2, min(folds, len(rows)))
        fold_idx = _folds([str(i) for i in range(len(rows))], k, seed)
    if len(rows) < 2:
        raise ModelError("a model needs at least two measured repetitions")

    combos = list(itertools.product(*numeric.values()))
    if len(combos) > MAX_CANDIDATES:
        combos = [tuple("lin+log" if "lin+log" in c else "lin" for c in numeric.values())]
    scored = []
    for combo in combos:
        enc = Encoding(dict(zip(numeric, combo, strict=True)), categorical)
        r2, mape = _cv_linear(enc, params, y, fold_idx)
        score = mape if math.isfinite(mape) else -r2
        scored.append((score, sum(_COMPLEXITY[t] for t in combo), enc))
    # Occam: the simplest transforms whose CV error is within SIMPLER_MARGIN of the best.
    # With two values of a parameter, p and log(p) fit equally well and only noise would
    # choose between them.
    top = min(s for s, _, _ in scored)
    near = [t for t in scored if t[0] <= top + SIMPLER_MARGIN * max(abs(top), 1e-12)]
    enc = min(near, key=lambda t: (t[1], t[0]))[2]
    lin_r2, lin_mape = _cv_linear(enc, params, y, fold_idx)
    x = np.asarray([enc.row(p) for p in params])
    model = Model(
        target=target,
        method="linear",
        encoding=enc,
        n_rows=len(rows),
        n_configs=n_configs,
        folds=len(fold_idx),
        cv_r2=lin_r2,
        cv_mape=lin_mape,
        coef=_lstsq(x, y).tolist(),
    )
    model.alternatives["linear"] = {"cv_r2": lin_r2, "cv_mape": lin_mape}
    if method in ("auto", "gbr") and _have_sklearn():
        raw = Encoding(dict.fromkeys(numeric, "lin"), categorical)
        g_r2, g_mape = _cv_gbr(raw, params, y, fold_idx, seed)
        model.alternatives["gbr"] = {"cv_r2": g_r2, "cv_mape": g_mape}
        if method == "gbr" or (math.isfinite(g_mape) and g_mape < lin_mape):
            xr = np.asarray([raw.raw_row(p) for p in params])
            model.method, model.encoding, model.coef = "gbr", raw, []
            model.cv_r2, model.cv_mape = g_r2, g_mape
            model._gbr = _gbr_model(seed).fit(xr, y)
    return model


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["rows=1000", "impl=hash"]`` as a dict; values parsed as TOML literals where they
    parse (numbers, booleans, quoted strings), else taken as strings."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                raise ModelError(f"expected NAME=VALUE, got {part!r}")
            try:
                out[k.strip()] = tomllib.loads(f"v = {v.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                out[k.strip()] = v.strip()
    return out
