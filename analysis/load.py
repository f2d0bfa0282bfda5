"""The one loader: results database -> tidy pandas frames.

Everything the analysis knows about runs comes through here, read with ``pandas.read_sql``
over SQLAlchemy. The loader only reads the tables; it never imports the trainers, and it does
not import ``tpo_sweeps.db`` either (the schema it relies on is spelled out below).

Tables read (schema version 1, see ``tpo_sweeps/db.py``):
  ``runs(id, sweep, algorithm, task, optimizer, seed, num_seeds, steps, epochs, K, eta, H, V,
  match, status, started_at, finished_at, config, ...)``, where a job ran the seeds
  ``seed .. seed + num_seeds - 1``; ``metrics(run_id, seed, name, step, value)``;
  ``summaries(run_id, seed, name, value)``; ``schema_info(version)``.

Selection rule (``kept_seeds``): only completed runs count. When several completed runs of
one sweep cover the same *cell* (``CELL`` columns plus the ``CONFIG_CELL`` config values) and
seed, e.g. a sweep rerun after a code change altered the config hash, only the most recently
finished one is kept for that seed (ties: the higher run id), and a warning says how many
results were dropped.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

log = logging.getLogger("analysis")

SUPPORTED_SCHEMA_VERSIONS = (1,)

# A cell is one static config of a sweep: runs that agree on these are the same experiment.
CELL = [
    "sweep",
    "algorithm",
    "task",
    "optimizer",
    "steps",
    "epochs",
    "K",
    "eta",
    "H",
    "V",
    "match",
]
# Run columns copied onto every metric / summary row (the "promoted" columns).
PROMOTED = [c for c in CELL if c not in ("sweep", "algorithm", "task")]
# Cell dimensions stored only in the resolved config (``runs.config``), e.g. the target and
# reward that table2_variations sweeps: name -> dotted path (None where a task has none).
CONFIG_CELL = {"target": "task.target", "reward": "task.reward"}

_RUN_COLUMNS = [
    "id",
    "config_hash",
    *CELL,
    "seed",
    "num_seeds",
    "status",
    "started_at",
    "finished_at",
    "compile_s",
    "run_s",
    "host",
    "device",
    "git_commit",
    "git_dirty",
    "overrides",
    "config",
    "error",
]
_TIDY_HEAD = ["run_id", "sweep", "algorithm", "task", "seed"]


class AnalysisError(RuntimeError):
    """Bad input to the analysis (URL, artefact id, missing runs); the message is one line."""


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


def display_url(engine_or_url: Engine | str) -> str:
    """The URL with any password masked, for messages."""
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def connect(url: str) -> Engine:
    """Open a results database for reading.

    SQLite files are opened read-only (``mode=ro``), so a mistyped path fails instead of
    creating an empty database. Other backends get an ordinary engine; the analysis only
    issues SELECTs. Raises ``AnalysisError`` naming the URL when it is malformed, cannot be
    opened, is not a database, or is not a tpo-sweeps results database (no ``schema_info``).
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise AnalysisError(f"'{url}' is not a database URL") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            path = Path(parsed.database).expanduser()
            if not path.is_file():
                raise AnalysisError(f"database {shown}: no such file '{path}'")
            uri = f"{path.resolve().as_uri()}?mode=ro"
            engine = create_engine(
                parsed,
                creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
            )
        else:
            engine = create_engine(parsed)
    except AnalysisError:
        raise
    except (NoSuchModuleError, ImportError, ArgumentError) as e:
        raise AnalysisError(f"database {shown}: {_first_line(e)}") from None
    try:
        tables = set(inspect(engine).get_table_names())
        if "schema_info" not in tables:
            raise AnalysisError(
                f"database {shown} is not a tpo-sweeps results database (no schema_info table)"
            )
        with engine.connect() as conn:
            version = conn.execute(text("SELECT MAX(version) FROM schema_info")).scalar()
    except AnalysisError:
        engine.dispose()
        raise
    except DBAPIError as e:
        engine.dispose()
        raise AnalysisError(f"database {shown}: {_first_line(e.orig or e)}") from None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        engine.dispose()
        raise AnalysisError(
            f"database {shown} has results schema version {version}; this analysis reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}"
        )
    return engine


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def runs(
    engine: Engine,
    sweep: str | None = None,
    status: str | Iterable[str] | None = "completed",
) -> pd.DataFrame:
    """One row per run (no dedup), ``config``/``overrides`` parsed from JSON.

    ``status=None`` returns every status; a string or an iterable selects those.
    """
    where, params = [], {}
    if sweep is not None:
        where.append("sweep = :sweep")
        params["sweep"] = sweep
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        where.append("status IN :statuses")
        params["statuses"] = statuses
    # quoted: PostgreSQL folds unquoted identifiers to lower case (the K, H, V columns)
    quoted = ", ".join('"' + c + '"' for c in _RUN_COLUMNS)
    sql = f"SELECT {quoted} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    stmt = text(sql)
    if "statuses" in params:
        stmt = stmt.bindparams(bindparam("statuses", expanding=True))
    with engine.connect() as conn:
        df = pd.read_sql(
            stmt,
            conn,
            params=params,
            parse_dates={c: {"format": "ISO8601"} for c in ("started_at", "finished_at")},
        )
    for col in ("config", "overrides"):
        df[col] = [json.loads(v) if isinstance(v, str) else v for v in df[col]]
    return df


