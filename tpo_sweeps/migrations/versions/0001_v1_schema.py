"""The v1 schema, frozen: the tables tpo-sweeps created before Alembic (commit 2f9ae44).

Revision ID: 0001
Revises: (none)

A database made by that code has ``schema_info.version`` 1 and no ``alembic_version``; it is
stamped at this revision instead of running it. An empty database runs it, then every later
revision. Never edit it: it must keep creating exactly the tables, columns and indexes that
the v1 models created (``tests/test_migrations.py`` compares it with a database the v1 code
wrote), whatever the models say now.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("schema_info", sa.Column("version", sa.Integer(), primary_key=True))
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("sweep", sa.String(200), nullable=False),
        sa.Column("algorithm", sa.String(64), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("optimizer", sa.String(64), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("num_seeds", sa.Integer(), nullable=False),
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
    op.create_index("ix_runs_config_hash", "runs", ["config_hash"], unique=True)
    for column in ("sweep", "algorithm", "task", "status"):
        op.create_index(f"ix_runs_{column}", "runs", [column])
    op.create_table(
        "metrics",
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seed", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
    )
    op.create_table(
        "summaries",
        sa.Column(
            "run_id",
            sa.Integer(),
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seed", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
    )
    op.execute(sa.text("INSERT INTO schema_info (version) VALUES (1)"))


def downgrade() -> None:
    for table in ("summaries", "metrics", "runs", "schema_info"):
        op.drop_table(table)
