"""The one loader: results database -> tidy pandas frames, selected by what the runs compute.

An artefact's runs are a **selection on the effective config**, defined by its experiment
preset: artefact ``X`` at scale ``S`` (with optional extra overrides ``O``) reads the cells of
``python -m tpo_sweeps -m experiment=X scale=S O`` (``analysis.selection``: artefact ids and
their requested cells) and every **completed** run that serves one of them: its
``cell_hash`` is the cell's and its extras satisfy the cell's (``identity.satisfies``: a
diagnostics run serves a request without diagnostics), whichever sweep, job or machine stored
it, and whatever seeds it has (all completed seeds count, not only the preset's
``num_seeds``). Each row is labelled with the *requested* cell's values (the algorithm as
the preset names it, K/H/V/match/target/reward/B as requested), so one stored run serving
two requested cells (Table 3's GRPO under both matchings) appears under both.

Selection rule (``kept_seeds``): per requested cell and seed, the most recently finished
completed run wins (ties: the higher run id), e.g. a run with more diagnostics stored after
a plain one; a warning says how many results were dropped.

Tables read (schema versions 2 and 3, see ``tpo_sweeps/db.py``): ``runs`` (one row per cell, seed
and extras: ``run_key, cell_hash, seed, diagnostics, mechanism, log_every``, the promoted
columns, the resolved ``config``, status, times, provenance), ``sweep_runs(sweep, run_id)``,
``metrics(run_id, name, step, value)``, ``summaries(run_id, name, value)``,
``schema_info(version)``. The trainers are never imported.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from sqlalchemy import bindparam, create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from analysis import selection
from analysis.errors import AnalysisError, first_line

log = logging.getLogger("analysis")

# v3 only adds runs.diverged_step and the status 'diverged': the analysis reads completed runs
SUPPORTED_SCHEMA_VERSIONS = (2, 3)

# A cell's labels: what the requested config says (not the resolved one), per tidy row.
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
# Label columns copied onto every metric / summary row (the "promoted" columns).
PROMOTED = [c for c in CELL if c not in ("sweep", "algorithm", "task")]

_RUN_COLUMNS = [
    "id",
    "run_key",
    "cell_hash",
    "seed",
    "diagnostics",
    "mechanism",
    "log_every",
    *CELL,
    "status",
    "started_at",
    "finished_at",
    "job_id",
    "job_seeds",
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
_CHUNK = 500  # ids per IN (...) list: under every backend's bound-parameter limit


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


# engine -> the name ``connect(url, label=...)`` gave it, shown instead of its URL
_labels: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def display_url(engine_or_url: Engine | str) -> str:
    """The URL with any password masked, for messages and provenance lines; for an engine
    opened with ``connect(url, label)``, the label."""
    if isinstance(engine_or_url, Engine) and engine_or_url in _labels:
        return _labels[engine_or_url]
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def connect(url: str, label: str | None = None) -> Engine:
    """Open a results database for reading.

    ``label``: the name ``display_url`` (and so every provenance line) shows for this engine
    instead of its URL, e.g. the permanent URL of a database read from a temporary copy, so
    that what is written does not depend on where the copy lies.

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
        raise AnalysisError(f"database {shown}: {first_line(e)}") from None
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
        raise AnalysisError(f"database {shown}: {first_line(e.orig or e)}") from None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        engine.dispose()
        hint = " (migrate it: python -m tpo_sweeps migrate --db <url>)" if version == 1 else ""
        raise AnalysisError(
            f"database {shown} has results schema version {version}; this analysis reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}{hint}"
        )
    if label is not None:
        _labels[engine] = label
    return engine


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def _read_chunked(
    engine: Engine, sql: str, key: str, values: Sequence, params: dict | None = None, **kw
) -> pd.DataFrame:
    """``pd.read_sql`` of ``sql`` (with ``IN :<key>``) over ``values``, in chunks."""
    params = dict(params or {})
    lists = [key, *(k for k, v in params.items() if isinstance(v, list))]
    stmt = text(sql).bindparams(*(bindparam(k, expanding=True) for k in lists))
    # no values: one query that matches nothing (IN (NULL)), for the columns
    chunks = [list(values[i : i + _CHUNK]) for i in range(0, len(values), _CHUNK)] or [[None]]
    with engine.connect() as conn:
        frames = [pd.read_sql(stmt, conn, params={**params, key: c}, **kw) for c in chunks]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


_DATES = {c: {"format": "ISO8601"} for c in ("started_at", "finished_at")}


