"""The results store: every measurement edgetune makes, kept with what produced it.

SQLAlchemy 2 Core over one database URL (a SQLite file by default, PostgreSQL when a team or
several hosts share it), with the schema kept by Alembic migrations in ``migrations/`` so an
older database is upgraded in place on first use. Ids are ULIDs: sortable by creation time and
unique without coordination between hosts.
"""
