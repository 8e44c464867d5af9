"""The failure taxonomy: PEER_FAILURES and failure_kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import trio

import physarum
from physarum.errors import (
    PEER_FAILURES,
    ConfigError,
    DecodeError,
    DialError,
    EncodeError,
    FailureKind,
    LimitError,
    NegotiationError,
    NotRunningError,
    PhysarumError,
    RefusedError,
    StateError,
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


_BUILTIN_ERRORS = {"ValueError", "RuntimeError", "TypeError", "KeyError", "IndexError", "AssertionError"}


def _raised_builtins(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(function, line, exception) for each ``raise Builtin(...)`` in a public function."""
    found: list[tuple[str, int, str]] = []

    def walk(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                walk(child, child.name)
            elif isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call):
                name = getattr(child.exc.func, "id", None)
                if name in _BUILTIN_ERRORS and not func.startswith("_"):
                    found.append((func, child.lineno, name))
            else:
                walk(child, func)

    walk(tree, "<module>")
    return found


def test_deliberate_errors_are_physarum_errors() -> None:
    # errors.py's promise: what physarum raises on purpose is a PhysarumError (ConfigError,
    # EncodeError, StateError... stay ValueError/RuntimeError subclasses for older callers). A private
    # helper may raise a builtin that its caller converts (a json hook, a base64 check).
    src = Path(physarum.__file__).parent
    offenders = [
        f"{path.relative_to(src)}:{line} {func}() raises {name}"
        for path in sorted(src.rglob("*.py"))
        for func, line, name in _raised_builtins(ast.parse(path.read_text()))
    ]
    assert offenders == []
    assert issubclass(ConfigError, ValueError) and issubclass(EncodeError, ValueError)
    assert issubclass(StateError, RuntimeError) and issubclass(NotRunningError, StateError)
