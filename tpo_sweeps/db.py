"""Results database (SQLAlchemy 2): runs keyed by what they compute, per-step metrics, summaries.

Schema (version ``SCHEMA_VERSION``; created and migrated by Alembic, ``tpo_sweeps/migrations``):

* ``runs``: one row per **(cell, seed, extras)** (``tpo_sweeps.identity``): ``run_key``
  (unique) = hash of the cell hash, the seed and the extras; ``cell_hash`` = the effective
  config. The resolved config as JSON, the columns people filter on (as the job that computed
  the run named them), status, times, provenance, the computing job (``job_id``, the seeds it
  ran in one program ``job_seeds``, its ``compile_s``/``run_s``) and the error text of a
  failed run. Status is one of ``STATUSES``: pending (created at multirun start), running
  (``heartbeat_at`` refreshed while it runs), completed, diverged (its results are stored,
  but a metric or its training state went non-finite: ``diverged_step`` is the first step
  where a metric did, and ``error`` says which), failed, timeout and preempted (SLURM
  signalled it; a requeue resumes it). Completed and diverged are ``FINAL``: the same cell
  and seed compute the same numbers again, so neither is recomputed.
* ``sweep_runs``: ``(sweep, run_id)``: every sweep that asked for a run, many-to-many.
* ``metrics``: ``(run_id, name, step, value)``, primary key on the first three.
* ``summaries``: ``(run_id, name, value)``, e.g. ``final_error``.
* ``schema_info``: the schema version (also read by older tpo-sweeps, which then refuse a
  newer database instead of misreading it); ``alembic_version``: Alembic's revision.

A job's results are written in one transaction, in bulk; a run completes at most once
(``finish_runs`` locks the rows and leaves a completed run alone). SQLite connections use a
busy timeout and ``BEGIN IMMEDIATE`` write transactions; a PostgreSQL URL takes the same code
path. The schema is created or migrated under a lock, so that many processes opening a new
database at once are safe.
"""

from __future__ import annotations

import datetime as dt
import re
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
from sqlalchemy.pool import NullPool

from tpo_sweeps.config import UserError

SCHEMA_VERSION = 3

PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"
TIMEOUT, PREEMPTED, DIVERGED = "timeout", "preempted", "diverged"
STATUSES = (PENDING, RUNNING, COMPLETED, DIVERGED, FAILED, TIMEOUT, PREEMPTED)
LIVE = (RUNNING, PREEMPTED, TIMEOUT)  # a job may still be writing these
FINAL = (COMPLETED, DIVERGED)  # results stored; recomputing would give the same numbers


class DatabaseUnavailable(UserError):
    """``db.url`` cannot be opened or is not a results database; the message names it."""


class DatabaseBusy(DatabaseUnavailable):
    """A write did not get the database's lock in time (or lost its connection)."""


class NoResults(DatabaseUnavailable):
    """``db.url`` opens but holds no tpo-sweeps schema yet (and ``create`` was false)."""


