"""MNIST artefacts: Fig 5(a) with its table, Fig 1(a), Fig 5(b) (paper §3.3, App. C).

Builders, registered in ``analysis.artifacts.ARTIFACTS`` under the preset names (each reads
the runs serving its preset's cells, ``analysis.load``; ``<id>_smoke`` at smoke scale):

* ``fig5_mnist``: test error vs step on a log y axis for TPO, DG, Group PG, GRPO, PG (and
  any other method the sweep holds), and a table of the final test error (%) and the steps
  to 5% test error, with the paper's numbers beside.
* ``fig1a_mnist``: TPO, GRPO, DG on a linear y axis from 0.02 to 0.145 (the hero panel), same
  table. Its cells are three of ``fig5_mnist``'s: runs of either preset serve it.
* ``fig5b_mnist_mechanism``: surplus (exact − one-vs-rest first-order gain in p_y) by
  wrong-class concentration bin on the misclassified test images, at the evaluation the
  paper calls "step 2,000", TPO and DG (plus any other method with a closed form), and the
  top-bin surplus over training.

Conventions (``paper_protocols.md`` §4.3, §4.4, D15, D16):

* The paper's MNIST "GRPO" is single-sample batch-standardised REINFORCE, run as
  ``algorithm=batch_std_pg``; it is labelled and written as method ``grpo`` here
  (``analysis.methods.ALIASES``).
* **x axis.** The database stores the true number of training steps behind each evaluation,
  ``(i + 1)·eval_every``. The authors' plots label evaluation ``i`` at ``i·eval_every``, one
  block early, and the paper's "5% at step 1,600 / 2,200" and "step 2,000" use that label.
  The default here is the true step; set ``TPO_PAPER_X_AXIS=1`` in the environment (or pass
  ``paper_x_axis=True``) to relabel as the authors do. Tables and captions say which.
* ``final_test_error_pct`` = 100 × the test error of each seed's last evaluation, mean ± s.e.
  (s.e. = population std / sqrt(n_seeds)); ``steps_to_5pct_test_error`` = the first step (on
  the chosen axis) where the **seed-mean** test error is below 5%, NaN / "never" otherwise.
* Fig 5(b): the evaluation whose true step is closest to ``2000 + eval_every`` (the paper's
  x = 2000 is the evaluation after 2,200 steps; upstream takes index 10); per bin the mean
  over the seeds whose bin is non-empty.
* The paper column of Fig 5(a) and Fig 1(a) is ``analysis/paper_numbers.csv``'s
  ``fig5_mnist`` rows (Fig 1(a) shows three of Fig 5(a)'s curves); Fig 5(b)'s is its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from analysis import load, methods, paper, selection, stats, tables
from analysis.artifacts import Builder, register
from analysis.errors import AnalysisError

log = logging.getLogger("analysis")

TASK = "mnist"
PAPER_X_ENV = "TPO_PAPER_X_AXIS"
FIG5_METHODS = ("tpo", "dg", "group_pg", "grpo", "pg")  # the paper's legend order
FIG1A_METHODS = ("tpo", "grpo", "dg")
FIG5B_METHODS = ("tpo", "dg")
THRESHOLD = 0.05
PAPER_STEP = 2000  # Fig 5(b)'s "step 2,000", on the authors' x axis
NUM_BINS = 4
BIN_LABELS = ("c < 0.25", "0.25 ≤ c < 0.5", "0.5 ≤ c < 0.75", "c ≥ 0.75")
KINDS = ("surplus", "gain", "scalar_gain", "count")  # Fig 5(b)'s per-bin metrics

PAPER_ERRORS = "fig5_mnist"  # the paper's numbers for Fig 5(a), and Fig 1(a)'s curves
PAPER_STEPS_METRIC = "step_to_5pct_test_error"  # the sheet's name: a step on the authors' x
_PAPER_NOTE_5A = (
    "final test error TPO 2.9%, GRPO 5.9%, PG 5.3%, Group PG 7.2% (text); DG ~3.1–3.2% "
    "(read off the figure); TPO below 5% at x = 1,600 vs DG at 2,200 (their x axis, i.e. after "
    "1,800 and 2,400 true steps)."
)
_PAPER_NOTE_5B = (
    "TPO's surplus ~0.000, 0.007, 0.021, 0.073 from the diffuse to the concentrated bin; DG "
    "slightly negative throughout (~0, −0.001, −0.0025, −0.005), read off the figure; the text "
    "gives TPO's 0.073."
)


def paper_x_axis(flag: bool | None = None) -> bool:
    """The relabelling option: the argument if given, else ``$TPO_PAPER_X_AXIS`` (1/true/yes)."""
    if flag is not None:
        return flag
    return os.environ.get(PAPER_X_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def method_of(algorithm: str) -> str:
    return methods.shown_as(algorithm, TASK)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class Sweep:
    sweep: str  # the artefact read (analysis.selection.Artefact)
    run_ids: list[int]
    method_run: dict[str, int]  # method -> its first run (for config values)
    cells: dict[str, tables.Cell]  # method -> what its rows share
    info: pd.DataFrame  # runs rows (id-indexed)
    every: dict[str, int]  # method -> eval_every


def _load(engine: Engine | None, sweep: str) -> Sweep:
    kept = load.kept_of_task(engine, sweep, TASK)
    kept = kept.assign(method=[method_of(a) for a in kept["algorithm"]])
    runs = kept.drop_duplicates(["run_id"])
    info = load.runs(engine, sweep=sweep).set_index("id")
    configs = {int(r): info.loc[r, "config"] for r in runs["run_id"]}

    def value(run: int, dotted: str):
        return selection.config_value(configs[run], dotted)

    fields = ("task.steps", "task.eval_every", "task.batch_size", "algorithm.epochs")
    configs_of = runs.groupby("method")["run_id"].apply(
        lambda ids: {tuple(value(int(r), f) for f in (*fields, "optimizer.lr")) for r in ids}
    )
    multi = [m for m, keys in configs_of.items() if len(keys) > 1]
    if multi:
        raise AnalysisError(
            f"artefact '{sweep}' has several configurations for method '{multi[0]}' "
            f"(steps/eval_every/B/epochs/lr); one curve per method is drawn, split the sweep"
        )
    first = runs.groupby("method", sort=False).head(1).set_index("method")
    method_run = {m: int(r) for m, r in first["run_id"].items()}
    cells = {}
    for m, r in method_run.items():
        B, steps = value(r, "task.batch_size"), int(value(r, "task.steps"))
        setting = (
            f"mnist bandit B={B} adam lr={value(r, 'optimizer.lr')} steps={steps} "
            f"eval_every={value(r, 'task.eval_every')}"
        )
        cells[m] = tables.Cell(setting, m, steps, B, tables.key_of(first.loc[m]))
    return Sweep(
        sweep=sweep,
        run_ids=sorted(int(r) for r in runs["run_id"]),
        method_run=method_run,
        cells=cells,
        info=info,
        every={m: int(value(r, "task.eval_every")) for m, r in method_run.items()},
    )


def _metrics(engine: Engine, sw: Sweep, names: Sequence[str]) -> pd.DataFrame:
    m = load.metrics(engine, sw.sweep, names=list(names))
    return m.assign(method=[method_of(a) for a in m["algorithm"]], name=m["name"].astype(str))


def _header(engine: Engine, sw: Sweep, title: str, shown: Sequence[str]) -> list[str]:
    settings = [sw.cells[m].setting for m in shown]
    return tables.header(title, sw.sweep, settings, engine, sw.info, sw.run_ids)


def _timing_rows(sw: Sweep, shown: Sequence[str]) -> list[dict]:
    """Per method, the job that computed its first run (a job runs its seeds in one program)."""
    rows = []
    for m in shown:
        r = sw.method_run[m]
        compile_s, run_s = sw.info.loc[r, "compile_s"], sw.info.loc[r, "run_s"]
        job_seeds = sw.info.loc[r, "job_seeds"]
        rows.append(
            {
                "method": methods.label(m),
                "algorithm": str(sw.info.loc[r, "algorithm"]),
                "sweep": str(sw.info.loc[r, "sweep"]),
                "seeds in the job": "—" if pd.isna(job_seeds) else str(int(job_seeds)),
                "compile (s)": "—" if pd.isna(compile_s) else f"{compile_s:.1f}",
                "run (s)": "—" if pd.isna(run_s) else f"{run_s:.1f}",
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Fig 5(a) and Fig 1(a): test error curves + table
# --------------------------------------------------------------------------------------------


def _paper_steps(method: str, every: int, paper_x: bool) -> str:
    shown = paper.lookup(PAPER_ERRORS, method, PAPER_STEPS_METRIC)
    if shown and not paper_x:
        shown += f" (their x; true {int(shown) + every})"
    return shown


def _error_table(
    sw: Sweep, m: pd.DataFrame, shown: Sequence[str], paper_x: bool, rows: tables.Rows
):
    """Final error and steps to 5% per method into ``rows``; returns the plotted curves."""
    err = m[m["name"] == "test_error"].copy()
    if paper_x:
        err["step"] = err["step"] - err["method"].map(sw.every)
    curves = stats.seed_stats(err, ["method", "name", "step"])
    for method in shown:
        cell = sw.cells[method]
        e = err[err["method"] == method]
        last = e.loc[e.groupby(["run_id", "seed"], observed=True)["step"].idxmax()]
        final = paper.lookup(PAPER_ERRORS, method, "final_test_error_pct")
        rows.over_seeds(cell, "final_test_error_pct", last["value"], 100.0, True, paper=final)
        c = curves[curves["method"] == method]
        steps = _paper_steps(method, sw.every[method], paper_x)
        rows.add_crossing(cell, "steps_to_5pct_test_error", c, e, THRESHOLD, paper=steps)
    return curves


def _summary_table(df: pd.DataFrame, shown: Sequence[str], paper_x: bool) -> list[dict]:
    """Compact per-method view: final error and steps to 5%."""
    steps_col = "steps to 5% (authors' x)" if paper_x else "steps to 5% (true steps)"
    out = []
    for method in shown:
        d = df[df["method"] == method].set_index("metric")
        fin, steps = d.loc["final_test_error_pct"], d.loc["steps_to_5pct_test_error"]
        out.append(
            {
                "method": methods.label(method),
                "final test error %": f"{fin['value']:.2f} ± {fin['se']:.2f}",
                steps_col: "never" if pd.isna(steps["value"]) else f"{int(steps['value'])}",
                "seeds": str(fin["n_seeds"]),
                "paper final %": paper.lookup(PAPER_ERRORS, method, "final_test_error_pct") or "—",
                "paper steps to 5% (their x)": paper.lookup(
                    PAPER_ERRORS, method, PAPER_STEPS_METRIC
                )
                or "—",
            }
        )
    return out


def _curve_figure(curves, shown, log_y: bool, ylim, paper_x: bool, title: str):
    from analysis import figures

    panel = figures.Panel("test_error", "test error", title, log=log_y)
    fig, _ = figures.curves_figure(curves, [panel], shown)
    fig.set_size_inches(6.4, 4.4)  # one panel: room for the five-method legend
    ax = fig.axes[0]
    ax.axhline(THRESHOLD, color="0.5", linestyle=":", linewidth=1.0)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(
        "step (authors' label: evaluation i at i·eval_every)"
        if paper_x
        else "training step (true steps before the evaluation)"
    )
    return fig


@dataclass(frozen=True)
class ErrorSpec:
    title: str
    item: str  # the paper's name for the figure
    preferred: tuple[str, ...]  # the methods drawn, in the paper's legend order
    log_y: bool
    ylim: tuple[float, float] | None
    figure_title: str


def _build_errors(
    spec: ErrorSpec, engine: Engine | None, out: Path, sweep: str, paper_x: bool | None
) -> pd.DataFrame:
    from analysis import figures

    paper_x = paper_x_axis(paper_x)
    sw = _load(engine, sweep)
    m = _metrics(engine, sw, ["test_error"])
    present = [mm for mm in m["method"].unique() if mm in spec.preferred]
    shown = methods.order(present, spec.preferred)
    if not shown:
        raise AnalysisError(
            f"artefact '{sweep}' has none of the methods {', '.join(spec.preferred)}"
        )
    missing = [mm for mm in spec.preferred if mm not in shown and mm != "ce"]  # CE: optional
    rows = tables.Rows(sweep, spec.item)
    curves = _error_table(sw, m, shown, paper_x, rows)
    df = rows.frame()
    files = figures.draw(
        out,
        sweep,
        lambda: _curve_figure(curves, shown, spec.log_y, spec.ylim, paper_x, spec.figure_title),
    )
    axis = (
        "the authors' x axis: evaluation i is labelled i·eval_every although it follows "
        "(i+1)·eval_every training steps (TPO_PAPER_X_AXIS=1)"
        if paper_x
        else "true training steps: evaluation i follows (i+1)·eval_every steps (the authors' "
        "plots label it i·eval_every; set TPO_PAPER_X_AXIS=1 to do the same)"
    )
    md = [
        *_header(engine, sw, spec.title, shown),
        f"- **x axis / steps: {axis}.**",
        "- GRPO = single-sample batch-standardised REINFORCE (`algorithm=batch_std_pg`, "
        "protocols §1.8), as in the paper's MNIST experiments.",
        "- `final_test_error_pct` = 100 × each seed's last evaluation, mean ± s.e. (population "
        "std / sqrt(n)); `steps_to_5pct_test_error` = first step where the seed-mean test error "
        "is below 5%; 95% CI = percentile bootstrap over seeds (10,000 resamples, seed 0).",
        "- paper: " + _PAPER_NOTE_5A,
    ]
    if missing:
        md.append(f"- no runs of: {', '.join(methods.label(mm) for mm in missing)}")
    md += [
        "",
        tables.markdown_table(_summary_table(df, shown, paper_x)),
        "",
        "Long form (the CSV):",
        "",
        tables.markdown_table(rows.markdown()),
        "",
        "Compile and run time of the job that computed each method's first run (all the "
        "job's seeds in one program):",
        "",
        tables.markdown_table(_timing_rows(sw, shown)),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        f"*Figure:* seed-mean test error on the full test set, band = ± 1 s.e., dotted = 5%, "
        f"{'log' if spec.log_y else 'linear'} y axis; x = "
        f"{'the authors label' if paper_x else 'true step'}.",
    ]
    return tables.write(out, sweep, df, md, files)


FIG5 = ErrorSpec(
    "Fig 5(a): MNIST contextual bandit, test error",
    "Fig 5a",
    (*FIG5_METHODS, "ce"),
    log_y=True,
    ylim=None,
    figure_title="MNIST contextual bandit (Fig 5a)",
)
FIG1A = ErrorSpec(
    "Fig 1(a): MNIST, TPO vs GRPO vs DG",
    "Fig 1a",
    FIG1A_METHODS,
    log_y=False,
    ylim=(0.02, 0.145),
    figure_title="MNIST (Fig 1a)",
)


def build_fig5(engine, out, sweep, paper_x: bool | None = None) -> pd.DataFrame:
    return _build_errors(FIG5, engine, Path(out), sweep, paper_x)


def build_fig1a(engine, out, sweep, paper_x: bool | None = None) -> pd.DataFrame:
    return _build_errors(FIG1A, engine, Path(out), sweep, paper_x)


# --------------------------------------------------------------------------------------------
# Fig 5(b): surplus by concentration bin
# --------------------------------------------------------------------------------------------

FIG5B_TITLE = "Fig 5(b): surplus gain in p_y by wrong-class concentration (App. C)"


def mechanism_step(true_steps: Sequence[int], every: int) -> int:
    """The recorded true step closest to the paper's "step 2,000" (= 2000 + eval_every)."""
    s = np.asarray(sorted(set(int(x) for x in true_steps)))
    return int(s[np.argmin(np.abs(s - (PAPER_STEP + every)))])


