"""One builder per paper artefact, registered under the artefact id.

The id is the experiment preset's (``fig3_tabular_single``, ``fig4_tabular_multi``): the
builder reads the runs serving that preset's cells (``analysis.load``), whichever sweep
stored them. ``<id>_<scale>`` (``fig3_tabular_single_smoke``), or ``--scale`` on the command
line, reads the preset's cells at that scale. ``appendix_b`` needs no runs: it evaluates
``tpo_sweeps.tasks.tabular.update_coefficient``, the code path the multi-context training
uses, and sets it beside the closed forms.

A builder is called as ``ARTIFACTS[id](engine, out_dir, sweep)`` with ``sweep`` an
``analysis.selection.Artefact`` (the id string, carrying preset, scale and overrides); it writes
``<stem>.png``, ``<stem>.pdf``, ``<stem>.md`` and ``<stem>.csv`` into ``out_dir`` (the stem
is the artefact id, e.g. ``fig3_tabular_single_smoke``) and returns the long-format frame
(``analysis.tables.COLUMNS``), with the written paths in ``df.attrs["files"]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from analysis import load, selection, stats, tables
from analysis.load import AnalysisError

log = logging.getLogger("analysis")

BuildFn = Callable[[Engine | None, Path, str], pd.DataFrame]


@dataclass(frozen=True)
class Builder:
    id: str
    title: str
    fn: BuildFn
    needs_runs: bool = True  # False: built without a database (appendix_b)

    def __call__(self, engine: Engine | None, out_dir: str | Path, sweep: str | None = None):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return self.fn(engine, out, selection.parse(sweep or self.id))


ARTIFACTS: dict[str, Builder] = {}


def _register(builder: Builder) -> Builder:
    ARTIFACTS[builder.id] = builder
    return builder


def resolve(
    artifact_id: str, scale: str | None = None, overrides: Sequence[str] = ()
) -> tuple[Builder, selection.Artefact]:
    """Builder and artefact for an id (``<id>_<scale>`` or ``scale``: the preset's cells at
    that scale; ``overrides``: as given to the preset's multirun)."""
    art = selection.parse(artifact_id, scale, overrides)
    builder = ARTIFACTS.get(art.preset)
    if builder is not None and (builder.needs_runs or (art == builder.id and not overrides)):
        return builder, art
    known = ", ".join(i for i in ARTIFACTS)
    raise AnalysisError(
        f"unknown artefact id '{artifact_id}' (known: {known}; any but appendix_b also as "
        f"<id>_<scale>, scales: {', '.join(selection.scales())})"
    )


def build(artifact_id: str, engine: Engine | None, out_dir: str | Path) -> pd.DataFrame:
    builder, sweep = resolve(artifact_id)
    return builder(engine, out_dir, sweep)


def available(engine: Engine, scale: str | None = None) -> list[str]:
    """Artefact ids buildable from ``engine``: every artefact and scale for which at least
    one requested cell has a completed run (``load.present``; only ``scale`` if given), in
    registry order (each paper id before its smaller scales), then the artefacts that need
    no runs (``appendix_b`` is always listed). A scale with the paper's cells (``reduced``)
    gives the paper-scale ids."""
    if scale is not None and selection.selects_like_paper(scale):
        scale = selection.PAPER
    presets = [i for i, b in ARTIFACTS.items() if b.needs_runs]
    found = load.present(engine, presets)
    ids = [str(a) for a in found if scale is None or a.scale == scale]
    return ids + [i for i, b in ARTIFACTS.items() if not b.needs_runs]


# --------------------------------------------------------------------------------------------
# Tabular bandits: Fig 3 (single context) and Fig 4 (multi context)
# --------------------------------------------------------------------------------------------


def _cfg(config: dict, dotted: str, default="?"):
    return selection.config_value(config, dotted, default)


def _alpha(config: dict) -> str:
    alpha = _cfg(config, "optimizer.alpha", None)
    return f"alpha={alpha:g}" if alpha is not None else f"opt={_cfg(config, 'optimizer.name')}"


@dataclass(frozen=True)
class TabularSpec:
    task: str  # runs.task every run of the sweep must have
    setting: Callable[[dict], str]  # resolved run config -> the CSV's setting string
    error_ylabel: str
    misalignment_ylabel: str
    checkpoints: tuple[float, ...]  # error checkpoints as fractions of the run's steps
    timing: str  # what "step" means for this task's error (before/after the update)
    paper_note: str  # what the paper shows, read off its figure (no numbers in the CSV)


_THRESHOLD = 0.01  # steps_to_1pct: the paper's "steps to 1% error"


def _tabular(spec: TabularSpec) -> BuildFn:
    def fn(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
        return _build_tabular(spec, engine, out, sweep)

    return fn


def _build_tabular(spec: TabularSpec, engine: Engine | None, out: Path, sweep: str):
    from analysis import figures  # seaborn/matplotlib: imported when a figure is drawn

    if engine is None:
        raise AnalysisError(f"artefact '{sweep}' needs a results database")
    base = selection.preset_of(sweep)
    kept = load.kept_seeds(engine, sweep)
    if kept.empty:
        raise AnalysisError(no_runs(engine, sweep))
    wrong = sorted(set(kept["task"]) - {spec.task})
    if wrong:
        raise AnalysisError(f"artefact '{sweep}' selects runs of task {wrong}, not '{spec.task}'")
    cells = kept.drop_duplicates(load.CELL)
    multi = cells["algorithm"].value_counts()
    if (multi > 1).any():
        algo = multi.index[multi > 1][0]
        raise AnalysisError(
            f"artefact '{sweep}' has {multi[algo]} different configurations for algorithm "
            f"'{algo}' (steps/epochs/K/eta/...); one curve per method is drawn, split the sweep"
        )
    run_info = load.runs(engine, sweep=sweep).set_index("id")
    run_ids = sorted(kept["run_id"].unique())
    setting_of = {a: spec.setting(run_info.loc[r, "config"]) for a, r in _first_run(kept)}

    m = load.metrics(engine, sweep, names=["error", "misalignment"])
    s = load.summaries(engine, sweep, names=["final_error", "final_misalignment"])
    methods = tables.order_methods(kept["algorithm"].unique())
    curves = stats.seed_stats(m, ["algorithm", "name", "step"]).rename(
        columns={"algorithm": "method"}
    )

    rows = _Rows(sweep, base)
    for method in methods:
        setting = setting_of[method]
        sm = s[s["algorithm"] == method]
        for metric in ("final_error", "final_misalignment"):
            rows.over_seeds(setting, method, metric, sm.loc[sm["name"] == metric, "value"])
        err = m[(m["algorithm"] == method) & (m["name"] == "error")]
        recorded = np.sort(err["step"].unique())
        n_steps = int(cells.loc[cells["algorithm"] == method, "steps"].iloc[0])
        for frac in spec.checkpoints:
            # the recorded step nearest below the checkpoint (log_every may skip steps)
            below = recorded[recorded <= int(round(frac * n_steps))]
            if below.size:
                step = int(below[-1])
                values = err.loc[err["step"] == step, "value"]
                rows.over_seeds(setting, method, f"error_at_step_{step}", values)
        c = curves[(curves["method"] == method) & (curves["name"] == "error")]
        hit = stats.steps_to_threshold(c["mean"].to_numpy(), c["step"].to_numpy(), _THRESHOLD)
        rows.add(
            setting,
            method,
            "steps_to_1pct",
            math.nan if hit is None else float(hit),
            n=int(c["n_seeds"].max()) if len(c) else 0,
            shown=f"never (≤ {int(c['step'].max())})" if hit is None and len(c) else None,
        )
    df = tables.long_frame(rows.long)

    x64 = all(bool(_cfg(run_info.loc[r, "config"], "x64", False)) for r in run_ids)
    # 1 - cos(g, g*) of nearly parallel vectors is round-off below the float's epsilon
    resolution = float(np.finfo(np.float64 if x64 else np.float32).eps)
    panels = [
        figures.Panel("error", spec.error_ylabel, "error"),
        figures.Panel(
            "misalignment", spec.misalignment_ylabel, "misalignment", resolution=resolution
        ),
    ]
    settings = sorted(set(setting_of.values()))
    with figures.style():
        fig, notes = figures.curves_figure(curves, panels, methods, suptitle="; ".join(settings))
        files = figures.save(fig, out, sweep)
    for note in notes:
        log.info("%s: %s drawn at %g (log axis)", sweep, note, figures.LOG_FLOOR)

    md = [
        f"# {ARTIFACTS[base].title}{scale_note(sweep)}",
        "",
        f"- artefact: `{sweep}`; setting: {'; '.join(settings)}",
        load.runs_line(engine, sweep, run_info, run_ids),
        f"- {spec.timing}",
        "- mean ± s.e. over seeds, s.e. = population std (ddof=0)/sqrt(n_seeds) as in the "
        "paper; 95% CI = percentile bootstrap of the mean over seeds (10,000 resamples, "
        "seed 0); `final_*` = the last recorded step of each seed; `steps_to_1pct` = first "
        "step where the seed-mean error is below 1%.",
        "- paper column: `analysis/paper_numbers.csv` has "
        + (
            "matching entries."
            if tables.has_paper_numbers(base)
            else f"no numbers for this artefact. Paper (read off its figure): {spec.paper_note}"
        ),
        "",
        tables.markdown_table(pd.DataFrame(rows.md)),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        f"*Figure:* seed-mean error (left) and misalignment (right) vs step, bands = ± 1 s.e., "
        f"log y axes. The runs computed in {'float64' if x64 else 'float32'}: misalignment "
        f"below its epsilon ({resolution:.1e}, grey region) is round-off, and round-off can "
        f"make it 0 or negative. Log axes cannot show values ≤ 0, so seed means and band "
        f"edges ≤ {figures.LOG_FLOOR:g} are drawn at {figures.LOG_FLOOR:g}"
        + (" (" + "; ".join(notes) + ")." if notes else " (none in this sweep)."),
        "",
    ]
    files += _write_tables(df, md, out, sweep)
    df.attrs["files"] = [str(f) for f in files]
    return df


def scale_note(sweep: str) -> str:
    """`` (smoke)`` after a title for an artefact below paper scale."""
    scale = selection.scale_of(sweep)
    return "" if scale == selection.PAPER else f" ({scale})"


def no_runs(engine: Engine, sweep: str) -> str:
    art = selection.parse(sweep)
    return (
        f"no completed runs for artefact '{art}' (the cells of {art.describe()}) in "
        f"{load.display_url(engine)}"
    )


def _first_run(kept: pd.DataFrame):
    for algo, g in kept.groupby("algorithm", sort=False):
        yield algo, int(g["run_id"].iloc[0])


class _Rows:
    """The long-format rows of one artefact and their Markdown view, side by side."""

    def __init__(self, artifact: str, paper_artifact: str):
        self.artifact, self.paper_artifact = artifact, paper_artifact
        self.long: list[dict] = []
        self.md: list[dict] = []

    def over_seeds(self, setting: str, method: str, metric: str, values) -> None:
        """Mean ± s.e. (and a bootstrap CI for the Markdown) of one value per seed."""
        values = np.asarray(values, dtype=float)
        mean, se, n = stats.mean_se(values)
        self.add(setting, method, metric, mean, se, n, stats.bootstrap_ci(values))

    def add(
        self,
        setting: str,
        method: str,
        metric: str,
        value: float,
        se: float = math.nan,
        n: int | None = None,
        ci: tuple[float, float] = (math.nan, math.nan),
        shown: str | None = None,
    ) -> None:
        self.long.append(
            {
                "artifact": self.artifact,
                "setting": setting,
                "method": method,
                "metric": metric,
                "value": value,
                "se": se,
                "n_seeds": n,
            }
        )
        if shown is None:
            shown = tables.fmt(value) + ("" if math.isnan(se) else f" ± {tables.fmt(se, 2)}")
        lo, hi = ci
        self.md.append(
            {
                "method": tables.label(method),
                "metric": metric,
                "mean ± s.e.": shown,
                "95% CI (bootstrap)": "—"
                if math.isnan(lo)
                else f"[{tables.fmt(lo)}, {tables.fmt(hi)}]",
                "n_seeds": "—" if n is None else str(n),
                "paper": tables.paper_value(self.paper_artifact, setting, method, metric) or "—",
            }
        )


def _write_tables(df: pd.DataFrame, md: Sequence[str], out: Path, stem: str) -> list[Path]:
    csv = tables.write_csv(df, out / f"{stem}.csv")
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    return [md_path, csv]


def _single_setting(config: dict) -> str:
    return (
        f"single context K={_cfg(config, 'task.num_actions')} "
        f"B={_cfg(config, 'task.batch_size')} {_alpha(config)} steps={_cfg(config, 'task.steps')}"
    )


def _multi_setting(config: dict) -> str:
    return (
        f"multi context N={_cfg(config, 'task.num_contexts')} "
        f"A={_cfg(config, 'task.num_actions')} {_alpha(config)} steps={_cfg(config, 'task.steps')}"
    )


_register(
    Builder(
        "fig3_tabular_single",
        "Fig 3: single-context bandit (paper §3.1)",
        _tabular(
            TabularSpec(
                task="tabular_single",
                setting=_single_setting,
                error_ylabel=r"error $1-\pi(y^*)$",
                misalignment_ylabel="misalignment to PG oracle",
                checkpoints=(1 / 3, 2 / 3),
                timing="error at step t is recorded before the t-th update (steps 0..T-1); "
                "misalignment = 1 - cos(update, exact PG gradient π(y*)(e_y* - π)).",
                paper_note="error ~1e-4 for TPO and DG by step ~140; at step 150 GRPO ~3e-3 "
                "and PG ~1e-3; TPO's misalignment below 1e-4 by step ~25, DG ~2e-4 then "
                "rising, GRPO rising to ~0.8, PG dipping to ~1e-2 then rising.",
            )
        ),
    )
)

_register(
    Builder(
        "fig4_tabular_multi",
        "Fig 4: multi-context bandit (paper §3.2)",
        _tabular(
            TabularSpec(
                task="tabular_multi",
                setting=_multi_setting,
                error_ylabel=r"error $1-\mathrm{mean}_n\,\pi_n(y)$",
                misalignment_ylabel="misalignment to CE direction",
                checkpoints=(1 / 4, 1 / 2),
                timing="error at step t is recorded after the t-th update (steps 1..T); "
                "misalignment at step t (0..T-1) = 1 - cos(update, CE direction e_y - π).",
                paper_note="CE fastest; DG and GRPO faster at first, TPO overtakes them and "
                "ends lowest of the RL methods; final error ~5e-4 (TPO, GRPO, CE), ~2e-3 (DG), "
                "~6e-3 (PG); TPO's misalignment starts ~0.05 and falls below 1e-4 by step "
                "~550.",
            )
        ),
    )
)


# --------------------------------------------------------------------------------------------
# Appendix B: update coefficients β(p) of the multi-context bandit
# --------------------------------------------------------------------------------------------

APPENDIX_B_P = (0.01, 0.1, 0.3, 0.5, 0.9)
APPENDIX_B_A = 10  # actions per context, as in Fig 4


def _lambda(num_actions: int) -> float:
    """λ = exp(u_y - u_other) = exp(A/sqrt(A-1)) for a one-hot reward over A actions."""
    return math.exp(num_actions / math.sqrt(num_actions - 1))


def closed_form_beta(method: str, p: float, num_actions: int = APPENDIX_B_A) -> float:
    """Appendix B's β(p): CE 1, PG p, DG p/(1+p) (η=1), GRPO sqrt(p/(1-p)),
    TPO p(λ-1)/(1-p+λp) with λ = exp(A/sqrt(A-1))."""
    if method == "ce":
        return 1.0
    if method == "pg":
        return p
    if method == "dg":
        return p / (1 + p)
    if method == "grpo":
        return math.sqrt(p / (1 - p))
    if method == "tpo":
        lam = _lambda(num_actions)
        return p * (lam - 1) / (1 - p + lam * p)
    raise KeyError(method)


def _appendix_b_configs() -> dict:
    # imported here: Appendix B is the only artefact that runs library code (and JAX)
    from tpo_sweeps import config as C

    return {
        "ce": C.CEConfig(name="ce"),
        "dg": C.DGConfig(name="dg", baseline="none"),
        "grpo": C.GRPOConfig(name="grpo", std_eps_mode="sqrt"),
        "tpo": C.TPOConfig(name="tpo"),
        "pg": C.PGConfig(name="pg", baseline="none"),
    }


def _build_appendix_b(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    from analysis import figures
    from tpo_sweeps.tasks.tabular import update_coefficient

    artifact = "appendix_b"
    A = APPENDIX_B_A
    hps = _appendix_b_configs()
    methods = ["ce", "dg", "grpo", "tpo", "pg"]
    rows, md_rows = [], []
    measured: dict[str, list[float]] = {m: [] for m in methods}
    worst = 0.0
    for p in APPENDIX_B_P:
        setting = f"one-hot multi-context bandit A={A} p={p:g}"
        for method in methods:
            beta = update_coefficient(hps[method], p, num_actions=A)
            closed = closed_form_beta(method, p, A)
            measured[method].append(beta)
            worst = max(worst, abs(beta - closed))
            for metric, value in (("beta_coefficient", beta), ("beta_closed_form", closed)):
                rows.append(_exact_row(artifact, setting, method, metric, value))
            md_rows.append(
                {
                    "p": f"{p:g}",
                    "method": tables.label(method),
                    "β (update_coefficient)": f"{beta:.4f}",
                    "β closed form": f"{closed:.4f}",
                    "|Δ|": f"{abs(beta - closed):.1e}",
                    "paper": tables.paper_value(artifact, setting, method, "beta_coefficient")
                    or "—",
                }
            )
    lam = _lambda(A)
    rows.append(_exact_row(artifact, f"A={A}", "tpo", "lambda", lam))
    if worst > 1e-4:
        log.warning("appendix_b: update_coefficient differs from the closed form by %.2e", worst)
    df = tables.long_frame(rows)

    with figures.style():
        files = figures.save(_beta_figure(measured, A), out, artifact)

    paper_lam = tables.paper_value(artifact, f"A={A}", "tpo", "lambda") or "—"
    md = [
        "# Appendix B: update coefficients of the multi-context bandit",
        "",
        "Every method's exact multi-context update is β(p)·(e_y − π) for a context whose "
        "correct action has probability p. `β (update_coefficient)` runs "
        "`tpo_sweeps.tasks.tabular.update_coefficient` (the training code path: the "
        "algorithm's loss and its exact-expectation layout, float32) on one context with "
        f"A = {A} actions; the closed forms are β_CE = 1, β_PG = p, β_DG = p/(1+p) (η = 1), "
        "β_GRPO = sqrt(p/(1−p)), β_TPO = p(λ−1)/(1−p+λp) with λ = exp(A/sqrt(A−1)) "
        f"= e^{{10/3}} = {lam:.4f} (paper: {paper_lam}). Configs: CE; DG baseline none; GRPO "
        "std_eps_mode sqrt; TPO defaults (η = 1); PG baseline none.",
        "",
        f"Largest |update_coefficient − closed form|: {worst:.1e}.",
        "",
        tables.markdown_table(pd.DataFrame(md_rows)),
        "",
        f"![{artifact}]({artifact}.png)",
        "",
        "*Figure:* β(p) closed forms (lines) and update_coefficient (markers), log-log axes.",
        "",
    ]
    files += _write_tables(df, md, out, artifact)
    df.attrs["files"] = [str(f) for f in files]
    return df


def _exact_row(artifact: str, setting: str, method: str, metric: str, value: float) -> dict:
    return {
        "artifact": artifact,
        "setting": setting,
        "method": method,
        "metric": metric,
        "value": value,
        "se": math.nan,
        "n_seeds": pd.NA,
    }


def _beta_figure(measured: dict[str, list[float]], num_actions: int):
    from matplotlib.figure import Figure

    from analysis import figures

    fig = Figure(figsize=(5.0, 3.8), layout="constrained")
    ax = fig.subplots()
    grid = np.geomspace(1e-3, 0.99, 200)
    for i, method in enumerate(tables.order_methods(measured)):
        col = figures.color(method, i)
        ax.plot(
            grid,
            [closed_form_beta(method, p, num_actions) for p in grid],
            color=col,
            linestyle=figures.linestyle(method),
            label=tables.label(method),
        )
        ax.plot(APPENDIX_B_P, measured[method], "o", color=col, markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p = π(y)")
    ax.set_ylabel("β(p)")
    ax.set_title(f"update coefficient, A = {num_actions}")
    ax.legend(loc="lower right")
    return fig


_register(
    Builder(
        "appendix_b",
        "Appendix B: update coefficients",
        _build_appendix_b,
        needs_runs=False,
    )
)


# MNIST artefacts (Figs 1a, 5a, 5b) register themselves here.
import analysis.mnist  # noqa: E402, F401

# Token-reversal artefacts (Figs 1b, 6–9, 11–18, Tables 1–3, 5) register themselves here.
import analysis.reversal  # noqa: E402, F401
