"""The analysis package on a fixture database made by real sweeps at smoke scale (``smoke_db``)."""

from __future__ import annotations

import csv
import logging
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import artifacts, load, selection, stats, tables
from analysis.__main__ import main
from analysis.load import AnalysisError
from tpo_sweeps import identity

# artefact ids: the presets at smoke scale (also `python -m analysis <preset> --scale smoke`)
FIG3, FIG4 = "fig3_tabular_single_smoke", "fig4_tabular_multi_smoke"
PRESET = {FIG3: "fig3_tabular_single", FIG4: "fig4_tabular_multi"}
METHODS = {FIG3: ["tpo", "grpo", "dg", "pg"], FIG4: ["tpo", "grpo", "dg", "pg", "ce"]}
# error checkpoints: round(steps/3), round(2 steps/3) of 20 steps; round(steps/4), steps/2 of 50
CHECKPOINTS = {FIG3: (7, 13), FIG4: (12, 25)}
FILES = ("png", "pdf", "md", "csv")


def _path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _sql(url: str, query: str, params=()) -> list[tuple]:
    with sqlite3.connect(_path(url)) as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def built(smoke_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    engine = load.connect(smoke_db)
    frames = {i: artifacts.build(i, engine, out) for i in (FIG3, FIG4, "appendix_b")}
    engine.dispose()
    return out, frames


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("artifact_id", [FIG3, FIG4, "appendix_b"])
def test_builder_writes_figures_and_tables(built, artifact_id):
    out, frames = built
    for ext in FILES:
        f = out / f"{artifact_id}.{ext}"
        assert f.is_file() and f.stat().st_size > 0, f
    assert (out / f"{artifact_id}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{artifact_id}.pdf").read_bytes()[:5] == b"%PDF-"
    with open(out / f"{artifact_id}.csv", newline="") as f:
        assert next(csv.reader(f)) == tables.ROW_COLUMNS
    df = frames[artifact_id]
    assert list(df.columns) == tables.ROW_COLUMNS
    assert sorted(df.attrs["files"]) == sorted(str(out / f"{artifact_id}.{e}") for e in FILES)
    assert len(pd.read_csv(out / f"{artifact_id}.csv")) == len(df)


@pytest.mark.parametrize("artifact_id", [FIG3, FIG4])
def test_tabular_rows_and_seed_counts(built, artifact_id):
    out, _ = built
    df = pd.read_csv(out / f"{artifact_id}.csv")
    a, b = CHECKPOINTS[artifact_id]
    metrics = {
        "final_error",
        "final_misalignment",
        f"error_at_step_{a}",
        f"error_at_step_{b}",
        "steps_to_1pct",
    }
    expected = {(m, k) for m in METHODS[artifact_id] for k in metrics}
    assert set(zip(df["method"], df["metric"], strict=True)) == expected
    assert len(df) == len(expected)
    # the artefact id is the preset's at every scale; the paper's name for it beside
    assert (df["artifact"] == PRESET[artifact_id]).all()
    assert (df["paper_item"] == ("Fig 3" if artifact_id == FIG3 else "Fig 4")).all()
    assert (df["n_seeds"] == 2).all()
    with_se = df[df["metric"] != "steps_to_1pct"]
    assert with_se["se"].notna().all() and (with_se["se"] >= 0).all()
    # a bootstrap CI of the mean around every mean over seeds
    assert (with_se["ci_low"] <= with_se["value"] + 1e-12).all()
    assert (with_se["value"] <= with_se["ci_high"] + 1e-12).all()
    steps = 20 if artifact_id == FIG3 else 50
    assert df["setting"].str.endswith(f"steps={steps}").all()
    assert (df["episodes"] == steps).all()
    # the cell's key fields as the preset requested them: K is the number of actions
    assert (df["K"] == (100 if artifact_id == FIG3 else 10)).all()
    assert df["B"].eq(100).all() if artifact_id == FIG3 else df["B"].isna().all()
    assert df[["target", "reward", "match", "H", "V", "p"]].isna().all().all()
    assert df.loc[df["method"] == "grpo", "eta"].isna().all()  # GRPO has no η
    assert (df.loc[df["method"] == "tpo", "eta"] == 1.0).all()
    md = (out / f"{artifact_id}.md").read_text()
    assert "| method" in md and "paper" in md and "TPO" in md


@pytest.mark.parametrize("artifact_id", [FIG3, FIG4])
def test_means_and_se_equal_direct_sql(smoke_db, built, artifact_id):
    out, _ = built
    df = pd.read_csv(out / f"{artifact_id}.csv").set_index(["method", "metric"])
    # the database holds exactly these runs (one per cell and seed), stored by the preset's sweep
    run = "SELECT id FROM runs WHERE sweep = ? AND algorithm = ? AND status = 'completed'"
    sweep = PRESET[artifact_id]
    for method in METHODS[artifact_id]:
        for name in ("final_error", "final_misalignment"):
            values = [
                v
                for (v,) in _sql(
                    smoke_db,
                    f"SELECT value FROM summaries WHERE name = ? AND run_id IN ({run})",
                    (name, sweep, method),
                )
            ]
            assert len(values) == 2
            (mean,) = _sql(
                smoke_db,
                f"SELECT AVG(value) FROM summaries WHERE name = ? AND run_id IN ({run})",
                (name, sweep, method),
            )[0]
            row = df.loc[(method, name)]
            assert row["value"] == pytest.approx(mean, rel=1e-8, abs=1e-15)
            se = np.std(values, ddof=0) / math.sqrt(len(values))
            assert row["se"] == pytest.approx(se, rel=1e-6, abs=1e-15)
        for step in CHECKPOINTS[artifact_id]:
            (mean,) = _sql(
                smoke_db,
                "SELECT AVG(value) FROM metrics WHERE name = 'error' AND step = ? "
                f"AND run_id IN ({run})",
                (step, sweep, method),
            )[0]
            assert df.loc[(method, f"error_at_step_{step}"), "value"] == pytest.approx(
                mean, rel=1e-8
            )


def test_appendix_b_coefficients(built):
    out, _ = built
    df = pd.read_csv(out / "appendix_b.csv")
    beta = df[df["metric"] == "beta_coefficient"].set_index(["setting", "method"])["value"]
    at = "one-hot multi-context bandit A=10 p=0.1"
    expected = {"ce": 1.0, "dg": 0.0909, "grpo": 0.3333, "tpo": 0.7300, "pg": 0.1}
    for method, value in expected.items():
        assert beta[(at, method)] == pytest.approx(value, abs=1e-4)
    closed = df[df["metric"] == "beta_closed_form"].set_index(["setting", "method"])["value"]
    assert len(beta) == len(closed) == 5 * 5
    np.testing.assert_allclose(beta.sort_index(), closed.sort_index(), atol=1e-5)
    lam = df[df["metric"] == "lambda"]["value"].item()
    assert lam == pytest.approx(math.exp(10 / 3))
    assert df["se"].isna().all() and df["n_seeds"].isna().all()
    assert (df["artifact"] == "appendix_b").all() and (df["paper_item"] == "App. B").all()
    assert sorted(df.loc[df["metric"] == "beta_coefficient", "p"].unique()) == [
        0.01,
        0.1,
        0.3,
        0.5,
        0.9,
    ]
    md_rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in (out / "appendix_b.md").read_text().splitlines()
        if line.startswith("|")
    ]
    tpo = next(r for r in md_rows if r[:2] == ["0.1", "TPO"])
    assert tpo[2] == "0.7300" and tpo[-1] == "0.73"  # β, paper column


