"""Figures: seed-mean curves with ± s.e. bands, written as PNG and PDF.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no global backend
switch; saving uses the Agg/PDF canvases), styled with seaborn's context managers, and saved
without timestamps so reruns give identical files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analysis.tables import METHOD_ORDER, label

# Log axes cannot show values <= 0; float32 round-off makes some misalignments (e.g. CE to
# its own direction) exactly 0 or slightly negative. They are drawn at this floor instead.
LOG_FLOOR = 1e-10

_PALETTE = sns.color_palette("colorblind", 10)
# fixed colour per method, so a method looks the same in every figure
_COLORS = {m: _PALETTE[i] for i, m in enumerate(METHOD_ORDER)}


# DG's and CE's curves can lie on top of TPO's (Figs 3-4): dash them so both stay visible
_DASHES = {"dg": "--", "ce": "-."}


def color(method: str, fallback_index: int = 0):
    return _COLORS.get(method, _PALETTE[(len(METHOD_ORDER) + fallback_index) % len(_PALETTE)])


def linestyle(method: str) -> str:
    return _DASHES.get(method, "-")


@dataclass(frozen=True)
class Panel:
    metric: str  # metric name in the tidy frame
    ylabel: str
    title: str
    log: bool = True
    # values below this are numerical round-off (e.g. 2**-23 for a float32 1 - cos); the
    # region is shaded grey so near-zero curves are not read as signal
    resolution: float | None = None


@contextmanager
def style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
        yield


def curves_figure(
    curves: pd.DataFrame,
    panels: Sequence[Panel],
    methods: Sequence[str],
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
        for i, m in reversed(list(enumerate(methods))):
            c = sub[sub["method"] == m].sort_values("step")
            if c.empty:
                continue
            x = c["step"].to_numpy()
            y = c["mean"].to_numpy(dtype=float)
            se = np.nan_to_num(c["se"].to_numpy(dtype=float))
            lo, hi = y - se, y + se
            if panel.log:
                clipped = int(np.sum(y <= LOG_FLOOR))
                if clipped:
                    notes.append(
                        f"{label(m)} {panel.metric}: {clipped} of {len(y)} seed-mean points "
                        f"<= {LOG_FLOOR:g}"
                    )
                y, lo, hi = (np.maximum(v, LOG_FLOOR) for v in (y, lo, hi))
            col = color(m, i)
            ax.fill_between(x, lo, hi, color=col, alpha=0.2, linewidth=0)
            (handles[m],) = ax.plot(
                x, y, color=col, linestyle=linestyle(m), linewidth=1.5, label=label(m)
            )
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
    ordered = [m for m in methods if m in handles]
    fig.legend(
        [handles[m] for m in ordered],
        [label(m) for m in ordered],
        loc="outside lower center",
        ncol=max(1, len(ordered)),
        frameon=False,
    )
    if suptitle:
        fig.suptitle(suptitle, fontsize="medium")
    return fig, notes


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf``; returns the paths."""
    png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
    fig.savefig(png, dpi=150, metadata={"Software": None})
    fig.savefig(pdf, metadata={"CreationDate": None, "Producer": None})
    return [png, pdf]
