"""Schema versions: an older database migrates through ``db.MIGRATIONS`` (once, under a lock),
or fails with a one-line message that says what to do; a newer one is refused."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import inspect, text

from tpo_sweeps import db


def _v1_to_v2(conn):
    conn.execute(text("ALTER TABLE runs ADD COLUMN note VARCHAR(32)"))


def _set_version(path, version: int) -> None:
    """Stamp a database with another schema version, behind tpo-sweeps' back."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_info SET version = ?", (version,))
    conn.close()


def test_an_older_schema_migrates_once(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    db.connect(url).dispose()  # a v1 database
    monkeypatch.setattr(db, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(db, "MIGRATIONS", {1: _v1_to_v2})

    with pytest.raises(db.DatabaseUnavailable, match="python -m tpo_sweeps migrate"):
        db.connect(url, migrate=False)  # what a job inside a multirun does
    engine = db.connect(url)  # what the multirun's start does
    assert db.schema_version(engine)[0] == 2
    assert "note" in {c["name"] for c in inspect(engine).get_columns("runs")}
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
