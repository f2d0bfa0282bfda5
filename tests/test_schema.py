"""Schema versions: an older database migrates through the Alembic revisions (once, under a
lock), or fails with a one-line message that says what to do; a newer one is refused. (What
the v1 -> v2 migration does to the rows: tests/test_migrations.py.)"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect

from tpo_sweeps import db

V1_DATABASE = Path(__file__).parent / "data" / "v1_main.sqlite"


def _set_version(path, version: int) -> None:
    """Stamp a database with another schema version, behind tpo-sweeps' back."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_info SET version = ?", (version,))
    conn.close()


def test_an_older_schema_migrates_once(tmp_path):
    path = tmp_path / "r.sqlite"
    shutil.copy(V1_DATABASE, path)  # a v1 database written by the code before schema v2
    url = f"sqlite:///{path}"
    with pytest.raises(db.DatabaseUnavailable, match="python -m tpo_sweeps migrate"):
        db.connect(url, migrate=False)  # what a job inside a multirun does
    engine = db.connect(url)  # what the multirun's start does
    assert db.schema_version(engine)[0] == db.SCHEMA_VERSION == 3
    assert "run_key" in {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()
    db.connect(url, migrate=False).dispose()  # now the jobs' check passes


def test_no_migration_path_or_a_newer_schema_is_a_clear_error(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    db.connect(url).dispose()
    _set_version(tmp_path / "r.sqlite", db.SCHEMA_VERSION + 1)
    with pytest.raises(db.DatabaseUnavailable, match="newer than this tpo-sweeps"):
        db.connect(url)
    _set_version(tmp_path / "r.sqlite", 0)
    with pytest.raises(db.DatabaseUnavailable, match="no migration from 0"):
        db.connect(url)


def test_the_multirun_command_migrates(tmp_path):
    from tpo_sweeps.merge import migrate_main

    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    assert migrate_main(["--db", url]) == 0
    engine = db.connect(url, create=False, migrate=False)
    assert db.schema_version(engine)[0] == db.SCHEMA_VERSION
    engine.dispose()
