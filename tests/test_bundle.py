"""Run bundles (``tpo_sweeps export`` / ``import``) and the upsert they share with ``merge``.

Runs come from the real job entry point (``run.run_job`` on a config Hydra composed) into
real SQLite files: a small single-context bandit cell, 20 steps, 2 metrics per step.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from sqlalchemy import func, select, update

from tpo_sweeps import bundle, db, merge, transfer
from tpo_sweeps import config as C
from tpo_sweeps.run import run_job

CONF = Path(__file__).resolve().parent.parent / "conf"
STEPS, METRICS = 20, 2  # per run: STEPS × METRICS metric rows


def _run(url: str, sweep: str, seed: int, num_seeds: int, algorithm: str = "tpo", *extra):
    """One job of the bandit cell through the real entry point; returns its status dict."""
    overrides = [
        "task=tabular_single",
        f"algorithm={algorithm}",
        "algorithm.epochs=1",
        f"task.steps={STEPS}",
        f"name={sweep}",
        f"seed={seed}",
        f"num_seeds={num_seeds}",
        f"db.url={url}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = C.to_config(compose("config", overrides=overrides))
    return run_job(cfg, overrides)


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _contents(url: str) -> dict:
    """Everything a database holds about its runs, keyed by run key (ids are local)."""
    engine = db.connect(url, create=False, migrate=False)
    with engine.connect() as conn:
        runs = {
            r["run_key"]: {k: r[k] for k in merge.RUN_COLUMNS}
            for r in conn.execute(select(db.Run.__table__)).mappings()
        }
        key = dict(conn.execute(select(db.Run.id, db.Run.run_key)).all())
        metrics = {
            (key[m.run_id], m.name, m.step): m.value for m in conn.execute(select(db.Metric))
        }
        summaries = {(key[s.run_id], s.name): s.value for s in conn.execute(select(db.Summary))}
        links = {(s.sweep, key[s.run_id]) for s in conn.execute(select(db.SweepRun))}
    engine.dispose()
    return {"runs": runs, "metrics": metrics, "summaries": summaries, "links": links}


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.parquet")}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """A database with two cells (TPO, PG) × seeds 0-1, asked for by sweeps ``a`` and ``b``
    (TPO) and ``a`` (PG), and NULLs where a value was not finite. Treat it as read-only."""
    url = _url(tmp_path_factory.mktemp("source") / "source.sqlite")
    assert _run(url, "a", 0, 2)["status"] == "completed"
    assert _run(url, "b", 0, 2)["status"] == "skipped"  # served by a's runs: linked to b
    assert _run(url, "a", 0, 2, "pg")["status"] == "completed"
    engine = db.connect(url)
    with engine.begin() as conn:  # what finish_runs stores for a NaN or inf
        conn.execute(update(db.Metric).where(db.Metric.step == 3).values(value=None))
        conn.execute(update(db.Summary).where(db.Summary.name == "final_error").values(value=None))
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> Path:
    """``source`` exported; treat it as read-only (copy it to change it)."""
    out = tmp_path_factory.mktemp("exported") / "bundles"
    assert transfer.export_main(["--db", source, "--out", str(out)]) == 0
    return out


def test_export_then_import_into_an_empty_database_is_identical(source, exported, tmp_path, capsys):
    files = _files(exported)
    assert len(files) == 4  # one per completed run, in one folder per cell
    cells = {Path(f).parent.name for f in files}
    assert len(cells) == 2 and all(len(c) == 64 for c in cells)
    url = _url(tmp_path / "copy.sqlite")
    assert transfer.import_main([str(exported), "--db", url]) == 0
    assert "imported 4 run(s)" in capsys.readouterr().out
    want, got = _contents(source), _contents(url)
    assert got == want
    assert sum(v is None for v in got["metrics"].values()) == 4 * METRICS  # NULLs stay NULL
    assert {s for s, _ in got["links"]} == {"a", "b"}
    # a second import and a second export change nothing
    assert transfer.import_main([str(exported), "--db", url]) == 0
    assert "imported 0 run(s)" in capsys.readouterr().out
    assert _contents(url) == want
    assert transfer.export_main(["--db", source, "--out", str(exported)]) == 0
    assert "0 written, 4 already there" in capsys.readouterr().out
    assert _files(exported) == files


def test_export_filters(source, tmp_path, capsys):
    def exported_by(*filters: str) -> set[str]:
        out = tmp_path / "-".join(filters).replace("-", "_")
        assert transfer.export_main(["--db", source, "--out", str(out), *filters]) == 0
        capsys.readouterr()
        return {p.stem for p in out.rglob("*.parquet")}

    contents = _contents(source)["runs"]
    by_algo = {a: {k for k, r in contents.items() if r["algorithm"] == a} for a in ("tpo", "pg")}
    assert exported_by("--sweep", "b") == by_algo["tpo"]
    assert exported_by("--sweep", "a") == by_algo["tpo"] | by_algo["pg"]
    assert exported_by("--algorithm", "pg") == by_algo["pg"]
    assert exported_by("--task", "tabular_multi") == set()
    pg_cell = next(r["cell_hash"] for r in contents.values() if r["algorithm"] == "pg")
    assert exported_by("--cell", pg_cell[:8]) == by_algo["pg"]
    assert exported_by("--cell", pg_cell[:8], "--algorithm", "tpo") == set()


def test_a_run_completed_there_is_kept_and_gains_the_bundles_sweeps(exported, tmp_path):
    url = _url(tmp_path / "other.sqlite")
    _run(url, "c", 0, 2)  # computes the TPO runs itself, under sweep c
    before = _contents(url)
    assert transfer.import_main([str(exported), "--db", url]) == 0
    after = _contents(url)
    for key, run in before["runs"].items():
        assert after["runs"][key] == run  # its own job's row, not the bundle's
        assert {s for s, k in after["links"] if k == key} == {"a", "b", "c"}
    kept = {k: v for k, v in after["metrics"].items() if k[0] in before["runs"]}
    assert kept == before["metrics"]  # not the bundle's (which has NULLs at step 3)
    assert len(after["runs"]) == 4  # and PG's runs came in


def test_two_machines_bundles_combine_into_the_union(tmp_path, capsys):
    one, two = _url(tmp_path / "one.sqlite"), _url(tmp_path / "two.sqlite")
    _run(one, "m", 0, 2)  # seeds 0, 1
    _run(two, "m", 1, 2)  # seeds 1, 2
    shared = tmp_path / "shared"  # both machines export into one folder (e.g. rsync'ed)
    assert transfer.export_main(["--db", one, "--out", str(shared)]) == 0
    assert transfer.export_main(["--db", two, "--out", str(shared)]) == 0
    assert "1 written, 1 already there" in capsys.readouterr().out.splitlines()[-1]
    apart = [tmp_path / "one", tmp_path / "two"]  # or apart, and imported together
    for url, out in zip((one, two), apart, strict=True):
        assert transfer.export_main(["--db", url, "--out", str(out)]) == 0
    for sources in ([shared], apart):
        url = _url(tmp_path / f"union{len(sources)}.sqlite")
        assert transfer.import_main([*map(str, sources), "--db", url]) == 0
        got = _contents(url)
        assert sorted(r["seed"] for r in got["runs"].values()) == [0, 1, 2]
        assert len(got["metrics"]) == 3 * STEPS * METRICS
        assert len(got["summaries"]) == 3 * 2


def _rewrite(src: Path, dst: Path, edit) -> None:
    """Write ``src``'s bundle to ``dst`` with its metadata document changed by ``edit``."""
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[bundle.META_KEY])
    edit(meta)
    bundle._write(table.replace_schema_metadata({bundle.META_KEY: json.dumps(meta)}), dst)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 8)


