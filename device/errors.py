"""The agent's exception hierarchy, each class carrying the gRPC status code it maps to.

The store, the runner and the job queue raise these; the servicer turns them into a status
with ``await context.abort(err.grpc_code, str(err))``. Messages name the cause and what to
do about it, because they end up in front of a person on the host.

The base is ``StatusError`` (not ``AgentError``: on the host, ``edgetune.host.errors.AgentError``
is what the CLI raises when an agent refused a request). A class names its code by
``status`` (a ``grpc.StatusCode`` name); grpc is imported only when ``grpc_code`` is read, so
the pure modules that raise these (datasets, metrics users) import without grpc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import grpc


class StatusError(Exception):
    """Base of every error the agent reports to a caller as a gRPC status (INTERNAL unless a
    subclass says)."""

    status: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def grpc_code(self) -> "grpc.StatusCode":
        import grpc

        return getattr(grpc.StatusCode, self.status)


class InvalidArgument(StatusError):
    """Bad input: a malformed hash, an absurd count, a hostile model, a mismatched dataset."""

    status = "INVALID_ARGUMENT"


class NotFound(StatusError):
    """An unknown model, dataset or job."""

    status = "NOT_FOUND"


class AlreadyExists(StatusError):
    """The thing is there already (a complete blob uploaded again)."""

    status = "ALREADY_EXISTS"


class ResourceExhausted(StatusError):
    """A configured limit is reached: blob size, queue length."""

    status = "RESOURCE_EXHAUSTED"


class FailedPrecondition(StatusError):
    """The state forbids the call: wrong resume offset, a blob in use, an upload in progress."""

    status = "FAILED_PRECONDITION"


class DataLoss(StatusError):
    """The bytes received do not hash to what the uploader announced."""

    status = "DATA_LOSS"


class Aborted(StatusError):
    """The agent ended a call it could not keep open: an upload that stopped sending."""

    status = "ABORTED"


class Cancelled(StatusError):
    """A job was cancelled while it ran."""

    status = "CANCELLED"


class PermissionDenied(StatusError):
    """The caller's certificate may not do this (read another certificate's job output)."""

    status = "PERMISSION_DENIED"
