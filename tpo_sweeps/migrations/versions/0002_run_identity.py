"""v1 -> v2: runs keyed by what they compute, one row per seed, sweeps as membership.

Revision ID: 0002
Revises: 0001

A v1 ``runs`` row is one job: a config hash that includes the sweep name, seeds ``seed ..
seed + num_seeds - 1``, and metrics and summaries with a ``seed`` column. A v2 row is one
(cell, seed, extras) (``tpo_sweeps.identity``). For every v1 run:

* its stored config is read back as a typed config (fields added since take their defaults)
  and identified exactly as the current code identifies a request: cell hash, extras and, per
  seed, the run key. ``runs.config`` becomes the resolved config without ``db``, as
  ``store.stored_config`` writes it, and ``overrides`` get a ``db.url``'s password masked,
  as ``store.run_row`` writes them; the promoted columns (``sweep``, ``algorithm``,
  ``match``, ...) keep the v1 job's names.
* it becomes ``num_seeds`` runs, one per seed, with its status, times, overrides, provenance
  and error; ``job_id`` ``v1-<config hash prefix>`` (its v1 job, the same whenever and wherever
  it is migrated), ``job_seeds`` = ``num_seeds``, and the job's ``compile_s``/``run_s``.
* its ``sweep`` becomes a ``sweep_runs`` row of each of those runs.
* its metrics and summaries move to the run of their seed, without the seed column.

**Duplicates.** Two v1 runs hold the same (cell, seed, extras) when one cell was asked for
under two sweep names, a sequence-grouped method under both ``task.match`` values, a cell
rerun with ``debug.fail``, or two seed ranges overlap. Per run key one v1 seed is kept: the
completed one that finished last (none completed: the one that finished last, else the newest
row), and every sweep that asked for any of them is linked to it. The superseded seeds' rows
are dropped: their run row (its provenance and error text) and their metric and summary rows.
They hold no information the kept run lacks: the same cell and seed compute the same numbers,
so a superseded completed seed is a copy of the kept results, and a failed or pending one
holds less. A copy up to rounding: the v1 code ran a seed in one vmapped program with the
job's other seeds, and XLA may round a batch of another size differently (the test database:
one metric value of 80 differs, by 6e-6 relative). The migration logs how many seeds and rows
it dropped, compares every superseded completed seed's values with the kept seed's and warns,
with the count, the largest relative difference and the v1 (run, seed)s, when any differ; the
kept results are the most recent. Metric or summary rows of a seed outside their job's range,
which v1 never wrote, would be counted and logged as dropped too; nothing else is dropped.

How: the v1 tables are renamed (no data copied, and no table with children dropped: with
SQLite's foreign keys on, dropping ``runs`` deletes its metrics by cascade), the v2 tables
created, the rows copied in SQL through a (v1 run, seed) -> run table, and the v1 tables
dropped. One-way: the superseded duplicates cannot be restored, so there is no downgrade.
"""

import datetime as dt
import logging
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("tpo_sweeps.migrations")