# --------------------------------------------------------------------------------------------
# loader
# --------------------------------------------------------------------------------------------


def test_loader_frames(smoke_db):
    engine = load.connect(smoke_db)
    m = load.metrics(engine, FIG3)
    assert list(m.columns) == [
        *["run_id", "sweep", "algorithm", "task", "seed", "step", "name", "value"],
        *load.PROMOTED,
        "request",
    ]
    assert len(m) == 4 * 2 * 20 * 2  # methods x seeds x steps x {error, misalignment}
    assert set(m["seed"]) == {0, 1} and set(m["step"]) == set(range(20))
    assert set(m["sweep"]) == {FIG3}  # the artefact id, not the computing sweep
    assert set(load.metrics(engine, FIG4, names=["error"])["name"]) == {"error"}
    s = load.summaries(engine, FIG4)
    assert len(s) == 5 * 2 * 2 and set(s["name"]) == {"final_error", "final_misalignment"}
    # the same artefact by preset and scale, and through the --scale spelling
    assert selection.parse("fig4_tabular_multi", "smoke") == FIG4
    pd.testing.assert_frame_equal(
        load.summaries(engine, selection.parse("fig4_tabular_multi", "smoke")), s
    )
    # paper scale: other cells (150 steps), none stored
    assert load.kept_seeds(engine, "fig3_tabular_single").empty
    with pytest.raises(AnalysisError, match="no experiment preset 'no_such_sweep'"):
        load.metrics(engine, "no_such_sweep")
    assert artifacts.available(engine) == [FIG3, FIG4, "appendix_b"]
    assert artifacts.available(engine, "paper") == ["appendix_b"]
    engine.dispose()