def sweep_counts(engine: Engine) -> pd.DataFrame:
    """Per sweep: number of runs in each status (columns completed, failed, running, ...)."""
    with engine.connect() as conn:
        df = pd.read_sql(
            text("SELECT sweep, status, COUNT(*) AS n FROM runs GROUP BY sweep, status"), conn
        )
    table = df.pivot_table(index="sweep", columns="status", values="n", fill_value=0)
    for col in ("completed", "failed", "running"):
        if col not in table.columns:
            table[col] = 0
    rest = sorted(c for c in table.columns if c not in ("completed", "failed", "running"))
    table = table[["completed", "failed", "running", *rest]].astype(int)
    table.columns.name = None
    return table.reset_index()


def config_value(config, dotted: str, default=None):
    """``config["a"]["b"]`` for ``dotted = "a.b"`` (a parsed ``runs.config``), or ``default``."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


_warned: set[tuple[str, str, int]] = set()


def kept_seeds(engine: Engine, sweep: str) -> pd.DataFrame:
    """The (run_id, seed) pairs that count for ``sweep``, with the run's cell columns.

    Completed runs only; per cell and seed the most recently finished run wins (see module
    docstring). Columns: run_id, seed, finished_at, ``CELL`` and ``CONFIG_CELL``.
    """
    cell_key = [*CELL, *CONFIG_CELL]
    rs = runs(engine, sweep=sweep, status="completed")
    if rs.empty:
        return pd.DataFrame(columns=["run_id", "seed", "finished_at", *cell_key])
    rs = rs.rename(columns={"id": "run_id", "seed": "base_seed"})
    for col, dotted in CONFIG_CELL.items():
        rs[col] = [config_value(c, dotted) for c in rs["config"]]
    counts = rs["num_seeds"].to_numpy()
    pairs = rs.loc[rs.index.repeat(counts), ["run_id", "base_seed", "finished_at", *cell_key]]
    offsets = np.concatenate([np.arange(n) for n in counts]) if len(counts) else []
    pairs = pairs.assign(seed=pairs["base_seed"].to_numpy() + offsets).drop(columns="base_seed")
    # a completed run without a finish time (not written by tpo-sweeps) loses every tie
    pairs = pairs.sort_values(["finished_at", "run_id"], kind="stable", na_position="first")
    kept = pairs.drop_duplicates(cell_key + ["seed"], keep="last")
    dropped = len(pairs) - len(kept)
    if dropped:
        gone = sorted(set(pairs["run_id"]) - set(kept["run_id"]))
        key = (display_url(engine), sweep, dropped)
        if key not in _warned:
            _warned.add(key)
            log.warning(
                "sweep '%s': dropped %d (run, seed) result(s) superseded by a more recently "
                "finished completed run of the same cell and seed (%d run(s) dropped entirely: "
                "%s)",
                sweep,
                dropped,
                len(gone),
                gone,
            )
    cols = ["run_id", "seed", "finished_at", *cell_key]
    return kept[cols].sort_values(["run_id", "seed"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Metrics and summaries
# --------------------------------------------------------------------------------------------


def metrics(engine: Engine, sweep: str, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Tidy per-step metrics of ``sweep`` after the selection rule.

    Columns: run_id, sweep, algorithm, task, seed, step, name, value, then ``PROMOTED``.
    ``names`` restricts the metric names read (cheaper: the fig4 table has 1M rows).
    """
    return _read(engine, sweep, "metrics", ["step", "name", "value"], names)


def summaries(engine: Engine, sweep: str, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Tidy per-seed summaries (``final_error``, ...) of ``sweep`` after the selection rule.

    Columns: run_id, sweep, algorithm, task, seed, name, value, then ``PROMOTED``.
    """
    return _read(engine, sweep, "summaries", ["name", "value"], names)


def _read(
    engine: Engine, sweep: str, table: str, cols: list[str], names: Iterable[str] | None
) -> pd.DataFrame:
    out_cols = [*_TIDY_HEAD, *cols, *PROMOTED]
    kept = kept_seeds(engine, sweep)
    if kept.empty:
        return pd.DataFrame(columns=out_cols)
    sql = f"SELECT run_id, seed, {', '.join(cols)} FROM {table} WHERE run_id IN :ids"
    params: dict = {"ids": sorted(int(i) for i in kept["run_id"].unique())}
    binds = [bindparam("ids", expanding=True)]
    if names is not None:
        sql += " AND name IN :names"
        params["names"] = list(names)
        binds.append(bindparam("names", expanding=True))
    with engine.connect() as conn:
        df = pd.read_sql(text(sql).bindparams(*binds), conn, params=params)
    df["name"] = df["name"].astype("category")
    df["value"] = df["value"].astype(float)  # NULL (a non-finite value) -> NaN
    # the inner join applies the per-seed selection rule
    df = df.merge(kept.drop(columns="finished_at"), on=["run_id", "seed"], how="inner")
    return df[out_cols]