class NoSuchFile(NoResults):
    """``db.url`` is a SQLite file that does not exist (and ``create`` was false)."""


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    __tablename__ = "schema_info"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_key: Mapped[str] = mapped_column(String(64), unique=True)  # (cell, seed, extras)
    cell_hash: Mapped[str] = mapped_column(String(64), index=True)  # the effective config
    seed: Mapped[int] = mapped_column(Integer)
    # extras (identity rule 5): what this run logged beyond the cell's numbers
    diagnostics: Mapped[bool] = mapped_column(Boolean)
    mechanism: Mapped[bool] = mapped_column(Boolean)
    log_every: Mapped[int] = mapped_column(Integer)
    # the promoted columns, as the job that computed the run named them
    sweep: Mapped[str] = mapped_column(String(200), index=True)
    algorithm: Mapped[str] = mapped_column(String(64), index=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    optimizer: Mapped[str] = mapped_column(String(64))
    steps: Mapped[int] = mapped_column(Integer)
    epochs: Mapped[int] = mapped_column(Integer)
    K: Mapped[int | None] = mapped_column(Integer, nullable=True)
    eta: Mapped[float | None] = mapped_column(Float, nullable=True)
    H: Mapped[int | None] = mapped_column(Integer, nullable=True)
    V: Mapped[int | None] = mapped_column(Integer, nullable=True)
    match: Mapped[str | None] = mapped_column(String(32), nullable=True)
    overrides: Mapped[list] = mapped_column(JSON)  # the Hydra overrides of the computing job
    config: Mapped[dict] = mapped_column(JSON)  # resolved (effective) config
    status: Mapped[str] = mapped_column(String(16), index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # the job that computed it: its seeds ran in one compiled program
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    job_seeds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    compile_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # the job's
    run_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # the job's, all seeds
    host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    git_dirty: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    versions: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    slurm_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # status diverged: the first step at which a logged metric was non-finite (NULL when only
    # the final training state was)
    diverged_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class SweepRun(Base):
    """A sweep asked for a run (a run serves every sweep whose cell and seed it matches)."""

    __tablename__ = "sweep_runs"
    sweep: Mapped[str] = mapped_column(String(200), primary_key=True)
    run_id: Mapped[int] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Metric(Base):
    __tablename__ = "metrics"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class Summary(Base):
    __tablename__ = "summaries"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
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
    older schema version up to ``SCHEMA_VERSION`` through the Alembic revisions
    (``tpo_sweeps.migrations``) (a multirun does this
    once, at its start; its jobs then pass ``migrate=False`` and only check the version).
    Raises ``DatabaseUnavailable`` with a one-line reason if the URL is malformed, cannot be
    reached, is not a results database, or holds a schema version this code cannot use.
    A SQLite file is never created where ``create`` is false (read-only commands), nor in a
    folder that does not exist (but for the default's ``results/``; ``check_url``).
    """
    parsed = check_url(url, create)
    where = f"db.url '{display_url(url)}'"
    sqlite = parsed.get_backend_name() == "sqlite"
    path = sqlite_path(parsed)
    if path is not None and create and not path.parent.is_dir():
        try:  # the default's own folder, results/ under the current one (check_url)
            path.parent.mkdir()
        except OSError as e:
            raise DatabaseUnavailable(
                f"{where}: cannot create {path.parent}: {e.strerror}"
            ) from None
    # No pool: a job writes a few times a minute (claims, heartbeats, results) and a pooled
    # connection would stay open in between; on PostgreSQL a 500-task array would then hold
    # 500 idle connections. Each transaction opens one and closes it (an in-memory SQLite
    # database lives only as long as its one connection, so it keeps SQLAlchemy's default).
    pool = {} if sqlite and path is None else {"poolclass": NullPool}
    try:
        engine = create_engine(
            parsed,
            connect_args={"timeout": busy_timeout_s} if sqlite else {},
            **pool,
        )
    except Exception as e:  # unknown dialect, missing driver
        raise DatabaseUnavailable(f"{where}: {redact(_first_line(e))}") from None
    if sqlite:
        _sqlite_pragmas(engine, busy_timeout_s)
    try:
        _ensure_schema(engine, create, migrate)
    except DatabaseUnavailable:
        engine.dispose()
        raise
    except (OperationalError, DatabaseError) as e:
        engine.dispose()
        raise DatabaseUnavailable(f"{where}: {redact(_first_line(e.orig or e))}") from None
    return engine


DEFAULT_DIR = "results"  # the folder of the default db.url, made when missing


def sqlite_path(parsed):
    """The file of a SQLite URL (None: another backend, or in memory)."""
    from pathlib import Path

    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser()


def check_url(url: str, create: bool = True):
    """``url`` parsed, or ``DatabaseUnavailable`` naming what is wrong with it, without
    connecting: not a URL; a SQLite file that is a folder, that does not exist (``create``
    false: read-only commands), whose folder does not exist (a mistyped path must not become
    a folder tree anywhere; only the default's ``results/`` under an existing folder is
    made), or that this process may not write (``create``)."""
    import os

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(f"db.url '{redact(url)}' is not a database URL") from None
    where = f"db.url '{display_url(url)}'"
    path = sqlite_path(parsed)
    if path is None:
        return parsed
    if path.is_dir():
        raise DatabaseUnavailable(f"{where}: {path} is a folder, not a database file")
    if not create:
        if not path.is_file():  # sqlite3 would create it
            raise NoSuchFile(f"{where}: no such file")
        return parsed
    from pathlib import Path

    if not path.parent.is_dir():
        if path.parent != Path(DEFAULT_DIR) or not path.parent.parent.is_dir():
            raise DatabaseUnavailable(f"{where}: folder {path.parent} does not exist")
    elif path.exists() and not os.access(path, os.W_OK):
        raise DatabaseUnavailable(f"{where}: {path} is read-only")
    elif not os.access(path.parent, os.W_OK):  # SQLite writes a journal beside the file
        raise DatabaseUnavailable(f"{where}: folder {path.parent} is read-only")
    return parsed


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
    foreign = sorted(tables - OUR_TABLES)
    if version is None and (
        tables & {"runs", "metrics"} or (foreign and engine.dialect.name == "sqlite")
    ):
        # a SQLite file is one application's: never add our tables to another's
        raise DatabaseUnavailable(
            f"{where} has tables {sorted(tables)} but no schema_info: "
            "not a tpo-sweeps results database"
        )
    if version is not None and version > SCHEMA_VERSION:
        raise DatabaseUnavailable(
            f"{where} has results schema version {version}, newer than this tpo-sweeps "
            f"understands ({SCHEMA_VERSION}): upgrade tpo-sweeps"
        )


OUR_TABLES = {"runs", "sweep_runs", "metrics", "summaries", "schema_info", "alembic_version"}


def _lock_schema(conn: Connection) -> None:
    """Serialise schema creation and migration across processes, inside the transaction.

    SQLite: the transaction began with ``BEGIN IMMEDIATE`` and already holds the write lock.
    PostgreSQL: a transaction-scoped advisory lock (released at commit or rollback).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})


_SCHEMA_LOCK_KEY = 0x7470_6F5F  # "tpo_": any constant shared by every tpo-sweeps process


def _ensure_schema(engine: Engine, create: bool, migrate: bool) -> None:
    from tpo_sweeps import migrations

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
    with engine.connect() as conn, _foreign_keys_deferred(conn), conn.begin():
        _lock_schema(conn)
        # again, under the lock: another process may have done it while we waited
        version, tables = schema_version(conn)
        _check_usable(engine, version, tables)
        if version != SCHEMA_VERSION:
            migrations.upgrade(conn)
            _check_foreign_keys(conn)


@contextmanager
def _foreign_keys_deferred(conn: Connection) -> Iterator[None]:
    """SQLite: foreign keys off while the schema changes. Alembic's batch mode rebuilds a
    table by dropping and recreating it, and dropping ``runs`` with foreign keys on would
    delete every metric by cascade. The pragma only takes effect outside a transaction, so
    it goes straight to the driver connection before ``BEGIN``."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def _check_foreign_keys(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise DatabaseUnavailable(
                f"schema migration left {len(broken)} rows with a broken foreign key "
                f"(first: {tuple(broken[0])}); rolled back"
            )


def display_url(url: str | Engine) -> str:
    """``url`` with any password masked, for messages and logs."""
    try:
        return make_url(str(url.url if isinstance(url, Engine) else url)).render_as_string(
            hide_password=True
        )
    except ArgumentError:
        return redact(str(url))


# the password of scheme://user:password@host, also as Hydra escapes a colon (\:)
_PASSWORD = re.compile(r"(://[^\s/@:\\]*\\?:)[^\s@]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it masked (``***``): for anything printed,
    logged or stored that may quote a database URL."""
    return _PASSWORD.sub(r"\1***@", text) if "://" in text else text


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


def runs_by_key(engine: Engine | Connection, keys: list[str]) -> dict[str, Any]:
    """``run_key -> row`` (id, status, heartbeat_at, finished_at, slurm_job_id, error)."""
    cols = (
        Run.run_key,
        Run.id,
        Run.status,
        Run.heartbeat_at,
        Run.finished_at,
        Run.slurm_job_id,
        Run.error,
    )
    out: dict[str, Any] = {}

    def read(conn):
        for i in range(0, len(keys), 500):  # stay under bound-parameter limits
            for row in conn.execute(select(*cols).where(Run.run_key.in_(keys[i : i + 500]))):
                out[row.run_key] = row

    if isinstance(engine, Engine):
        with engine.connect() as conn:
            read(conn)
    else:
        read(engine)
    return out


def satisfying_runs(
    bind: Engine | Connection, cells: list[str], statuses: tuple[str, ...] | None = (COMPLETED,)
) -> list[Any]:
    """Rows (id, run_key, cell_hash, seed, extras, status, ...) of the given cells, in the
    given statuses (None: all); the caller matches seeds and extras (``identity.satisfies``)."""
    cols = (
        Run.id,
        Run.run_key,
        Run.cell_hash,
        Run.seed,
        Run.diagnostics,
        Run.mechanism,
        Run.log_every,
        Run.status,
        Run.heartbeat_at,
        Run.finished_at,
        Run.slurm_job_id,
        Run.error,
        Run.run_s,
        Run.job_seeds,
        Run.steps,
        Run.diverged_step,
    )
    out: list[Any] = []

    def read(conn):
        for i in range(0, len(cells), 500):
            stmt = select(*cols).where(Run.cell_hash.in_(cells[i : i + 500]))
            if statuses is not None:
                stmt = stmt.where(Run.status.in_(statuses))
            out.extend(conn.execute(stmt))

    if isinstance(bind, Engine):
        with bind.connect() as conn:
            read(conn)
    else:
        read(bind)
    return out


def extras_of(row: Any) -> dict[str, Any]:
    return {
        "diagnostics": bool(row.diagnostics),
        "mechanism": bool(row.mechanism),
        "log_every": int(row.log_every),
    }


def _dialect_insert(conn: Connection, table):
    name = conn.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        return None
    return dialect_insert(table)


def _upsert(
    conn: Connection, values: dict[str, Any], update_existing: bool, keep_completed: bool = True
) -> tuple[int, str]:
    """Insert a run row keyed by ``run_key``; on conflict update it (or leave it alone; a
    completed or diverged row (``FINAL``) is always left alone when ``keep_completed``).

    One statement, so two processes starting the same run at once cannot both insert. Returns
    the run id and its status afterwards. SQLite and PostgreSQL use ``INSERT .. ON CONFLICT``;
    other dialects fall back to select-then-write inside the (already locked) transaction.
    """
    stmt = _dialect_insert(conn, Run)
    if stmt is not None:
        stmt = stmt.values(**values)
        if update_existing:
            fields = {k: stmt.excluded[k] for k in values if k != "run_key"}
            stmt = stmt.on_conflict_do_update(
                index_elements=[Run.run_key],
                set_=fields,
                where=Run.status.not_in(FINAL) if keep_completed else None,
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=[Run.run_key])
        conn.execute(stmt)
    else:
        existing = conn.execute(
            select(Run.id, Run.status).where(Run.run_key == values["run_key"])
        ).first()
        if existing is None:
            conn.execute(insert(Run).values(**values))
        elif update_existing and not (keep_completed and existing.status in FINAL):
            conn.execute(update(Run).where(Run.id == existing.id).values(**values))
    row = conn.execute(select(Run.id, Run.status).where(Run.run_key == values["run_key"])).one()
    return row.id, row.status


def link(conn: Connection, sweep: str, run_ids: list[int]) -> None:
    """Record that ``sweep`` asked for these runs (idempotent)."""
    if not run_ids:
        return
    rows = [{"sweep": sweep, "run_id": int(i)} for i in set(run_ids)]
    stmt = _dialect_insert(conn, SweepRun)
    if stmt is not None:
        conn.execute(stmt.values(rows).on_conflict_do_nothing())
        return
    have = set(
        conn.execute(
            select(SweepRun.run_id).where(
                SweepRun.sweep == sweep, SweepRun.run_id.in_([r["run_id"] for r in rows])
            )
        ).scalars()
    )
    new = [r for r in rows if r["run_id"] not in have]
    if new:
        conn.execute(insert(SweepRun), new)


def add_pending(engine: Engine, requests: list[tuple[str, list[dict[str, Any]]]]) -> int:
    """Record the runs a multirun is about to launch as pending (existing rows are kept) and
    link them to their sweep. ``requests``: (sweep, [run row fields with ``run_key``]).
    Runs already satisfied by another completed run are linked by the caller instead.

    Returns how many rows were new.
    """
    with engine.begin() as conn:
        before = conn.execute(select(func.count()).select_from(Run)).scalar()
        for sweep, rows in requests:
            ids = [_upsert(conn, {**f, "status": PENDING}, update_existing=False)[0] for f in rows]
            link(conn, sweep, ids)
        return conn.execute(select(func.count()).select_from(Run)).scalar() - before


def claim_runs(
    engine: Engine, rows: list[dict[str, Any]], sweep: str, rerun_completed: bool = False
) -> dict[int, int]:
    """Insert, or reset (pending, or a rerun of a failed or interrupted job), one run row per
    seed with status running, and link them (and any completed meanwhile) to ``sweep``.
    Returns ``seed -> run id`` for the rows this job now runs; a seed completed meanwhile by
    another job is left out (unless ``rerun_completed``): a job that raced another one for
    the same run must not turn a finished result back into a running one."""
    now = _now()
    claimed: dict[int, int] = {}
    asked: list[int] = []  # every run this sweep asked for, claimed or completed meanwhile
    with engine.begin() as conn:
        for fields in rows:
            values = {
                **fields,
                "status": RUNNING,
                "started_at": now,
                "heartbeat_at": now,
                "finished_at": None,
                "error": None,
            }
            run_id, status = _upsert(
                conn, values, update_existing=True, keep_completed=not rerun_completed
            )
            if status == RUNNING:
                claimed[int(fields["seed"])] = run_id
            asked.append(run_id)
        link(conn, sweep, asked)
    return claimed


def _lock_runs(conn: Connection, run_ids: list[int]) -> dict[int, str]:
    """Lock the run rows until the transaction ends (PostgreSQL: FOR UPDATE; SQLite: the
    whole database is already locked by BEGIN IMMEDIATE) and return their statuses."""
    rows = conn.execute(select(Run.id, Run.status).where(Run.id.in_(run_ids)).with_for_update())
    return {r.id: r.status for r in rows}


def finish_runs(
    engine: Engine,
    run_ids: dict[int, int],
    metrics: dict[str, np.ndarray],
    steps: dict[str, np.ndarray],
    summary: dict[str, np.ndarray],
    seeds: np.ndarray,
    extra: dict[str, Any] | None = None,
    before_commit: Callable[[], None] | None = None,
    diverged: dict[int, tuple[int | None, str]] | None = None,
) -> int | None:
    """Write a job's metrics and summaries and mark its runs completed: one transaction, in
    bulk. ``run_ids``: seed -> run id; row ``i`` of every array is seed ``seeds[i]``.
    ``diverged``: seed -> (first non-finite step or None, what went non-finite): those runs
    are stored with their values (non-finite ones as NULL) and status ``diverged``.

    A run completed (or diverged) meanwhile by another job is left as that job wrote it
    (exactly once). Returns the number of metric rows written, or None when every run was
    already final. ``before_commit`` runs inside the transaction just before the commit
    (tests use it to kill a job mid-write).
    """
    diverged = diverged or {}
    with engine.begin() as conn:
        status = _lock_runs(conn, list(run_ids.values()))
        todo = {
            i: run_ids[int(s)]
            for i, s in enumerate(seeds)
            if int(s) in run_ids and status.get(run_ids[int(s)]) not in FINAL
        }
        if not todo:
            return None
        metric_rows = []
        for name, values in metrics.items():
            values = np.asarray(values, dtype=np.float64)
            step_list = [int(s) for s in steps[name]]
            for i, run_id in todo.items():
                metric_rows.extend(
                    {"run_id": run_id, "name": name, "step": s, "value": _finite(v)}
                    for s, v in zip(step_list, values[i].tolist(), strict=True)
                )
        summary_rows = [
            {"run_id": run_id, "name": name, "value": _finite(float(np.asarray(vals)[i]))}
            for name, vals in summary.items()
            for i, run_id in todo.items()
        ]
        ids = list(todo.values())
        conn.execute(delete(Metric).where(Metric.run_id.in_(ids)))
        conn.execute(delete(Summary).where(Summary.run_id.in_(ids)))
        if metric_rows:
            conn.execute(insert(Metric), metric_rows)
        if summary_rows:
            conn.execute(insert(Summary), summary_rows)
        now = _now()
        done = dict(status=COMPLETED, finished_at=now, heartbeat_at=now, error=None)
        bad = {
            todo[i]: diverged[int(s)]
            for i, s in enumerate(seeds)
            if i in todo and int(s) in diverged
        }
        good = [i for i in ids if i not in bad]
        if good:
            conn.execute(
                update(Run)
                .where(Run.id.in_(good))
                .values(**done, diverged_step=None, **(extra or {}))
            )
        for run_id, (step, what) in bad.items():
            conn.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    **{
                        **done,
                        **(extra or {}),
                        "status": DIVERGED,
                        "diverged_step": step,
                        "error": divergence_text(step, what),
                    }
                )
            )
        if before_commit is not None:
            before_commit()
    return len(metric_rows)


