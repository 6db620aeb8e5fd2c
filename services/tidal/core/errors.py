"""Typed domain errors.

The domain raises these; `tidal.transport.errors` is the one place that maps them to
gRPC status codes (and the REST layer to HTTP statuses). Messages name the offending
field so a user can fix the input without reading code.
"""

from __future__ import annotations


class TidalError(Exception):
    """Base class of every error tidal reports to a caller."""


class InvalidArgumentError(TidalError):
    """The input itself is malformed: wrong shape, type, range or unknown name."""


class NonFiniteGradientError(InvalidArgumentError):
    """A gradient holds NaN or Inf; counted separately because it signals divergence."""


class FailedPreconditionError(TidalError):
    """The input is well formed but the system is not in a state to accept it
    (stale membership epoch, unknown member, job not running)."""


class NotFoundError(TidalError):
    """A named entity (job, member) does not exist."""


class AlreadyExistsError(TidalError):
    """An entity with this identity exists already."""


class UnavailableError(TidalError):
    """A peer or resource is temporarily unreachable; retrying may succeed."""


class InternalError(TidalError):
    """A peer failed with a bug (it answered INTERNAL, UNKNOWN or UNIMPLEMENTED). Not retryable:
    the same request fails the same way again. The message says what the peer said."""


class DeadlineExceededError(TidalError):
    """A wait ran past its deadline: names who was waited for and at which step."""


class ResourceExhaustedError(TidalError):
    """A configured limit (members, jobs, message size) would be exceeded."""


class DataLossError(TidalError):
    """Stored state is corrupt or was tampered with and must not be used."""


class UnauthenticatedError(TidalError):
    """The caller presented no credentials, or credentials that are not valid."""


class PermissionDeniedError(TidalError):
    """The caller is authenticated but its role or identity may not do this."""
