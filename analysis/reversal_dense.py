"""Token reversal with dense rewards: Table 1 / Fig 6, Table 2 / Fig 7, Table 5 / Fig 17, Fig 18.

==========================  =================================================================
id                          paper artefact(s)
==========================  =================================================================
``table1_vocab``            Table 1 (steps to 1% over V) and Fig 6 (one panel per V)
``table2_variations``       Table 2 (steps to 1%, 8 variants) and Fig 7 (4 x 4 grid)
``table5_eta``              Table 5 and Fig 17 (TPO temperature η)
``fig18_dg_epochs``         Fig 18 (DG 1 vs 4 epochs; (b, c) from ``table2_variations``)
==========================  =================================================================
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from analysis import load, methods, selection, stats, tables
from analysis.artifacts import Builder, register
from analysis.errors import AnalysisError
from analysis.reversal_data import (
    FINAL,
    MATCHES,
    STEPS_1,
    TARGETS,
    Data,
    Standard,
    load_sweep,
    missing_cells,
    page,
    per_seed_at,
    report_missing,
    show,
    standard,
    summarise,
)
from analysis.tables import same

DENSE_METHODS = ("tpo_token", "grpo_token", "dg", "ppo")
DG_METHODS = ("dg", "dg_4ep")


def _by_method(a: dict):
    from analysis import figures

    return figures.by_method(a["algorithm"])


def _error_grid(data: Data, rows, cols, series=_by_method, **kw):
    from analysis import figures

    curves = stats.seed_stats(data.metric("error"), ["cell", "step"])
    return figures.curve_grid(data.cells, curves, rows, cols, series, **kw)


# --------------------------------------------------------------------------------------------
# Table 1 / Fig 6, Table 2 / Fig 7, Table 5 / Fig 17
# --------------------------------------------------------------------------------------------


def _variant_rows(data: Data) -> list[tuple[str, dict]]:
    out = []
    for match in data.values("match"):
        for reward in data.values("reward", data.select(match=match)):
            short = {"prompts": "prompt", "interactions": "interaction"}.get(match, match)
            rw = {"bag_of_tokens": "bag", "sequential": "sequential"}.get(reward, reward)
            out.append((f"{short} / {rw}", {"match": match, "reward": reward}))
    return out


def _eta_grid(data: Data):
    """Fig 17: one panel per method, one curve per η (viridis, in η order)."""
    import seaborn as sns

    from analysis import figures

    etas = data.values("eta")
    pal = sns.color_palette("viridis", max(1, len(etas)))

    def by_eta(a: dict) -> figures.Series:
        i = next((k for k, e in enumerate(etas) if same(e, a["eta"])), 0)
        eta = show("eta", a["eta"])
        return figures.Series(f"eta={eta}", f"η = {eta}", pal[i], rank=i)

    shown = methods.order(a["algorithm"] for a in data.cells.values())
    return _error_grid(
        data,
        [("", {})],
        [(methods.label(m), {"algorithm": m}) for m in shown],
        by_eta,
        ylim=(0.0, None),
        ylabel="sequence error",
        suptitle="Fig 17: TPO temperature η (reverse copy, bag-of-tokens reward)",
    )


TABLE1 = Standard(
    title="Table 1 / Fig 6: dense token reversal over the vocabulary size V",
    item="Table 1",
    dims=("V",),
    measures=(STEPS_1, dataclasses.replace(FINAL, item="Fig 6")),
    paper_keys=("V",),
    grid={"V": (2, 4, 8, 16), "algorithm": DENSE_METHODS},
    what="V × method",
    notes=("- paper column: Table 1 (steps to 1%, 20 seeds) at the same V.",),
    caption="*Figure (Fig 6):* one panel per V, seed-mean error ± 1 s.e. vs episode, linear y.",
    figure=lambda data: _error_grid(
        data,
        [("", {})],
        [(f"V = {v}", {"V": v}) for v in data.values("V")],
        ylabel="sequence error (fraction of wrong tokens)",
        suptitle="Fig 6: dense token reversal (bag-of-tokens reward) by vocabulary size",
    ),
)
TABLE2 = Standard(
    title="Table 2 / Fig 7: target logics × reward types, prompt- and interaction-matched",
    item="Table 2",
    dims=("match", "reward", "target"),
    measures=(STEPS_1, dataclasses.replace(FINAL, item="Fig 7")),
    paper_keys=("target", "reward", "match"),
    grid={
        "match": MATCHES,
        "reward": ("bag_of_tokens", "sequential"),
        "target": TARGETS,
        "algorithm": DENSE_METHODS,
    },
    what="matching × reward × target × method",
    notes=(
        '- paper column: Table 2 (steps to 1%, prompt-matched only; "never" = the paper\'s '
        '"−", not within 1000 episodes). Interaction-matched rows have no paper numbers '
        "(Fig 7 only; see protocols D6).",
    ),
    caption="*Figure (Fig 7):* rows prompt/bag, prompt/sequential, interaction/bag, "
    "interaction/sequential (those present); columns = targets; seed-mean error ± 1 s.e., "
    "linear y.",
    figure=lambda data: _error_grid(
        data,
        _variant_rows(data),
        [(t.replace("_", " "), {"target": t}) for t in data.values("target")],
        ylabel="error",
        suptitle="Fig 7: token-reversal variations (rows: matching / reward; columns: target)",
    ),
)
TABLE5 = Standard(
    title="Table 5 / Fig 17: TPO temperature η",
    item="Table 5",
    dims=("eta",),
    measures=(FINAL, STEPS_1),
    paper_keys=("eta",),
    grid={"eta": (0.25, 0.5, 1.0, 2.0, 4.0)},
    what="η",
    notes=(
        "- η = the runs' `eta` column (TPO's temperature). The paper does not say which TPO "
        "variant it used (D9); its row is shown for `tpo` and `tpo_token` alike.",
        "- paper column: Table 5 at the same η (10 seeds).",
    ),
    caption="*Figure (Fig 17):* one curve per η, seed-mean error ± 1 s.e., linear y.",
    figure=_eta_grid,
    extra_setting=("eta",),
    paper_method=lambda m: "tpo" if m in ("tpo", "tpo_token") else m,
)


# --------------------------------------------------------------------------------------------
# Fig 18: DG with 1 vs 4 epochs
# --------------------------------------------------------------------------------------------


def _variations_sweep(sweep: str) -> selection.Artefact:
    """Fig 18 (b, c): Table 2's prompt-matched cells with DG at 1 and 4 epochs, at the
    artefact's scale (and with its overrides, but its own algorithms and matching)."""
    art = selection.parse(sweep)
    own = ("algorithm", "task.match")
    keep = [o for o in art.overrides if o.lstrip("+~").split("=")[0] not in own]
    variants = [f"algorithm={','.join(DG_METHODS)}", "task.match=prompts"]
    return selection.Artefact("table2_variations", art.scale, [*keep, *variants])