def _format_999(path: Path) -> None:
    _rewrite(path, path, lambda m: m.update(format_version=999))


def _newer_schema(path: Path) -> None:
    _rewrite(path, path, lambda m: m.update(schema_version=db.SCHEMA_VERSION + 1))


def _edited_key(path: Path) -> None:
    _rewrite(path, path, lambda m: m["run"].update(run_key="0" * 64))


def _edited_key_renamed(path: Path) -> None:
    _rewrite(
        path, path.with_name("0" * 64 + ".parquet"), lambda m: m["run"].update(run_key="0" * 64)
    )
    path.unlink()


def _edited_seed(path: Path) -> None:
    _rewrite(path, path, lambda m: m["run"].update(seed=m["run"]["seed"] + 7))


def _flipped_bit(path: Path) -> None:
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(3)  # the values
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _not_a_bundle(path: Path) -> None:
    pd.DataFrame({"x": [1.0]}).to_parquet(path)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "not a readable Parquet file"),
        (_garbage, "not a readable Parquet file"),
        (_not_a_bundle, "not a tpo-sweeps run bundle"),
        (_flipped_bit, "corrupt data: could not verify page integrity"),
        (_format_999, "unknown bundle format version 999"),
        (_newer_schema, "newer than this tpo-sweeps understands"),
        (_edited_key, "file name does not match its run_key"),
        (_edited_key_renamed, "run_key does not match its cell_hash, seed and extras"),
        (_edited_seed, "run_key does not match its cell_hash, seed and extras"),
    ],
)
def test_a_bad_file_is_refused_with_one_line_and_nothing_imported(
    exported, tmp_path, capsys, damage, reason
):
    bundles = tmp_path / "bundles"
    shutil.copytree(exported, bundles)
    victim = sorted(bundles.rglob("*.parquet"))[1]  # good bundles sort before and after it
    damage(victim)
    url = _url(tmp_path / "target.sqlite")
    db.connect(url).dispose()
    assert transfer.import_main([str(bundles), "--db", url]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert reason in line and "nothing imported" in line
    assert str(victim.parent) in line  # names the file (or the renamed one beside it)
    assert _contents(url) == {"runs": {}, "metrics": {}, "summaries": {}, "links": set()}


def test_pandas_reads_a_bundle_and_a_folder_of_them(exported):
    path = sorted(exported.rglob("*.parquet"))[0]
    df = pd.read_parquet(path)
    assert list(df.columns) == bundle.SCHEMA.names
    assert df["run_key"].unique().tolist() == [path.stem]
    metrics = df[df["kind"] == "metric"]
    wide = metrics.pivot(index="step", columns="name", values="value")
    assert wide.shape == (STEPS, METRICS) and wide.index.tolist() == list(range(STEPS))
    assert wide.loc[3].isna().all()  # stored NULL reads as NaN
    summaries = df[df["kind"] == "summary"].set_index("name")["value"]
    assert math.isnan(summaries["final_error"]) and math.isfinite(summaries["final_misalignment"])
    assert df.loc[df["kind"] == "summary", "step"].isna().all()
    meta = json.loads(pq.read_schema(path).metadata[bundle.META_KEY])
    assert meta["format_version"] == bundle.FORMAT_VERSION
    assert meta["schema_version"] == db.SCHEMA_VERSION
    assert meta["run"]["run_key"] == path.stem and meta["run"]["config"]["task"]["steps"] == STEPS
    assert {"host", "device", "git_commit", "versions", "job_id", "run_s"} <= set(meta["run"])
    everything = pd.read_parquet(exported)  # a folder of bundles is one dataset
    assert everything["run_key"].nunique() == 4
    assert len(everything) == 4 * (STEPS * METRICS + 2)


def test_a_nan_in_a_bundle_is_stored_as_null(exported, tmp_path):
    path = sorted(exported.rglob("*.parquet"))[0]
    table = pq.read_table(path)
    values = table.column("value").to_pylist()
    values[0], values[1] = float("nan"), float("inf")
    table = table.set_column(3, "value", pa.array(values, pa.float64()))
    mine = tmp_path / path.parent.name / path.name
    mine.parent.mkdir()
    bundle._write(table, mine)
    url = _url(tmp_path / "nan.sqlite")
    assert transfer.import_main([str(mine), "--db", url]) == 0
    got = _contents(url)["metrics"]
    first = sorted(got)[:2]
    assert [got[k] for k in first] == [None, None]


def test_staged_stores_merge_through_the_shared_upsert(tmp_path, monkeypatch):
    """``merge`` puts staged runs with ``put_run`` too: completed once, linked on repeat."""
    jobs = tmp_path / "jobs"
    for sweep in ("s1", "s2"):
        job = jobs / sweep
        job.mkdir(parents=True)
        monkeypatch.chdir(job)  # outside Hydra, a job's output directory is the cwd
        main = _url(tmp_path / "main.sqlite")
        assert _run(main, sweep, 0, 2, "tpo", "db.stage=true")["status"] == "completed"
    assert len(merge.find_stores([jobs])) == 2
    url = _url(tmp_path / "main.sqlite")
    assert merge.merge([jobs], url) == {"completed": 2, "already completed": 2}
    assert merge.merge([jobs], url) == {"already completed": 4}
    got = _contents(url)
    assert len(got["runs"]) == 2 and len(got["metrics"]) == 2 * STEPS * METRICS
    assert {s for s, _ in got["links"]} == {"s1", "s2"}
    engine = db.connect(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.SweepRun)).scalar() == 4
    engine.dispose()


