"""The results database's tables (SQLAlchemy Core).

One row per measured model in ``results``; the raw latency samples (which can be thousands of
numbers) live in ``result_samples`` so that listing and exporting never read them unless asked.
Everything a record knows about its provenance that is not filtered on is kept in JSON columns
(``options``, ``device``, ``board_state``, ``host``, ``metrics``), so a new metric or board field
needs no migration; what is filtered or joined on has a column and an index. The agent's
signature (the signed bytes, the signature, its algorithm, the agent certificate) has nullable
columns that listing does not read. ``quarantine`` holds the boards taken out of fleet rotation
(active while ``released_at`` is NULL; one active entry per board) and ``fleet_job_streaks`` the
number of fleet jobs each board failed in a row (revision 0003, see host/fleet/quarantine.py).
``fleet_runs`` holds each fleet run's spec (models, options, boards) and ``fleet_run_rows`` one
row per board x model with its state, job id, result id and reason (revision 0004, see
host/fleet/runbook.py); the measurements are ``results`` rows with the run's ``run_id``.

The migrations in ``migrations/versions`` create exactly this schema; tests check that the two
agree (a migrated database and ``metadata`` compare equal).
"""

from __future__ import annotations

import sqlalchemy as sa

# Alembic's bookkeeping table, named for us: the same database may hold an Optuna study
# (Optuna keeps its own Alembic history in ``alembic_version``).
VERSION_TABLE = "edgetune_alembic_version"

metadata = sa.MetaData()

results = sa.Table(
    "results", metadata,
    sa.Column("id", sa.String(26), primary_key=True),            # ULID
    sa.Column("kind", sa.String(32), nullable=False),            # bench, eval, quantize, compare
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, server_default=""),
    sa.Column("run_id", sa.String(26), nullable=True),           # a fleet run, a tuning study
    sa.Column("model_sha256", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(400), nullable=False, server_default=""),
    sa.Column("model_size", sa.BigInteger, nullable=True),
    sa.Column("parent_sha256", sa.String(64), nullable=True),    # quantized from this model
    sa.Column("dataset_sha256", sa.String(64), nullable=True),
    sa.Column("device_name", sa.String(200), nullable=True),     # inventory name or address
    sa.Column("job_id", sa.String(64), nullable=True),           # the board's job id
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("device", sa.JSON, nullable=False),
    sa.Column("board_state", sa.JSON, nullable=False),
    sa.Column("host", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    # the agent's signature of what it measured (revision 0002); NULL: an unsigned record
    sa.Column("signature", sa.LargeBinary, nullable=True),
    sa.Column("signed_payload", sa.LargeBinary, nullable=True),    # the exact signed bytes
    sa.Column("signature_algorithm", sa.String(64), nullable=True),
    sa.Column("agent_cert_pem", sa.Text, nullable=True),
    sa.Index("ix_results_created", "created"),
    sa.Index("ix_results_kind", "kind"),
    sa.Index("ix_results_model_sha256", "model_sha256"),
    sa.Index("ix_results_device_name", "device_name"),
    sa.Index("ix_results_run_id", "run_id"),
    sa.Index("ix_results_label", "label"),
)

result_samples = sa.Table(
    "result_samples", metadata,
    sa.Column("result_id", sa.String(26),
              sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("samples_ms", sa.JSON, nullable=False),
)

_ACTIVE = sa.text("released_at IS NULL")

quarantine = sa.Table(
    "quarantine", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_name", sa.String(200), nullable=False),   # inventory name
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),          # check, jobs, manual
    sa.Column("run_id", sa.String(26), nullable=True),           # the check or fleet run
    sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("released_by", sa.String(200), nullable=True),     # release, check <run>
    sa.Index("ix_quarantine_device_name", "device_name"),
    sa.Index("uq_quarantine_active", "device_name", unique=True,
             sqlite_where=_ACTIVE, postgresql_where=_ACTIVE),
)

fleet_job_streaks = sa.Table(
    "fleet_job_streaks", metadata,
    sa.Column("device_name", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),            # fleet jobs failed in a row
    sa.Column("last_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)

fleet_runs = sa.Table(
    "fleet_runs", metadata,
    sa.Column("id", sa.String(26), primary_key=True),            # ULID: the records' run_id
    sa.Column("kind", sa.String(16), nullable=False),            # benchmark, evaluate
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("label", sa.String(200), nullable=False, server_default=""),
    sa.Column("selector", sa.String(400), nullable=False, server_default=""),
    sa.Column("spec", sa.JSON, nullable=False),                  # models, dataset, options
    sa.Column("devices", sa.JSON, nullable=False),               # board names, in run order
    sa.Column("host", sa.JSON, nullable=False),
)

fleet_run_rows = sa.Table(
    "fleet_run_rows", metadata,
    sa.Column("run_id", sa.String(26), sa.ForeignKey("fleet_runs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("device_name", sa.String(200), primary_key=True),
    sa.Column("model_sha256", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(400), nullable=False, server_default=""),
    sa.Column("position", sa.Integer, nullable=False),           # the model's place in the run
    sa.Column("state", sa.String(16), nullable=False),           # pending, submitted, done, ...
    sa.Column("job_id", sa.String(64), nullable=True),           # the board's job, once submitted
    sa.Column("result_id", sa.String(26), nullable=True),        # its record, once measured
    sa.Column("error", sa.Text, nullable=False, server_default=""),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
)