def _fig5b_figure(bars, over_time: pd.DataFrame, shown, chosen, paper_x: bool):
    from matplotlib.figure import Figure

    from analysis import figures

    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    ax_bar, ax_line = fig.subplots(1, 2)
    width = 0.8 / max(1, len(shown))
    x = np.arange(NUM_BINS)
    for i, method in enumerate(shown):
        s = figures.by_method(method, index=i)
        mean = np.array([b[0] for b in bars[method]])
        se = np.nan_to_num(np.array([b[1] for b in bars[method]]))
        ax_bar.bar(
            x + (i - (len(shown) - 1) / 2) * width,
            mean,  # NaN (an empty bin) draws no bar
            width,
            yerr=np.where(np.isfinite(mean), se, np.nan),
            color=s.color,
            label=s.label,
            capsize=2,
        )
        c = over_time[over_time["method"] == method].sort_values("step")
        figures.draw_curve(ax_line, c["step"].to_numpy(), c["mean"], c["se"], s)
    ax_bar.axhline(0.0, color="0.3", linewidth=0.8)
    ax_bar.set_xticks(x, ["<0.25", "0.25–0.5", "0.5–0.75", "≥0.75"])
    ax_bar.set_xlabel("wrong-class concentration c (misclassified test images)")
    ax_bar.set_ylabel("surplus gain in $p_y$ (exact − one-vs-rest)")
    steps_shown = sorted(set(chosen.values()))
    ax_bar.set_title(
        f"true step {', '.join(map(str, steps_shown))} (paper: 'step {PAPER_STEP}')"
        if steps_shown
        else "no data"
    )
    ax_bar.legend(loc="upper left", frameon=False)
    ax_line.axhline(0.0, color="0.3", linewidth=0.8)
    ax_line.set_xlabel("step (authors' label)" if paper_x else "training step (true)")
    ax_line.set_ylabel("surplus, top bin (c ≥ 0.75)")
    ax_line.set_title("top-bin surplus over training")
    return fig