def test_selection_is_the_presets_cells(smoke_db):
    """An artefact's cells are the preset's, composed and identified as its jobs are; any
    completed run of those cells counts, whichever sweep stored it, with all its seeds."""
    from tpo_sweeps import sweep as S

    cells = S.expand(["experiment=fig3_tabular_single", "scale=smoke"]).cells
    assert [c["cell"] for c in selection.selection(FIG3)] == [c.ident.cell for c in cells]
    assert [c["labels"]["algorithm"] for c in selection.selection(FIG3)] == METHODS[FIG3]
    assert {c["labels"]["steps"] for c in selection.selection(FIG3)} == {20}
    # overrides restrict the selection as they restrict the multirun
    only = selection.Artefact("fig3_tabular_single", "smoke", ["algorithm=tpo,pg"])
    assert only == FIG3 and [c["labels"]["algorithm"] for c in selection.selection(only)] == [
        "tpo",
        "pg",
    ]
    engine = load.connect(smoke_db)
    try:
        assert set(load.kept_seeds(engine, only)["algorithm"]) == {"tpo", "pg"}
    finally:
        engine.dispose()


def _copy_run(url: str, run_id: int, tag: str, finished: str, status="completed", shift=1.0):
    """A copy of a stored run under another run key (same cell and seed, extras a superset:
    diagnostics on), with its values shifted: a second completed result for one (cell, seed),
    as a diagnostics rerun or an import from another machine gives."""
    with sqlite3.connect(_path(url)) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(runs)") if r[1] != "id"]
        fixed = {"run_key": "?", "diagnostics": "1", "status": "?", "finished_at": "?"}
        select = ", ".join(fixed.get(c, f'"{c}"') for c in cols)
        quoted = ", ".join(f'"{c}"' for c in cols)
        new = conn.execute(
            f"INSERT INTO runs ({quoted}) SELECT {select} FROM runs WHERE id = ?",
            (f"{tag}-{run_id}", status, finished, run_id),
        ).lastrowid
        conn.execute(
            "INSERT INTO metrics (run_id, name, step, value) SELECT ?, name, step, value + ? "
            "FROM metrics WHERE run_id = ?",
            (new, shift, run_id),
        )
        conn.execute(
            "INSERT INTO summaries (run_id, name, value) SELECT ?, name, value + ? "
            "FROM summaries WHERE run_id = ?",
            (new, shift, run_id),
        )
    return new


