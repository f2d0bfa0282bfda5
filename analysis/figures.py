"""The plotting kit: curves with ± s.e. bands, curve grids, grouped bars, style, saving.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no global backend
switch; saving uses the Agg/PDF canvases), styled with seaborn's context managers, and saved
without timestamps or software versions so that a rerun on the same data writes the same
bytes. A method's colour and line style come from ``analysis.methods``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analysis import methods
from analysis.tables import matches

# Log axes cannot show values <= 0; float32 round-off makes some misalignments (e.g. CE to
# its own direction) exactly 0 or slightly negative. They are drawn at this floor instead.
LOG_FLOOR = 1e-10

PALETTE = sns.color_palette("colorblind", 10)


def color(method: str, fallback_index: int = 0):
    return PALETTE[methods.color_index(method, fallback_index) % len(PALETTE)]


def linestyle(method: str) -> str:
    return methods.linestyle(method)


@contextmanager
def style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
        yield


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` without creation dates or software
    versions (the same data gives the same bytes); returns the paths."""
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    fig.savefig(png, dpi=150, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    return [png, pdf]


def draw(out_dir: Path, stem: str, make: Callable[[], Figure]) -> list[Path]:
    """``make()`` the figure in the house style and ``save`` it."""
    with style():
        return save(make(), out_dir, stem)


# --------------------------------------------------------------------------------------------
# One line per method
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    key: str  # legend key (a method, or e.g. "eta=0.5")
    label: str
    color: object
    linestyle: str = "-"
    rank: int = 0  # legend position


def by_method(method: str, labels: Mapping[str, str] | None = None, index: int = 0) -> Series:
    """A method's series as ``analysis.methods`` draws it (``labels``: figure-specific legend
    text, e.g. "TPO (4 ep)")."""
    return Series(
        method,
        (labels or {}).get(method, methods.label(method)),
        color(method, index),
        linestyle(method),
        methods.rank(method),
    )


def draw_curve(ax, x, mean, se, s: Series, smooth=None, floor: float | None = None, lw=1.4):
    """``mean`` with a ``mean ± se`` band (both smoothed by ``smooth``; clipped below at
    ``floor`` for a log axis); returns the line."""
    y = np.asarray(mean, dtype=float)
    e = np.nan_to_num(np.asarray(se, dtype=float))
    if smooth is not None:
        y, e = smooth(y), smooth(e)
    lo, hi = y - e, y + e
    if floor is not None:
        y, lo, hi = (np.maximum(v, floor) for v in (y, lo, hi))
    ax.fill_between(x, lo, hi, color=s.color, alpha=0.18, linewidth=0)
    (h,) = ax.plot(x, y, color=s.color, linestyle=s.linestyle, linewidth=lw, label=s.label)
    return h


def legend(fig, handles: Mapping[str, tuple], ncol: int | None = None) -> None:
    """One legend below the panels: ``handles[key] = (artist, label, rank)``, by rank."""
    if not handles:
        return
    items = sorted(handles.values(), key=lambda t: t[2])
    fig.legend(
        [h for h, _, _ in items],
        [lab for _, lab, _ in items],
        loc="outside lower center",
        ncol=ncol or min(len(items), 6),
        frameon=False,
    )


# --------------------------------------------------------------------------------------------
# Curves by metric (bandits, MNIST) and grids of curves by cell (token reversal)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    metric: str  # metric name in the tidy frame
    ylabel: str
    title: str
    log: bool = True
    # values below this are numerical round-off (e.g. 2**-23 for a float32 1 - cos); the
    # region is shaded grey so near-zero curves are not read as signal
    resolution: float | None = None


def curves_figure(
    curves: pd.DataFrame,
    panels: Sequence[Panel],
    order: Sequence[str],
    suptitle: str | None = None,
) -> tuple[Figure, list[str]]:
    """One panel per metric, one line per method: ``mean`` with a ``mean ± se`` band vs step.

    ``curves`` has columns method, name, step, mean, se (``analysis.stats.seed_stats``).
    Methods are drawn in reverse order so the first (TPO) is on top; the legend keeps the
    given order. Returns the figure and notes on values clipped to ``LOG_FLOOR`` (for the
    caption).
    """
    notes: list[str] = []
    fig = Figure(figsize=(4.6 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    x_max = curves["step"].max() if len(curves) else 1
    for ax, panel in zip(axes, panels, strict=True):
        sub = curves[curves["name"] == panel.metric]
        for i, m in reversed(list(enumerate(order))):
            c = sub[sub["method"] == m].sort_values("step")
            if c.empty:
                continue
            y = c["mean"].to_numpy(dtype=float)
            if panel.log:
                clipped = int(np.sum(y <= LOG_FLOOR))
                if clipped:
                    notes.append(
                        f"{methods.label(m)} {panel.metric}: {clipped} of {len(y)} seed-mean "
                        f"points <= {LOG_FLOOR:g}"
                    )
            s = by_method(m, index=i)
            floor = LOG_FLOOR if panel.log else None
            handles[m] = draw_curve(ax, c["step"].to_numpy(), y, c["se"], s, floor=floor, lw=1.5)
        if panel.log:
            ax.set_yscale("log")
        if panel.resolution is not None:
            bottom = LOG_FLOOR / 2 if panel.log else 0.0
            ax.axhspan(bottom, panel.resolution, color="0.85", zorder=0, linewidth=0)
            ax.text(
                0.01,
                panel.resolution,
                "round-off",
                transform=ax.get_yaxis_transform(),
                ha="left",
                va="bottom",
                fontsize="small",
                color="0.4",
            )
        ax.set_xlim(0, x_max)
        ax.set_xlabel("step")
        ax.set_ylabel(panel.ylabel)
        ax.set_title(panel.title)
    shown = [m for m in order if m in handles]
    legend(fig, {m: (handles[m], methods.label(m), i) for i, m in enumerate(shown)}, len(shown))
    if suptitle:
        fig.suptitle(suptitle, fontsize="medium")
    return fig, notes


def curve_grid(
    cells: Mapping[int, dict],
    curves: pd.DataFrame,
    rows: Sequence[tuple[str, dict]],
    cols: Sequence[tuple[str, dict]],
    series: Callable[[dict], Series],
    smooth=None,
    ylim: tuple[float, float | None] | None = (0.0, 1.05),
    ylabel: str = "error",
    suptitle: str | None = None,
) -> Figure:
    """A rows x cols grid of seed-mean ± s.e. curves vs episode (linear axes). ``cells``:
    cell id -> attributes; ``curves``: cell, step, mean, se. A panel holds the cells matching
    its row's and column's selections, one curve per cell, styled by ``series(attributes)``."""
    nr, nc = max(1, len(rows)), max(1, len(cols))
    fig = Figure(figsize=(0.6 + 3.1 * nc, 0.9 + 2.5 * nr), layout="constrained")
    axes = fig.subplots(nr, nc, squeeze=False, sharex=True, sharey=True)
    handles: dict[str, tuple] = {}
    x_max = 1
    for i, (rlabel, rsel) in enumerate(rows or [("", {})]):
        for j, (clabel, csel) in enumerate(cols or [("", {})]):
            ax = axes[i][j]
            here = [c for c, a in cells.items() if matches(a, {**rsel, **csel})]
            for c in reversed(here):
                cv = curves[curves["cell"] == c].sort_values("step")
                if cv.empty:
                    continue
                s = series(cells[c])
                h = draw_curve(ax, cv["step"].to_numpy(), cv["mean"], cv["se"], s, smooth)
                handles.setdefault(s.key, (h, s.label, s.rank))
                x_max = max(x_max, int(cv["step"].max()))
            if not here:
                ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", color="0.5")
            if i == 0 and clabel:
                ax.set_title(clabel, fontsize="medium")
            if j == 0:
                ax.set_ylabel(f"{rlabel}\n{ylabel}" if rlabel else ylabel)
            if i == nr - 1:
                ax.set_xlabel("episode")
    for ax in axes.flat:
        ax.set_xlim(0, x_max)
        if ylim is not None:
            ax.set_ylim(*ylim)
    legend(fig, handles)
    if suptitle:
        fig.suptitle(suptitle, fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------
# Bars
# --------------------------------------------------------------------------------------------


def bar_chart(ax, groups: list[str], series: list[Series], values: dict, ylabel: str):
    """Grouped bars: ``values[(group, series.key)] = (mean, se)``; missing bars are skipped.
    A series whose colour an earlier one has (DG and DG (4 ep)) is hatched. Returns the
    legend handles."""
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    handles = {}
    seen: list = []
    for k, s in enumerate(series):
        hatched = any(s.color == c for c in seen)
        seen.append(s.color)
        xs, ys, es = [], [], []
        for g_i, g in enumerate(groups):
            if (g, s.key) in values:
                mean, se = values[(g, s.key)]
                xs.append(x[g_i] - 0.4 + width * (k + 0.5))
                ys.append(mean)
                es.append(0.0 if math.isnan(se) else se)
        if xs:
            h = ax.bar(
                xs,
                ys,
                width=width * 0.95,
                yerr=es,
                capsize=2.5,
                color=s.color,
                label=s.label,
                hatch="//" if hatched else None,
                edgecolor="0.2" if hatched else "white",
                linewidth=0.5,
            )
            handles[s.key] = (h, s.label, s.rank)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    return handles
