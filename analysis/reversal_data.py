"""Token reversal: the cell model, per-seed statistics and the standard table of its builders.

The builders (``reversal_terminal``: Fig 1b, Table 3, Fig 9; ``reversal_dense``: Tables 1,
2, 5, Fig 18; ``reversal_diagnostics``: Figs 11-16) read an artefact's runs with
``load_sweep``: one *cell* per distinct requested configuration (``ATTRS``), in display
order, with its tidy metrics. Conventions (``paper_protocols.md`` §3.4, §4.5-4.13):

* ``error`` at step t is episode t's error (0-based), measured on that episode's rollouts
  before its update.
* ``final_error_pct`` = 100 x the seed-mean error at the **last** episode (the authors' npz
  confirms this for Table 3); s.e. = population std / sqrt(n_seeds), also x 100.
* ``steps_to_1pct`` = the first episode whose **seed-mean** error is below 0.01; NaN in the
  CSV when it never is ("never" in the Markdown, as ``paper_numbers.csv`` writes it), with a
  bootstrap interval of that episode over seeds.
* The Markdown's paper column is ``analysis.paper.lookup`` for the artefact, method and
  metric in the cell's key fields that the artefact varies (V for Table 1; target, reward and
  matching for Table 2; H and matching for Table 3; K for Fig 13; epochs for Fig 16; η for
  Table 5).

Every builder works on partial sweeps: it builds what the database holds and logs (and
writes into the Markdown) the cells of the paper's grid that are missing.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from analysis import load, methods, paper, selection, stats, tables
from analysis.errors import AnalysisError
from analysis.tables import matches, plain, same

log = logging.getLogger("analysis")

TASK = "reversal"
TARGETS = ("copy", "flip", "reverse_copy", "reverse_flip")
REWARDS = ("bag_of_tokens", "sequential", "terminal")
MATCHES = ("prompts", "interactions")
# every attribute that tells two requested cells of an artefact apart (their labels)
ATTRS = ("algorithm", "target", "reward", "H", "V", "K", "B", "match", "epochs", "eta", "steps")
MATCH_WORD = {"prompts": "prompt-matched", "interactions": "interaction-matched"}
_DIM_LABEL = {"match": "matching", "epochs": "E", "eta": "η"}
THRESHOLD = 0.01


def _rank(v):
    """Sort key of a dimension's value: paper order for words, numbers ascending."""
    if v is None:
        return (2, 0, "")
    for words in (TARGETS, REWARDS, MATCHES):
        if v in words:
            return (0, words.index(v), "")
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    return (1, 0, str(v))


