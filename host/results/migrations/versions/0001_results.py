"""The first results schema: results and result_samples.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "results",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(200), nullable=False, server_default=""),
        sa.Column("run_id", sa.String(26), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(400), nullable=False, server_default=""),
        sa.Column("model_size", sa.BigInteger, nullable=True),
        sa.Column("parent_sha256", sa.String(64), nullable=True),
        sa.Column("dataset_sha256", sa.String(64), nullable=True),
        sa.Column("device_name", sa.String(200), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("device", sa.JSON, nullable=False),
        sa.Column("board_state", sa.JSON, nullable=False),
        sa.Column("host", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
    )
    for column in ("created", "kind", "model_sha256", "device_name", "run_id", "label"):
        op.create_index(f"ix_results_{column}", "results", [column])
    op.create_table(
        "result_samples",
        sa.Column("result_id", sa.String(26),
                  sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("samples_ms", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("result_samples")
    op.drop_table("results")