def upgrade() -> None:
    bind = op.get_bind()
    _set_aside_v1(bind)
    tables = _create_v2()
    seed_runs = op.create_table(
        "v1_seed_runs",
        sa.Column("v1_run_id", sa.Integer(), primary_key=True),
        sa.Column("seed", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kept", sa.Boolean(), nullable=False),
    )
    _migrate_rows(bind, tables, seed_runs)
    for table in ("v1_seed_runs", "metrics_v1", "summaries_v1", "runs_v1"):
        op.drop_table(table)
    op.execute(sa.text("UPDATE schema_info SET version = 2"))


def downgrade() -> None:
    raise NotImplementedError("v2 -> v1 is one-way: superseded duplicate runs were dropped")


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------


def _set_aside_v1(bind) -> None:
    """Rename the v1 tables to ``<table>_v1``, freeing the names the v2 tables take."""
    # index names are per schema, not per table: the v2 runs table takes some of them back
    for column in ("config_hash", "sweep", "algorithm", "task", "status"):
        op.drop_index(f"ix_runs_{column}", table_name="runs")
    for table in ("runs", "metrics", "summaries"):
        op.rename_table(table, f"{table}_v1")
    if bind.dialect.name == "postgresql":
        # PostgreSQL keeps the v1 names of keys and sequences, and would name the v2 ones
        # runs_pkey1, metrics_run_id_fkey1, ...: give the old ones the _v1 names instead
        insp = sa.inspect(bind)
        for table in ("runs", "metrics", "summaries"):
            old = f"{table}_v1"
            keys = [insp.get_pk_constraint(old)["name"]]
            keys += [fk["name"] for fk in insp.get_foreign_keys(old)]
            for name in keys:
                new = old + name[len(table) :] if name.startswith(table) else f"{old}_{name}"
                op.execute(f'ALTER TABLE {old} RENAME CONSTRAINT "{name}" TO "{new}"')
        seq = bind.execute(sa.text("SELECT pg_get_serial_sequence('runs_v1', 'id')")).scalar()
        if seq is not None:
            op.execute(f"ALTER SEQUENCE {seq} RENAME TO runs_v1_id_seq")


def _to_run() -> sa.ForeignKey:
    return sa.ForeignKey("runs.id", ondelete="CASCADE")


def _create_v2() -> dict[str, sa.Table]:
    """The v2 tables, frozen as the v2 models declare them."""
    runs = op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_key", sa.String(64), nullable=False, unique=True),
        sa.Column("cell_hash", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("diagnostics", sa.Boolean(), nullable=False),
        sa.Column("mechanism", sa.Boolean(), nullable=False),
        sa.Column("log_every", sa.Integer(), nullable=False),
        sa.Column("sweep", sa.String(200), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("optimizer", sa.String(64), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("K", sa.Integer(), nullable=True),
        sa.Column("eta", sa.Float(), nullable=True),
        sa.Column("H", sa.Integer(), nullable=True),
        sa.Column("V", sa.Integer(), nullable=True),
        sa.Column("match", sa.String(32), nullable=True),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("job_seeds", sa.Integer(), nullable=True),
        sa.Column("compile_s", sa.Float(), nullable=True),
        sa.Column("run_s", sa.Float(), nullable=True),
        sa.Column("host", sa.String(200), nullable=True),
        sa.Column("device", sa.String(200), nullable=True),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("git_dirty", sa.Boolean(), nullable=True),
        sa.Column("versions", sa.JSON(), nullable=True),
        sa.Column("slurm_job_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    for column in ("cell_hash", "sweep", "algorithm", "task", "status", "job_id"):
        op.create_index(f"ix_runs_{column}", "runs", [column])
    sweep_runs = op.create_table(
        "sweep_runs",
        sa.Column("sweep", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.Integer(), _to_run(), primary_key=True),
    )
    op.create_index("ix_sweep_runs_run_id", "sweep_runs", ["run_id"])
    metrics = op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), _to_run(), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
    )
    summaries = op.create_table(
        "summaries",
        sa.Column("run_id", sa.Integer(), _to_run(), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
    )
    return {"runs": runs, "sweep_runs": sweep_runs, "metrics": metrics, "summaries": summaries}


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------

# v1 run columns a v2 run keeps as they are (the promoted ones, times, provenance, error)
_KEPT = (
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
    "status",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "compile_s",
    "run_s",
    "host",
    "device",
    "git_commit",
    "git_dirty",
    "versions",
    "slurm_job_id",
    "error",
)


def _migrate_rows(bind, tables: dict[str, sa.Table], seed_runs: sa.Table) -> None:
    meta = sa.MetaData()
    old = {
        t: sa.Table(f"{t}_v1", meta, autoload_with=bind) for t in ("runs", "metrics", "summaries")
    }
    v1_runs = bind.execute(sa.select(old["runs"]).order_by(old["runs"].c.id)).mappings().all()
    if not v1_runs:
        return

    # run key -> the v1 (run, seed)s that computed it: usually one, several for duplicates
    claims: dict[str, list[tuple]] = defaultdict(list)
    rows: dict[tuple, dict] = {}  # (v1 run id, seed) -> its v2 run row
    for v1 in v1_runs:
        ident, stored = _identify(v1)
        overrides = _masked(v1["overrides"])
        for seed in range(v1["seed"], v1["seed"] + v1["num_seeds"]):
            key = ident.run_key(seed)
            claims[key].append((v1, seed))
            rows[v1["id"], seed] = {
                **{c: v1[c] for c in _KEPT},
                "overrides": overrides,
                "run_key": key,
                "cell_hash": ident.cell,
                "seed": seed,
                **ident.extras,
                "config": stored,
                "job_id": f"v1-{v1['config_hash'][:29]}",
                "job_seeds": v1["num_seeds"],
            }
    kept = {
        key: (v1["id"], seed)
        for key, group in claims.items()
        for v1, seed in [max(group, key=_precedence)]
    }
    winners = sorted(kept.values())  # numbered in the order of their v1 runs, then seeds
    bind.execute(sa.insert(tables["runs"]), [rows[w] for w in winners])
    run_id = dict(bind.execute(sa.select(tables["runs"].c.run_key, tables["runs"].c.id)).all())

    bind.execute(
        sa.insert(seed_runs),
        [
            {
                "v1_run_id": v1["id"],
                "seed": seed,
                "run_id": run_id[key],
                "kept": kept[key] == (v1["id"], seed),
            }
            for key, group in claims.items()
            for v1, seed in group
        ],
    )
    links = {(v1["sweep"], run_id[key]) for key, group in claims.items() for v1, _ in group}
    bind.execute(
        sa.insert(tables["sweep_runs"]), [{"sweep": s, "run_id": i} for s, i in sorted(links)]
    )
    moved = {
        t: _move(bind, old[t], tables[t], seed_runs, cols)
        for t, cols in (("metrics", ["name", "step", "value"]), ("summaries", ["name", "value"]))
    }

    seeds = sum(len(group) for group in claims.values())
    log.info(
        "v1 -> v2: %d v1 runs (%d seeds) -> %d runs, %d sweep links; "
        "%d metric and %d summary rows moved",
        len(v1_runs),
        seeds,
        len(kept),
        len(links),
        moved["metrics"][0],
        moved["summaries"][0],
    )
    if seeds > len(kept):
        log.info(
            "v1 -> v2: %d seeds duplicated another v1 run's (same cell, seed and extras) and "
            "were superseded by it, with their %d metric and %d summary rows; their sweeps "
            "link to the kept run",
            seeds - len(kept),
            moved["metrics"][1],
            moved["summaries"][1],
        )
        _warn_if_duplicates_differ(bind, old, seed_runs)
    stray = {t: moved[t][2] for t in moved if moved[t][2]}
    if stray:
        log.warning("v1 -> v2: rows of no seed of their v1 job were dropped: %s", stray)


def _identify(v1) -> tuple:
    """The identity of a v1 run's config, and the config as v2 stores it."""
    from tpo_sweeps import config, db, identity, store

    try:
        ident = identity.identify(config.from_dict(v1["config"]))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise db.DatabaseUnavailable(
            f"v1 run {v1['id']} (sweep {v1['sweep']}): this tpo-sweeps cannot read its stored "
            f"config ({reason}); nothing was migrated"
        ) from None
    return ident, store.stored_config(ident)


def _masked(overrides: list[str]) -> list[str]:
    """The overrides as v2 stores them: a ``db.url``'s password masked."""
    from tpo_sweeps import store

    return [store.mask_override(o) for o in overrides]


def _precedence(claim: tuple) -> tuple:
    """Which of several v1 (run, seed)s of one run key is kept: the largest."""
    v1, _ = claim
    return (v1["status"] == "completed", v1["finished_at"] or dt.datetime.min, v1["id"])


def _move(bind, old: sa.Table, new: sa.Table, seed_runs: sa.Table, cols: list[str]) -> tuple:
    """Copy a v1 results table's rows of kept seeds to ``new`` under their run; returns the
    rows (moved, superseded, of no seed) of ``old``."""
    on = sa.and_(seed_runs.c.v1_run_id == old.c.run_id, seed_runs.c.seed == old.c.seed)
    rows = sa.select(seed_runs.c.run_id, *(old.c[c] for c in cols)).select_from(
        old.join(seed_runs, on)
    )
    bind.execute(sa.insert(new).from_select(["run_id", *cols], rows.where(seed_runs.c.kept)))

    def count(stmt) -> int:
        return bind.execute(sa.select(sa.func.count()).select_from(stmt.subquery())).scalar()

    total = count(sa.select(old.c.run_id))
    moved = count(sa.select(new.c.run_id))
    superseded = count(rows.where(sa.not_(seed_runs.c.kept)))
    return moved, superseded, total - moved - superseded


def _warn_if_duplicates_differ(bind, old: dict[str, sa.Table], seed_runs: sa.Table) -> None:
    """Compare every superseded completed seed's metrics and summaries with the kept seed's,
    and say how many values differ and by how much (they should not, beyond rounding)."""
    found = {
        t: _differing_values(bind, old[t], seed_runs, old["runs"], keys)
        for t, keys in (("metrics", ["name", "step"]), ("summaries", ["name"]))
    }
    rows = found["metrics"] + found["summaries"]
    if not rows:
        return
    seeds = sorted({(r.v1_run_id, r.seed) for r in rows})
    log.warning(
        "v1 -> v2: %d superseded completed seeds differ from the kept run of their cell and "
        "seed in %d metric and %d summary values (largest relative difference %.2g): another "
        "seed batch size or other code rounds differently; the most recent results are kept. "
        "v1 (run, seed): %s",
        len(seeds),
        len(found["metrics"]),
        len(found["summaries"]),
        max(_relative(r.kept_value, r.value) for r in rows),
        ", ".join(map(str, seeds[:20])) + (" ..." if len(seeds) > 20 else ""),
    )


def _differing_values(bind, table, seed_runs, runs_v1, keys: list[str]) -> list:
    """Rows of ``table`` (a v1 results table) of superseded completed seeds whose value
    differs from the kept seed's row of the same name (and step)."""
    lost, won = seed_runs.alias("lost"), seed_runs.alias("won")
    mine, theirs = table.alias("mine"), table.alias("theirs")
    stmt = (
        sa.select(lost.c.v1_run_id, lost.c.seed, mine.c.value, theirs.c.value.label("kept_value"))
        .select_from(
            mine.join(lost, sa.and_(lost.c.v1_run_id == mine.c.run_id, lost.c.seed == mine.c.seed))
            .join(runs_v1, runs_v1.c.id == lost.c.v1_run_id)
            .join(won, sa.and_(won.c.run_id == lost.c.run_id, won.c.kept))
            .join(
                theirs,
                sa.and_(
                    theirs.c.run_id == won.c.v1_run_id,
                    theirs.c.seed == won.c.seed,
                    *(theirs.c[k] == mine.c[k] for k in keys),
                ),
            )
        )
        .where(
            sa.not_(lost.c.kept),
            runs_v1.c.status == "completed",
            mine.c.value.is_distinct_from(theirs.c.value),
        )
    )
    return bind.execute(stmt).all()


def _relative(a: float | None, b: float | None) -> float:
    if a is None or b is None:  # a non-finite value (stored as NULL) against a finite one
        return float("inf")
    return abs(a - b) / max(abs(a), abs(b), 1e-300)
