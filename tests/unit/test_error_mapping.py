"""The one mapping between domain errors and gRPC statuses (transport/errors.py): every domain
error survives a round trip; a bug on the other side is an InternalError, not retried; only a
peer that went away (UNAVAILABLE, CANCELLED) reads as UnavailableError, which callers retry."""

from __future__ import annotations

import inspect

import grpc
import pytest

from tidal.core import errors
from tidal.transport.errors import STATUS_FOR_ERROR, error_for_status, status_for

DOMAIN_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.TidalError) and cls is not errors.TidalError
]
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED])
def test_a_bug_on_the_other_side_is_an_internal_error_with_its_message(code: grpc.StatusCode) -> None:
    err = error_for_status(code, "Unexpected <class 'RuntimeError'>: boom")
    assert type(err) is errors.InternalError
    assert str(err) == "Unexpected <class 'RuntimeError'>: boom"
    assert not isinstance(err, errors.UnavailableError)


@pytest.mark.parametrize("code", sorted(RETRYABLE, key=lambda c: c.name))
def test_a_peer_that_went_away_is_unavailable(code: grpc.StatusCode) -> None:
    err = error_for_status(code, "Stream removed (Socket closed)")
    assert type(err) is errors.UnavailableError
    assert str(err) == "Stream removed (Socket closed)"


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK], ids=lambda c: c.name)
def test_only_a_peer_that_went_away_is_retryable(code: grpc.StatusCode) -> None:
    assert isinstance(error_for_status(code, "x"), errors.UnavailableError) == (code in RETRYABLE)


def test_a_status_without_details_is_named() -> None:
    assert str(error_for_status(grpc.StatusCode.INTERNAL, None)) == "INTERNAL"
    assert str(error_for_status(grpc.StatusCode.INTERNAL, "")) == "INTERNAL"


def test_the_internal_error_is_sent_as_internal() -> None:
    assert status_for(errors.InternalError("x")) is grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_survives_a_round_trip(cls: type[errors.TidalError]) -> None:
    sent = cls("job_id: 'j-1' is not known")
    back = error_for_status(status_for(sent), str(sent))
    # A subclass without its own status (NonFiniteGradientError) comes back as its mapped base.
    mapped = next(base for base in cls.__mro__ if base in STATUS_FOR_ERROR)
    assert type(back) is mapped
    assert str(back) == str(sent)


def test_every_domain_error_has_a_status() -> None:
    for cls in DOMAIN_ERRORS:
        assert status_for(cls("x")) is not grpc.StatusCode.UNKNOWN, cls