def show(dim: str, v) -> str:
    if v is None:
        return "—"
    if dim == "match":
        return MATCH_WORD.get(v, v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# --------------------------------------------------------------------------------------------
# Loading: one cell per distinct requested configuration (ATTRS) of the artefact
# --------------------------------------------------------------------------------------------


@dataclass
class Data:
    sweep: str  # the artefact (analysis.selection.Artefact)
    base: str  # its preset
    cells: dict[int, dict]  # cell id -> ATTRS values, in display order
    m: pd.DataFrame  # tidy metrics with a ``cell`` column
    run_ids: list[int]
    info: pd.DataFrame  # load.runs(...) indexed by run id
    engine: Engine

    def select(self, **sel) -> list[int]:
        return [c for c, a in self.cells.items() if matches(a, sel)]

    def values(self, dim: str, cells: Iterable[int] | None = None) -> list:
        """Distinct values of ``dim`` over ``cells`` (all cells by default), in display order."""
        seen: list = []
        for c in self.cells if cells is None else cells:
            v = self.cells[c][dim]
            if not any(same(v, s) for s in seen):
                seen.append(v)
        return sorted(seen, key=_rank)

    def metric(self, name: str) -> pd.DataFrame:
        return self.m[self.m["name"] == name]


def _refuse_ambiguous(cells: list[dict], keys: Sequence[str], sweep: str) -> None:
    for c1, c2 in itertools.combinations(cells, 2):
        if all(same(c1[k], c2[k]) for k in keys):
            diff = [k for k in ATTRS if not same(c1[k], c2[k])]
            where = ", ".join(f"{k}={show(k, c1[k])}" for k in keys)
            raise AnalysisError(
                f"sweep '{sweep}' has two configurations for {where} (they differ in "
                f"{', '.join(diff)}); one curve per cell is drawn, split the sweep"
            )


def load_sweep(
    engine: Engine | None,
    sweep: str,
    dims: Sequence[str],
    names: Sequence[str] = ("error",),
    algorithms: Iterable[str] | None = None,
) -> Data:
    """The artefact's cells and metrics. A cell is one requested configuration (``ATTRS``, as
    the preset requests it: one stored run may serve two cells, e.g. a grouped method under
    both matchings); two cells that agree on ``dims`` + algorithm would be drawn as one
    curve, which is refused."""
    if engine is None:
        raise AnalysisError(f"artefact '{sweep}' needs a results database")
    kept = load.kept_seeds(engine, sweep)
    if algorithms is not None:
        kept = kept[kept["algorithm"].isin(list(algorithms))]
    if kept.empty:
        raise AnalysisError(load.no_runs(engine, sweep))
    wrong = sorted(set(kept["task"]) - {TASK})
    if wrong:
        raise AnalysisError(f"artefact '{sweep}' selects runs of task {wrong}, not '{TASK}'")
    info = load.runs(engine, sweep=sweep).set_index("id")
    cells: list[dict] = []
    requests_of: list[list[int]] = []
    for request, g in kept.groupby("request", sort=True):
        a = {c: plain(g.iloc[0][c]) for c in ATTRS}
        i = next((i for i, c in enumerate(cells) if matches(c, a)), None)
        if i is None:
            cells.append(a)
            requests_of.append([int(request)])
        else:
            requests_of[i].append(int(request))
    _refuse_ambiguous(cells, [*dims, "algorithm"], sweep)
    order = sorted(
        range(len(cells)),
        key=lambda i: (
            tuple(_rank(cells[i][d]) for d in dims),
            methods.rank(cells[i]["algorithm"]),
            cells[i]["algorithm"],
        ),
    )
    cell_of_request = {r: new for new, old in enumerate(order) for r in requests_of[old]}
    m = load.metrics(engine, sweep, names=list(names))
    m = m[m["request"].isin(list(cell_of_request))].copy()
    m["cell"] = m["request"].map(cell_of_request).astype(int)
    m["name"] = m["name"].astype(str)
    # two requests with the same labels (one cell) may be served by the same run: count it once
    m = m.drop_duplicates(["cell", "run_id", "name", "step"])
    return Data(
        sweep=sweep,
        base=selection.preset_of(sweep),
        cells={new: cells[old] for new, old in enumerate(order)},
        m=m,
        run_ids=sorted(set(kept["run_id"].astype(int))),
        info=info,
        engine=engine,
    )


# --------------------------------------------------------------------------------------------
# Per-cell statistics
# --------------------------------------------------------------------------------------------


def per_seed_at(df: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """One row per (cell, run, seed): the value at ``step`` (None: each seed's last step)."""
    if df.empty:
        return df
    if step is not None:
        return df[df["step"] == step]
    idx = df.groupby(["cell", "run_id", "seed"], observed=True)["step"].idxmax()
    return df.loc[idx.to_numpy()]


def per_seed_late(df: pd.DataFrame, steps: int, frac: float = 0.1) -> pd.DataFrame:
    """Each seed's mean over its last ``frac`` of the episodes (at least one)."""
    start = steps - max(1, int(round(frac * steps)))
    late = df[df["step"] >= start]
    g = late.groupby(["cell", "run_id", "seed"], observed=True)["value"].mean()
    return g.reset_index()


def curve(curves: pd.DataFrame, cell: int) -> pd.DataFrame:
    return curves[curves["cell"] == cell].sort_values("step")


def moving_average_left(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` episodes, left-padded with the first value (Fig 1b)."""
    y = np.asarray(y, dtype=float)
    if y.size == 0 or window <= 1:
        return y
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def moving_average_centred(y: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over ``window`` episodes, edge-padded (Figs 11/12/15 panels b–e)."""
    y = np.asarray(y, dtype=float)
    if y.size == 0 or window <= 1:
        return y
    left = window // 2
    padded = np.pad(y, (left, window - 1 - left), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


def setting_of(a: dict, extra: Sequence[str] = ()) -> str:
    parts = [
        str(a["target"]),
        str(a["reward"]),
        *(f"{k}={show(k, a[k])}" for k in ("H", "V", "K", "B")),
        MATCH_WORD.get(a["match"], str(a["match"])),
        f"episodes={show('steps', a['steps'])}",
    ]
    parts += [f"{k}={show(k, a[k])}" for k in extra]
    return " ".join(parts)


def cell_of(a: dict, extra: Sequence[str] = ()) -> tables.Cell:
    return tables.Cell(setting_of(a, extra), a["algorithm"], a["steps"], a["B"], tables.key_of(a))


@dataclass(frozen=True)
class Measure:
    metric: str  # CSV metric name
    header: str  # Markdown header
    kind: str  # "final" | "steps" | "at"
    threshold: float = THRESHOLD
    step: int | None = None  # for kind "at"
    dash_above: float | None = None  # Markdown "−" when the final error % exceeds this
    item: str | None = None  # paper_item of its rows (None: the artefact's)


FINAL = Measure("final_error_pct", "final error %", "final")
STEPS_1 = Measure("steps_to_1pct", "steps to 1%", "steps", 0.01)


def summarise(
    data: Data,
    dims: Sequence[str],
    measures: Sequence[Measure],
    paper_keys: Sequence[str],
    rows: tables.Rows,
    cells: Sequence[int] | None = None,
    extra_setting: Sequence[str] = (),
    paper_method: Callable[[str], str] = lambda m: m,
    paper_artifact: str | None = None,
) -> list[dict]:
    """CSV rows for every cell and measure; returns the Markdown rows (one per cell). The
    paper column looks up the numbers of ``paper_artifact`` (default ``data.base``) at the
    cell's ``paper_keys``."""
    paper_artifact = paper_artifact or data.base
    err = data.metric("error")
    curves = stats.seed_stats(err, ["cell", "step"])
    finals = per_seed_at(err)
    has_paper = {ms.metric: paper.has_numbers(paper_artifact, ms.metric) for ms in measures}
    n_paper = sum(has_paper.values())
    md: list[dict] = []
    for c in data.cells if cells is None else cells:
        a = data.cells[c]
        method = a["algorithm"]
        cell = cell_of(a, extra_setting)
        row = {_DIM_LABEL.get(d, d): show(d, a[d]) for d in dims}
        row["method"] = methods.label(method)
        n_seeds = 0
        for ms in measures:
            if ms.kind == "steps":
                per_seed = err[err["cell"] == c]
                hit, n = rows.add_crossing(
                    cell, ms.metric, curve(curves, c), per_seed, ms.threshold, ms.item
                )
                row[ms.header] = tables.fmt_steps(hit, a["steps"] - 1 if a["steps"] else None)
            else:
                if ms.kind == "final":
                    vals = finals.loc[finals["cell"] == c, "value"]
                else:
                    vals = err.loc[(err["cell"] == c) & (err["step"] == ms.step), "value"]
                    if vals.empty:
                        row[ms.header] = "—"
                        continue
                mean, se, n = rows.over_seeds(cell, ms.metric, vals, 100.0, item=ms.item)
                ci = (rows.rows[-1]["ci_low"], rows.rows[-1]["ci_high"]) if n else tables.NO_CI
                row[ms.header] = tables.fmt_pct(mean, se, ms.dash_above)
            n_seeds = max(n_seeds, n)
            if has_paper[ms.metric]:
                col = "paper" if n_paper == 1 else f"paper ({ms.header})"
                key = {k: a[k] for k in paper_keys}
                shown = paper.lookup(paper_artifact, paper_method(method), ms.metric, **key)
                row[col] = shown or "—"
            if ms.kind == "final":
                row["95% CI (final %)"] = tables.fmt_ci(*ci, show=tables.fmt_pct)
        row["n_seeds"] = str(n_seeds)
        row["episodes"] = show("steps", a["steps"])
        md.append(row)
    return md


# --------------------------------------------------------------------------------------------
# Missing cells of the paper's grid, and the Markdown header
# --------------------------------------------------------------------------------------------


def missing_cells(data: Data, grid: dict[str, Sequence], cells: Iterable[int] | None = None):
    """The combinations of ``grid`` (dimension -> the paper's values) with no cell."""
    present = [data.cells[c] for c in (data.cells if cells is None else cells)]
    dims = list(grid)
    gone = []
    for combo in itertools.product(*(grid[d] for d in dims)):
        sel = dict(zip(dims, combo, strict=True))
        if not any(matches(a, sel) for a in present):
            gone.append(
                " ".join(
                    methods.label(v) if d == "algorithm" else f"{_DIM_LABEL.get(d, d)}={show(d, v)}"
                    for d, v in sel.items()
                )
            )
    return gone


def report_missing(sweep: str, what: str, gone: list[str]) -> str:
    """Log the missing cells (a warning at paper scale, info at a smaller one: smoke cells
    are not the paper's grid) and return the Markdown line."""
    if not gone:
        return f"- {what}: every cell of the paper's grid is in the database."
    level = (
        logging.WARNING if selection.selects_like_paper(selection.scale_of(sweep)) else logging.INFO
    )
    shown = "; ".join(gone[:40]) + (f"; … ({len(gone) - 40} more)" if len(gone) > 40 else "")
    log.log(
        level,
        "%s: %s: %d cell(s) of the paper's grid not in the database: %s",
        sweep,
        what,
        len(gone),
        shown,
    )
    return f"- {what}: not in the database ({len(gone)} cell(s) of the paper's grid): {shown}."


def header(data: Data, title: str, lines: Sequence[str] = ()) -> list[str]:
    settings = [setting_of(a) for a in data.cells.values()]
    return [
        *tables.header(title, data.sweep, settings, data.engine, data.info, data.run_ids),
        "- error at episode t (0-based) is measured on episode t's rollouts before its update "
        "(protocols §3.4); `final error %` = 100 × seed-mean error at the last episode, "
        "± s.e. = population std (ddof=0)/sqrt(n_seeds); 95% CI = percentile bootstrap over "
        "seeds (10,000 resamples, seed 0; in the CSV also for the `steps to x%` episode); "
        '`steps to x%` = first episode whose seed-mean error is below x% ("never": not '
        "within the run).",
        *lines,
        "",
    ]


def page(
    data: Data, title: str, notes: Sequence[str], body: Sequence, caption: str, stem: str = ""
) -> list[str]:
    """A reversal artefact's Markdown: ``header`` with ``notes``, the ``body`` (Markdown rows:
    one table; else lines), the figure ``<stem>.png`` (default the artefact id) and its
    ``caption``."""
    stem = stem or data.sweep
    if body and isinstance(body[0], dict):
        body = [tables.markdown_table(body)]
    return [*header(data, title, notes), *body, "", f"![{stem}]({stem}.png)", "", caption]


# --------------------------------------------------------------------------------------------
# The standard builder: one table row per cell, one figure
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standard:
    """A reversal artefact made of ``summarise``'s table and one figure."""

    title: str
    item: str  # the paper's name for the artefact's rows (a Measure may name another)
    dims: tuple[str, ...]  # what tells the cells apart, in display order
    measures: tuple[Measure, ...]
    paper_keys: tuple[str, ...]  # the cell's key fields the paper's numbers are matched on
    grid: dict  # the paper's grid: dimension -> values (what is missing is reported)
    what: str  # the grid, in words
    notes: tuple[str, ...]  # Markdown lines after the missing cells
    caption: str
    figure: Callable[[Data], object]  # data -> matplotlib Figure
    extra_setting: tuple[str, ...] = ()  # attributes added to the setting string
    paper_method: Callable[[str], str] = str  # our method -> the paper sheet's (identity)


def standard(spec: Standard):
    """The builder of ``spec``: ``fn(engine, out, sweep) -> DataFrame``."""

    def fn(engine: Engine | None, out, sweep: str) -> pd.DataFrame:
        from analysis import figures

        data = load_sweep(engine, sweep, spec.dims)
        rows = tables.Rows(sweep, spec.item)
        md_rows = summarise(
            data,
            spec.dims,
            spec.measures,
            spec.paper_keys,
            rows,
            extra_setting=spec.extra_setting,
            paper_method=spec.paper_method,
        )
        notes = [report_missing(sweep, spec.what, missing_cells(data, spec.grid)), *spec.notes]
        figs = figures.draw(out, sweep, lambda: spec.figure(data))
        md = page(data, spec.title, notes, md_rows, spec.caption)
        return tables.write(out, sweep, rows.frame(), md, figs)

    return fn
