"""Schema migrations (``tpo_sweeps/migrations``), on real SQLite files and, where one runs, a
real PostgreSQL server (tests/services/postgres.sh; skipped without one).

* A v1 database written by the v1 code (``tests/data/v1_main.sqlite``, see the README there)
  migrates in place: every v1 seed is a v2 run or a superseded duplicate whose results equal
  the kept run's; metrics, summaries, statuses and sweeps are kept, and the run keys are the
  ones the current code computes, so re-running its cells skips what it holds.
* Revision 0001 is the v1 schema as the v1 code created it.
* The revisions build what the models declare (an ``alembic check``), and that check notices
  a model change; a new database made the fast way equals one made by the revisions.
* Upgrading twice changes nothing; a newer schema, or one without a migration, is refused in
  one line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from sqlalchemy import (
    Column,
    Index,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url

from tpo_sweeps import config as C
from tpo_sweeps import db, migrations, store
from tpo_sweeps import identity as I
from tpo_sweeps.merge import migrate_main

ROOT = Path(__file__).resolve().parent.parent
V1_DB = Path(__file__).resolve().parent / "data" / "v1_main.sqlite"

# tests/data/README.md: what the v1 code ran to write V1_DB
V1_SEEDS, V2_RUNS = 19, 14  # seeds of its 10 jobs; distinct (cell, seed, extras) among them
# the fig3 smoke preset of the v1 code, spelled out: a re-run must not depend on the presets
FIG3_SMOKE = {
    "task": "tabular_single",
    "optimizer": "normalized_step",
    "algorithm.epochs": "1",
    "task.steps": "20",
    "num_seeds": "2",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """An empty database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'results.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def v1_url(url):
    """``url`` holding the v1 database: the file itself on SQLite; on PostgreSQL the v1 tables
    of revision 0001 filled with its rows, and no Alembic stamp (as the v1 code left it)."""
    if url.startswith("sqlite"):
        shutil.copy(V1_DB, make_url(url).database)
        return url
    src, dst = create_engine(f"sqlite:///{V1_DB}"), create_engine(url)
    with src.connect() as s, dst.begin() as d:
        migrations.upgrade(d, "0001")
        d.execute(text("DROP TABLE alembic_version"))
        for name in ("runs", "metrics", "summaries"):
            rows = [dict(r) for r in s.execute(select(_table(s, name))).mappings()]
            d.execute(insert(_table(d, name)), rows)
    src.dispose()
    dst.dispose()
    return url


def _table(conn, name: str) -> Table:
    return Table(name, MetaData(), autoload_with=conn)


