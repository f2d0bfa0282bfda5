"""Schema creation and migration (placeholder until the Alembic revisions land)."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.engine import Connection


def upgrade(conn: Connection) -> None:
    from tpo_sweeps import db

    version, _ = db.schema_version(conn)
    if version is None:
        db.Base.metadata.create_all(conn)
        conn.execute(insert(db.SchemaInfo).values(version=db.SCHEMA_VERSION))
        return
    raise db.DatabaseUnavailable(f"no migration from schema version {version}")
