"""Results database (SQLAlchemy 2): runs, long-format per-step metrics, final summaries.

Schema (version ``SCHEMA_VERSION``):

* ``runs``: one row per job (one config cell, all its seeds). The resolved config as JSON, its
  hash (unique: dedup and skip-completed), the columns people filter on, status
  (running/completed/failed), times, provenance (host, device, git commit + dirty flag,
  package versions) and the error text of a failed job.
* ``metrics``: ``(run_id, seed, name, step, value)``, primary key on the first four.
* ``summaries``: ``(run_id, seed, name, value)``, e.g. ``final_error``.
* ``schema_info``: the schema version.

A job's results are written in one transaction, in bulk; a rerun of a failed job replaces its
rows. SQLite connections use a busy timeout and ``BEGIN IMMEDIATE`` write transactions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    inspect,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1

PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"


class DatabaseUnavailable(RuntimeError):
    """``db.url`` cannot be opened or is not a results database; the message names it."""


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    __tablename__ = "schema_info"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    config_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    sweep: Mapped[str] = mapped_column(String(200), index=True)
    algorithm: Mapped[str] = mapped_column(String(64), index=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    optimizer: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)  # base seed; the job ran seed..seed+num_seeds-1
    num_seeds: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    K: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eta: Mapped[float | None] = mapped_column(Float, nullable=True)
    H: Mapped[int | None] = mapped_column(Integer, nullable=True)
    V: Mapped[int | None] = mapped_column(Integer, nullable=True)
    match: Mapped[str | None] = mapped_column(String(32), nullable=True)
    overrides: Mapped[list] = mapped_column(JSON)  # the Hydra overrides of this job
    config: Mapped[dict] = mapped_column(JSON)  # resolved config
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    compile_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    git_dirty: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    versions: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    slurm_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Metric(Base):
    __tablename__ = "metrics"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seed: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class Summary(Base):
    __tablename__ = "summaries"
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seed: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


def _sqlite_pragmas(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        # pysqlite's implicit BEGIN is deferred; take the write lock up front instead
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def connect(url: str, busy_timeout_s: float = 30.0, create: bool = True) -> Engine:
    """Open ``url``, create or check the schema, and return the engine.

    Raises ``DatabaseUnavailable`` with a one-line reason if the URL is malformed, cannot be
    reached, is not a database, or holds a different schema version.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(f"db.url '{url}' is not a database URL") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:" and create:
        from pathlib import Path

        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(
            parsed,
            connect_args={"timeout": busy_timeout_s} if sqlite else {},
        )
    except Exception as e:  # unknown dialect, missing driver
        raise DatabaseUnavailable(f"db.url '{url}': {_first_line(e)}") from None
    if sqlite:
        _sqlite_pragmas(engine, busy_timeout_s)
    try:
        _ensure_schema(engine, create)
    except DatabaseUnavailable:
        engine.dispose()
        raise
    except (OperationalError, DatabaseError) as e:
        engine.dispose()
        raise DatabaseUnavailable(f"db.url '{url}': {_first_line(e.orig or e)}") from None
    return engine


def _ensure_schema(engine: Engine, create: bool) -> None:
    tables = set(inspect(engine).get_table_names())
    if "schema_info" in tables:
        with engine.connect() as conn:
            version = conn.execute(select(SchemaInfo.version)).scalar()
        if version != SCHEMA_VERSION:
            raise DatabaseUnavailable(
                f"db.url '{engine.url!r}' has results schema version {version}; this "
                f"tpo-sweeps needs {SCHEMA_VERSION}"
            )
        return
    if tables & {"runs", "metrics"}:
        raise DatabaseUnavailable(
            f"db.url '{engine.url!r}' has tables {sorted(tables)} but no schema_info: "
            "not a tpo-sweeps results database"
        )
    if not create:
        raise DatabaseUnavailable(f"db.url '{engine.url!r}' holds no tpo-sweeps results")
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
        conn.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@contextmanager
def transaction(engine: Engine) -> Iterator[Any]:
    with engine.begin() as conn:
        yield conn


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the semantic config (``db``/``hardware`` excluded)."""
    semantic = {k: v for k, v in config.items() if k not in ("db", "hardware", "skip_completed")}
    blob = json.dumps(semantic, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_run(engine: Engine, chash: str) -> tuple[int, str] | None:
    with engine.connect() as conn:
        row = conn.execute(select(Run.id, Run.status).where(Run.config_hash == chash)).first()
    return None if row is None else (row.id, row.status)


def start_run(engine: Engine, fields: dict[str, Any]) -> int:
    """Insert (or reset, for a rerun of a failed job) the run row with status running."""
    now = _now()
    values = {
        **fields,
        "status": RUNNING,
        "started_at": now,
        "heartbeat_at": now,
        "finished_at": None,
        "error": None,
    }
    with engine.begin() as conn:
        existing = conn.execute(
            select(Run.id).where(Run.config_hash == fields["config_hash"])
        ).scalar()
        if existing is None:
            return conn.execute(insert(Run).values(**values)).inserted_primary_key[0]
        conn.execute(update(Run).where(Run.id == existing).values(**values))
        return existing


def finish_run(
    engine: Engine,
    run_id: int,
    seeds: np.ndarray,
    metrics: dict[str, np.ndarray],
    steps: dict[str, np.ndarray],
    summary: dict[str, np.ndarray],
    extra: dict[str, Any] | None = None,
) -> int:
    """Write a job's metrics and summaries and mark it completed: one transaction, in bulk.

    Returns the number of metric rows written.
    """
    metric_rows = []
    for name, values in metrics.items():
        values = np.asarray(values, dtype=np.float64)
        step_list = [int(s) for s in steps[name]]
        for i, seed in enumerate(seeds):
            seed = int(seed)
            metric_rows.extend(
                {"run_id": run_id, "seed": seed, "name": name, "step": s, "value": _finite(v)}
                for s, v in zip(step_list, values[i].tolist(), strict=True)
            )
    summary_rows = [
        {"run_id": run_id, "seed": int(seed), "name": name, "value": _finite(v)}
        for name, vals in summary.items()
        for seed, v in zip(seeds, np.asarray(vals, dtype=np.float64).tolist(), strict=True)
    ]
    with engine.begin() as conn:
        conn.execute(delete(Metric).where(Metric.run_id == run_id))
        conn.execute(delete(Summary).where(Summary.run_id == run_id))
        if metric_rows:
            conn.execute(insert(Metric), metric_rows)
        if summary_rows:
            conn.execute(insert(Summary), summary_rows)
        now = _now()
        conn.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(status=COMPLETED, finished_at=now, heartbeat_at=now, **(extra or {}))
        )
    return len(metric_rows)


def fail_run(engine: Engine, run_id: int, error: str) -> None:
    now = _now()
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(status=FAILED, finished_at=now, heartbeat_at=now, error=error)
        )


def _finite(v: float) -> float | None:
    return v if np.isfinite(v) else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
