"""Tables: the one row type every artefact writes, its Markdown, the provenance header, the writer.

Every builder collects its numbers in ``Rows`` and writes them with ``write``: a CSV with
exactly ``ROW_COLUMNS`` (long format, one row per setting, method and metric) and a Markdown
file that starts with ``header`` (title, artefact, database, selection, runs used, git
commits). The columns:

* ``artifact``: the artefact id, i.e. the experiment preset (``table1_vocab``; the same at
  every scale); ``paper_item``: the paper's name for the item the number belongs to
  ("Table 1", "Fig 12", "App. B"), '' where the paper neither prints nor plots the quantity;
* ``setting``: the cell in words; ``method``, ``metric``;
* ``value``, ``se``, ``n_seeds``: the mean over seeds, its standard error (population std /
  sqrt(n_seeds), the paper's convention) and the seeds behind it; ``se``/``n_seeds`` empty
  where they do not apply (Appendix B's exact coefficients);
* ``episodes``: the run's training steps/episodes; ``B``: its batch size, where it has one;
* ``ci_low``, ``ci_high``: a 95% percentile bootstrap interval over seeds where computed (of
  the mean for a mean over seeds, of the crossing step for ``steps_to_*``: ``ci_high = inf``
  means the curve may never cross); empty elsewhere;
* ``target`` ... ``p`` (``KEY_FIELDS``): the cell as the preset requested it, the fields
  ``analysis/paper_numbers.csv`` keys the paper's numbers by (``analysis.paper``); empty
  where they do not apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from analysis import load, selection, stats
from analysis.methods import label
from analysis.paper import KEY_FIELDS

ROW_COLUMNS = [
    "artifact",
    "paper_item",
    "setting",
    "method",
    "metric",
    "value",
    "se",
    "n_seeds",
    "episodes",
    "B",
    "ci_low",
    "ci_high",
    *KEY_FIELDS,
]
_INTS = ("n_seeds", "episodes", "B", "H", "V", "K", "epochs")
_FLOATS = ("value", "se", "ci_low", "ci_high", "eta", "p")
NO_CI = (math.nan, math.nan)


def plain(v):
    """A database or numpy value as plain Python: None for missing, ints for integral counts."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        v = v.item()
    return v


