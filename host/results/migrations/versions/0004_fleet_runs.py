"""Fleet runs: each run's spec (models, dataset, options, boards) and one row per board x
model with its state, the board's job id once submitted (so that ``--resume`` re-attaches a
job still running), its record's id once measured, and the reason when it failed.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_runs",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(200), nullable=False, server_default=""),
        sa.Column("selector", sa.String(400), nullable=False, server_default=""),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("devices", sa.JSON, nullable=False),
        sa.Column("host", sa.JSON, nullable=False),
    )
    op.create_table(
        "fleet_run_rows",
        sa.Column("run_id", sa.String(26), sa.ForeignKey("fleet_runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("device_name", sa.String(200), primary_key=True),
        sa.Column("model_sha256", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(400), nullable=False, server_default=""),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("result_id", sa.String(26), nullable=True),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fleet_run_rows")
    op.drop_table("fleet_runs")
