"""Results database (SQLAlchemy 2): runs, long-format per-step metrics, final summaries.

Schema (version ``SCHEMA_VERSION``):

* ``runs``: one row per job (one config cell, all its seeds). The resolved config as JSON, its
  hash (unique: dedup and skip-completed), the columns people filter on, status
  (running/completed/failed), times, provenance (host, device, git commit + dirty flag,
  package versions) and the error text of a failed job. Status is one of ``STATUSES``:
  pending (created at multirun start), running (``heartbeat_at`` refreshed while it runs),
  completed, failed, timeout and preempted (SLURM signalled it; a requeue resumes it).
* ``metrics``: ``(run_id, seed, name, step, value)``, primary key on the first four.
* ``summaries``: ``(run_id, seed, name, value)``, e.g. ``final_error``.
* ``schema_info``: the schema version.

A job's results are written in one transaction, in bulk; a rerun of a failed job replaces its
rows, and a run completes at most once (``finish_run`` locks the row and leaves a completed run
alone). SQLite connections use a busy timeout and ``BEGIN IMMEDIATE`` write transactions; a
PostgreSQL URL takes the same code path. The schema is created, or migrated through
``MIGRATIONS``, under a lock, so that many processes opening a new database at once are safe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
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
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1

PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"
TIMEOUT, PREEMPTED = "timeout", "preempted"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, PREEMPTED)


class DatabaseUnavailable(RuntimeError):
    """``db.url`` cannot be opened or is not a results database; the message names it."""


class NoResults(DatabaseUnavailable):
    """``db.url`` opens but holds no tpo-sweeps schema yet (and ``create`` was false)."""


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


def connect(
    url: str, busy_timeout_s: float = 30.0, create: bool = True, migrate: bool = True
) -> Engine:
    """Open ``url``, create or check the schema, and return the engine.

    ``create``: make the tables in an empty database. ``migrate``: bring a database of an
    older schema version up to ``SCHEMA_VERSION`` through ``MIGRATIONS`` (a multirun does this
    once, at its start; its jobs then pass ``migrate=False`` and only check the version).
    Raises ``DatabaseUnavailable`` with a one-line reason if the URL is malformed, cannot be
    reached, is not a results database, or holds a schema version this code cannot use.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(f"db.url '{url}' is not a database URL") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:" and create:
        from pathlib import Path

        try:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatabaseUnavailable(
                f"db.url '{url}': cannot create {e.filename}: {e.strerror}"
            ) from None
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
        _ensure_schema(engine, create, migrate)
    except DatabaseUnavailable:
        engine.dispose()
        raise
    except (OperationalError, DatabaseError) as e:
        engine.dispose()
        raise DatabaseUnavailable(f"db.url '{url}': {_first_line(e.orig or e)}") from None
    return engine


# version v -> the function that migrates a database at schema version v to v + 1, inside one
# transaction that already holds the schema lock. Add an entry whenever SCHEMA_VERSION grows.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}


def schema_version(bind: Engine | Connection) -> tuple[int | None, set[str]]:
    """The schema version stored in the database (None: no ``schema_info``) and its tables."""
    tables = set(inspect(bind).get_table_names())
    if "schema_info" not in tables:
        return None, tables
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return conn.execute(select(func.max(SchemaInfo.version))).scalar(), tables
    return bind.execute(select(func.max(SchemaInfo.version))).scalar(), tables


def _check_usable(engine: Engine, version: int | None, tables: set[str]) -> None:
    where = f"db.url '{engine.url!r}'"
    if version is None and tables & {"runs", "metrics"}:
        raise DatabaseUnavailable(
            f"{where} has tables {sorted(tables)} but no schema_info: "
            "not a tpo-sweeps results database"
        )
    if version is not None and version > SCHEMA_VERSION:
        raise DatabaseUnavailable(
            f"{where} has results schema version {version}, newer than this tpo-sweeps "
            f"understands ({SCHEMA_VERSION}): upgrade tpo-sweeps"
        )
    if version is not None and any(v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)):
        raise DatabaseUnavailable(
            f"{where} has results schema version {version}; this tpo-sweeps needs "
            f"{SCHEMA_VERSION} and has no migration from {version}"
        )


