"""The failure taxonomy: PEER_FAILURES and failure_kind."""

from __future__ import annotations

import pytest
import trio

from physarum.errors import (
    PEER_FAILURES,
    DecodeError,
    DialError,
    FailureKind,
    LimitError,
    NegotiationError,
    PhysarumError,
    RefusedError,
    StreamEndedError,
    failure_kind,
)
from physarum.psk import PskMismatchError


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (trio.BrokenResourceError("reset"), FailureKind.GONE),
        (trio.ClosedResourceError(), FailureKind.GONE),
        (ConnectionRefusedError(111, "refused"), FailureKind.GONE),
        (RefusedError("at capacity"), FailureKind.GONE),
        (trio.TooSlowError(), FailureKind.DEADLINE),
        (TimeoutError("no connection"), FailureKind.DEADLINE),
        (LimitError("256 streams", limit=256), FailureKind.LIMIT),
        (NegotiationError("no common protocol"), FailureKind.PROTOCOL),
        (StreamEndedError("ping stream ended"), FailureKind.PROTOCOL),
        (DecodeError("bad varint"), FailureKind.PROTOCOL),
        (PskMismatchError(), FailureKind.NOT_IN_NETWORK),
    ],
)
def test_every_peer_failure_has_a_kind(error: BaseException, kind: FailureKind) -> None:
    assert isinstance(error, PEER_FAILURES)
    assert failure_kind(error) == kind


def test_a_dial_error_is_the_kind_of_its_first_real_cause() -> None:
    e = DialError(None, {"(deadline)": TimeoutError("no connection"), "/ip4/1.2.3.4/tcp/1": PskMismatchError()})
    assert failure_kind(e) == FailureKind.NOT_IN_NETWORK
    assert failure_kind(DialError(None, {"(deadline)": TimeoutError("x")})) == FailureKind.DEADLINE


def test_bugs_are_not_peer_failures() -> None:
    for bug in (KeyError("x"), IndexError(), TypeError()):
        assert not isinstance(bug, PEER_FAILURES)
    assert issubclass(StreamEndedError, PhysarumError)