def _dump(url: str) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: two dumps are equal when nothing changed."""
    engine = create_engine(url)
    with engine.connect() as conn:
        out = {
            name: sorted(map(tuple, conn.execute(select(_table(conn, name)))), key=repr)
            for name in inspect(conn).get_table_names()
        }
    engine.dispose()
    return out


def _v1_contents(url: str) -> dict:
    engine = create_engine(url)
    with engine.connect() as conn:
        runs = {r.id: r for r in conn.execute(text("SELECT * FROM runs"))}
        metrics, summaries = {}, {}
        for r in conn.execute(text("SELECT run_id, seed, name, step, value FROM metrics")):
            metrics.setdefault((r.run_id, r.seed), {})[r.name, r.step] = r.value
        for r in conn.execute(text("SELECT run_id, seed, name, value FROM summaries")):
            summaries.setdefault((r.run_id, r.seed), {})[r.name] = r.value
    engine.dispose()
    return {"runs": runs, "metrics": metrics, "summaries": summaries}


def _v2_contents(engine) -> dict:
    with engine.connect() as conn:
        runs = {r.id: r for r in conn.execute(select(db.Run.__table__))}
        links = {(r.sweep, r.run_id) for r in conn.execute(select(db.SweepRun.__table__))}
        metrics, summaries = {}, {}
        for r in conn.execute(select(db.Metric.__table__)):
            metrics.setdefault(r.run_id, {})[r.name, r.step] = r.value
        for r in conn.execute(select(db.Summary.__table__)):
            summaries.setdefault(r.run_id, {})[r.name] = r.value
    return {"runs": runs, "links": links, "metrics": metrics, "summaries": summaries}


def _compose(overrides: list[str]) -> C.Config:
    C.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return C.to_config(compose("config", overrides=overrides))


def _rerun_overrides(stored: list[str]) -> list[str]:
    """A v1 job's overrides as a new request for the same cell: the preset spelled out, and
    what is not its cell (sweep name, database, debug switches) left out."""
    chosen: dict[str, str] = {}
    for item in stored:
        key, value = item.split("=", 1)
        if key == "experiment":
            assert value == "fig3_tabular_single_smoke", value
            chosen = {**FIG3_SMOKE, **chosen}
        elif key not in ("name", "db.url") and not key.startswith("debug."):
            chosen[key] = value
    return [f"{k}={v}" for k, v in chosen.items()]


# --------------------------------------------------------------------------------------------
# the v1 database of the v1 code
# --------------------------------------------------------------------------------------------


def test_revision_0001_is_the_v1_schema_as_the_v1_code_created_it(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'r1.sqlite'}")
    with engine.begin() as conn:
        migrations.upgrade(conn, "0001")
    engine.dispose()

    def schema(path) -> dict:
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT name, sql FROM sqlite_master").fetchall()
        conn.close()
        return {name: sql for name, sql in rows if "alembic" not in name}

    assert schema(tmp_path / "r1.sqlite") == schema(V1_DB)


def test_a_v1_database_migrates_in_place_with_every_row_kept_and_rekeyed(v1_url, capsys, caplog):
    caplog.set_level(logging.INFO, logger=migrations.log.name)
    v1 = _v1_contents(v1_url)
    assert sum(r.num_seeds for r in v1["runs"].values()) == V1_SEEDS

    # a job (migrate=False) refuses it and says how to migrate; the command migrates it
    with pytest.raises(db.DatabaseUnavailable, match="python -m tpo_sweeps migrate"):
        db.connect(v1_url, migrate=False)
    assert migrate_main(["--db", v1_url]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith(
        f"results schema version {db.SCHEMA_VERSION}, revision {migrations.head()}"
    )
    assert f"{V1_SEEDS - V2_RUNS} seeds duplicated another v1 run's" in caplog.text
    # the fig3 TPO seed 0 of a 2-seed job and of a 3-seed job: one value differs by rounding
    assert "1 superseded completed seeds differ" in caplog.text
    assert "in 1 metric and 0 summary values (largest relative difference 6e-06)" in caplog.text

    engine = db.connect(v1_url, migrate=False)
    v2 = _v2_contents(engine)
    runs = v2["runs"]
    assert len(runs) == V2_RUNS
    with engine.connect() as conn:
        assert db.schema_version(conn)[0] == db.SCHEMA_VERSION
        assert migrations.current(conn) == migrations.head()
        assert migrations.differences(conn) == []
        assert set(inspect(conn).get_table_names()) == {*db.Base.metadata.tables, "alembic_version"}

    # every v1 seed is the v2 run its sweep links to (sweep, algorithm and seed tell them
    # apart in this database): computed by that seed (kept), or by a duplicate (superseded)
    kept, superseded_rows = Counter(), 0
    for v1_id, r in v1["runs"].items():
        for seed in range(r.seed, r.seed + r.num_seeds):
            (run,) = [
                runs[i]
                for sweep, i in v2["links"]
                if sweep == r.sweep and runs[i].seed == seed and runs[i].algorithm == r.algorithm
            ]
            own = run.job_id == f"v1-{r.config_hash[:29]}"
            if r.status == db.COMPLETED:  # its results are the run's: nothing lost
                # a duplicate computed the same cell and seed, in a seed batch of another
                # size, which XLA may round differently (here: 6e-6 relative, once)
                expected = {
                    "metrics": v1["metrics"][v1_id, seed],
                    "summaries": v1["summaries"][v1_id, seed],
                }
                if not own:
                    expected = {k: pytest.approx(v, rel=1e-4) for k, v in expected.items()}
                assert run.status == db.COMPLETED
                assert v2["metrics"][run.id] == expected["metrics"]
                assert v2["summaries"][run.id] == expected["summaries"]
            if not own:
                superseded_rows += len(v1["metrics"].get((v1_id, seed), {}))
                continue
            kept[run.id] += 1
            assert (run.status, run.error, run.sweep) == (r.status, r.error, r.sweep)
            assert (run.job_seeds, run.compile_s, run.run_s) == (r.num_seeds, r.compile_s, r.run_s)
            assert run.started_at == _datetime(r.started_at)
            assert run.finished_at == _datetime(r.finished_at)
            assert run.overrides == _json(r.overrides)
            if r.status != db.COMPLETED:
                assert run.id not in v2["metrics"]
    assert kept == {i: 1 for i in runs}  # each run kept exactly one v1 seed
    assert sum(map(len, v2["metrics"].values())) + superseded_rows == sum(
        map(len, v1["metrics"].values())
    )
    assert len(v2["links"]) == V1_SEEDS  # no two v1 jobs of one sweep shared a run
    assert Counter(r.status for r in runs.values()) == {db.COMPLETED: 12, db.FAILED: 2}

    # run keys are the identity rule applied to what is stored
    for run in runs.values():
        assert "db" not in run.config
        assert run.cell_hash == I.cell_hash(run.config)
        assert db.extras_of(run) == I.extras(run.config)
        assert run.run_key == I.run_key(run.cell_hash, run.seed, I.extras(run.config))

    # ... and the ones the current code computes for the v1 jobs' requests: re-running them
    # skips every seed a completed run serves, and finds the failed cell's runs to redo
    for r in v1["runs"].values():
        ident = I.identify(_compose(_rerun_overrides(_json(r.overrides))))
        seeds = list(range(r.seed, r.seed + r.num_seeds))
        by_key = db.runs_by_key(engine, [ident.run_key(s) for s in seeds])
        assert len(by_key) == len(seeds), r.sweep
        done = {s for s in seeds if by_key[ident.run_key(s)].status == db.COMPLETED}
        assert set(store.stored_seeds(engine, ident, seeds)) == done
        assert done == (set() if r.sweep == "fig3_fail" else set(seeds)), r.sweep
    engine.dispose()


def _json(value):
    """A JSON column read with plain SQL: text on SQLite, parsed by psycopg on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


