"""v2 -> v3: the ``diverged`` status and the step where a run diverged.

Revision ID: 0003
Revises: 0002

A run whose loss, metrics or training state went non-finite is stored with its results and
status ``diverged`` (a new value of the free-text ``runs.status``, which has no CHECK
constraint) and ``runs.diverged_step``: the first step at which a logged metric was non-finite
(NULL when only the final training state was). The column is nullable and every existing row
keeps NULL: no run was marked diverged before this revision (v2 stored such a run as
completed with NULL values; ``diverged_step`` stays NULL for it, and rerunning its cell with
``skip_completed=false`` re-marks it). SQLite adds the column in place (``ALTER TABLE ADD
COLUMN``): ``runs`` is not rebuilt, so its metrics are not touched.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("diverged_step", sa.Integer(), nullable=True))
    op.execute(sa.text("UPDATE schema_info SET version = 3"))


def downgrade() -> None:
    # v2 code would read a diverged run as unknown status; make it a failed one first
    op.execute(sa.text("UPDATE runs SET status = 'failed' WHERE status = 'diverged'"))
    # in place (SQLite >= 3.35): a batch operation would rebuild runs and, with foreign keys
    # on, delete every metric by cascade
    op.execute(sa.text("ALTER TABLE runs DROP COLUMN diverged_step"))
    op.execute(sa.text("UPDATE schema_info SET version = 2"))