def build_fig5b(engine, out, sweep, paper_x: bool | None = None) -> pd.DataFrame:
    from analysis import figures

    out = Path(out)
    paper_x = paper_x_axis(paper_x)
    sw = _load(engine, sweep)
    m = _metrics(engine, sw, [f"{kind}_bin{k}" for kind in KINDS for k in range(NUM_BINS)])
    if m.empty:
        raise AnalysisError(
            f"artefact '{sweep}' has no mechanism metrics (run it with task.mechanism=true)"
        )
    # a method without a closed form logs NaN gains (and zero counts) throughout
    gains = m[m["name"].str.startswith("surplus_bin")]
    have = gains.groupby("method")["value"].apply(lambda v: bool(np.isfinite(v).any()))
    shown = methods.order([mm for mm in have.index if have[mm]], FIG5B_METHODS)
    no_formula = sorted(set(have.index) - set(shown))
    rows = tables.Rows(sweep, "Fig 5b")
    top_rows: list[int] = []
    chosen: dict[str, int] = {}
    bars: dict[str, list[tuple[float, float, int]]] = {}
    md_rows = []
    for method in shown:
        mm = m[m["method"] == method]
        every = sw.every[method]
        step = chosen[method] = mechanism_step(mm["step"].unique(), every)
        at = mm[mm["step"] == step]
        base = sw.cells[method]
        cell = tables.Cell(
            f"mnist mechanism, misclassified test examples, true step {step} "
            f"(authors' x {step - every}) of steps={base.episodes}",
            method,
            base.episodes,
            base.B,
            base.key,
        )
        bars[method] = []
        for k in range(NUM_BINS):
            got = {}
            for kind in KINDS:
                v = at.loc[at["name"] == f"{kind}_bin{k}", "value"]
                # the figure shows the surplus; gains and counts are ours only
                item = None if kind == "surplus" else ""
                got[kind] = rows.over_seeds(cell, f"{kind}_bin{k}", v, keep_empty=True, item=item)
            bars[method].append(got["surplus"])
            mean, se, n = got["surplus"]
            md_rows.append(
                {
                    "method": methods.label(method),
                    "bin": BIN_LABELS[k],
                    "surplus": f"{tables.fmt(mean)} ± {tables.fmt(se, 2)}",
                    "exact gain": tables.fmt(got["gain"][0]),
                    "one-vs-rest gain": tables.fmt(got["scalar_gain"][0]),
                    "mean count": tables.fmt(got["count"][0]),
                    "seeds (non-empty)": str(n),
                }
            )
        top = at.loc[at["name"] == f"surplus_bin{NUM_BINS - 1}", "value"]
        metric = "surplus_gain_top_concentration_bin"
        top_rows.append(len(rows.rows))
        shown_paper = paper.lookup(selection.preset_of(sweep), method, metric)
        rows.over_seeds(cell, metric, top, keep_empty=True, paper=shown_paper)
    df = rows.frame()

    # the top-bin surplus over training, per method
    top = m[m["name"] == f"surplus_bin{NUM_BINS - 1}"].copy()
    if paper_x:
        top["step"] = top["step"] - top["method"].map(sw.every)
    over_time = stats.seed_stats(top, ["method", "step"])
    files = figures.draw(out, sweep, lambda: _fig5b_figure(bars, over_time, shown, chosen, paper_x))

    md = [
        *_header(engine, sw, FIG5B_TITLE, shown),
        "- Diagnostic (App. C; protocols §4.4): at each evaluation, on the misclassified test "
        "images, the first-order gain in p_y of each method's expected logit update (its "
        "exact closed form) minus the gain of its one-vs-rest surrogate (the same method on a "
        "distribution whose wrong classes share 1 − p_y equally), binned by the wrong-class "
        "concentration c = max_{j≠y} π_j / (1 − p_y). Mean over seeds whose bin is non-empty ± "
        "s.e.",
        f"- **Step:** the evaluation whose true step is closest to {PAPER_STEP} + eval_every: "
        + ", ".join(f"{methods.label(mm)} true step {s}" for mm, s in chosen.items())
        + f". The paper's 'step {PAPER_STEP}' is the authors' x label of the evaluation after "
        f"{PAPER_STEP} + 200 steps (upstream index 10; protocols D15).",
        "- paper: " + _PAPER_NOTE_5B,
    ]
    if no_formula:
        md.append(
            "- no closed form (NaN, not shown): "
            + ", ".join(methods.label(mm) for mm in no_formula)
        )
    md += [
        "",
        tables.markdown_table(md_rows) if md_rows else "(no methods)",
        "",
        "Top bin against the paper:",
        "",
        tables.markdown_table(rows.markdown(top_rows)) if shown else "",
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        "*Figure:* left, surplus by concentration bin at the chosen evaluation (± 1 s.e.); "
        "right, the top-bin surplus at every evaluation (seed mean ± 1 s.e.).",
    ]
    return tables.write(out, sweep, df, md, files)


register(
    __name__,
    Builder("fig5_mnist", FIG5.title, build_fig5),
    Builder("fig1a_mnist", FIG1A.title, build_fig1a),
    Builder("fig5b_mnist_mechanism", FIG5B_TITLE, build_fig5b),
)