def _datetime(value):
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def test_a_database_password_in_a_v1_run_is_not_migrated(tmp_path):
    path = tmp_path / "v1.sqlite"
    shutil.copy(V1_DB, path)
    secret = "postgresql+psycopg://me:s3cret@db.example/results"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE runs SET overrides = json_array('algorithm=pg', ?), "
            "config = json_set(config, '$.db.url', ?) WHERE id = 4",
            (f"db.url={secret}", secret),
        )
    conn.close()
    db.connect(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as conn:
        stored = conn.execute(
            "SELECT overrides, config FROM runs WHERE sweep LIKE 'fig3%'"
        ).fetchall()
    conn.close()
    assert not any("s3cret" in o or "s3cret" in c for o, c in stored)
    assert any("db.url=postgresql+psycopg://me:***@db.example/results" in o for o, _ in stored)


def test_a_v1_config_this_code_cannot_read_stops_the_migration_and_changes_nothing(tmp_path):
    path = tmp_path / "v1.sqlite"
    shutil.copy(V1_DB, path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE runs SET config = json_set(config, '$.algorithm.name', 'gone') WHERE id = 3"
        )
    conn.close()
    before = _dump(f"sqlite:///{path}")
    with pytest.raises(db.DatabaseUnavailable) as e:
        db.connect(f"sqlite:///{path}")
    assert "\n" not in str(e.value)
    assert "v1 run 3" in str(e.value) and "nothing was migrated" in str(e.value)
    assert _dump(f"sqlite:///{path}") == before  # the stamp and the renames rolled back


# --------------------------------------------------------------------------------------------
# the revisions and the models
# --------------------------------------------------------------------------------------------


def test_the_revisions_build_what_the_models_declare(url):
    """``alembic check``: an empty database taken through every revision has no difference
    from ``db.Base.metadata``; a model changed without a revision fails here."""
    engine = create_engine(url)
    with engine.begin() as conn:
        migrations.upgrade(conn, replay=True)
    with engine.connect() as conn:
        assert migrations.current(conn) == migrations.head()
        assert db.schema_version(conn)[0] == db.SCHEMA_VERSION
        assert migrations.differences(conn) == []
    engine.dispose()


def test_the_check_notices_a_model_changed_without_a_revision(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    with engine.begin() as conn:
        migrations.upgrade(conn, replay=True)
    changed = MetaData()
    for table in db.Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["runs"].append_column(Column("note", String(32), nullable=True))
    Index("ix_metrics_name", changed.tables["metrics"].c.name)
    changed.tables["summaries"].c.name.type = String(128)
    with engine.connect() as conn:
        found = repr(migrations.differences(conn, changed))
    engine.dispose()
    for expected in ("add_column", "'note'", "add_index", "ix_metrics_name", "modify_type"):
        assert expected in found, found


def _structure(url: str) -> dict:
    """Tables, columns, keys and indexes as the database reports them."""
    engine = create_engine(url)
    with engine.connect() as conn:
        insp = inspect(conn)
        out = {}
        for t in sorted(insp.get_table_names()):
            out[t] = {
                "columns": sorted(
                    (c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)
                ),
                "pk": insp.get_pk_constraint(t),
                "fks": sorted(map(repr, insp.get_foreign_keys(t))),
                "indexes": sorted(map(repr, insp.get_indexes(t))),
                "unique": sorted(map(repr, insp.get_unique_constraints(t))),
            }
        out["alembic_version"]["rows"] = conn.execute(
            text("SELECT version_num FROM alembic_version")
        ).all()
    engine.dispose()
    return out


def test_a_new_database_made_directly_equals_one_made_by_the_revisions(url):
    db.connect(url).dispose()  # directly: the models' tables, stamped at head
    direct = _structure(url)
    engine = create_engine(url)
    with engine.begin() as conn:  # empty it again, and take it through every revision
        db.Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE alembic_version"))
    with engine.begin() as conn:
        migrations.upgrade(conn, replay=True)
    engine.dispose()
    assert _structure(url) == direct


def test_a_new_database_does_not_import_alembic(tmp_path):
    probe = (
        "import sys; from tpo_sweeps import db; "
        f"db.connect('sqlite:///{tmp_path / 'n.sqlite'}').dispose(); "
        "print('alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "False"


def test_the_head_revision_is_the_schema_version():
    assert migrations.REVISIONS[db.SCHEMA_VERSION] == migrations.head()
    assert max(migrations.REVISIONS) == db.SCHEMA_VERSION


# --------------------------------------------------------------------------------------------
# idempotence and refusals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["empty", "v1"])
def test_upgrading_twice_is_a_no_op(start, url, request):
    if start == "v1":
        url = request.getfixturevalue("v1_url")
    db.connect(url).dispose()
    once = _dump(url)
    engine = db.connect(url)  # nothing to do: the version is current
    with engine.begin() as conn:  # and the revisions themselves find nothing to run
        migrations.upgrade(conn)
    engine.dispose()
    assert migrate_main(["--db", url]) == 0
    assert _dump(url) == once


def test_a_newer_schema_is_refused_in_one_line(url, capsys):
    db.connect(url).dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET version = 99"))
    engine.dispose()
    with pytest.raises(db.DatabaseUnavailable, match="version 99, newer than") as e:
        db.connect(url)
    assert "\n" not in str(e.value)
    assert migrate_main(["--db", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "99" in err
    assert _dump(url)["schema_info"] == [(99,)]  # left as it was


def test_a_version_without_a_migration_is_refused_in_one_line(tmp_path):
    path = tmp_path / "v0.sqlite"
    shutil.copy(V1_DB, path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_info SET version = 0")
    conn.close()
    with pytest.raises(db.DatabaseUnavailable, match="no migration from 0") as e:
        db.connect(f"sqlite:///{path}")
    assert "\n" not in str(e.value)