def _load_or_none(engine: Engine, sweep: str, dims, **kw) -> Data | None:
    try:
        return load_sweep(engine, sweep, dims, **kw)
    except AnalysisError as e:
        if "no completed runs" not in str(e):
            raise
        return None


def _fig18_figure(data_a: Data | None, data_bc: Data | None, bc_cells: list[int]):
    from matplotlib.figure import Figure

    from analysis import figures

    ncols = int(data_a is not None) + int(bool(bc_cells))
    fig = Figure(figsize=(5.0 + (6.5 if bc_cells else 0.0), 3.8), layout="constrained")
    axes = list(fig.subplots(1, max(1, ncols), squeeze=False)[0])
    handles: dict[str, tuple] = {}
    if data_a is not None:
        ax = axes.pop(0)
        curves = stats.seed_stats(data_a.metric("error"), ["cell", "step"])
        for c in reversed(list(data_a.cells)):
            cv = curves[curves["cell"] == c].sort_values("step")
            s = figures.by_method(data_a.cells[c]["algorithm"])
            h = figures.draw_curve(ax, cv["step"].to_numpy(), cv["mean"], cv["se"], s)
            handles.setdefault(s.key, (h, s.label, s.rank))
        ax.set_ylim(0, 1.05)
        ax.set_xlim(0, max(1, int(curves["step"].max())))
        ax.set_xlabel("episode")
        ax.set_ylabel("exact-match error")
        ax.set_title("(a) terminal reward", fontsize="medium")
    if bc_cells:
        ax = axes.pop(0)
        finals = per_seed_at(data_bc.metric("error"))
        groups, values = [], {}
        short = {"bag_of_tokens": "bag", "sequential": "seq"}
        for c in bc_cells:
            a = data_bc.cells[c]
            g = f"{short.get(a['reward'], a['reward'])}\n{a['target'].replace('_', ' ')}"
            if g not in groups:
                groups.append(g)
            mean, se, n = stats.mean_se(finals.loc[finals["cell"] == c, "value"] * 100.0)
            if n:
                values[(g, a["algorithm"])] = (mean, se)
        series = [figures.by_method(m) for m in DG_METHODS]
        handles.update(figures.bar_chart(ax, groups, series, values, "final error %"))
        ax.tick_params(axis="x", labelsize="x-small")
        ax.set_title("(b, c) prompt-matched variants", fontsize="medium")
    figures.legend(fig, handles)
    fig.suptitle("Fig 18: DG with 1 vs 4 epochs per batch", fontsize="medium")
    return fig


