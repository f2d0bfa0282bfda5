"""Statistics over seeds.

The paper's convention (protocols, "Conventions"): mean over seeds and standard error
``s.e. = std(ddof=0) / sqrt(n_seeds)``, population std as the authors' code computes it.
Non-finite results are stored as NULL and read as NaN; they are left out and ``n_seeds``
counts only the seeds that contributed, so a diverged seed shows up as a smaller ``n_seeds``.

Alongside, honest-statistics helpers in the rliable spirit, seeded so tables are
reproducible: a percentile bootstrap 95% confidence interval of the mean over seeds
(``bootstrap_ci``) and of the step at which the seed-mean curve first crosses a threshold
(``crossing_ci``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """``(mean, s.e., n)`` over the finite values; ``s.e. = std(ddof=0)/sqrt(n)``.

    ``n = 0`` gives ``(nan, nan, 0)``; ``n = 1`` gives s.e. 0 (the paper's formula).
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    return float(x.mean()), float(x.std(ddof=0) / np.sqrt(n)), n


def seed_stats(df: pd.DataFrame, by: Sequence[str], value: str = "value") -> pd.DataFrame:
    """Mean, s.e. (ddof=0) and n_seeds of ``value`` over the rows of each ``by`` group.

    Each row is one seed's value (tidy frames from ``analysis.load``). Vectorised, so it is
    cheap for per-step curves (10k groups for Fig 4). Returns columns ``*by, mean, se,
    n_seeds``.
    """
    g = df.groupby(list(by), observed=True, sort=True)[value]
    mean = g.mean()
    std = g.std(ddof=0)
    n = g.count()
    out = pd.DataFrame({"mean": mean, "se": std / np.sqrt(n.where(n > 0)), "n_seeds": n})
    return out.reset_index()


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over seeds (finite values only).

    ``scipy.stats.bootstrap`` with ``method="percentile"``: it resamples the seeds with
    replacement ``n_boot`` times from ``numpy.random.default_rng(seed)`` and returns the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles of the resampled means. Fewer than two
    seeds give ``(nan, nan)``: there is nothing to resample.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    interval = scipy_stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=level,
        n_resamples=n_boot,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    ).confidence_interval
    return float(interval.low), float(interval.high)


def steps_to_threshold(
    curve_mean: Sequence[float] | np.ndarray,
    steps: Sequence[int] | np.ndarray,
    thr: float,
) -> int | None:
    """First step at which the seed-mean curve is strictly below ``thr``; None if never."""
    y = np.asarray(curve_mean, dtype=np.float64)
    s = np.asarray(steps)
    if y.shape != s.shape:
        raise ValueError(f"curve has shape {y.shape} but steps {s.shape}")
    order = np.argsort(s, kind="stable")
    below = np.flatnonzero(y[order] < thr)
    return None if below.size == 0 else int(s[order][below[0]])


def crossing_ci(
    curves: np.ndarray,
    steps: Sequence[int] | np.ndarray,
    thr: float,
    level: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
    chunk: int = 1_000,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``steps_to_threshold`` of the seed-mean curve.

    ``curves`` is ``[seeds, steps]``, one curve per seed (NaN where a seed has no value: it is
    left out of that step's mean). Each of ``n_boot`` resamples draws the seeds with
    replacement (``numpy.random.default_rng(seed)``, as ``bootstrap_ci``) and is kept as a row
    of counts, so the resampled seed-mean curves of a chunk of resamples are one product
    ``counts [chunk, seeds] @ curves [seeds, steps]``; a resample's statistic is the first
    step its mean curve is strictly below ``thr``, ``+inf`` where it never is. Returns the
    ``(1-level)/2`` and ``(1+level)/2`` quantiles by the inverted CDF (an observed crossing
    step, or ``inf``: ``hi = inf`` means the curve may never cross). Fewer than two seeds
    give ``(nan, nan)``.
    """
    y = np.asarray(curves, dtype=np.float64)
    s = np.asarray(steps)
    if y.ndim != 2 or y.shape[1] != s.shape[0]:
        raise ValueError(f"curves have shape {y.shape} but steps {s.shape}")
    n = y.shape[0]
    if n < 2:
        return float("nan"), float("nan")
    order = np.argsort(s, kind="stable")
    y, s = y[:, order], s[order].astype(np.float64)
    finite = np.isfinite(y)
    all_finite = bool(finite.all())
    values, present = np.where(finite, y, 0.0), finite.astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    # counts[b, i]: how often resample b drew seed i
    counts = np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(), minlength=n_boot * n)
    counts = counts.reshape(n_boot, n).astype(np.float64)
    hits = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        c = counts[start : start + chunk]
        if all_finite:
            mean = (c @ y) / n
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (c @ values) / (c @ present)  # no seed with a value at a step: NaN
        below = mean < thr
        first = np.argmax(below, axis=1)
        hits[start : start + chunk] = np.where(below.any(axis=1), s[first], np.inf)
    lo, hi = np.quantile(hits, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(lo), float(hi)