def _satisfying(stored: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """The (stored run, requested cell) pairs where the run serves the request: same cell
    hash, and the run's extras satisfy the request's (``tpo_sweeps.identity.satisfies``,
    vectorised: every switch the request turns on is on, and the request's logging interval
    is a multiple of the run's)."""
    pairs = stored.merge(requests, on="cell_hash", suffixes=("", "_req"))
    ok = (
        (pairs["diagnostics"].astype(bool) | ~pairs["diagnostics_req"].astype(bool))
        & (pairs["mechanism"].astype(bool) | ~pairs["mechanism_req"].astype(bool))
        & (pairs["log_every_req"].astype(int) % pairs["log_every"].astype(int) == 0)
    )
    return pairs[ok]


def _requests(name: str) -> pd.DataFrame:
    """One row per requested cell: request (index), cell_hash, the requested extras."""
    rows = [
        {
            "request": i,
            "cell_hash": c["cell"],
            "diagnostics_req": bool(c["extras"]["diagnostics"]),
            "mechanism_req": bool(c["extras"]["mechanism"]),
            "log_every_req": int(c["extras"]["log_every"]),
        }
        for i, c in enumerate(selection.selection(name))
    ]
    return pd.DataFrame(
        rows,
        columns=["request", "cell_hash", "diagnostics_req", "mechanism_req", "log_every_req"],
    )


def runs(
    engine: Engine,
    sweep: str | None = None,
    status: str | Iterable[str] | None = "completed",
) -> pd.DataFrame:
    """One row per stored run (no dedup), ``config``/``overrides`` parsed from JSON.

    ``sweep``: an artefact id: the runs that serve one of its requested cells (any sweep);
    None: every run. ``status=None`` returns every status; a string or an iterable selects
    those. The columns are the stored ones (``sweep``, ``algorithm``, ... as the computing
    job named them; ``config`` = the resolved config).
    """
    where, params = [], {}
    if status is not None:
        where.append("status IN :statuses")
        params["statuses"] = [status] if isinstance(status, str) else list(status)
    # quoted: PostgreSQL folds unquoted identifiers to lower case (the K, H, V columns)
    quoted = ", ".join('"' + c + '"' for c in _RUN_COLUMNS)
    if sweep is None:
        sql = f"SELECT {quoted} FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        stmt = text(sql + " ORDER BY id")
        if "statuses" in params:
            stmt = stmt.bindparams(bindparam("statuses", expanding=True))
        with engine.connect() as conn:
            df = pd.read_sql(stmt, conn, params=params, parse_dates=_DATES)
    else:
        requests = _requests(sweep)
        cells = sorted(set(requests["cell_hash"]))
        sql = f"SELECT {quoted} FROM runs WHERE cell_hash IN :cells"
        if where:
            sql += " AND " + " AND ".join(where)
        df = _read_chunked(engine, sql, "cells", cells, params, parse_dates=_DATES)
        served = _satisfying(
            df[["id", "cell_hash", "diagnostics", "mechanism", "log_every"]], requests
        )
        df = df[df["id"].isin(set(served["id"]))].sort_values("id").reset_index(drop=True)
    for col in ("config", "overrides"):
        df[col] = [json.loads(v) if isinstance(v, str) else v for v in df[col]]
    return df


def sweep_counts(engine: Engine) -> pd.DataFrame:
    """Per sweep: number of runs in each status (columns completed, failed, running, ...).

    A run counts for every sweep that asked for it (``sweep_runs``); a run no sweep is
    linked to (imported, or written by hand) counts for the sweep that computed it.
    """
    sql = text(
        "SELECT sr.sweep AS sweep, r.status AS status, COUNT(*) AS n "
        "FROM sweep_runs sr JOIN runs r ON r.id = sr.run_id GROUP BY sr.sweep, r.status "
        "UNION ALL "
        "SELECT r.sweep AS sweep, r.status AS status, COUNT(*) AS n FROM runs r "
        "WHERE NOT EXISTS (SELECT 1 FROM sweep_runs sr WHERE sr.run_id = r.id) "
        "GROUP BY r.sweep, r.status"
    )
    with engine.connect() as conn:
        df = pd.read_sql(sql, conn)
    table = df.pivot_table(index="sweep", columns="status", values="n", aggfunc="sum", fill_value=0)
    for col in ("completed", "failed", "running"):
        if col not in table.columns:
            table[col] = 0
    rest = sorted(c for c in table.columns if c not in ("completed", "failed", "running"))
    table = table[["completed", "failed", "running", *rest]].astype(int)
    table.columns.name = None
    return table.reset_index()


_warned: set[tuple[str, str, int]] = set()
_KEPT = ["run_id", "seed", "finished_at", *CELL, *selection.CONFIG_CELL, "request"]


def _warn_diverged(engine: Engine, art, cells: list[str], stored: pd.DataFrame) -> None:
    """A seed whose run diverged (non-finite loss or metric) has no completed result and is
    not in the means: say so, once per artefact, so n_seeds is never silently short."""
    diverged = _read_chunked(
        engine,
        "SELECT id AS run_id, cell_hash, seed FROM runs "
        "WHERE status = 'diverged' AND cell_hash IN :cells",
        "cells",
        cells,
    )
    done = set(zip(stored["cell_hash"], stored["seed"], strict=True))
    left_out = diverged[
        [(c, s) not in done for c, s in zip(diverged["cell_hash"], diverged["seed"], strict=True)]
    ]
    if left_out.empty:
        return
    key = (display_url(engine), str(art), -len(left_out))
    if key not in _warned:
        _warned.add(key)
        log.warning(
            "artefact '%s': %d seed(s) diverged and are not in the means (runs %s; "
            "python -m tpo_sweeps status shows where)",
            art,
            left_out["seed"].nunique(),
            id_ranges(left_out["run_id"]),
        )


def kept_seeds(engine: Engine, sweep: str) -> pd.DataFrame:
    """The (run_id, seed) pairs that count for the artefact ``sweep``, one per requested cell
    and seed, labelled with the requested cell's values.

    Completed runs only; per requested cell and seed the most recently finished run wins (see
    the module docstring). Columns: run_id, seed, finished_at, ``CELL`` (``sweep`` = the
    artefact id), ``selection.CONFIG_CELL`` and ``request`` (the requested cell's index in
    the preset's launch order; one run may appear under several).
    """
    art = selection.parse(sweep)
    requests = _requests(art)
    cells = sorted(set(requests["cell_hash"]))
    stored = _read_chunked(
        engine,
        "SELECT id AS run_id, cell_hash, seed, diagnostics, mechanism, log_every, finished_at "
        "FROM runs WHERE status = 'completed' AND cell_hash IN :cells",
        "cells",
        cells,
        parse_dates={"finished_at": {"format": "ISO8601"}},
    )
    _warn_diverged(engine, art, cells, stored)
    pairs = _satisfying(stored, requests)
    if pairs.empty:
        return pd.DataFrame(columns=_KEPT)
    # a completed run without a finish time (not written by tpo-sweeps) loses every tie
    pairs = pairs.sort_values(["finished_at", "run_id"], kind="stable", na_position="first")
    kept = pairs.drop_duplicates(["request", "seed"], keep="last")
    dropped = len(pairs) - len(kept)
    if dropped:
        gone = sorted(set(pairs["run_id"]) - set(kept["run_id"]))
        key = (display_url(engine), str(art), dropped)
        if key not in _warned:
            _warned.add(key)
            log.warning(
                "artefact '%s': dropped %d (run, seed) result(s) superseded by a more recently "
                "finished completed run of the same cell and seed (%d run(s) not used: %s)",
                art,
                dropped,
                len(gone),
                gone,
            )
    labels = pd.DataFrame(
        [{"request": i, **c["labels"]} for i, c in enumerate(selection.selection(art))]
    ).assign(sweep=str(art))
    kept = kept[["run_id", "seed", "finished_at", "request"]].merge(labels, on="request")
    return kept[_KEPT].sort_values(["request", "seed", "run_id"]).reset_index(drop=True)


def no_runs(engine: Engine, sweep: str) -> str:
    """The message for an artefact with no completed runs of its cells."""
    art = selection.parse(sweep)
    return (
        f"no completed runs for artefact '{art}' (the cells of {art.describe()}) in "
        f"{display_url(engine)}"
    )


def kept_of_task(engine: Engine | None, sweep: str, task: str) -> pd.DataFrame:
    """``kept_seeds`` of an artefact whose builder reads one task's runs; ``AnalysisError``
    when there is no database, no completed run, or a run of another task."""
    if engine is None:
        raise AnalysisError(f"artefact '{sweep}' needs a results database")
    kept = kept_seeds(engine, sweep)
    if kept.empty:
        raise AnalysisError(no_runs(engine, sweep))
    wrong = sorted(set(kept["task"]) - {task})
    if wrong:
        raise AnalysisError(f"artefact '{sweep}' selects runs of task {wrong}, not '{task}'")
    return kept


def id_ranges(ids: Iterable[int]) -> str:
    """``1–4, 7, 9–10``: run ids for a Markdown line (one run per seed makes long lists)."""
    out: list[str] = []
    xs = sorted({int(i) for i in ids})
    start = prev = None
    for x in [*xs, None]:
        if prev is not None and x == prev + 1:
            prev = x
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}–{prev}")
        start = prev = x
    return ", ".join(out)


