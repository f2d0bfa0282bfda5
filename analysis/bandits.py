"""Tabular-bandit artefacts: Fig 3 (single context), Fig 4 (multi context), Appendix B.

* ``fig3_tabular_single`` / ``fig4_tabular_multi``: seed-mean error and misalignment curves
  (log axes) and a table of the final values, the error at two checkpoints and the steps to
  1% error, per method.
* ``appendix_b``: needs no runs. It evaluates ``tpo_sweeps.tasks.tabular.update_coefficient``,
  the code path the multi-context training uses, and sets it beside the closed forms β(p).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from analysis import load, methods, paper, selection, stats, tables
from analysis.artifacts import Builder, register
from analysis.errors import AnalysisError

log = logging.getLogger("analysis")

_THRESHOLD = 0.01  # steps_to_1pct: the paper's "steps to 1% error"


def _cfg(config: dict, dotted: str, default="?"):
    return selection.config_value(config, dotted, default)


def _alpha(config: dict) -> str:
    alpha = _cfg(config, "optimizer.alpha", None)
    return f"alpha={alpha:g}" if alpha is not None else f"opt={_cfg(config, 'optimizer.name')}"


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


@dataclass(frozen=True)
class TabularSpec:
    title: str
    item: str  # the paper's name for the figure
    task: str  # runs.task every run of the artefact must have
    setting: Callable[[dict], str]  # resolved run config -> the CSV's setting string
    error_ylabel: str
    misalignment_ylabel: str
    checkpoints: tuple[float, ...]  # error checkpoints as fractions of the run's steps
    timing: str  # what "step" means for this task's error (before/after the update)
    paper_note: str  # what the paper shows, read off its figure


def _cells(kept: pd.DataFrame, run_info: pd.DataFrame, spec: TabularSpec, sweep: str):
    """method -> its ``tables.Cell`` (one configuration per method, else refused)."""
    cells = kept.drop_duplicates(load.CELL)
    multi = cells["algorithm"].value_counts()
    if (multi > 1).any():
        algo = multi.index[multi > 1][0]
        raise AnalysisError(
            f"artefact '{sweep}' has {multi[algo]} different configurations for algorithm "
            f"'{algo}' (steps/epochs/K/eta/...); one curve per method is drawn, split the sweep"
        )
    out = {}
    for _, row in cells.iterrows():
        config = run_info.loc[int(row["run_id"]), "config"]
        batch = _cfg(config, "task.batch_size", None)
        out[row["algorithm"]] = tables.Cell(
            spec.setting(config),
            row["algorithm"],
            episodes=int(row["steps"]),
            B=batch,
            key=tables.key_of(row),
        )
    return out


def _build_tabular(spec: TabularSpec, engine: Engine | None, out: Path, sweep: str):
    from analysis import figures  # seaborn/matplotlib: imported when a figure is drawn

    kept = load.kept_of_task(engine, sweep, spec.task)
    base = selection.preset_of(sweep)
    run_info = load.runs(engine, sweep=sweep).set_index("id")
    run_ids = sorted(kept["run_id"].unique())
    cells = _cells(kept, run_info, spec, sweep)

    m = load.metrics(engine, sweep, names=["error", "misalignment"])
    s = load.summaries(engine, sweep, names=["final_error", "final_misalignment"])
    order = methods.order(kept["algorithm"].unique())
    curves = stats.seed_stats(m, ["algorithm", "name", "step"]).rename(
        columns={"algorithm": "method"}
    )

    rows = tables.Rows(sweep, spec.item)
    for method in order:
        cell = cells[method]
        sm = s[s["algorithm"] == method]
        finals = ("final_error", "final_misalignment")
        per_seed = {k: sm.loc[sm["name"] == k, "value"] for k in finals}
        err = m[(m["algorithm"] == method) & (m["name"] == "error")]
        recorded = np.sort(err["step"].unique())
        for frac in spec.checkpoints:
            # the recorded step nearest below the checkpoint (log_every may skip steps)
            below = recorded[recorded <= int(round(frac * cell.episodes))]
            if below.size:
                step = int(below[-1])
                per_seed[f"error_at_step_{step}"] = err.loc[err["step"] == step, "value"]
        for metric, values in per_seed.items():
            shown = paper.lookup(base, method, metric)
            rows.over_seeds(cell, metric, values, keep_empty=True, paper=shown)
        c = curves[(curves["method"] == method) & (curves["name"] == "error")]
        shown = paper.lookup(base, method, "steps_to_1pct")
        rows.add_crossing(cell, "steps_to_1pct", c, err, _THRESHOLD, paper=shown)
    df = rows.frame()

    x64 = all(bool(_cfg(run_info.loc[r, "config"], "x64", False)) for r in run_ids)
    # 1 - cos(g, g*) of nearly parallel vectors is round-off below the float's epsilon
    resolution = float(np.finfo(np.float64 if x64 else np.float32).eps)
    panels = [
        figures.Panel("error", spec.error_ylabel, "error"),
        figures.Panel(
            "misalignment", spec.misalignment_ylabel, "misalignment", resolution=resolution
        ),
    ]
    settings = sorted({c.setting for c in cells.values()})
    with figures.style():
        fig, notes = figures.curves_figure(curves, panels, order, suptitle="; ".join(settings))
        files = figures.save(fig, out, sweep)
    for note in notes:
        log.info("%s: %s drawn at %g (log axis)", sweep, note, figures.LOG_FLOOR)

    md = [
        *tables.header(spec.title, sweep, settings, engine, run_info, run_ids),
        f"- {spec.timing}",
        "- mean ± s.e. over seeds, s.e. = population std (ddof=0)/sqrt(n_seeds) as in the "
        "paper; 95% CI = percentile bootstrap over seeds (10,000 resamples, seed 0) of the "
        "mean, and for `steps_to_1pct` of the crossing step (never: some resamples do not "
        "cross); `final_*` = the last recorded step of each seed; `steps_to_1pct` = first "
        "step where the seed-mean error is below 1%.",
        "- paper column: `analysis/paper_numbers.csv` "
        + ("(read off the paper's figure)" if paper.has_numbers(base) else "has no numbers")
        + f". Paper: {spec.paper_note}",
        "",
        tables.markdown_table(rows.markdown()),
        "",
        f"![{sweep}]({sweep}.png)",
        "",
        f"*Figure:* seed-mean error (left) and misalignment (right) vs step, bands = ± 1 s.e., "
        f"log y axes. The runs computed in {'float64' if x64 else 'float32'}: misalignment "
        f"below its epsilon ({resolution:.1e}, grey region) is round-off, and round-off can "
        f"make it 0 or negative. Log axes cannot show values ≤ 0, so seed means and band "
        f"edges ≤ {figures.LOG_FLOOR:g} are drawn at {figures.LOG_FLOOR:g}"
        + (" (" + "; ".join(notes) + ")." if notes else " (none in this sweep)."),
    ]
    return tables.write(out, sweep, df, md, files)


def _tabular(spec: TabularSpec):
    def fn(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
        return _build_tabular(spec, engine, out, sweep)

    return fn


FIG3 = TabularSpec(
    title="Fig 3: single-context bandit (paper §3.1)",
    item="Fig 3",
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
FIG4 = TabularSpec(
    title="Fig 4: multi-context bandit (paper §3.2)",
    item="Fig 4",
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
    order = ["ce", "dg", "grpo", "tpo", "pg"]
    rows = tables.Rows(artifact, "App. B")
    md_rows = []
    measured: dict[str, list[float]] = {m: [] for m in order}
    worst = 0.0
    for p in APPENDIX_B_P:
        for method in order:
            cell = tables.Cell(f"one-hot multi-context bandit A={A} p={p:g}", method, key={"p": p})
            beta = update_coefficient(hps[method], p, num_actions=A)
            closed = closed_form_beta(method, p, A)
            measured[method].append(beta)
            worst = max(worst, abs(beta - closed))
            rows.add(cell, "beta_coefficient", beta)
            rows.add(cell, "beta_closed_form", closed)
            md_rows.append(
                {
                    "p": f"{p:g}",
                    "method": methods.label(method),
                    "β (update_coefficient)": f"{beta:.4f}",
                    "β closed form": f"{closed:.4f}",
                    "|Δ|": f"{abs(beta - closed):.1e}",
                    "paper": paper.lookup(artifact, method, "beta_coefficient", p=p) or "—",
                }
            )
    lam = _lambda(A)
    rows.add(tables.Cell(f"A={A}", "tpo"), "lambda", lam)
    if worst > 1e-4:
        log.warning("appendix_b: update_coefficient differs from the closed form by %.2e", worst)

    files = figures.draw(out, artifact, lambda: _beta_figure(measured, A))

    paper_lam = paper.lookup(artifact, "tpo", "lambda") or "—"
    md = [
        *tables.header("Appendix B: update coefficients of the multi-context bandit", artifact),
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
        tables.markdown_table(md_rows),
        "",
        f"![{artifact}]({artifact}.png)",
        "",
        "*Figure:* β(p) closed forms (lines) and update_coefficient (markers), log-log axes.",
    ]
    return tables.write(out, artifact, rows.frame(), md, files)


def _beta_figure(measured: dict[str, list[float]], num_actions: int):
    from matplotlib.figure import Figure

    from analysis import figures

    fig = Figure(figsize=(5.0, 3.8), layout="constrained")
    ax = fig.subplots()
    grid = np.geomspace(1e-3, 0.99, 200)
    for i, method in enumerate(methods.order(measured)):
        s = figures.by_method(method, index=i)
        ax.plot(
            grid,
            [closed_form_beta(method, p, num_actions) for p in grid],
            color=s.color,
            linestyle=s.linestyle,
            label=s.label,
        )
        ax.plot(APPENDIX_B_P, measured[method], "o", color=s.color, markersize=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p = π(y)")
    ax.set_ylabel("β(p)")
    ax.set_title(f"update coefficient, A = {num_actions}")
    ax.legend(loc="lower right")
    return fig


register(
    __name__,
    Builder("fig3_tabular_single", FIG3.title, _tabular(FIG3)),
    Builder("fig4_tabular_multi", FIG4.title, _tabular(FIG4)),
    Builder(
        "appendix_b",
        "Appendix B: update coefficients",
        _build_appendix_b,
        needs_runs=False,
    ),
)
