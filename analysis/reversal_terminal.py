"""Token reversal with the terminal (exact-match) reward: Fig 1b, Table 3 / Fig 8, Fig 9.

==========================  =================================================================
id                          paper artefact(s)
==========================  =================================================================
``fig1b_terminal``          Fig 1b (terminal reward, H = 10: TPO, GRPO, DG)
``table3_terminal``         Table 3 (final exact-match error over H) and Fig 8
``fig9_ablations``          Fig 9 (anchor / Group PG / no-KL ablations, H in {7, 8, 10})
==========================  =================================================================

Fig 1b's cells are three of Table 3's (H = 10, prompt-matched) and Fig 9's TPO and GRPO are
Table 3's too: runs of either preset serve both (``analysis.load``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sqlalchemy.engine import Engine

from analysis import stats, tables
from analysis.artifacts import Builder, register
from analysis.reversal_data import (
    FINAL,
    MATCH_WORD,
    MATCHES,
    Data,
    Measure,
    Standard,
    cell_of,
    curve,
    load_sweep,
    missing_cells,
    moving_average_left,
    page,
    report_missing,
    standard,
    summarise,
)

FIG1B_WINDOW = 40
FIG1B_CHECKPOINTS = (199, 399, 499, 999, 1499)
TERMINAL_METHODS = ("tpo", "grpo", "grpo_no_kl", "ppo", "dg")
ABLATION_METHODS = ("tpo", "grpo", "grpo_no_kl", "tpo_no_anchor", "group_pg")


def build_fig1b(engine: Engine | None, out: Path, sweep: str) -> pd.DataFrame:
    from analysis import figures

    data = load_sweep(engine, sweep, ("target", "reward", "H", "V", "K", "B", "match"))
    rows = tables.Rows(sweep, "Fig 1b")
    steps = max(a["steps"] for a in data.cells.values())
    measures = [
        FINAL,
        *(
            Measure(f"error_pct_at_episode_{t}", f"error % at ep {t}", "at", step=t)
            for t in FIG1B_CHECKPOINTS
            if t < steps
        ),
        Measure("steps_to_50pct", "steps to 50%", "steps", 0.5),
        Measure("steps_to_10pct", "steps to 10%", "steps", 0.1),
    ]
    md_rows = summarise(data, (), measures, ("H", "match"), rows)
    curves = stats.seed_stats(data.metric("error"), ["cell", "step"])
    for i, (c, a) in enumerate(data.cells.items()):
        cv = curve(curves, c)
        if cv.empty:
            continue
        smoothed = 100.0 * moving_average_left(cv["mean"].to_numpy(), FIG1B_WINDOW)[-1]
        n = int(cv["n_seeds"].max())
        rows.add(cell_of(a), "smoothed40_final_error_pct", smoothed, n=n)
        md_rows[i]["40-ep smoothed final %"] = tables.fmt_pct(smoothed)
    gone = missing_cells(data, {"algorithm": ("tpo", "grpo", "dg")})

    def figure():
        return figures.curve_grid(
            data.cells,
            curves,
            [("", {})],
            [(f"H = {h}", {"H": h}) for h in data.values("H")],
            lambda a: figures.by_method(a["algorithm"]),
            smooth=lambda y: moving_average_left(y, FIG1B_WINDOW),
            ylabel="exact-match error",
            suptitle="Fig 1b: token reversal, terminal reward (40-episode moving average)",
        )

    figs = figures.draw(out, sweep, figure)
    md = page(
        data,
        "Fig 1b: token reversal with terminal (exact-match) reward",
        [
            report_missing(sweep, "methods", gone),
            "- paper column: the authors' released per-seed curves for Fig 1b (20 seeds, "
            "H = 10, prompt-matched; Table 3 prints the final values rounded): final 7.36% "
            "TPO, 50.37% GRPO, 99.75% DG; at episode 999 TPO 22.87%, GRPO 62.94%; TPO first "
            "below 50% at 489, below 10% at 1164 (protocols §9).",
        ],
        md_rows,
        f"*Figure:* seed-mean exact-match error ± 1 s.e., both smoothed with a "
        f"{FIG1B_WINDOW}-episode trailing moving average left-padded with the first value; "
        "linear y axis 0–1.05.",
    )
    return tables.write(out, sweep, rows.frame(), md, figs)


def _h_grid(data: Data, title: str):
    from analysis import figures

    curves = stats.seed_stats(data.metric("error"), ["cell", "step"])
    return figures.curve_grid(
        data.cells,
        curves,
        [(MATCH_WORD.get(m, m), {"match": m}) for m in data.values("match")],
        [(f"H = {h}", {"H": h}) for h in data.values("H")],
        lambda a: figures.by_method(a["algorithm"]),
        ylabel="exact-match error",
        suptitle=title,
    )


TABLE3 = Standard(
    title="Table 3 / Fig 8: terminal (exact-match) reward over H",
    item="Table 3",
    dims=("match", "H"),
    measures=(
        Measure("final_error_pct", "final error %", "final", dash_above=95.0),
        Measure("steps_to_5pct", "steps to 5%", "steps", 0.05, item="Fig 8"),
    ),
    paper_keys=("H", "match"),
    grid={"match": MATCHES, "H": (7, 8, 9, 10), "algorithm": TERMINAL_METHODS},
    what="matching × H × method",
    notes=(
        "- `−` = final error above 95% (the paper's convention; our value in brackets). "
        "Interaction-matched: PPO/DG get B·K prompts per episode and lr·√K.",
        "- paper column: Table 3 at the same H and matching (final-episode seed mean, 20 seeds).",
    ),
    caption="*Figure (Fig 8):* rows = matching, columns = H; seed-mean exact-match error "
    "± 1 s.e., linear y.",
    figure=lambda data: _h_grid(
        data, "Fig 8: terminal reward by sequence length H (rows: prompt- / interaction-matched)"
    ),
)
FIG9 = Standard(
    title="Fig 9: anchor / Group PG / no-KL ablations (terminal reward)",
    item="Fig 9",
    dims=("match", "H"),
    measures=(FINAL,),
    paper_keys=("H",),
    grid={"H": (7, 8, 10), "algorithm": ABLATION_METHODS},
    what="H × method",
    notes=(
        "- paper column: §3.7 at H = 10 (TPO 7.4%, every ablation > 99%). Read off the "
        "paper's figure: TPO (no anchor) plateaus ~89% / 93% / 100% at H = 7 / 8 / 10; Group "
        "PG ~99–100%; GRPO (no KL) ~60% (H = 7) and ~90% (H = 8); GRPO ~15% / 28% / 52%.",
    ),
    caption="*Figure (Fig 9):* columns = H; seed-mean exact-match error ± 1 s.e., linear y.",
    figure=lambda data: _h_grid(
        data, "Fig 9: anchor and target-matching ablations, terminal reward"
    ),
)

register(
    __name__,
    Builder("fig1b_terminal", "Fig 1b: token reversal, terminal reward", build_fig1b),
    Builder("table3_terminal", "Table 3 / Fig 8: terminal reward over H", standard(TABLE3)),
    Builder("fig9_ablations", "Fig 9: anchor / target-matching ablations", standard(FIG9)),
)