def test_dedup_keeps_latest_completed_run_per_seed(smoke_db, tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/dup.sqlite"
    shutil.copy(_path(smoke_db), _path(url))
    orig = dict(
        _sql(
            url,
            "SELECT seed, id FROM runs WHERE sweep = ? AND algorithm = 'tpo'",
            (PRESET[FIG3],),
        )
    )
    finals = {
        seed: _sql(
            url, "SELECT value FROM summaries WHERE run_id = ? AND name = 'final_error'", (i,)
        )[0][0]
        for seed, i in orig.items()
    }

    def final_tpo():
        engine = load.connect(url)
        df = artifacts.build(FIG3, engine, tmp_path / "out")
        engine.dispose()
        return df.set_index(["method", "metric"]).loc[("tpo", "final_error")]

    # an older completed rerun of both seeds and a newer failed one: both ignored
    for run_id in orig.values():
        _copy_run(url, run_id, "old", "2000-01-01 00:00:00")
        _copy_run(url, run_id, "failed", "2999-01-01 00:00:00", status="failed", shift=5.0)
    with caplog.at_level(logging.WARNING, logger="analysis"):
        row = final_tpo()
    assert row["n_seeds"] == 2
    assert row["value"] == pytest.approx(np.mean(list(finals.values())), rel=1e-8)
    assert any("dropped 2 (run, seed)" in r.getMessage() for r in caplog.records)

    # a newer completed run of seed 1 only: replaces seed 1, seed 0 stays from the original
    _copy_run(url, orig[1], "new", "2999-01-01 00:00:00", shift=1.0)
    row = final_tpo()
    assert row["n_seeds"] == 2
    assert row["value"] == pytest.approx((finals[0] + finals[1] + 1.0) / 2, rel=1e-8)


def test_diverged_seed_is_reported_not_averaged(smoke_db, tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/div.sqlite"
    shutil.copy(_path(smoke_db), _path(url))
    (run_id,) = _sql(
        url,
        "SELECT id FROM runs WHERE sweep = ? AND algorithm = 'tpo' AND seed = 1",
        (PRESET[FIG3],),
    )[0]
    with sqlite3.connect(_path(url)) as conn:
        conn.execute("UPDATE runs SET status = 'diverged' WHERE id = ?", (run_id,))
    engine = load.connect(url)
    with caplog.at_level(logging.WARNING, logger="analysis"):
        df = artifacts.build(FIG3, engine, tmp_path / "out")
    engine.dispose()
    row = df.set_index(["method", "metric"]).loc[("tpo", "final_error")]
    assert row["n_seeds"] == 1
    assert any("1 seed(s) diverged" in r.getMessage() for r in caplog.records)


def test_every_completed_seed_counts(smoke_db, tmp_path):
    """Seeds beyond the preset's num_seeds (a later, larger run of the same cells) count."""
    url = f"sqlite:///{tmp_path}/more.sqlite"
    shutil.copy(_path(smoke_db), _path(url))
    (run_id,) = _sql(
        url,
        "SELECT id FROM runs WHERE sweep = ? AND algorithm = 'pg' AND seed = 1",
        (PRESET[FIG3],),
    )[0]
    new = _copy_run(url, run_id, "seed7", "2001-01-01 00:00:00", shift=0.0)
    ((cell,),) = _sql(url, "SELECT cell_hash FROM runs WHERE id = ?", (new,))
    key = identity.run_key(cell, 7, {"diagnostics": False, "mechanism": False, "log_every": 1})
    with sqlite3.connect(_path(url)) as conn:
        conn.execute(
            "UPDATE runs SET seed = 7, diagnostics = 0, run_key = ? WHERE id = ?", (key, new)
        )
    engine = load.connect(url)
    try:
        kept = load.kept_seeds(engine, FIG3)
    finally:
        engine.dispose()
    assert sorted(kept.loc[kept["algorithm"] == "pg", "seed"]) == [0, 1, 7]
    assert sorted(kept.loc[kept["algorithm"] == "tpo", "seed"]) == [0, 1]


def test_connect_rejects_what_is_not_a_results_db(tmp_path):
    missing = f"sqlite:///{tmp_path}/nope/x.sqlite"
    with pytest.raises(AnalysisError, match="nope/x.sqlite"):
        load.connect(missing)
    assert not (tmp_path / "nope").exists()
    text_file = tmp_path / "notes.sqlite"
    text_file.write_text("not a database\n" * 100)
    with pytest.raises(AnalysisError, match="notes.sqlite") as e:
        load.connect(f"sqlite:///{text_file}")
    assert "\n" not in str(e.value)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE runs (id INTEGER)")
    with pytest.raises(AnalysisError, match="not a tpo-sweeps results database"):
        load.connect(f"sqlite:///{other}")
    with pytest.raises(AnalysisError, match="not a database URL"):
        load.connect("no url at all")


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def test_mean_se_is_population_std_over_sqrt_n():
    mean, se, n = stats.mean_se([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert (mean, n) == (2.5, 4)
    assert se == pytest.approx(math.sqrt(1.25) / 2)
    assert stats.mean_se([3.0]) == (3.0, 0.0, 1)
    assert math.isnan(stats.mean_se([])[0])
    df = pd.DataFrame({"g": [0, 0, 0, 1, 1], "value": [1.0, 2.0, 6.0, 5.0, 5.0]})
    out = stats.seed_stats(df, ["g"]).set_index("g")
    assert out.loc[0, "se"] == pytest.approx(stats.mean_se([1, 2, 6])[1])
    assert out.loc[1, "se"] == 0.0 and out["n_seeds"].tolist() == [3, 2]


def test_bootstrap_and_threshold():
    x = np.random.default_rng(1).normal(size=50)
    lo, hi = stats.bootstrap_ci(x, seed=3)
    assert lo < x.mean() < hi
    assert (lo, hi) == stats.bootstrap_ci(x, seed=3)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0]))
    # scipy's bootstrap gives the interval the hand-written percentile bootstrap gave: the
    # same resamples (rng.integers(0, n, (n_boot, n))) and the same linear quantiles
    for n in (2, 5, 20):
        y = np.random.default_rng(n).normal(size=n)
        idx = np.random.default_rng(3).integers(0, n, size=(10_000, n))
        by_hand = np.quantile(y[idx].mean(axis=1), [0.025, 0.975])
        assert stats.bootstrap_ci(y, seed=3) == pytest.approx(tuple(by_hand), rel=1e-12)
    curve, steps = np.array([1.0, 0.5, 0.009, 0.02, 0.001]), np.arange(10, 15)
    assert stats.steps_to_threshold(curve, steps, 0.01) == 12
    assert stats.steps_to_threshold(curve, steps, 1e-4) is None


def test_crossing_ci_by_hand():
    """Two seeds, each resample is {A, A} (1/4), {A, B} (1/2) or {B, B} (1/4)."""
    # A crosses 0.5 at step 11, B at step 12; the mean of A and B at step 11 is 0.5, not below
    a_b = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    assert stats.crossing_ci(a_b, [10, 11, 12], 0.5) == (11.0, 12.0)
    # the steps may come in any order
    assert stats.crossing_ci(a_b[:, ::-1], [12, 11, 10], 0.5) == (11.0, 12.0)
    # B never crosses: only {A, A} does, so the interval is [crossing of A, never]
    never = np.array([[1.0, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert stats.crossing_ci(never, np.arange(4), 0.1) == (2.0, math.inf)
    assert stats.steps_to_threshold(never.mean(0), np.arange(4), 0.1) is None
    # a seed without a value at a step is left out of that step's mean: {A, B} crosses at 1
    # with A's value alone, {B, B} has no mean at step 1 and crosses at 2
    gap = np.array([[1.0, 0.0, 0.0], [1.0, np.nan, 0.0]])
    assert stats.crossing_ci(gap, [0, 1, 2], 0.5) == (1.0, 2.0)
    assert all(math.isnan(v) for v in stats.crossing_ci(a_b[:1], [10, 11, 12], 0.5))
    # seeded: the same interval every time, and all three outcomes occur over 10,000 draws
    rng = np.random.default_rng(0)
    spread = np.sort(rng.uniform(0.5, 2.0, size=8))[:, None] * np.exp(-np.arange(200) / 20.0)
    lo, hi = stats.crossing_ci(spread, np.arange(200), 0.01)
    assert (lo, hi) == stats.crossing_ci(spread, np.arange(200), 0.01)
    point = stats.steps_to_threshold(spread.mean(0), np.arange(200), 0.01)
    assert lo < point < hi


@pytest.mark.parametrize("artifact_id", [FIG3, FIG4])
def test_steps_to_1pct_has_a_crossing_ci(built, artifact_id):
    out, _ = built
    df = pd.read_csv(out / f"{artifact_id}.csv")
    steps = df[df["metric"] == "steps_to_1pct"]
    assert len(steps) == len(METHODS[artifact_id])
    # two seeds: the interval is computed, and holds the point estimate where there is one
    assert steps["ci_low"].notna().all() and steps["ci_high"].notna().all()
    hit = steps[steps["value"].notna()]
    assert (hit["ci_low"] <= hit["value"]).all() and (hit["value"] <= hit["ci_high"]).all()


def test_rebuilding_writes_identical_bytes(smoke_db, built, tmp_path):
    """No timestamps or versions in the figures: the same data gives the same files."""
    out, _ = built
    engine = load.connect(smoke_db)
    try:
        artifacts.build(FIG3, engine, tmp_path)
    finally:
        engine.dispose()
    for ext in FILES:
        name = f"{FIG3}.{ext}"
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_connect_label_replaces_the_url_in_what_is_written(smoke_db, tmp_path):
    label = "sqlite:///results/tpo.sqlite"
    engine = load.connect(smoke_db, label=label)
    plain = load.connect(smoke_db)
    try:
        assert load.display_url(engine) == label
        assert load.display_url(plain) == smoke_db
        artifacts.build(FIG3, engine, tmp_path)
    finally:
        engine.dispose()
        plain.dispose()
    md = (tmp_path / f"{FIG3}.md").read_text()
    assert f"- database: `{label}`;" in md and _path(smoke_db) not in md


def test_one_table_of_methods():
    from analysis import figures, methods

    assert methods.label("tpo_token") == "TPO (token)" and methods.label("new_algo") == "NEW_ALGO"
    assert methods.order(["ce", "pg", "dg", "grpo", "tpo"]) == ["tpo", "grpo", "dg", "pg", "ce"]
    # a figure's own legend first (the paper's Fig 5 order), the rest by rank
    assert methods.order(["grpo", "dg", "tpo", "ppo"], ("tpo", "dg", "grpo")) == [
        "tpo",
        "dg",
        "grpo",
        "ppo",
    ]
    assert methods.shown_as("batch_std_pg", "mnist") == "grpo"
    assert methods.shown_as("batch_std_pg", "reversal") == "batch_std_pg"
    # variants share their method's colour and differ in line style
    assert figures.color("dg_4ep") == figures.color("dg")
    assert figures.linestyle("dg_4ep") != figures.linestyle("dg")
    assert tables.label is methods.label


def test_modules_import_alone_in_any_order():
    """The family modules register their builders without an import circle: imported in
    reverse order, before the registry is used, the registry still lists them in order."""
    from analysis.artifacts import FAMILIES

    code = "; ".join(
        [
            *(f"import {m}" for m in reversed(FAMILIES)),
            "from analysis.artifacts import ARTIFACTS",
            "print(' '.join(ARTIFACTS))",
        ]
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == list(artifacts.ARTIFACTS)
    assert list(artifacts.ARTIFACTS)[:3] == [
        "fig3_tabular_single",
        "fig4_tabular_multi",
        "appendix_b",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    sorted(
        f"analysis.{p.stem}"
        for p in Path(artifacts.__file__).parent.glob("*.py")
        if p.stem != "__init__"
    ),
)
def test_every_module_imports_alone(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_cli_unknown_id(smoke_db, capsys):
    assert main(["fig99_nothing", "--db", smoke_db]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "fig99_nothing" in line and "fig3_tabular_single" in line


def test_cli_bad_database(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/missing.sqlite"
    assert main([FIG3, "--db", url]) == 2
    assert "missing.sqlite" in _one_line(capsys.readouterr().err)
    (tmp_path / "text.sqlite").write_text("hello\n" * 200)
    assert main(["all", "--db", f"sqlite:///{tmp_path}/text.sqlite"]) == 2
    assert "text.sqlite" in _one_line(capsys.readouterr().err)


def test_cli_no_runs_for_artefact(smoke_db, tmp_path, capsys):
    assert main(["fig3_tabular_single", "--db", smoke_db, "--out", str(tmp_path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no completed runs" in line and "'fig3_tabular_single'" in line


def test_cli_all_and_list(smoke_db, tmp_path, capsys):
    assert main(["all", "--db", smoke_db, "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out
    for artifact_id in (FIG3, FIG4, "appendix_b"):
        for ext in FILES:
            assert (tmp_path / f"{artifact_id}.{ext}").is_file()
        assert str(tmp_path / f"{artifact_id}.csv") in written
    assert main(["list", "--db", smoke_db]) == 0
    listing = capsys.readouterr().out
    sweep = PRESET[FIG4]
    row = next(line.split() for line in listing.splitlines() if line.startswith(sweep))
    assert row == [sweep, sweep, "10", "0", "0"]  # 5 cells x 2 seeds, one run each
    # only one scale: nothing at paper scale but appendix_b
    assert main(["all", "--scale", "paper", "--db", smoke_db, "--out", str(tmp_path / "p")]) == 0
    assert "appendix_b" in capsys.readouterr().out
    assert not (tmp_path / "p" / f"{PRESET[FIG3]}.csv").exists()


def test_cli_scale_flag_and_overrides(smoke_db, tmp_path, capsys):
    """``<preset> --scale smoke`` is ``<preset>_smoke``; overrides select as in the multirun."""
    out = tmp_path / "o"
    assert main([PRESET[FIG3], "--scale", "smoke", "--db", smoke_db, "--out", str(out)]) == 0
    assert str(out / f"{FIG3}.csv") in capsys.readouterr().out
    both = pd.read_csv(out / f"{FIG3}.csv")
    args = [PRESET[FIG3], "algorithm=tpo,dg", "--scale", "smoke", "--db", smoke_db]
    assert main([*args, "--out", str(out / "two")]) == 0
    two = pd.read_csv(out / "two" / f"{FIG3}.csv")
    assert set(two["method"]) == {"tpo", "dg"}
    pd.testing.assert_frame_equal(
        two.reset_index(drop=True),
        both[both["method"].isin(["tpo", "dg"])].reset_index(drop=True),
    )
    md = (out / "two" / f"{FIG3}.md").read_text()
    assert "experiment=fig3_tabular_single scale=smoke algorithm=tpo,dg" in md


def test_cli_bad_scale(smoke_db, tmp_path, capsys):
    assert main([PRESET[FIG3], "--scale", "huge", "--db", smoke_db]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "unknown scale 'huge'" in line and "smoke" in line
    assert main(["all", "--scale", "huge", "--db", smoke_db, "--out", str(tmp_path)]) == 2
    assert "unknown scale 'huge'" in _one_line(capsys.readouterr().err)
    assert main([FIG3, "--scale", "paper", "--db", smoke_db]) == 2
    assert "scale smoke" in _one_line(capsys.readouterr().err)


def test_cli_module_entry_point(smoke_db):
    r = subprocess.run(
        [sys.executable, "-m", "analysis", "nonsense", "--db", smoke_db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "nonsense" in _one_line(r.stderr)