def runs_line(engine: Engine, sweep: str, info: pd.DataFrame, run_ids: Sequence[int]) -> str:
    """The Markdown line that says which runs an artefact used and where they came from."""
    art = selection.parse(sweep)
    n_all = len(runs(engine, sweep=art, status=None))
    used = info.loc[list(run_ids)]
    commits = sorted({str(c)[:10] for c in used["git_commit"] if c})
    computed = used["sweep"].value_counts()
    by = ", ".join(f"{s} ({n})" for s, n in sorted(computed.items()))
    return (
        f"- database: `{display_url(engine)}`; selection: the cells of `{art.describe()}`; "
        f"runs used: {len(used)} (one per cell and seed; ids {id_ranges(run_ids)}) of "
        f"{n_all} matching in any status; computed by sweeps: {by or 'none'}; "
        f"git commits: {', '.join(commits) or 'unknown'}"
    )


# --------------------------------------------------------------------------------------------
# Metrics and summaries
# --------------------------------------------------------------------------------------------


def metrics(engine: Engine, sweep: str, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Tidy per-step metrics of the artefact ``sweep`` after the selection rule.

    Columns: run_id, sweep, algorithm, task, seed, step, name, value, then ``PROMOTED`` and
    ``request``. ``names`` restricts the metric names read (cheaper: Fig 4 has 1M rows).
    """
    return _read(engine, sweep, "metrics", ["step", "name", "value"], names)


def summaries(engine: Engine, sweep: str, names: Iterable[str] | None = None) -> pd.DataFrame:
    """Tidy per-seed summaries (``final_error``, ...) of the artefact ``sweep`` after the
    selection rule. Columns: run_id, sweep, algorithm, task, seed, name, value, then
    ``PROMOTED`` and ``request``."""
    return _read(engine, sweep, "summaries", ["name", "value"], names)


def _read(
    engine: Engine, sweep: str, table: str, cols: list[str], names: Iterable[str] | None
) -> pd.DataFrame:
    out_cols = [*_TIDY_HEAD, *cols, *PROMOTED, "request"]
    kept = kept_seeds(engine, sweep)
    if kept.empty:
        return pd.DataFrame(columns=out_cols)
    sql = f"SELECT run_id, {', '.join(cols)} FROM {table} WHERE run_id IN :ids"
    params: dict = {}
    if names is not None:
        sql += " AND name IN :names"
        params["names"] = list(names)
    ids = sorted(int(i) for i in kept["run_id"].unique())
    df = _read_chunked(engine, sql, "ids", ids, params)
    df["value"] = df["value"].astype(float)  # NULL (a non-finite value) -> NaN
    # one stored run may serve several requested cells: its rows appear under each
    df = df.merge(kept.drop(columns="finished_at"), on="run_id", how="inner")
    df["name"] = df["name"].astype("category")
    return df[out_cols]


# --------------------------------------------------------------------------------------------
# What a database holds
# --------------------------------------------------------------------------------------------


def present(engine: Engine, presets: Iterable[str]) -> list[selection.Artefact]:
    """The artefacts (preset x scale) for which at least one requested cell has a completed
    serving run. Scales that select like ``paper`` (``reduced``) are not listed again. A
    preset is only expanded when some completed run has its task and episode count at that
    scale (one composition each, cached), so a database of smoke runs costs no paper-scale
    expansion."""
    with engine.connect() as conn:
        shapes = {
            (str(t), int(s))
            for t, s in conn.execute(
                text("SELECT DISTINCT task, steps FROM runs WHERE status = 'completed'")
            )
        }
        stored = pd.read_sql(
            text(
                "SELECT DISTINCT cell_hash, diagnostics, mechanism, log_every FROM runs "
                "WHERE status = 'completed'"
            ),
            conn,
        )
    out = []
    for preset in presets:
        for scale in selection.scales():
            if scale != selection.PAPER and selection.selects_like_paper(scale):
                continue
            p = selection.primary(preset, scale)
            fixed = not any(k in ("task", "task.steps") for k in p["swept"]) and not p["campaign"]
            if fixed and (p["task"], p["steps"]) not in shapes:
                continue
            art = selection.Artefact(preset, scale)
            if not _satisfying(stored, _requests(art)).empty:
                out.append(art)
    return out