def _worse_with_4_epochs(data_bc: Data, bc_cells: list[int]) -> tuple[int, int]:
    """(variants where 4-epoch DG ends worse than 1-epoch DG, variants with both)."""
    finals = per_seed_at(data_bc.metric("error"))
    worse = compared = 0
    for reward in data_bc.values("reward", bc_cells):
        for target in data_bc.values("target", bc_cells):
            pair = [
                data_bc.select(match="prompts", reward=reward, target=target, algorithm=m)
                for m in DG_METHODS
            ]
            if all(pair):
                means = [finals.loc[finals["cell"] == p[0], "value"].mean() for p in pair]
                compared += 1
                worse += int(means[1] > means[0])
    return worse, compared


def build_fig18(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    from analysis import figures

    if engine is None:
        raise AnalysisError(f"artefact '{sweep}' needs a results database")
    variations = _variations_sweep(sweep)
    data_a = _load_or_none(engine, sweep, ())
    dims_bc = ("match", "reward", "target")
    data_bc = _load_or_none(engine, variations, dims_bc, algorithms=DG_METHODS)
    if data_a is None and data_bc is None:
        raise AnalysisError(
            f"{load.no_runs(engine, sweep)}, nor for its (b, c) cells, those of "
            f"{variations.describe()}"
        )
    rows = tables.Rows(sweep, "Fig 18a")
    lines: list[str] = []
    md_a: list[dict] = []
    md_bc: list[dict] = []
    bc_cells: list[int] = []
    if data_a is not None:
        md_a = summarise(data_a, (), [FINAL], ("reward",), rows)
        gone = missing_cells(data_a, {"algorithm": DG_METHODS})
        lines.append(report_missing(sweep, "(a) methods", gone))
    else:
        lines.append(
            f"- (a): no completed runs of the cells of `{selection.parse(sweep).describe()}`."
        )
    worse = compared = 0
    if data_bc is not None:
        bc_cells = data_bc.select(match="prompts")
        md_bc = summarise(
            data_bc,
            ("reward", "target"),
            [dataclasses.replace(FINAL, item="Fig 18b-c")],
            ("target", "reward", "match"),
            rows,
            cells=bc_cells,
            paper_artifact=rows.artifact,
        )
        worse, compared = _worse_with_4_epochs(data_bc, bc_cells)
        if compared:
            cell = tables.Cell(f"{compared} variants of table2", "dg_4ep")
            rows.add(cell, "variants_worse_than_1ep", float(worse), item="Fig 18b-c")
        grid = {
            "reward": ("bag_of_tokens", "sequential"),
            "target": TARGETS,
            "algorithm": DG_METHODS,
        }
        gone = missing_cells(data_bc, grid, bc_cells)
        lines.append(report_missing(variations, "(b, c) prompt-matched variants × DG 1/4 ep", gone))
    else:
        lines.append(
            f"- (b, c): no completed runs of the cells of `{variations.describe()}` (run "
            f"`python -m tpo_sweeps -m {variations.describe()}`)."
        )
    figs = figures.draw(out, sweep, lambda: _fig18_figure(data_a, data_bc, bc_cells))
    body: list[str] = []
    if data_a is not None:
        body += ["## (a) terminal reward", "", tables.markdown_table(md_a), ""]
    if data_bc is not None:
        body += [
            f"## (b, c) prompt-matched variants (the cells of `{variations.describe()}`)",
            "",
            tables.markdown_table(md_bc),
            "",
            f"4-epoch DG worse than 1-epoch DG (final seed mean) in {worse} of {compared} "
            "variants with both (paper: 7 of 8).",
        ]
    md = page(
        data_a if data_a is not None else data_bc,
        "Fig 18: DG with 1 vs 4 epochs per batch (App. E)",
        [
            *lines,
            "- paper: (a) 2.0% (1 ep) vs 48.3% (4 ep), 20 seeds, H and B not stated (D10); "
            "(b, c) 4-epoch DG worse in 7 of 8 prompt-matched variants of §3.5 (10 seeds).",
        ],
        body,
        "*Figure:* (a) seed-mean error ± 1 s.e.; (b, c) final error % ± 1 s.e. per variant.",
        stem=sweep,
    )
    return tables.write(out, sweep, rows.frame(), md, figs)


register(
    __name__,
    Builder("table1_vocab", "Table 1 / Fig 6: vocabulary sweep", standard(TABLE1)),
    Builder("table2_variations", "Table 2 / Fig 7: variations", standard(TABLE2)),
    Builder("table5_eta", "Table 5 / Fig 17: TPO temperature η", standard(TABLE5)),
    Builder("fig18_dg_epochs", "Fig 18: DG 1 vs 4 epochs", build_fig18),
)