def divergence_text(step: int | None, what: str) -> str:
    """The ``error`` text of a diverged run."""
    if step is None:
        return f"diverged: {what} non-finite at the end (every logged metric finite)"
    return f"diverged: {what} non-finite at step {step}"


def fail_runs(engine: Engine, run_ids: list[int], error: str, status: str = FAILED) -> None:
    """Mark runs failed (or timeout / preempted) with the error text, unless final."""
    now = _now()
    with engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.status.not_in(FINAL))
            .values(status=status, finished_at=now, heartbeat_at=now, error=redact(error))
        )


def heartbeat(engine: Engine, run_ids: list[int], status: str | None = None) -> None:
    """Refresh live runs' ``heartbeat_at`` (and optionally their status): one short UPDATE."""
    values: dict[str, Any] = {"heartbeat_at": _now()}
    if status is not None:
        values["status"] = status
    with engine.begin() as conn:
        conn.execute(update(Run).where(Run.id.in_(run_ids), Run.status.in_(LIVE)).values(**values))


def mark_dead(engine: Engine, run_ids: list[int], error: str) -> int:
    """Mark runs whose job is gone (no heartbeat) as failed; returns how many changed."""
    if not run_ids:
        return 0
    now = _now()
    with engine.begin() as conn:
        res = conn.execute(
            update(Run)
            .where(Run.id.in_(run_ids), Run.status.in_(LIVE))
            .values(status=FAILED, finished_at=now, error=error)
        )
        return res.rowcount


def _finite(v: float) -> float | None:
    return v if np.isfinite(v) else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