def same(a, b) -> bool:
    """Two cell values agree: numbers to 1e-9 relative, anything else by equality."""
    a, b = plain(a), plain(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def matches(attrs: Mapping, sel: Mapping) -> bool:
    """Whether a cell's attributes agree with every ``sel`` field."""
    return all(same(attrs[k], v) for k, v in sel.items())


def key_of(labels: Mapping) -> dict:
    """The ``KEY_FIELDS`` of a cell's labels (``analysis.load`` / ``selection``), None where
    the cell has none."""
    return {f: plain(labels.get(f)) for f in KEY_FIELDS}


@dataclass(frozen=True)
class Cell:
    """What every row of one (cell, method) shares."""

    setting: str
    method: str
    episodes: int | None = None
    B: int | None = None
    key: Mapping = field(default_factory=dict)  # KEY_FIELDS -> value (missing: None)


class Rows:
    """The long-format rows of one artefact (``ROW_COLUMNS``), with what the long Markdown
    view (``markdown``) shows beside each: the formatted value and the paper's number."""

    def __init__(self, sweep: str, item: str = ""):
        self.artifact = selection.preset_of(sweep)
        self.item = item  # paper_item of the rows that name none
        self.rows: list[dict] = []
        self._shown: list[tuple[str | None, str]] = []

    def add(
        self,
        cell: Cell,
        metric: str,
        value: float,
        se: float = math.nan,
        n: int | None = None,
        ci: tuple[float, float] = NO_CI,
        item: str | None = None,
        shown: str | None = None,
        paper: str = "",
    ) -> None:
        """One row. ``shown``: the Markdown text of the value (default mean ± s.e.);
        ``paper``: the paper's number for the long Markdown view."""
        key = {f: plain(cell.key.get(f)) for f in KEY_FIELDS}
        self.rows.append(
            {
                "artifact": self.artifact,
                "paper_item": self.item if item is None else item,
                "setting": cell.setting,
                "method": cell.method,
                "metric": metric,
                "value": value,
                "se": se,
                "n_seeds": n,
                "episodes": plain(cell.episodes),
                "B": plain(cell.B),
                "ci_low": ci[0],
                "ci_high": ci[1],
                **key,
            }
        )
        self._shown.append((shown, paper))

    def over_seeds(
        self,
        cell: Cell,
        metric: str,
        values,
        scale: float = 1.0,
        keep_empty: bool = False,
        **kw,
    ) -> tuple[float, float, int]:
        """Mean ± s.e. and bootstrap CI of one value per seed (times ``scale``); no row when
        no seed has a finite value unless ``keep_empty``. Returns (mean, s.e., n)."""
        x = np.asarray(values, dtype=float) * scale
        mean, se, n = stats.mean_se(x)
        if n or keep_empty:
            self.add(cell, metric, mean, se, n, stats.bootstrap_ci(x), **kw)
        return mean, se, n

    def add_crossing(
        self,
        cell: Cell,
        metric: str,
        curves: pd.DataFrame,
        per_seed: pd.DataFrame,
        thr: float,
        item: str | None = None,
        paper: str = "",
    ) -> tuple[float, int]:
        """A ``steps_to_*`` row: the first step whose seed-mean curve (``curves``: step, mean,
        n_seeds) is below ``thr``, NaN ("never (≤ last step)") if none, with the bootstrap CI
        of that step from the per-seed curves (``per_seed``: run_id, seed, step, value).
        Returns (step, n_seeds)."""
        if curves.empty:
            hit, n, ci, shown = math.nan, 0, NO_CI, None
        else:
            y, steps = curves["mean"].to_numpy(), curves["step"].to_numpy()
            first = stats.steps_to_threshold(y, steps, thr)
            hit, n = (math.nan if first is None else float(first)), int(curves["n_seeds"].max())
            wide = per_seed.pivot_table(
                index=["run_id", "seed"], columns="step", values="value", dropna=False
            )
            ci = stats.crossing_ci(wide.to_numpy(dtype=float), wide.columns.to_numpy(), thr)
            shown = fmt_steps(hit, int(steps.max())) if first is None else None
        self.add(cell, metric, hit, n=n, ci=ci, item=item, shown=shown, paper=paper)
        return hit, n

    def frame(self) -> pd.DataFrame:
        """The rows as a frame with exactly ``ROW_COLUMNS`` and stable dtypes."""
        df = pd.DataFrame(self.rows, columns=ROW_COLUMNS)
        for c in _FLOATS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        for c in _INTS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
        return df

    def markdown(self, select: Iterable[int] | None = None) -> list[dict]:
        """The long Markdown view: one line per row (``select``: row indices)."""
        out = []
        for i in range(len(self.rows)) if select is None else select:
            r, (shown, paper) = self.rows[i], self._shown[i]
            if shown is None:
                shown = fmt_num(r["value"], r["se"])
            steps = r["metric"].startswith("steps_to_")
            out.append(
                {
                    "method": label(r["method"]),
                    "metric": r["metric"],
                    "mean ± s.e.": shown,
                    "95% CI (bootstrap)": fmt_ci(r["ci_low"], r["ci_high"], steps=steps),
                    "n_seeds": "—" if r["n_seeds"] is None else str(r["n_seeds"]),
                    "paper": paper or "—",
                }
            )
        return out


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 3) -> str:
    """Compact number for Markdown: scientific below 1e-2, '—' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = float(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits + 1}g}"


def fmt_num(mean: float, se: float = math.nan) -> str:
    return fmt(mean) + ("" if math.isnan(se) else f" ± {fmt(se, 2)}")


def fmt_pct(mean: float, se: float = math.nan, dash_above: float | None = None) -> str:
    """A percentage: three decimals below 0.1, two above; ``− (x)`` above ``dash_above``
    (the paper's "−" for a run that did not learn)."""
    if mean is None or math.isnan(mean):
        return "—"

    def f(x: float) -> str:
        if x != 0 and abs(x) < 1e-3:
            return f"{x:.1e}"
        return f"{x:.3f}" if abs(x) < 0.1 else f"{x:.2f}"

    text = f(mean) + ("" if se is None or math.isnan(se) else f" ± {f(se)}")
    if dash_above is not None and mean > dash_above:
        return f"− ({text})"
    return text


def fmt_steps(value: float, last: int | None = None) -> str:
    """A crossing step; NaN is "never" (within the run, up to step ``last``)."""
    if math.isnan(value):
        return f"never (≤ {last})" if last is not None else "never"
    return str(int(value))


def fmt_ci(lo: float, hi: float, steps: bool = False, show=fmt) -> str:
    """``[lo, hi]``; '—' when not computed. For a crossing step, ``inf`` is "never"."""
    if math.isnan(lo):
        return "—"
    if steps:
        return "[" + ", ".join("never" if math.isinf(v) else str(int(v)) for v in (lo, hi)) + "]"
    return f"[{show(lo)}, {show(hi)}]"


def markdown_table(rows: Sequence[Mapping] | pd.DataFrame) -> str:
    """GitHub Markdown table, cells shown as formatted (no re-parsing of numbers). Rows may
    have different keys: the columns are their union in first-seen order, '—' where absent."""
    if isinstance(rows, pd.DataFrame):
        df = rows
    else:
        if not rows:
            return "(no rows)"
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        df = pd.DataFrame([{c: r.get(c, "—") for c in cols} for r in rows], columns=cols)
    return df.to_markdown(index=False, disable_numparse=True)


# --------------------------------------------------------------------------------------------
# Provenance header and the writer
# --------------------------------------------------------------------------------------------


def scale_note(sweep: str) -> str:
    """`` (smoke)`` after a title for an artefact below paper scale."""
    scale = selection.scale_of(sweep)
    return "" if scale == selection.PAPER else f" ({scale})"


def header(
    title: str,
    sweep: str,
    settings: Iterable[str] = (),
    engine: Engine | None = None,
    info: pd.DataFrame | None = None,
    run_ids: Sequence[int] = (),
) -> list[str]:
    """The Markdown's first lines: the title (with the scale), the artefact and its settings,
    and, for an artefact read from a database, where its numbers come from (database,
    selection, runs used, computing sweeps, git commits: ``load.runs_line``)."""
    shown = sorted(set(settings))
    line = f"- artefact: `{sweep}`"
    if shown:
        line += f"; setting{'s' if len(shown) > 1 else ''}: {'; '.join(shown)}"
    lines = [f"# {title}{scale_note(sweep)}", "", line]
    if engine is not None:
        lines.append(load.runs_line(engine, sweep, info, run_ids))
    return lines


def write(out: Path, stem: str, df: pd.DataFrame, md: Sequence[str], figs: Sequence[Path]):
    """``<stem>.csv`` (``ROW_COLUMNS``; shortest round-trip floats) and ``<stem>.md`` into
    ``out``; the written paths, figures first, go to ``df.attrs["files"]``."""
    csv = out / f"{stem}.csv"
    df[ROW_COLUMNS].to_csv(csv, index=False)
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(md).rstrip("\n") + "\n", encoding="utf-8")
    df.attrs["files"] = [str(f) for f in [*figs, md_path, csv]]
    return df
