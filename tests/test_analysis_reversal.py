"""Token-reversal builders (``analysis.reversal_*``) on a synthetic results database.

The fixture stores completed runs of the presets' own cells (their cell hashes and run keys
from ``analysis.selection.selection``, i.e. the cells ``python -m tpo_sweeps -m
experiment=<id>`` launches, written with ``tpo_sweeps.db.claim_runs`` + ``finish_runs`` as a
job does) with known error curves instead of training a transformer: seed s of a cell has
``error[s, t] = MULT[s] * (0.8 exp(-t / tau) + plateau)``. ``MULT`` averages to one, so the
seed-mean curve is ``0.8 exp(-t / tau) + plateau`` and the steps to 1% and the final means
and standard errors are known in closed form. Each (cell, seed) is stored once: artefacts
that share cells (Fig 1b and Fig 9 with Table 3 at H = 10; Figs 14 and 16 with Fig 11) read
the same runs.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from analysis import artifacts, load, paper, reversal_data, reversal_diagnostics, selection, tables
from analysis.__main__ import main
from analysis.load import AnalysisError

MULT = np.array([0.8, 1.0, 1.2])  # per-seed factors, mean exactly 1
S = len(MULT)
FILES = ("png", "pdf", "md", "csv")
# episodes of the presets at paper scale (the fixture stores their cells)
T1, T2, T3 = 1000, 1000, 2000  # Table 1, Table 2, Table 3 (and Figs 1b, 9, 11-18)


def curves(T: int, tau: float, plateau: float = 0.0, seeds: int = S) -> np.ndarray:
    t = np.arange(T)
    return MULT[:seeds, None] * (0.8 * np.exp(-t / tau) + plateau)[None, :]


def steps_to_1pct(tau: float, plateau: float = 0.0) -> int:
    """First integer t with 0.8 exp(-t/tau) + plateau < 0.01."""
    return math.floor(tau * math.log(0.8 / (0.01 - plateau))) + 1


def add_cells(
    engine,
    preset: str,
    errors: Callable[[int], np.ndarray],
    *,
    scale: str = "paper",
    overrides: tuple[str, ...] = (),
    extra: Callable[[int], dict[str, np.ndarray]] | None = None,
    stored_extras: dict | None = None,
    **where,
) -> list[int]:
    """Store completed runs for the preset's requested cells whose labels match ``where``:
    ``errors(T)`` (seeds x episodes) as the error curve, ``extra(T)`` as more metrics.
    ``stored_extras`` stores them with other extras than requested (a diagnostics rerun).
    A requested cell that shares its stored cell with another (a grouped method under both
    matchings) is stored once. Returns the run ids."""
    from tpo_sweeps import db, identity

    art = selection.Artefact(preset, scale, overrides)
    picked = [
        c
        for c in selection.selection(art)
        if all(tables.same(c["labels"][k], v) for k, v in where.items())
    ]
    assert picked, (preset, where)
    ids: list[int] = []
    done: set[str] = set()
    for cell in picked:
        if cell["cell"] in done:
            continue
        done.add(cell["cell"])
        labels = cell["labels"]
        T = labels["steps"]
        err = errors(T)
        metrics = {"error": err, **(extra(T) if extra else {})}
        seeds = np.arange(err.shape[0])
        extras = {**cell["extras"], **(stored_extras or {})}
        promoted = {k: v for k, v in labels.items() if k not in selection.CONFIG_CELL}
        rows = [
            {
                **promoted,
                "sweep": preset,
                "run_key": identity.run_key(cell["cell"], int(s), extras),
                "cell_hash": cell["cell"],
                "seed": int(s),
                **extras,
                "overrides": cell["overrides"],
                "config": {
                    "synthetic": True,
                    "task": {k: labels[k] for k in selection.CONFIG_CELL},
                },
                "git_commit": "0123456789abcdef",
            }
            for s in seeds
        ]
        run_ids = db.claim_runs(engine, rows, preset)
        assert sorted(run_ids) == list(seeds), "a (cell, seed) stored twice"
        steps = {name: np.arange(T) for name in metrics}
        summary = {f"final_{n}": v[:, -1] for n, v in metrics.items()}
        db.finish_runs(engine, run_ids, metrics, steps, summary, seeds)
        ids += list(run_ids.values())
    return ids


TABLE1 = [
    ("tpo_token", 10.0, 0.0),
    ("grpo_token", 20.0, 0.0),
    ("dg", 30.0, 0.0),
    ("ppo", 10.0, 0.5),  # never below 1%
]
# Table 3's TPO plateau by H (the H = 10 cell is also Fig 1b's and Fig 9's TPO)
TPO_PLATEAU = {7: 0.05, 10: 0.07}
# Fig 11's cells (H = 8, B = 256, K = 32, diagnostics on, 2 seeds); tpo and grpo are also
# Fig 14's and Fig 16's at E = 4, tpo_1ep is Fig 16's TPO at E = 1
DIAG_METHODS = {"tpo": (15.0, 0.0), "tpo_1ep": (40.0, 0.0), "grpo": (20.0, 0.1), "dg": (30.0, 0.14)}


def diagnostics(algorithm: str, T: int) -> dict[str, np.ndarray]:
    t = np.arange(T)
    grouped = algorithm != "dg"
    peak = {"tpo": 3.0, "tpo_1ep": 12.0, "grpo": 140.0, "dg": 0.5}[algorithm]
    # a bump at episode 60 wide enough to keep its peak through the T // 40 = 50 smoothing
    grad = MULT[:2, None] * peak * np.exp(-((t - 60) ** 2) / 1800.0)[None, :]
    all_fail = np.stack([0.9 * np.exp(-t / 50.0) + 0.01 * k for k in range(2)])
    return {
        "grad_norm": grad,
        "frac_success": 1.0 - all_fail,
        "frac_all_fail": all_fail if grouped else np.full((2, T), np.nan),
        "frac_zero_var": all_fail if grouped else np.full((2, T), np.nan),
        "weight_winners": np.full((2, T), 0.5),
        "weight_losers": np.stack([np.exp(-t / 30.0)] * 2),
    }


def _c(tau: float, plateau: float = 0.0, seeds: int = S) -> Callable[[int], np.ndarray]:
    return lambda T: curves(T, tau, plateau, seeds)


@pytest.fixture(scope="module")
def db_url(tmp_path_factory) -> str:
    from tpo_sweeps import db

    url = f"sqlite:///{tmp_path_factory.mktemp('reversal_db')}/rev.sqlite"
    engine = db.connect(url)
    # Table 1: V in {2, 4} only (the paper's 8 and 16 are missing: a partial sweep)
    for V in (2, 4):
        for algo, tau, plateau in TABLE1:
            add_cells(engine, "table1_vocab", _c(tau * V / 2, plateau), algorithm=algo, V=V)
    # Table 2: two targets x two rewards, prompt-matched, plus one interaction-matched variant;
    # DG with 4 epochs (Fig 18 b, c) is no Table 2 cell but one of `algorithm=dg,dg_4ep`
    for target, reward in itertools.product(
        ("copy", "reverse_copy"), ("bag_of_tokens", "sequential")
    ):
        cell = {"target": target, "reward": reward, "match": "prompts"}
        # reverse copy with the bag reward is Table 1 at V = 2: those cells are stored already
        if (target, reward) != ("reverse_copy", "bag_of_tokens"):
            add_cells(engine, "table2_variations", _c(8.0), algorithm="tpo_token", **cell)
            add_cells(engine, "table2_variations", _c(12.0), algorithm="dg", **cell)
        add_cells(
            engine,
            "table2_variations",
            _c(12.0, 0.002),
            overrides=("algorithm=dg,dg_4ep", "task.match=prompts"),
            algorithm="dg_4ep",
            **cell,
        )
    add_cells(
        engine,
        "table2_variations",
        _c(8.0),
        algorithm="tpo_token",
        target="copy",
        reward="bag_of_tokens",
        match="interactions",
    )
    # Table 3: H in {7, 10}; TPO is sequence-grouped, so one stored cell serves both matchings;
    # DG above 95% (the paper's "−"), one cell per matching (interaction: B·K prompts)
    for H in (7, 10):
        add_cells(engine, "table3_terminal", _c(10.0, TPO_PLATEAU[H]), algorithm="tpo", H=H)
        add_cells(engine, "table3_terminal", _c(1e6, 0.2), algorithm="dg", H=H)
    # Fig 1b: TPO and DG are Table 3's H = 10 prompt-matched cells; only GRPO is new
    add_cells(engine, "fig1b_terminal", _c(20.0, 0.5), algorithm="grpo")
    # Fig 9 at H = 10: TPO is Table 3's; the no-anchor ablation is new
    add_cells(engine, "fig9_ablations", _c(10.0, 0.2), algorithm="tpo_no_anchor", H=10)
    # Figs 11/12/15: 2 seeds, diagnostics on
    for algo, (tau, plateau) in DIAG_METHODS.items():
        add_cells(
            engine,
            "fig11_diagnostics",
            _c(tau, plateau, seeds=2),
            extra=lambda T, a=algo: diagnostics(a, T),
            algorithm=algo,
        )
    # Fig 13 (K in {4, 8}), Fig 14 (masked GRPO; TPO and GRPO are Fig 11's), Fig 16 (E = 1
    # GRPO; the other three are Fig 11's), Table 5 (eta in {0.5, 1})
    for K, (algo, plateau) in itertools.product((4, 8), (("tpo", 0.05), ("grpo", 0.2))):
        add_cells(engine, "fig13_k_sweep", _c(5.0, plateau / K), algorithm=algo, K=K)
    add_cells(engine, "fig14_grpo_masking", _c(5.0, 0.3), algorithm="grpo_masked")
    add_cells(engine, "fig16_epoch_sweep", _c(5.0, 0.01), algorithm="grpo", epochs=1)
    for eta, tau in ((0.5, 10.0), (1.0, 20.0)):
        add_cells(engine, "table5_eta", _c(tau), eta=eta)
    # Fig 18 (a)
    for algo, plateau in (("dg", 0.02), ("dg_4ep", 0.48)):
        add_cells(engine, "fig18_dg_epochs", _c(10.0, plateau), algorithm=algo)
    engine.dispose()
    return url


IDS = [  # in registry order: reversal_terminal, reversal_dense, reversal_diagnostics
    "fig1b_terminal",
    "table3_terminal",
    "fig9_ablations",
    "table1_vocab",
    "table2_variations",
    "table5_eta",
    "fig18_dg_epochs",
    "fig11_diagnostics",
    "fig13_k_sweep",
    "fig14_grpo_masking",
    "fig16_epoch_sweep",
]


@pytest.fixture(scope="module")
def built(db_url, tmp_path_factory):
    """Every artefact, built once by ``python -m analysis all`` (in process)."""
    out = tmp_path_factory.mktemp("built")
    assert main(["all", "--db", db_url, "--out", str(out)]) == 0
    return out


def csv_of(out, artifact_id: str) -> pd.DataFrame:
    return pd.read_csv(out / f"{artifact_id}.csv")


def row(df: pd.DataFrame, method: str, metric: str, **setting) -> pd.Series:
    sel = (df["method"] == method) & (df["metric"] == metric)
    for key, value in setting.items():
        sel &= df["setting"].str.contains(
            rf"(?:^| ){key}(?: |$)" if value is None else rf"(?:^| ){key}={value}(?: |$)"
        )
    hit = df[sel]
    assert len(hit) == 1, (method, metric, setting, hit)
    return hit.iloc[0]


def final_stats(errors: np.ndarray) -> tuple[float, float]:
    last = errors[:, -1] * 100.0
    return float(last.mean()), float(last.std(ddof=0) / math.sqrt(len(last)))


def md_rows(md: str, *cells: str) -> list[list[str]]:
    """The Markdown table rows (as stripped cells) that contain every one of ``cells``."""
    rows = []
    for ln in md.splitlines():
        if not ln.startswith("|") or set(ln) <= set("|-: "):
            continue
        row = [c.strip() for c in ln.strip().strip("|").split("|")]
        if all(c in row for c in cells):
            rows.append(row)
    return rows


def md_row(md: str, *cells: str) -> list[str]:
    rows = md_rows(md, *cells)
    assert len(rows) == 1, (cells, rows)
    return rows[0]


# --------------------------------------------------------------------------------------------


def test_registry_and_available(db_url):
    for i in IDS:
        builder, sweep = artifacts.resolve(i)
        assert sweep == i and builder.id == i and sweep.scale == "paper"
        builder, sweep = artifacts.resolve(f"{i}_smoke")
        assert builder.id == i and (sweep.preset, sweep.scale) == (i, "smoke")
    engine = load.connect(db_url)
    try:
        # every artefact at paper scale, none at smoke scale (no smoke runs stored)
        assert artifacts.available(engine) == [*IDS, "appendix_b"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("artifact_id", IDS)
def test_every_builder_writes_figure_tables_and_csv(built, artifact_id):
    for ext in FILES:
        f = built / f"{artifact_id}.{ext}"
        assert f.is_file() and f.stat().st_size > 0, f
    assert (built / f"{artifact_id}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (built / f"{artifact_id}.pdf").read_bytes()[:5] == b"%PDF-"
    df = csv_of(built, artifact_id)
    assert list(df.columns) == tables.ROW_COLUMNS
    assert len(df) > 0 and df["n_seeds"].notna().any()
    assert (df["artifact"] == artifact_id).all()
    # every row carries its cell: episodes and the key fields, as the preset requested them
    cells = df[df["metric"] != "variants_worse_than_1ep"]
    assert cells["episodes"].isin([T1, T3]).all()
    assert (cells["reward"].isin(["bag_of_tokens", "sequential", "terminal"])).all()
    assert cells["H"].notna().all() and cells["V"].notna().all() and cells["K"].notna().all()
    assert df["p"].isna().all()
    md = (built / f"{artifact_id}.md").read_text()
    assert md.startswith("# ") and f"![{artifact_id}]({artifact_id}.png)" in md


def test_build_returns_long_frame_with_files(db_url, tmp_path):
    engine = load.connect(db_url)
    try:
        df = artifacts.build("fig14_grpo_masking", engine, tmp_path)
    finally:
        engine.dispose()
    assert list(df.columns) == tables.ROW_COLUMNS
    assert sorted(df.attrs["files"]) == sorted(
        str(tmp_path / f"fig14_grpo_masking.{e}") for e in FILES
    )
    assert set(df["artifact"]) == {"fig14_grpo_masking"}
    final = df[df["metric"] == "final_error_pct"]
    assert set(final["paper_item"]) == {"Fig 14"}
    assert set(df.loc[df["metric"] == "steps_to_5pct", "paper_item"]) == {""}  # ours only


def test_table1_steps_to_1pct_final_error_and_paper(built):
    df = csv_of(built, "table1_vocab")
    assert set(df["artifact"]) == {"table1_vocab"}
    items = df.groupby("metric")["paper_item"].unique().map(list).to_dict()
    assert items == {"steps_to_1pct": ["Table 1"], "final_error_pct": ["Fig 6"]}
    for V in (2, 4):
        for algo, tau, plateau in TABLE1:
            r = row(df, algo, "steps_to_1pct", V=V)
            hit = steps_to_1pct(tau * V / 2, plateau) if plateau < 0.01 else T1
            if hit >= T1:  # PPO (plateau 50%)
                assert math.isnan(r["value"])
            else:
                assert r["value"] == hit
            assert r["n_seeds"] == S and math.isnan(r["se"])
            mean, se = final_stats(curves(T1, tau * V / 2, plateau))
            f = row(df, algo, "final_error_pct", V=V)
            assert f["value"] == pytest.approx(mean, rel=1e-9)
            assert f["se"] == pytest.approx(se, rel=1e-9)
            assert f["n_seeds"] == S
    assert row(df, "tpo_token", "steps_to_1pct", V=2)["value"] == 44  # 10 ln 80 = 43.8
    # the crossing step's bootstrap interval: a resample's seed-mean curve is the mean of three
    # MULT factors times the curve; all three 0.8 (or all 1.2) has probability 1/27 > 2.5%, so
    # the interval runs from the crossing of 0.8x the curve to that of 1.2x
    for V in (2, 4):
        for algo, tau, plateau in TABLE1:
            r = row(df, algo, "steps_to_1pct", V=V)
            if plateau:  # never below 1%, in no resample either
                assert r["ci_low"] == r["ci_high"] == math.inf
                continue
            t = tau * V / 2
            lo, hi = (math.floor(t * math.log(0.8 * m / 0.01)) + 1 for m in (0.8, 1.2))
            assert (r["ci_low"], r["ci_high"]) == (lo, hi)
            f = row(df, algo, "final_error_pct", V=V)
            assert f["ci_low"] <= f["value"] <= f["ci_high"]
    assert df["setting"].str.contains(f"episodes={T1}").all()
    md = (built / "table1_vocab.md").read_text()
    tpo_v2 = md_row(md, "2", "TPO (token)")
    assert tpo_v2[2:4] == ["44", "58"]  # ours, paper
    assert tpo_v2[-2:] == [str(S), str(T1)]  # seeds and episodes behind the numbers
    ppo_v4 = md_row(md, "4", "PPO")
    assert ppo_v4[2:4] == ["never (≤ 999)", "181"]
    assert "V=8" in md and "V=16" in md  # the missing part of the paper's grid


def test_missing_cells_are_logged(db_url, tmp_path, caplog):
    from tpo_sweeps import db

    # smoke scale in a database of its own: the module's database stays paper-only, so that
    # `all` composes no smoke-scale cells (one composition per cell costs ~0.1 s)
    url = f"sqlite:///{tmp_path}/smoke.sqlite"
    smoke = db.connect(url)
    add_cells(smoke, "fig14_grpo_masking", _c(5.0, 0.3), scale="smoke", algorithm="grpo_masked")
    smoke.dispose()
    engine, small = load.connect(db_url), load.connect(url)
    try:
        with caplog.at_level(logging.INFO, logger="analysis"):
            artifacts.build("fig13_k_sweep", engine, tmp_path)
            df = artifacts.build("fig14_grpo_masking_smoke", small, tmp_path)
    finally:
        engine.dispose()
        small.dispose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("fig13_k_sweep" in w and "K=16" in w and "K=64" in w for w in warnings)
    # a smoke artefact's gaps are expected: info, not warning
    assert not any("fig14_grpo_masking_smoke" in w for w in warnings)
    assert any("fig14_grpo_masking_smoke" in r.getMessage() for r in caplog.records)
    # smoke scale: 20 episodes of B = 16, K = 8; H stays the preset's 8
    assert set(df["setting"]) == {
        "reverse_copy terminal H=8 V=2 K=8 B=16 prompt-matched episodes=20"
    }


def test_table2_paper_lookup_by_target_reward_and_matching(built):
    df = csv_of(built, "table2_variations")
    assert set(df["artifact"]) == {"table2_variations"}
    r = row(df, "tpo_token", "steps_to_1pct", copy=None, sequential=None)
    assert r["value"] == steps_to_1pct(8.0)

    def paper_of(method: str, **cell) -> str:
        """The paper's number for our CSV row of this cell, joined on the row's key fields."""
        sel = (df["method"] == method) & (df["metric"] == "steps_to_1pct")
        for k, v in cell.items():
            sel &= df[k] == v
        assert sel.sum() == 1, cell
        r = df[sel].iloc[0]
        key = {f: r[f] for f in paper.KEY_FIELDS if not pd.isna(r[f])}
        return paper.lookup(r["artifact"], method, r["metric"], **key)

    prompts = {"match": "prompts"}
    assert paper_of("tpo_token", target="copy", reward="bag_of_tokens", **prompts) == "81"
    assert paper_of("dg", target="reverse_copy", reward="sequential", **prompts) == "515"
    assert paper_of("ppo", target="reverse_copy", reward="bag_of_tokens", **prompts) == "never"
    # no interaction-matched rows in the paper's Table 2
    key = {"target": "copy", "reward": "bag_of_tokens", "match": "interactions"}
    assert paper.lookup("table2_variations", "tpo_token", "steps_to_1pct", **key) == ""
    inter = df[(df["match"] == "interactions") & (df["metric"] == "steps_to_1pct")]
    assert (
        list(inter["method"]) == ["tpo_token"]
        and inter["setting"].str.contains("interaction-matched").all()
    )
    md = (built / "table2_variations.md").read_text()
    assert "81" in md_row(md, "prompt-matched", "bag_of_tokens", "copy", "TPO (token)")
    assert "515" in md_row(md, "prompt-matched", "sequential", "reverse_copy", "DG")
    inter = md_row(md, "interaction-matched", "TPO (token)")
    assert inter[5] == "—"  # paper column: no interaction-matched numbers in Table 2


def test_table3_final_error_dash_and_paper(built):
    df = csv_of(built, "table3_terminal")
    for H, match in itertools.product((7, 10), ("prompt-matched", "interaction-matched")):
        # one stored TPO cell per H serves both matchings (TPO is sequence-grouped)
        mean, se = final_stats(curves(T3, 10.0, TPO_PLATEAU[H]))
        r = row(df, "tpo", "final_error_pct", H=H, **{match: None})
        assert r["value"] == pytest.approx(mean, rel=1e-9)
        assert r["se"] == pytest.approx(se, rel=1e-9)
        assert r["n_seeds"] == S
    # DG is not grouped: interaction-matched DG is its own cell (B·K prompts), labelled as
    # requested (B = 100)
    assert (
        row(df, "dg", "final_error_pct", H=10, B=100, **{"interaction-matched": None})["n_seeds"]
        == S
    )
    md = (built / "table3_terminal.md").read_text()
    dg_p10 = md_row(md, "prompt-matched", "10", "DG")
    assert dg_p10[3].startswith("− (") and dg_p10[4] == ">95"  # ours above 95%: "−"
    assert md_row(md, "interaction-matched", "7", "TPO")[4] == "1.8"
    assert "H=8" in md and "H=9" in md  # missing from the grid


def test_fig1b_shares_table3_cells_and_has_its_own_paper_values(built):
    df = csv_of(built, "fig1b_terminal")
    assert set(df["artifact"]) == {"fig1b_terminal"} and set(df["paper_item"]) == {"Fig 1b"}
    errors = curves(T3, 10.0, TPO_PLATEAU[10])  # Table 3's stored TPO cell at H = 10
    mean, se = final_stats(errors)
    r = row(df, "tpo", "final_error_pct")
    assert (r["value"], r["se"]) == (pytest.approx(mean, rel=1e-9), pytest.approx(se, rel=1e-9))
    t3 = csv_of(built, "table3_terminal")
    for method in ("tpo", "dg"):
        same = row(t3, method, "final_error_pct", H=10, **{"prompt-matched": None})
        assert row(df, method, "final_error_pct")["value"] == same["value"]
    smoothed = reversal_data.moving_average_left(errors.mean(0), 40)
    s = row(df, "tpo", "smoothed40_final_error_pct")
    assert s["value"] == pytest.approx(100 * errors.mean(0)[-40:].mean(), rel=1e-9)
    assert s["value"] == pytest.approx(100 * smoothed[-1], rel=1e-9)
    md = (built / "fig1b_terminal.md").read_text()
    # the paper column: the authors' released Fig 1b curves (Table 3 prints them rounded)
    assert "7.36" in md_row(md, "TPO") and "50.37" in md_row(md, "GRPO")
    assert "99.75" in md_row(md, "DG")
    assert "1164" in md_row(md, "TPO")  # steps to 10%
    # its runs: TPO and DG computed by table3_terminal, GRPO by fig1b_terminal, 3 seeds each
    assert "computed by sweeps: fig1b_terminal (3), table3_terminal (6)" in md


def test_fig11_12_15_diagnostics(built):
    df = csv_of(built, "fig11_diagnostics")
    assert set(df["artifact"]) == {"fig11_diagnostics"}
    assert set(df["paper_item"]) == {"Fig 11", "Fig 12", "Fig 15"}
    for algo, (tau, plateau) in DIAG_METHODS.items():
        errors = curves(T3, tau, plateau, seeds=2)
        at400 = errors[:, 400] * 100
        r = df[
            (df["paper_item"] == "Fig 15")
            & (df["method"] == algo)
            & (df["metric"] == "error_pct_at_episode_400")
        ].iloc[0]
        assert r["value"] == pytest.approx(at400.mean(), rel=1e-9)
        assert r["se"] == pytest.approx(at400.std() / math.sqrt(2), rel=1e-9)
    fig12 = df[df["paper_item"] == "Fig 12"]
    init = fig12[fig12["metric"] == "initial_all_fail_fraction"].set_index("method")["value"]
    assert set(init.index) == {"tpo", "tpo_1ep", "grpo"}  # single-rollout DG has none
    assert init["tpo"] == pytest.approx(0.905, rel=1e-9)
    fig11 = df[df["paper_item"] == "Fig 11"].set_index(["method", "metric"])
    assert fig11.loc[("grpo", "grad_norm_peak_smoothed"), "value"] > 100
    decay = fig11.loc[("tpo", "grad_norm_decay_episode"), "value"]
    assert 60 < decay < 200  # 142: the smoothed bump's tail
    assert fig11.loc[("tpo", "weight_winners_late"), "value"] == pytest.approx(0.5)
    fig15 = df[df["paper_item"] == "Fig 15"]
    assert set(fig15.loc[fig15["metric"] == "final_error_pct", "method"]) == {
        "tpo",
        "tpo_1ep",
        "dg",
    }
    md = (built / "fig11_diagnostics.md").read_text()
    assert "## Fig 12" in md and "## Fig 15" in md
    assert any("12.7" in r for r in md_rows(md, "GRPO"))  # Fig 11: GRPO plateau
    assert any("~300" in r for r in md_rows(md, "TPO"))  # Fig 11: grad-norm decay (read off)
    assert any("0.9" in r for r in md_rows(md, "TPO (1 ep)"))  # Fig 12: all-fail at start
    assert any("0.2" in r for r in md_rows(md, "TPO"))  # Fig 15: error at episode 400
    assert any("1.1" in r for r in md_rows(md, "TPO (1 ep)"))
    assert any("14" in r for r in md_rows(md, "DG"))  # Fig 15: DG plateau


def test_fig13_fig14_fig16_table5_paper_keys(built):
    md13 = (built / "fig13_k_sweep.md").read_text()
    assert "8.9" in md_row(md13, "4", "TPO")
    # Fig 16 at E = 4 and Fig 14 read Fig 11's stored cells (2 seeds, stored with diagnostics;
    # they serve requests without); Fig 16's TPO at E = 1 is Fig 11's TPO (1 ep)
    df16 = csv_of(built, "fig16_epoch_sweep")
    df14 = csv_of(built, "fig14_grpo_masking")
    for df, method, epochs, name in (
        (df16, "grpo", 4, "grpo"),
        (df16, "tpo", 4, "tpo"),
        (df16, "tpo", 1, "tpo_1ep"),
        (df14, "grpo", None, "grpo"),
        (df14, "tpo", None, "tpo"),
    ):
        r = row(df, method, "final_error_pct", **({} if epochs is None else {"epochs": epochs}))
        want = final_stats(curves(T3, *DIAG_METHODS[name], seeds=2))[0]
        assert r["value"] == pytest.approx(want, rel=1e-9) and r["n_seeds"] == 2
    r = row(df16, "grpo", "final_error_pct", epochs=1)
    assert r["value"] == pytest.approx(final_stats(curves(T3, 5.0, 0.01))[0], rel=1e-9)
    md16 = (built / "fig16_epoch_sweep.md").read_text()
    assert "4.3" in md_row(md16, "1", "GRPO")
    md14 = (built / "fig14_grpo_masking.md").read_text()
    assert "29.7" in md_row(md14, "GRPO (zv-masked)")
    df5 = csv_of(built, "table5_eta")
    assert row(df5, "tpo", "steps_to_1pct", eta=0.5)["value"] == steps_to_1pct(10.0)
    assert row(df5, "tpo", "steps_to_1pct", eta=1)["value"] == steps_to_1pct(20.0)
    md5 = (built / "table5_eta.md").read_text()
    eta05 = md_row(md5, "0.5", "TPO")
    assert "0.0" in eta05 and "67" in eta05 and str(steps_to_1pct(10.0)) in eta05


def test_fig18_a_and_bc_from_table2(built):
    df = csv_of(built, "fig18_dg_epochs")
    assert set(df["artifact"]) == {"fig18_dg_epochs"}
    assert set(df["paper_item"]) == {"Fig 18a", "Fig 18b-c"}
    a = df[df["paper_item"] == "Fig 18a"].set_index("method")
    assert a.loc["dg_4ep", "value"] == pytest.approx(
        final_stats(curves(T3, 10.0, 0.48))[0], rel=1e-9
    )
    bc = df[(df["paper_item"] == "Fig 18b-c") & (df["metric"] == "final_error_pct")]
    assert len(bc) == 8  # 4 prompt-matched variants x {dg, dg_4ep}
    worse = df[df["metric"] == "variants_worse_than_1ep"].iloc[0]
    assert worse["value"] == 4 and worse["setting"] == "4 variants of table2"
    md = (built / "fig18_dg_epochs.md").read_text()
    assert "48.3" in md_rows(md, "DG (4 ep)")[0]  # (a) comes first
    assert "0.05" in md_row(md, "sequential", "reverse_copy", "DG (4 ep)")
    assert "0.35" in md_row(md, "sequential", "reverse_copy", "DG")
    assert "—" in md_row(md, "sequential", "copy", "DG")  # no paper number for copy
    assert "in 4 of 4" in md


def test_never_reached_is_nan_in_csv_and_never_in_markdown(built):
    df = csv_of(built, "table1_vocab")
    never = df[(df["method"] == "ppo") & (df["metric"] == "steps_to_1pct")]
    assert len(never) == 2 and never["value"].isna().all()
    # PPO at both V (the others reach 1% within the 1000 episodes)
    assert (built / "table1_vocab.md").read_text().count(f"never (≤ {T1 - 1})") == 2


def test_two_configurations_of_one_cell_are_refused(tmp_path):
    from tpo_sweeps import db

    # a selection with two cells per K and method (two batch sizes): one bar each is ambiguous
    url = f"sqlite:///{tmp_path}/two.sqlite"
    engine = db.connect(url)
    two_b = ("algorithm=tpo", "task.K=4", "task.B=16,32")
    add_cells(engine, "fig13_k_sweep", _c(5.0), overrides=two_b)
    engine.dispose()
    engine = load.connect(url)
    try:
        builder, art = artifacts.resolve("fig13_k_sweep", None, two_b)
        assert len(load.kept_seeds(engine, art)) == 2 * S
        with pytest.raises(AnalysisError, match="split the sweep"):
            builder(engine, tmp_path / "out", art)
        # the preset's own cells (B = 256) have no runs here
        with pytest.raises(AnalysisError, match="no completed runs"):
            artifacts.build("fig13_k_sweep", engine, tmp_path / "out")
        with pytest.raises(AnalysisError, match="no completed runs"):
            artifacts.build("table1_vocab", engine, tmp_path / "out")
    finally:
        engine.dispose()


def test_smoothing_and_decay_helpers():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(reversal_data.moving_average_left(y, 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(reversal_data.moving_average_centred(y, 3), [4 / 3, 2, 3, 11 / 3])
    g = np.array([0.0, 10.0, 6.0, 0.4, 0.6, 0.1, 0.0])
    assert reversal_diagnostics.grad_norm_decay_episode(g) == 5  # below 0.5 from episode 5 on
    assert math.isnan(reversal_diagnostics.grad_norm_decay_episode(np.array([1.0, 2.0, 3.0])))


def test_kept_seeds_keeps_each_target_and_reward(db_url, tmp_path):
    """table2 runs differ only in task.target / task.reward (config JSON, not run columns):
    the selection rule must keep them all, and still dedup a rerun of one variant."""
    import shutil

    from tpo_sweeps import db

    def kept_of(url):
        engine = load.connect(url)
        try:
            return load.kept_seeds(engine, "table2_variations")
        finally:
            engine.dispose()

    kept = kept_of(db_url)
    # Table 2's cells only (dg_4ep is none): 3 variants x {TPO (token), DG}, reverse copy / bag
    # = Table 1 at V = 2 (its 4 methods), one interaction-matched TPO (token); a run per seed
    assert kept["run_id"].nunique() == 11 * S
    assert set(kept["algorithm"]) == {"tpo_token", "grpo_token", "dg", "ppo"}
    assert set(zip(kept["target"], kept["reward"], strict=True)) == {
        ("copy", "bag_of_tokens"),
        ("copy", "sequential"),
        ("reverse_copy", "bag_of_tokens"),
        ("reverse_copy", "sequential"),
    }
    url = f"sqlite:///{tmp_path}/rerun.sqlite"
    shutil.copy(db_url.removeprefix("sqlite:///"), url.removeprefix("sqlite:///"))
    engine = db.connect(url)
    # a later run of one variant's cell with more extras (diagnostics on): it serves the same
    # requests, and being the most recently finished, it replaces the older runs' seeds
    rerun = add_cells(
        engine,
        "table2_variations",
        _c(12.0, 0.5),
        stored_extras={"diagnostics": True},
        algorithm="dg",
        target="copy",
        reward="sequential",
        match="prompts",
    )
    engine.dispose()
    kept = kept_of(url)
    assert kept["run_id"].nunique() == 11 * S and set(rerun) <= set(kept["run_id"])


def _sweep(tmp_path, pytestconfig, *args: str) -> None:
    """``python -m tpo_sweeps -m <args>`` (JAX's compilation cache in pytest's cache)."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(pytestconfig.cache.mkdir("jax_compilation_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    cmd = [sys.executable, "-m", "tpo_sweeps", "-m", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_real_smoke_sweep_end_to_end(tmp_path, pytestconfig):
    """One real sweep (``fig11_diagnostics`` at smoke scale with TPO and DG: grouped and
    single-rollout diagnostics) through the entry point, then its builder."""
    url = f"sqlite:///{tmp_path}/real.sqlite"
    _sweep(
        tmp_path,
        pytestconfig,
        "experiment=fig11_diagnostics",
        "scale=smoke",
        "algorithm=tpo,dg",
        f"db.url={url}",
    )
    engine = load.connect(url)
    try:
        df = artifacts.build("fig11_diagnostics_smoke", engine, tmp_path / "out")
    finally:
        engine.dispose()
    for ext in FILES:
        assert (tmp_path / "out" / f"fig11_diagnostics_smoke.{ext}").is_file()
    final = df[(df["paper_item"] == "Fig 11") & (df["metric"] == "final_error_pct")]
    assert set(final["method"]) == {"tpo", "dg"} and (final["n_seeds"] == 2).all()
    assert final["value"].between(0, 100).all()
    init = df[df["metric"] == "initial_all_fail_fraction"]
    assert set(init["method"]) == {"tpo"}  # DG has one rollout per prompt: no groups
    setting = final["setting"].iloc[0]
    assert "H=8 V=2 K=8 B=16" in setting and "reverse_copy terminal" in setting


@pytest.mark.slow
def test_fig1b_from_a_database_where_only_table3_ran(tmp_path, pytestconfig):
    """Artefacts are queries: Table 3 at smoke scale (H = 10 only, Fig 1b's methods) holds
    Fig 1b's cells, so ``python -m analysis fig1b_terminal --scale smoke`` builds Fig 1b from
    it, with Table 3's numbers for the shared cells and none of its interaction-matched DG."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/t3.sqlite"
    _sweep(
        tmp_path,
        pytestconfig,
        "experiment=table3_terminal",
        "scale=smoke",
        "task.H=10",
        "algorithm=tpo,grpo,dg",
        f"db.url={url}",
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", "fig1b_terminal", "--scale", "smoke"]
        + ["--db", url, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"fig1b_terminal_smoke: wrote {out / 'fig1b_terminal_smoke.png'}" in proc.stdout
    fig1b = csv_of(out, "fig1b_terminal_smoke")
    final = fig1b[fig1b["metric"] == "final_error_pct"].set_index("method")
    assert set(final.index) == {"tpo", "grpo", "dg"} and (final["n_seeds"] == 2).all()
    assert final["setting"].str.contains("prompt-matched episodes=20").all()
    md = (out / "fig1b_terminal_smoke.md").read_text()
    assert "computed by sweeps: table3_terminal (6)" in md
    # the same numbers as Table 3's prompt-matched H = 10 rows
    assert main(["table3_terminal_smoke", "--db", url, "--out", str(out)]) == 0
    t3 = csv_of(out, "table3_terminal_smoke")
    t3 = t3[(t3["metric"] == "final_error_pct") & t3["setting"].str.contains("prompt-matched")]
    pd.testing.assert_series_equal(
        t3.set_index("method")["value"].sort_index(), final["value"].sort_index()
    )
    # and `all` finds every artefact with some of these cells: Fig 9's TPO and GRPO at H = 10
    # are Table 3's too
    assert main(["all", "--db", url, "--out", str(tmp_path / "all")]) == 0
    built = sorted(p.stem for p in (tmp_path / "all").glob("*.csv"))
    assert built == [
        "appendix_b",
        "fig1b_terminal_smoke",
        "fig9_ablations_smoke",
        "table3_terminal_smoke",
    ]
