"""The agent's exception hierarchy, each class carrying the gRPC status code it maps to.

The store, the runner and the job queue raise these; the servicer turns them into a status
with ``await context.abort(err.grpc_code, str(err))``. Messages name the cause and what to
do about it, because they end up in front of a person on the host.
"""

from __future__ import annotations

import grpc


class AgentError(Exception):
    """Base of every error the agent reports to a caller (INTERNAL unless a subclass says)."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(AgentError):
    """Bad input: a malformed hash, an absurd count, a hostile model, a mismatched dataset."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AgentError):
    """An unknown model, dataset or job."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AgentError):
    """The thing is there already (a complete blob uploaded again)."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(AgentError):
    """A configured limit is reached: blob size, queue length."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(AgentError):
    """The state forbids the call: wrong resume offset, a blob in use, an upload in progress."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(AgentError):
    """The bytes received do not hash to what the uploader announced."""

    grpc_code = grpc.StatusCode.DATA_LOSS


class Cancelled(AgentError):
    """A job was cancelled while it ran."""

    grpc_code = grpc.StatusCode.CANCELLED