def _lock_schema(conn: Connection) -> None:
    """Serialise schema creation and migration across processes, inside the transaction.

    SQLite: the transaction began with ``BEGIN IMMEDIATE`` and already holds the write lock.
    PostgreSQL: a transaction-scoped advisory lock (released at commit or rollback).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})


_SCHEMA_LOCK_KEY = 0x7470_6F5F  # "tpo_": any constant shared by every tpo-sweeps process


def _ensure_schema(engine: Engine, create: bool, migrate: bool) -> None:
    version, tables = schema_version(engine)
    if version == SCHEMA_VERSION:
        return
    _check_usable(engine, version, tables)
    if version is None and not create:
        raise NoResults(f"db.url '{engine.url!r}' holds no tpo-sweeps results")
    if version is not None and not migrate:
        raise DatabaseUnavailable(
            f"db.url '{engine.url!r}' has results schema version {version}, this tpo-sweeps "
            f"needs {SCHEMA_VERSION}: migrate it once with "
            f"'python -m tpo_sweeps migrate --db <url>' (a multirun does this at its start)"
        )
    with engine.begin() as conn:
        _lock_schema(conn)
        # again, under the lock: another process may have done it while we waited
        version, tables = schema_version(conn)
        _check_usable(engine, version, tables)
        if version is None:
            Base.metadata.create_all(conn)
            conn.execute(insert(SchemaInfo).values(version=SCHEMA_VERSION))
            return
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](conn)
            conn.execute(update(SchemaInfo).values(version=v + 1))


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


# Keys that do not change what a run computes: where and how it runs, how it is checkpointed
# and reported, and debug switches (a cell that failed on purpose reruns under the same hash).
NON_SEMANTIC_KEYS = ("db", "hardware", "skip_completed", "debug", "checkpoint", "progress")


def config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the semantic config (``NON_SEMANTIC_KEYS`` excluded)."""
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    blob = json.dumps(semantic, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_run(engine: Engine, chash: str) -> tuple[int, str] | None:
    with engine.connect() as conn:
        row = conn.execute(select(Run.id, Run.status).where(Run.config_hash == chash)).first()
    return None if row is None else (row.id, row.status)


def runs_by_hash(engine: Engine, hashes: list[str]) -> dict[str, Any]:
    """``config_hash -> row`` (id, status, heartbeat_at, finished_at, slurm_job_id, error)."""
    out: dict[str, Any] = {}
    cols = (
        Run.config_hash,
        Run.id,
        Run.status,
        Run.heartbeat_at,
        Run.finished_at,
        Run.slurm_job_id,
        Run.error,
    )
    with engine.connect() as conn:
        for i in range(0, len(hashes), 500):  # stay under bound-parameter limits
            chunk = hashes[i : i + 500]
            for row in conn.execute(select(*cols).where(Run.config_hash.in_(chunk))):
                out[row.config_hash] = row
    return out


def _upsert(
    conn: Connection, values: dict[str, Any], update_existing: bool, keep_completed: bool = True
) -> tuple[int, str]:
    """Insert a run row keyed by ``config_hash``; on conflict update it (or leave it alone;
    a completed row is always left alone when ``keep_completed``).

    One statement, so two processes starting the same cell at once cannot both insert. Returns
    the run id and its status afterwards. SQLite and PostgreSQL use ``INSERT .. ON CONFLICT``;
    other dialects fall back to select-then-write inside the (already locked) transaction.
    """
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        stmt = dialect_insert(Run).values(**values)
        if update_existing:
            fields = {k: stmt.excluded[k] for k in values if k != "config_hash"}
            stmt = stmt.on_conflict_do_update(
                index_elements=[Run.config_hash],
                set_=fields,
                where=(Run.status != COMPLETED) if keep_completed else None,
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[Run.config_hash])
        conn.execute(stmt)
    else:
        existing = conn.execute(
            select(Run.id, Run.status).where(Run.config_hash == values["config_hash"])
        ).first()
        if existing is None:
            conn.execute(insert(Run).values(**values))
        elif update_existing and not (keep_completed and existing.status == COMPLETED):
            conn.execute(update(Run).where(Run.id == existing.id).values(**values))
    row = conn.execute(
        select(Run.id, Run.status).where(Run.config_hash == values["config_hash"])
    ).one()
    return row.id, row.status


def add_pending(engine: Engine, runs: list[dict[str, Any]]) -> int:
    """Record cells that a multirun is about to launch as pending; existing rows are kept.

    Returns how many rows were new.
    """
    new = 0
    with engine.begin() as conn:
        before = conn.execute(select(func.count()).select_from(Run)).scalar()
        for fields in runs:
            _upsert(conn, {**fields, "status": PENDING}, update_existing=False)
        new = conn.execute(select(func.count()).select_from(Run)).scalar() - before
    return new


def start_run(engine: Engine, fields: dict[str, Any], rerun_completed: bool = False) -> int | None:
    """Insert, or reset (a pending cell, a rerun of a failed or interrupted job), the run row
    with status running. Returns the run id (the config hash keeps one row per cell), or None
    if the cell is completed already and ``rerun_completed`` is false: a job that raced
    another one for the same cell must not turn a finished result back into a running one."""
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
        run_id, status = _upsert(
            conn, values, update_existing=True, keep_completed=not rerun_completed
        )
    return run_id if status == RUNNING else None


def _lock_run(conn: Connection, run_id: int) -> str | None:
    """Lock the run row until the transaction ends (PostgreSQL: FOR UPDATE; SQLite: the whole
    database is already locked by BEGIN IMMEDIATE) and return its status."""
    return conn.execute(select(Run.status).where(Run.id == run_id).with_for_update()).scalar()


def finish_run(
    engine: Engine,
    run_id: int,
    seeds: np.ndarray,
    metrics: dict[str, np.ndarray],
    steps: dict[str, np.ndarray],
    summary: dict[str, np.ndarray],
    extra: dict[str, Any] | None = None,
    before_commit: Callable[[], None] | None = None,
) -> int | None:
    """Write a job's metrics and summaries and mark it completed: one transaction, in bulk.

    Returns the number of metric rows written, or None when the run was already completed
    by another job of the same cell (it then stays as that job wrote it: exactly once).
    ``before_commit`` runs inside the transaction just before the commit (tests use it to
    kill a job mid-write).
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
        if _lock_run(conn, run_id) == COMPLETED:
            return None
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
            .values(
                status=COMPLETED, finished_at=now, heartbeat_at=now, error=None, **(extra or {})
            )
        )
        if before_commit is not None:
            before_commit()
    return len(metric_rows)


def fail_run(engine: Engine, run_id: int, error: str, status: str = FAILED) -> None:
    """Mark a run failed (or timeout / preempted) with its error text, unless it completed."""
    now = _now()
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == run_id, Run.status != COMPLETED)
            .values(status=status, finished_at=now, heartbeat_at=now, error=error)
        )


def heartbeat(engine: Engine, run_id: int, status: str | None = None) -> None:
    """Refresh a live run's ``heartbeat_at`` (and optionally its status): one short UPDATE."""
    values: dict[str, Any] = {"heartbeat_at": _now()}
    if status is not None:
        values["status"] = status
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == run_id, Run.status.in_((RUNNING, PREEMPTED, TIMEOUT)))
            .values(**values)
        )


def mark_dead(engine: Engine, run_ids: list[int], error: str) -> int:
    """Mark runs whose job is gone (no heartbeat) as failed; returns how many changed."""
    if not run_ids:
        return 0
    now = _now()
    with engine.begin() as conn:
        res = conn.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.status.in_((RUNNING, PREEMPTED, TIMEOUT)))
            .values(status=FAILED, finished_at=now, error=error)
        )
        return res.rowcount


def _finite(v: float) -> float | None:
    return v if np.isfinite(v) else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
