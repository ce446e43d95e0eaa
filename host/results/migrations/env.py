"""Alembic's environment for the results database. edgetune runs it in-process (see
``edgetune.host.results.migrate``) with the connection it opened, inside its own transaction,
so an upgrade is all or nothing and two hosts cannot run it at once."""

from alembic import context

from edgetune.host.results.schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  version_table=VERSION_TABLE, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
