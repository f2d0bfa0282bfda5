"""Token-reversal builders (``analysis.reversal``) on a synthetic results database.

The fixture writes runs through ``tpo_sweeps.db`` (``start_run`` + ``finish_run``, as a real
job does) with known error curves instead of training a transformer: seed s of a cell has
``error[s, t] = MULT[s] * (0.8 exp(-t / tau) + plateau)``. ``MULT`` averages to one, so the
seed-mean curve is ``0.8 exp(-t / tau) + plateau`` and the steps to 1% and the final means
and standard errors are known in closed form.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pandas as pd
import pytest

from analysis import artifacts, load, reversal, tables
from analysis.__main__ import main
from analysis.load import AnalysisError

MULT = np.array([0.8, 1.0, 1.2])  # per-seed factors, mean exactly 1
S = len(MULT)
FILES = ("png", "pdf", "md", "csv")
_hash = itertools.count()


def curves(T: int, tau: float, plateau: float = 0.0, seeds: int = S) -> np.ndarray:
    t = np.arange(T)
    return MULT[:seeds, None] * (0.8 * np.exp(-t / tau) + plateau)[None, :]


def steps_to_1pct(tau: float, plateau: float = 0.0) -> int:
    """First integer t with 0.8 exp(-t/tau) + plateau < 0.01."""
    return math.floor(tau * math.log(0.8 / (0.01 - plateau))) + 1


def add_run(
    engine,
    sweep: str,
    algorithm: str,
    errors: np.ndarray,
    *,
    H: int = 10,
    V: int = 2,
    K: int = 8,
    B: int = 100,
    match: str = "prompts",
    target: str = "reverse_copy",
    reward: str = "bag_of_tokens",
    epochs: int = 4,
    eta: float | None = None,
    extra: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> int:
    from tpo_sweeps import db

    seeds, T = errors.shape
    task = {
        "name": "reversal",
        "steps": T,
        "H": H,
        "V": V,
        "B": B,
        "K": K,
        "target": target,
        "reward": reward,
        "match": match,
        "diagnostics": bool(extra),
    }
    fields = {
        "config_hash": f"synthetic-{next(_hash)}",
        "sweep": sweep,
        "algorithm": algorithm,
        "task": "reversal",
        "optimizer": "muon",
        "seed": seed,
        "num_seeds": seeds,
        "steps": T,
        "epochs": epochs,
        "K": K,
        "eta": eta,
        "H": H,
        "V": V,
        "match": match,
        "overrides": [],
        "config": {"task": task, "algorithm": {"name": algorithm, "epochs": epochs}, "name": sweep},
        "git_commit": "0123456789abcdef",
    }
    run_id = db.start_run(engine, fields)
    metrics = {"error": errors, **(extra or {})}
    steps = {name: np.arange(T) for name in metrics}
    summary = {f"final_{n}": v[:, -1] for n, v in metrics.items()}
    db.finish_run(engine, run_id, np.arange(seed, seed + seeds), metrics, steps, summary)
    return run_id


# (sweep, algorithm, tau, plateau, attrs) of every synthetic run
TABLE1 = [
    ("tpo_token", 10.0, 0.0),
    ("grpo_token", 20.0, 0.0),
    ("dg", 30.0, 0.0),
    ("ppo", 10.0, 0.5),  # never below 1%
]
T1 = 120
T3 = 50
T11 = 420
DIAG_METHODS = {"tpo": (15.0, 0.0), "tpo_1ep": (40.0, 0.0), "grpo": (20.0, 0.1), "dg": (30.0, 0.14)}


def diagnostics(algorithm: str, T: int) -> dict[str, np.ndarray]:
    t = np.arange(T)
    grouped = algorithm != "dg"
    peak = {"tpo": 3.0, "tpo_1ep": 12.0, "grpo": 140.0, "dg": 0.5}[algorithm]
    grad = MULT[:2, None] * peak * np.exp(-((t - 30) ** 2) / 200.0)[None, :]
    all_fail = np.stack([0.9 * np.exp(-t / 50.0) + 0.01 * k for k in range(2)])
    return {
        "grad_norm": grad,
        "frac_success": 1.0 - all_fail,
        "frac_all_fail": all_fail if grouped else np.full((2, T), np.nan),
        "frac_zero_var": all_fail if grouped else np.full((2, T), np.nan),
        "weight_winners": np.full((2, T), 0.5),
        "weight_losers": np.stack([np.exp(-t / 30.0)] * 2),
    }


@pytest.fixture(scope="module")
def db_url(tmp_path_factory) -> str:
    from tpo_sweeps import db

    url = f"sqlite:///{tmp_path_factory.mktemp('reversal_db')}/rev.sqlite"
    engine = db.connect(url)
    # Table 1: V in {2, 4} only (the paper's 8 and 16 are missing: a partial sweep)
    for V in (2, 4):
        for algo, tau, plateau in TABLE1:
            epochs = 1 if algo == "dg" else 4
            add_run(
                engine, "table1_vocab", algo, curves(T1, tau * V / 2, plateau), V=V, epochs=epochs
            )
    # Table 2: two targets x two rewards, prompt-matched, plus one interaction-matched
    # variant; DG with 1 and 4 epochs for Fig 18 (b, c)
    for target, reward in itertools.product(
        ("copy", "reverse_copy"), ("bag_of_tokens", "sequential")
    ):
        for algo, tau, plateau, ep in (
            ("tpo_token", 8.0, 0.0, 4),
            ("dg", 12.0, 0.0, 1),
            ("dg_4ep", 12.0, 0.002, 4),
        ):
            add_run(
                engine,
                "table2_variations",
                algo,
                curves(60, tau, plateau),
                target=target,
                reward=reward,
                epochs=ep,
            )
    add_run(engine, "table2_variations", "tpo_token", curves(60, 8.0), match="interactions")
    # Table 3: H in {7, 10} x matching; DG above 95% (the paper's "−")
    for H, match in itertools.product((7, 10), ("prompts", "interactions")):
        add_run(
            engine,
            "table3_terminal",
            "tpo",
            curves(T3, 10.0, 0.05),
            H=H,
            match=match,
            reward="terminal",
        )
        add_run(
            engine,
            "table3_terminal",
            "dg",
            curves(T3, 1e6, 0.2),
            H=H,
            match=match,
            reward="terminal",
            epochs=1,
        )
    # Fig 1b
    for algo, tau, plateau in (("tpo", 10.0, 0.07), ("grpo", 20.0, 0.5), ("dg", 1e6, 0.2)):
        add_run(
            engine,
            "fig1b_terminal",
            algo,
            curves(60, tau, plateau),
            reward="terminal",
            epochs=1 if algo == "dg" else 4,
        )
    # Fig 9 at H = 10
    for algo, plateau in (("tpo", 0.07), ("tpo_no_anchor", 0.2)):
        add_run(engine, "fig9_ablations", algo, curves(40, 10.0, plateau), reward="terminal")
    # Figs 11/12/15: 2 seeds, 420 episodes (episode 400 exists), diagnostics on
    for algo, (tau, plateau) in DIAG_METHODS.items():
        add_run(
            engine,
            "fig11_diagnostics",
            algo,
            curves(T11, tau, plateau, seeds=2),
            H=8,
            K=32,
            B=256,
            reward="terminal",
            epochs={"tpo_1ep": 1, "dg": 1}.get(algo, 4),
            extra=diagnostics(algo, T11),
        )
    # Fig 13 (K in {4, 8}), Fig 14, Fig 16 (E in {1, 4}), Table 5 (eta in {0.5, 1})
    for K, (algo, plateau) in itertools.product((4, 8), (("tpo", 0.05), ("grpo", 0.2))):
        add_run(
            engine,
            "fig13_k_sweep",
            algo,
            curves(30, 5.0, plateau / K),
            H=8,
            K=K,
            B=256,
            reward="terminal",
        )
    for algo, plateau in (("tpo", 0.0005), ("grpo", 0.06), ("grpo_masked", 0.3)):
        add_run(
            engine,
            "fig14_grpo_masking",
            algo,
            curves(30, 5.0, plateau),
            H=8,
            K=32,
            B=256,
            reward="terminal",
        )
        add_run(
            engine,
            "fig14_grpo_masking_smoke",
            algo,
            curves(10, 5.0, plateau),
            H=4,
            K=8,
            B=16,
            reward="terminal",
        )
    for E, algo in itertools.product((1, 4), ("tpo", "grpo")):
        add_run(
            engine,
            "fig16_epoch_sweep",
            algo,
            curves(30, 5.0, 0.01 * E),
            H=8,
            K=32,
            B=256,
            reward="terminal",
            epochs=E,
        )
    for eta, tau in ((0.5, 10.0), (1.0, 20.0)):
        add_run(engine, "table5_eta", "tpo", curves(120, tau), eta=eta)
    # Fig 18 (a)
    for algo, plateau in (("dg", 0.02), ("dg_4ep", 0.48)):
        add_run(
            engine,
            "fig18_dg_epochs",
            algo,
            curves(40, 10.0, plateau),
            H=5,
            K=32,
            B=256,
            reward="terminal",
            epochs=1 if algo == "dg" else 4,
        )
    engine.dispose()
    return url


IDS = [
    "fig1b_terminal",
    "table1_vocab",
    "table2_variations",
    "table3_terminal",
    "fig9_ablations",
    "fig11_diagnostics",
    "fig13_k_sweep",
    "fig14_grpo_masking",
    "fig14_grpo_masking_smoke",
    "fig16_epoch_sweep",
    "table5_eta",
    "fig18_dg_epochs",
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
        assert sweep == i and builder.id == i.removesuffix("_smoke")
    engine = load.connect(db_url)
    try:
        assert set(IDS) <= set(artifacts.available(engine))
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
    assert list(df.columns) == tables.COLUMNS
    assert len(df) > 0 and df["n_seeds"].notna().any()
    md = (built / f"{artifact_id}.md").read_text()
    assert md.startswith("# ") and f"![{artifact_id}]({artifact_id}.png)" in md


def test_build_returns_long_frame_with_files(db_url, tmp_path):
    engine = load.connect(db_url)
    try:
        df = artifacts.build("fig14_grpo_masking", engine, tmp_path)
    finally:
        engine.dispose()
    assert list(df.columns) == tables.COLUMNS
    assert sorted(df.attrs["files"]) == sorted(
        str(tmp_path / f"fig14_grpo_masking.{e}") for e in FILES
    )
    assert set(df["artifact"]) == {"fig14"}


def test_table1_steps_to_1pct_final_error_and_paper(built):
    df = csv_of(built, "table1_vocab")
    assert set(df["artifact"]) == {"table1"}
    for V in (2, 4):
        for algo, tau, plateau in TABLE1:
            r = row(df, algo, "steps_to_1pct", V=V)
            hit = steps_to_1pct(tau * V / 2, plateau) if plateau < 0.01 else T1
            if hit >= T1:  # PPO (plateau 50%), DG at V = 4 (tau 30: step 132 > 119)
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
    md = (built / "table1_vocab.md").read_text()
    tpo_v2 = md_row(md, "2", "TPO (token)")
    assert tpo_v2[2:4] == ["44", "58"]  # ours, paper
    ppo_v4 = md_row(md, "4", "PPO")
    assert ppo_v4[2:4] == ["never (≤ 119)", "181"]
    assert "V=8" in md and "V=16" in md  # the missing part of the paper's grid


def test_missing_cells_are_logged(db_url, tmp_path, caplog):
    engine = load.connect(db_url)
    try:
        with caplog.at_level(logging.INFO, logger="analysis"):
            artifacts.build("fig13_k_sweep", engine, tmp_path)
            artifacts.build("fig14_grpo_masking_smoke", engine, tmp_path)
    finally:
        engine.dispose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("fig13_k_sweep" in w and "K=16" in w and "K=64" in w for w in warnings)
    # a smoke sweep's gaps are expected: info, not warning
    assert not any("fig14_grpo_masking_smoke" in w for w in warnings)


def test_table2_paper_lookup_by_target_reward_and_matching(built):
    df = csv_of(built, "table2_variations")
    assert set(df["artifact"]) == {"table2"}
    r = row(df, "tpo_token", "steps_to_1pct", copy=None, sequential=None)
    assert r["value"] == steps_to_1pct(8.0)
    assert (
        reversal.paper_value(
            "table2",
            "tpo_token",
            "steps_to_1pct",
            {"target": "copy", "reward": "bag_of_tokens", "match": "prompts"},
        )
        == "81"
    )
    assert (
        reversal.paper_value(
            "table2",
            "dg",
            "steps_to_1pct",
            {"target": "reverse_copy", "reward": "sequential", "match": "prompts"},
        )
        == "515"
    )
    assert (
        reversal.paper_value(
            "table2",
            "ppo",
            "steps_to_1pct",
            {"target": "reverse_copy", "reward": "bag_of_tokens", "match": "prompts"},
        )
        == "never"
    )
    # no interaction-matched rows in the paper's Table 2
    assert (
        reversal.paper_value(
            "table2",
            "tpo_token",
            "steps_to_1pct",
            {"target": "copy", "reward": "bag_of_tokens", "match": "interactions"},
        )
        == ""
    )
    md = (built / "table2_variations.md").read_text()
    assert "81" in md_row(md, "prompt-matched", "bag_of_tokens", "copy", "TPO (token)")
    assert "515" in md_row(md, "prompt-matched", "sequential", "reverse_copy", "DG")
    inter = md_row(md, "interaction-matched", "TPO (token)")
    assert inter[5] == "—"  # paper column: no interaction-matched numbers in Table 2


def test_table3_final_error_dash_and_paper(built):
    df = csv_of(built, "table3_terminal")
    mean, se = final_stats(curves(T3, 10.0, 0.05))
    for H, match in itertools.product((7, 10), ("prompt-matched", "interaction-matched")):
        r = row(df, "tpo", "final_error_pct", H=H, **{match: None})
        assert r["value"] == pytest.approx(mean, rel=1e-9)
        assert r["se"] == pytest.approx(se, rel=1e-9)
    md = (built / "table3_terminal.md").read_text()
    dg_p10 = md_row(md, "prompt-matched", "10", "DG")
    assert dg_p10[3].startswith("− (") and dg_p10[4] == ">95"  # ours above 95%: "−"
    assert md_row(md, "interaction-matched", "7", "TPO")[4] == "1.8"
    assert "H=8" in md and "H=9" in md  # missing from the grid


def test_fig1b_uses_table3_paper_values_and_smoothing(built):
    df = csv_of(built, "fig1b_terminal")
    assert set(df["artifact"]) == {"fig1b"}
    errors = curves(60, 10.0, 0.07)
    mean, se = final_stats(errors)
    r = row(df, "tpo", "final_error_pct")
    assert (r["value"], r["se"]) == (pytest.approx(mean, rel=1e-9), pytest.approx(se, rel=1e-9))
    smoothed = reversal.moving_average_left(errors.mean(0), 40)
    s = row(df, "tpo", "smoothed40_final_error_pct")
    assert s["value"] == pytest.approx(100 * errors.mean(0)[-40:].mean(), rel=1e-9)
    assert s["value"] == pytest.approx(100 * smoothed[-1], rel=1e-9)
    md = (built / "fig1b_terminal.md").read_text()
    assert "7.4" in md_row(md, "TPO") and "50.4" in md_row(md, "GRPO")
    assert ">95" in md_row(md, "DG")


def test_fig11_12_15_diagnostics(built):
    df = csv_of(built, "fig11_diagnostics")
    assert set(df["artifact"]) == {"fig11", "fig12", "fig15"}
    for algo, (tau, plateau) in DIAG_METHODS.items():
        errors = curves(T11, tau, plateau, seeds=2)
        at400 = errors[:, 400] * 100
        r = df[
            (df["artifact"] == "fig15")
            & (df["method"] == algo)
            & (df["metric"] == "error_pct_at_episode_400")
        ].iloc[0]
        assert r["value"] == pytest.approx(at400.mean(), rel=1e-9)
        assert r["se"] == pytest.approx(at400.std() / math.sqrt(2), rel=1e-9)
    fig12 = df[df["artifact"] == "fig12"]
    init = fig12[fig12["metric"] == "initial_all_fail_fraction"].set_index("method")["value"]
    assert set(init.index) == {"tpo", "tpo_1ep", "grpo"}  # single-rollout DG has none
    assert init["tpo"] == pytest.approx(0.905, rel=1e-9)
    fig11 = df[df["artifact"] == "fig11"].set_index(["method", "metric"])
    assert fig11.loc[("grpo", "grad_norm_peak_smoothed"), "value"] > 100
    decay = fig11.loc[("tpo", "grad_norm_decay_episode"), "value"]
    assert 30 < decay < 100
    assert fig11.loc[("tpo", "weight_winners_late"), "value"] == pytest.approx(0.5)
    fig15 = df[df["artifact"] == "fig15"]
    assert set(fig15.loc[fig15["metric"] == "final_error_pct", "method"]) == {
        "tpo",
        "tpo_1ep",
        "dg",
    }
    md = (built / "fig11_diagnostics.md").read_text()
    assert "## Fig 12" in md and "## Fig 15" in md
    assert any("12.7" in r for r in md_rows(md, "GRPO"))  # Fig 11: GRPO plateau
    assert any("300" in r for r in md_rows(md, "TPO"))  # Fig 11: grad-norm decay
    assert any("0.9" in r for r in md_rows(md, "TPO (1 ep)"))  # Fig 12: all-fail at start
    assert any("0.2" in r for r in md_rows(md, "TPO"))  # Fig 15: error at episode 400
    assert any("1.1" in r for r in md_rows(md, "TPO (1 ep)"))
    assert any("14" in r for r in md_rows(md, "DG"))  # Fig 15: DG plateau


def test_fig13_fig14_fig16_table5_paper_keys(built):
    md13 = (built / "fig13_k_sweep.md").read_text()
    assert "8.9" in md_row(md13, "4", "TPO")
    df16 = csv_of(built, "fig16_epoch_sweep")
    r = row(df16, "grpo", "final_error_pct", epochs=4)
    assert r["value"] == pytest.approx(final_stats(curves(30, 5.0, 0.04))[0], rel=1e-9)
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
    assert set(df["artifact"]) == {"fig18a", "fig18bc"}
    a = df[df["artifact"] == "fig18a"].set_index("method")
    assert a.loc["dg_4ep", "value"] == pytest.approx(
        final_stats(curves(40, 10.0, 0.48))[0], rel=1e-9
    )
    bc = df[(df["artifact"] == "fig18bc") & (df["metric"] == "final_error_pct")]
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
    # PPO at both V, DG at both V (steps 132 and 264 > 119), GRPO (token) at V = 4 (176)
    assert (built / "table1_vocab.md").read_text().count("never (≤ 119)") == 5


def test_two_configurations_of_one_cell_are_refused(tmp_path):
    from tpo_sweeps import db

    url = f"sqlite:///{tmp_path}/two.sqlite"
    engine = db.connect(url)
    add_run(engine, "fig13_k_sweep", "tpo", curves(20, 5.0), K=4)
    add_run(engine, "fig13_k_sweep", "tpo", curves(30, 5.0), K=4)  # other episode count
    engine.dispose()
    engine = load.connect(url)
    try:
        with pytest.raises(AnalysisError, match="split the sweep"):
            artifacts.build("fig13_k_sweep", engine, tmp_path / "out")
        with pytest.raises(AnalysisError, match="no completed runs"):
            artifacts.build("table1_vocab", engine, tmp_path / "out")
    finally:
        engine.dispose()


def test_smoothing_and_decay_helpers():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(reversal.moving_average_left(y, 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(reversal.moving_average_centred(y, 3), [4 / 3, 2, 3, 11 / 3])
    g = np.array([0.0, 10.0, 6.0, 0.4, 0.6, 0.1, 0.0])
    assert reversal.grad_norm_decay_episode(g) == 5  # below 0.5 from episode 5 on
    assert math.isnan(reversal.grad_norm_decay_episode(np.array([1.0, 2.0, 3.0])))


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
    assert kept["run_id"].nunique() == 13
    assert set(zip(kept["target"], kept["reward"], strict=True)) == {
        ("copy", "bag_of_tokens"),
        ("copy", "sequential"),
        ("reverse_copy", "bag_of_tokens"),
        ("reverse_copy", "sequential"),
    }
    url = f"sqlite:///{tmp_path}/rerun.sqlite"
    shutil.copy(db_url.removeprefix("sqlite:///"), url.removeprefix("sqlite:///"))
    engine = db.connect(url)
    rerun = add_run(
        engine,
        "table2_variations",
        "dg",
        curves(60, 12.0, 0.5),
        target="copy",
        reward="sequential",
        epochs=1,
    )
    engine.dispose()
    kept = kept_of(url)  # the rerun replaces the older copy/sequential DG run
    assert kept["run_id"].nunique() == 13 and rerun in set(kept["run_id"])


@pytest.mark.slow
def test_real_smoke_sweep_end_to_end(tmp_path, pytestconfig):
    """One real sweep (``fig11_diagnostics_smoke`` with TPO and DG: grouped and single-rollout
    diagnostics) through the entry point, then its builder."""
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/real.sqlite"
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(pytestconfig.cache.mkdir("jax_compilation_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    cmd = [
        sys.executable,
        "-m",
        "tpo_sweeps",
        "-m",
        "experiment=fig11_diagnostics_smoke",
        "algorithm=tpo,dg",
        f"db.url={url}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    engine = load.connect(url)
    try:
        df = artifacts.build("fig11_diagnostics_smoke", engine, tmp_path / "out")
    finally:
        engine.dispose()
    for ext in FILES:
        assert (tmp_path / "out" / f"fig11_diagnostics_smoke.{ext}").is_file()
    final = df[(df["artifact"] == "fig11") & (df["metric"] == "final_error_pct")]
    assert set(final["method"]) == {"tpo", "dg"} and (final["n_seeds"] == 2).all()
    assert final["value"].between(0, 100).all()
    init = df[df["metric"] == "initial_all_fail_fraction"]
    assert set(init["method"]) == {"tpo"}  # DG has one rollout per prompt: no groups
    assert "H=4" in final["setting"].iloc[0] and "reverse_copy terminal" in final["setting"].iloc[0]