def test_a_password_in_the_overrides_stays_home(source, tmp_path):
    copy = tmp_path / "copy.sqlite"
    shutil.copy(source.removeprefix("sqlite:///"), copy)
    engine = db.connect(_url(copy))
    with engine.begin() as conn:  # as Hydra records a multirun's override (colons escaped)
        conn.execute(
            update(db.Run).values(overrides=[r"db.url=postgresql+psycopg\://me\:s3cret@host/db"])
        )
    engine.dispose()
    out = tmp_path / "bundles"
    assert transfer.export_main(["--db", _url(copy), "--out", str(out)]) == 0
    for path in out.rglob("*.parquet"):
        meta = json.loads(pq.read_schema(path).metadata[bundle.META_KEY])
        assert meta["run"]["overrides"] == [r"db.url=postgresql+psycopg\://me\:***@host/db"]


def test_the_commands_through_python_m(source, tmp_path):
    """``python -m tpo_sweeps export|import``: the dispatcher, exit codes and output."""

    def tpo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tpo_sweeps", *args], capture_output=True, text=True
        )

    out, url = tmp_path / "bundles", _url(tmp_path / "target.sqlite")
    done = tpo("export", "--db", source, "--out", str(out), "--algorithm", "pg")
    assert done.returncode == 0 and "2 written, 0 already there" in done.stdout, done.stderr
    (out / "junk.parquet").write_bytes(b"PAR1 not really")
    done = tpo("import", str(out), "--db", url)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {out / 'junk.parquet'}: not a readable Parquet file: ")
    assert line.endswith("; nothing imported")
    assert not (tmp_path / "target.sqlite").exists()  # checked before even opening it
    (out / "junk.parquet").unlink()
    done = tpo("import", str(out), "--db", url)
    assert done.returncode == 0 and "imported 2 run(s) from 2 bundle(s)" in done.stdout
    done = tpo("import", str(tmp_path / "nowhere"), "--db", url)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such file" in done.stderr
