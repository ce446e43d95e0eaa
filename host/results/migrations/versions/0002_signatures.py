"""Signed records: the agent's signature of what it measured, on each result (nullable:
records from agents that do not sign, and every record made before, stay unsigned).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (("signature", sa.LargeBinary), ("signed_payload", sa.LargeBinary),
            ("signature_algorithm", sa.String(64)), ("agent_cert_pem", sa.Text))


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("results", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
