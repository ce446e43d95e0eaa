"""Fleet quarantine: boards taken out of rotation (by a failed ``fleet check``, by N fleet jobs
failed in a row, or by hand) and the count of each board's fleet jobs failed in a row.

An entry is active while ``released_at`` is NULL; a partial unique index keeps one active entry
per board even when two hosts sharing a PostgreSQL database quarantine it at once. Released
entries stay as the board's history.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ACTIVE = sa.text("released_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_name", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(26), nullable=True),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.String(200), nullable=True),
    )
    op.create_index("ix_quarantine_device_name", "quarantine", ["device_name"])
    op.create_index("uq_quarantine_active", "quarantine", ["device_name"], unique=True,
                    sqlite_where=_ACTIVE, postgresql_where=_ACTIVE)
    op.create_table(
        "fleet_job_streaks",
        sa.Column("device_name", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fleet_job_streaks")
    op.drop_index("uq_quarantine_active", table_name="quarantine")
    op.drop_index("ix_quarantine_device_name", table_name="quarantine")
    op.drop_table("quarantine")
