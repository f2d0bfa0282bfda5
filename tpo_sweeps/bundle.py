"""Portable run bundles: ``python -m tpo_sweeps export`` and ``python -m tpo_sweeps import``.

``export --db URL --out DIR [--sweep S] [--algorithm A] [--task T] [--cell PREFIX]`` writes
every completed run that matches (each filter may repeat: any of its values) as one Parquet
file, ``DIR/<cell_hash>/<run_key>.parquet``. A file is named by the run's identity
(``tpo_sweeps.identity``), so it is immutable: an existing file is left alone, and exporting
twice, or from two machines into one folder, writes each run once. One folder per cell holds
that cell's seeds, the unit an analysis averages over (``pandas.read_parquet(DIR/<cell>)``
reads them all, and a shell glob on a hash prefix picks cells), whichever machine computed
each seed; and no folder grows large: the paper campaign is 153 folders of 10-100 runs
instead of 3,290 files in one.

``import DIR_OR_FILES... --db URL`` loads every ``*.parquet`` under the given folders (any
layout) into a database, each run in one transaction with ``merge.put_run``, keyed by run
key like ``merge``: a run completed there already is left alone and only gains the bundle's
sweep links, so importing twice changes nothing and bundles of two machines give the union.
Every file is read and checked before anything is written (``load``): a file that is not a
readable Parquet file, not a bundle, of an unknown bundle format or schema version, or whose
name, run key and contents disagree stops the import with one line naming it.

A bundle is a frame pandas reads as it is, ``pandas.read_parquet(path)`` (or a whole cell
folder, or ``DIR``), in long format, one row per stored number:

=========== ======== ==========================================================
column      type     meaning
=========== ======== ==========================================================
kind        string   ``metric`` (a logged curve point) or ``summary``
name        string   e.g. ``error``, ``final_error``
step        int64    the step of a metric; null for a summary (pandas: float, NaN)
value       float64  null where the database stores NULL (a non-finite value)
run_key     string   the run (constant in a file; tells runs apart in a folder)
cell_hash   string   its cell
seed        int64    its seed
=========== ======== ==========================================================

Long rather than one column per metric because metrics may be logged at different steps
(as ``metrics`` stores them); ``df[df.kind == "metric"].pivot(index="step", columns="name",
values="value")`` gives the wide curve. The run itself is in the Parquet schema's key-value
metadata under ``tpo_sweeps.bundle`` (``json.loads(pyarrow.parquet.read_schema(path)
.metadata[b"tpo_sweeps.bundle"])``, or ``load``): ``format``, ``format_version``
(``FORMAT_VERSION``), ``schema_version`` (``db.SCHEMA_VERSION`` of the exporting database),
``run`` (every column of its ``runs`` row but the local ``id``: identity, promoted columns,
resolved config, overrides with a URL's password masked, provenance and job, times as ISO
8601 UTC), ``sweeps`` (every sweep linked to it) and ``rows`` (how many metric and summary
rows the file holds). Pages carry CRC checksums, which the import verifies.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text, or_, select
from sqlalchemy.engine import Connection, Engine

from tpo_sweeps import db
from tpo_sweeps import identity as I
from tpo_sweeps.merge import RUN_COLUMNS, put_run

FORMAT = "tpo-sweeps run bundle"
FORMAT_VERSION = 1
META_KEY = b"tpo_sweeps.bundle"
SUFFIX = ".parquet"
METRIC, SUMMARY = "metric", "summary"

SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("name", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("run_key", pa.string()),
        ("cell_hash", pa.string()),
        ("seed", pa.int64()),
    ]
)

# 6-8 kB of data for 1000 steps × 2 metrics, not 17-23 kB with pyarrow's defaults: values are
# float32 results in float64 columns, so byte-stream-split leaves half their bytes zero for
# zstd; steps are deltas of one; the string and seed columns are one dictionary entry each
WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["kind", "name", "run_key", "cell_hash", "seed"],
    "column_encoding": {"value": "BYTE_STREAM_SPLIT", "step": "DELTA_BINARY_PACKED"},
    "write_page_checksum": True,
}


class BundleError(ValueError):
    """A file that cannot be imported; the message is the one-line reason."""


@dataclass(frozen=True)
class Bundle:
    """One run read from a bundle file and checked (``load``)."""

    path: Path
    meta: dict[str, Any]  # the metadata document, as written
    run: dict[str, Any]  # the run row (``merge.RUN_COLUMNS``), in database types
    sweeps: list[str]
    metrics: list[dict[str, Any]]  # name, step, value
    summaries: list[dict[str, Any]]  # name, value


def bundle_path(out: Path, cell_hash: str, run_key: str) -> Path:
    return out / cell_hash / f"{run_key}{SUFFIX}"


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------


def select_runs(
    conn: Connection,
    sweeps: list[str] | None = None,
    algorithms: list[str] | None = None,
    tasks: list[str] | None = None,
    cells: list[str] | None = None,
    statuses: tuple[str, ...] = (db.COMPLETED,),
) -> list[Any]:
    """The run rows of ``statuses`` that match every given filter (any of its values);
    ``cells`` are cell hash prefixes."""
    R, L = db.Run, db.SweepRun
    stmt = select(R.__table__).where(R.status.in_(statuses)).order_by(R.cell_hash, R.run_key)
    if sweeps:
        stmt = stmt.where(R.id.in_(select(L.run_id).where(L.sweep.in_(sweeps))))
    if algorithms:
        stmt = stmt.where(R.algorithm.in_(algorithms))
    if tasks:
        stmt = stmt.where(R.task.in_(tasks))
    if cells:
        stmt = stmt.where(or_(*(R.cell_hash.startswith(c, autoescape=True) for c in cells)))
    return list(conn.execute(stmt).mappings())


def sweeps_of(conn: Connection, run_ids: list[int]) -> dict[int, list[str]]:
    L = db.SweepRun
    out: dict[int, list[str]] = {}
    for i in range(0, len(run_ids), 500):  # stay under bound-parameter limits
        rows = conn.execute(select(L.run_id, L.sweep).where(L.run_id.in_(run_ids[i : i + 500])))
        for row in rows:
            out.setdefault(row.run_id, []).append(row.sweep)
    return {k: sorted(v) for k, v in out.items()}


def _to_json(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


# user:password@ in a URL, also as Hydra writes a sweep's overrides (colons escaped: \:)
_PASSWORD = re.compile(r"(\\?://[^/@:\\]*\\?:)[^/@]*@")


def _value(v: float | None) -> float | None:
    # the database stores a non-finite value as NULL (db.finish_runs); PostgreSQL could still
    # hold a NaN written by other means, and it must read back the same from any database
    return None if v is None or not math.isfinite(v) else float(v)


def run_table(conn: Connection, run: Any, sweeps: list[str]) -> pa.Table:
    """The bundle of one run row (its frame, with the metadata document)."""
    M, S = db.Metric, db.Summary
    metrics = conn.execute(
        select(M.name, M.step, M.value).where(M.run_id == run["id"]).order_by(M.name, M.step)
    ).all()
    summaries = conn.execute(
        select(S.name, S.value).where(S.run_id == run["id"]).order_by(S.name)
    ).all()
    n, m = len(metrics), len(summaries)
    # a bundle leaves the machine: a db.url=... override may hold the database's password
    overrides = [_PASSWORD.sub(r"\1***@", o) for o in run["overrides"] or []]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_version": db.SCHEMA_VERSION,
        "run": {k: _to_json(run[k]) for k in RUN_COLUMNS} | {"overrides": overrides},
        "sweeps": sweeps or [run["sweep"]],
        "rows": {METRIC: n, SUMMARY: m},
    }
    columns = {
        "kind": [METRIC] * n + [SUMMARY] * m,
        "name": [r.name for r in metrics] + [r.name for r in summaries],
        "step": [int(r.step) for r in metrics] + [None] * m,
        "value": [_value(r.value) for r in metrics] + [_value(r.value) for r in summaries],
        "run_key": [run["run_key"]] * (n + m),
        "cell_hash": [run["cell_hash"]] * (n + m),
        "seed": [int(run["seed"])] * (n + m),
    }
    table = pa.table(columns, schema=SCHEMA)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})


def _write(table: pa.Table, path: Path) -> None:
    meta = table.schema.metadata
    table = table.replace_schema_metadata(None)
    # without pyarrow's own copy of the schema (ARROW:schema, which would hold the metadata
    # document again, base64-encoded): the plain types need no help to read back
    if hasattr(pq.ParquetWriter, "add_key_value_metadata"):  # pyarrow >= 16
        with pq.ParquetWriter(path, table.schema, store_schema=False, **WRITE_OPTIONS) as w:
            w.write_table(table)
            w.add_key_value_metadata(meta)
    else:
        pq.write_table(table.replace_schema_metadata(meta), path, **WRITE_OPTIONS)


def write_new(table: pa.Table, path: Path) -> bool:
    """Write ``table`` to ``path`` unless a file is there; True if this call wrote it.

    The file appears whole or not at all (written aside, then hard-linked into place, which
    fails rather than replaces when another exporter got there first)."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # a dot-name without the suffix: neither import nor pyarrow's dataset reader picks it up
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        _write(table, tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: the exists check above must do
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def export(
    engine: Engine,
    out: Path,
    sweeps: list[str] | None = None,
    algorithms: list[str] | None = None,
    tasks: list[str] | None = None,
    cells: list[str] | None = None,
) -> Counter:
    """Write a bundle per matching completed run under ``out``; counts ``written`` and
    ``existing`` (a file of that name was there, and was left alone)."""
    counts: Counter = Counter()
    with engine.connect() as conn:
        runs = select_runs(conn, sweeps, algorithms, tasks, cells)
        links = sweeps_of(conn, [r["id"] for r in runs])
        for run in runs:
            path = bundle_path(out, run["cell_hash"], run["run_key"])
            if path.exists():  # immutable: do not even read what it would hold
                counts["existing"] += 1
                continue
            table = run_table(conn, run, links.get(run["id"], []))
            counts["written" if write_new(table, path) else "existing"] += 1
    return counts


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------


def find_bundles(paths: Iterable[Path]) -> list[Path]:
    """The files given, and every ``*.parquet`` under the folders given (sorted). Raises
    ``BundleError`` for a path that does not exist."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob(f"*{SUFFIX}") if f.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise BundleError(f"{p}: no such file or folder")
    return out


def _column_value(column, value: Any) -> Any:
    """``value`` from the JSON document as the database column ``column`` holds it; raises
    ``BundleError`` when it is not of the column's type (strictly: ``true`` is no integer and
    ``1`` no boolean, since the run key hashes the extras' JSON)."""
    where = f"run.{column.name}"
    if value is None:
        if not column.nullable:
            raise BundleError(f"{where} is null")
        return None
    kind = column.type
    if isinstance(kind, Boolean):
        ok = isinstance(value, bool)
    elif isinstance(kind, Integer):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(kind, Float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(kind, DateTime):
        try:
            return dt.datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise BundleError(f"{where} is not an ISO 8601 time: {value!r}") from None
    elif isinstance(kind, (String, Text)):
        ok = isinstance(value, str) and (kind.length is None or len(value) <= kind.length)
    elif isinstance(kind, JSON):
        ok = True
    else:  # a column type this reader does not know: the model changed, and so must this
        raise BundleError(f"{where}: no reader for column type {kind!r}")
    if not ok:
        raise BundleError(f"{where} is not a valid {kind!r}: {value!r}"[:300])
    return value


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """The run row of a metadata document, in database types; raises ``BundleError``."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError("not a tpo-sweeps run bundle (its metadata names another format)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"unknown bundle format version {version!r} (this tpo-sweeps reads {FORMAT_VERSION})"
        )
    schema = meta.get("schema_version")
    if not isinstance(schema, int) or schema > db.SCHEMA_VERSION:
        raise BundleError(
            f"results schema version {schema!r}, newer than this tpo-sweeps understands "
            f"({db.SCHEMA_VERSION}): upgrade tpo-sweeps"
        )
    if schema < 2:
        # bundles began with schema 2; a later schema converts older bundles' rows here
        raise BundleError(f"results schema version {schema} has no bundle reader")
    run, sweeps, rows = meta.get("run"), meta.get("sweeps"), meta.get("rows")
    if not isinstance(run, dict):
        raise BundleError("metadata has no run row")
    if schema == 2:  # v3 added runs.diverged_step; a bundle holds completed runs: NULL
        run = {**run, "diverged_step": run.get("diverged_step")}
    if set(run) != set(RUN_COLUMNS):
        missing, extra = sorted(set(RUN_COLUMNS) - set(run)), sorted(set(run) - set(RUN_COLUMNS))
        raise BundleError(
            f"run row does not match schema {schema}: missing {missing}, extra {extra}"
        )
    longest = db.SweepRun.__table__.columns["sweep"].type.length
    if (
        not isinstance(sweeps, list)
        or not sweeps
        or not all(isinstance(s, str) and 0 < len(s) <= longest for s in sweeps)
    ):
        raise BundleError("metadata 'sweeps' is not a list of sweep names")
    if not isinstance(rows, dict) or not all(
        isinstance(rows.get(k), int) for k in (METRIC, SUMMARY)
    ):
        raise BundleError("metadata 'rows' does not give the metric and summary row counts")
    columns = db.Run.__table__.columns
    row = {k: _column_value(columns[k], run[k]) for k in RUN_COLUMNS}
    if row["status"] != db.COMPLETED:
        raise BundleError(f"run status is {row['status']!r}, a bundle holds completed runs")
    if path.name != f"{row['run_key']}{SUFFIX}":
        raise BundleError(f"file name does not match its run_key {row['run_key']}")
    if I.run_key(row["cell_hash"], row["seed"], {k: row[k] for k in I.EXTRAS}) != row["run_key"]:
        raise BundleError(
            "run_key does not match its cell_hash, seed and extras (edited or corrupt)"
        )
    return row


def _check_rows(
    table: pa.Table, run: dict[str, Any], counts: dict[str, int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The metric and summary rows of a bundle's frame; raises ``BundleError``."""
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise BundleError(f"columns are not a bundle's: {table.schema.remove_metadata()}")
    cols = {name: table.column(name).to_pylist() for name in SCHEMA.names}
    name_len = db.Metric.__table__.columns["name"].type.length
    metrics: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    seen: set[tuple] = set()
    for kind, name, step, value, key, cell, seed in zip(*cols.values(), strict=True):
        if (key, cell, seed) != (run["run_key"], run["cell_hash"], run["seed"]):
            raise BundleError("a row's run_key, cell_hash or seed differs from its run row")
        if not isinstance(name, str) or not name or len(name) > name_len:
            raise BundleError(f"a row has an invalid name {name!r}")
        if kind == METRIC and step is not None:
            metrics.append({"name": name, "step": step, "value": value})
        elif kind == SUMMARY and step is None:
            summaries.append({"name": name, "value": value})
        else:
            raise BundleError(f"row {kind!r} {name!r} step {step!r} is neither metric nor summary")
        if (kind, name, step) in seen:  # the database's primary keys would refuse it midway
            raise BundleError(f"{kind} {name!r} step {step!r} appears twice")
        seen.add((kind, name, step))
    found = {METRIC: len(metrics), SUMMARY: len(summaries)}
    if found != {k: counts[k] for k in found}:
        raise BundleError(f"holds {found}, its metadata says {counts} (truncated or edited)")
    return metrics, summaries


def load(path: Path) -> Bundle:
    """Read a bundle file and check it whole; raises ``BundleError`` with the reason."""
    try:
        # verifying the pages' CRCs catches flipped bits that still parse as numbers
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        raise BundleError(f"not a readable Parquet file: {_first_line(e)}") from None
    with pf:
        raw = (pf.schema_arrow.metadata or {}).get(META_KEY)
        if raw is None:
            raise BundleError("not a tpo-sweeps run bundle (no 'tpo_sweeps.bundle' metadata)")
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BundleError("bundle metadata is not valid JSON") from None
        run = _check_meta(meta, path)
        try:
            table = pf.read()
        except (pa.ArrowException, OSError) as e:
            raise BundleError(f"corrupt data: {_first_line(e)}") from None
    metrics, summaries = _check_rows(table, run, meta["rows"])
    return Bundle(path, meta, run, list(meta["sweeps"]), metrics, summaries)


def check(paths: list[Path]) -> list[tuple[Path, str]]:
    """Every file that ``load`` refuses, with the reason."""
    bad = []
    for path in paths:
        try:
            load(path)
        except BundleError as e:
            bad.append((path, str(e)))
    return bad


def import_bundles(paths: list[Path], engine: Engine) -> Counter:
    """Put the run of every bundle file into ``engine`` (``merge.put_run``, one transaction
    per run); counts by outcome. Check them first (``check``): ``load`` raises here only for
    a file changed meanwhile, after the runs before it were imported."""
    counts: Counter = Counter()
    for path in paths:
        try:
            b = load(path)
        except BundleError as e:
            raise BundleError(f"{path}: {e}") from None
        with engine.begin() as conn:
            outcome = put_run(conn, b.run, b.sweeps, lambda b=b: (b.metrics, b.summaries))
        counts["imported" if outcome == db.COMPLETED else outcome] += 1
    return counts


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0].rstrip(".") if text else type(e).__name__
