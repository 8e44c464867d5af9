"""What every fuzz harness shares: the libFuzzer defaults, a scripted stream, a trio runner on a mock
clock that turns a wait without end into a failure, and a guard against logged tracebacks.

A harness imports this module first and then the physarum modules it tests inside
``atheris.instrument_imports(include=["physarum"])``: only physarum's code is instrumented, so the
coverage that guides the fuzzer is ours, and trio, pynacl and h11 run at full speed.

The contract every harness checks: on any input, a decoder returns a value or raises one of the
exception types its docstring names. Anything else (IndexError, struct.error, UnicodeDecodeError,
RecursionError, a task that never ends, a traceback in the log) escapes ``test_one_input`` and
libFuzzer reports it as a crash, writing the input to ``crash-<sha1>`` (a hang past ``-timeout`` is
written as ``timeout-<sha1>``). Rerun one input with ``python tests/fuzz/fuzz_x.py crash-<sha1>``.

libFuzzer adds the inputs it finds interesting to the first corpus directory it is given: give it
an empty one first and ``tests/fuzz/corpus/<name>`` second, so the checked-in seeds stay as they are.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import atheris
import trio
import trio.testing

T = TypeVar("T")

#: libFuzzer flags a harness adds unless the command line sets them. ``-timeout``: seconds one input
#: may take before it counts as a hang (a run is ~1 ms; 10 s is slow machines' margin).
#: ``-rss_limit_mb``: a decoder that lets one input grow memory without bound fails here.
DEFAULT_FLAGS = {"-timeout": "10", "-rss_limit_mb": "1024", "-max_len": "4096"}

#: Virtual seconds a harness's trio run may take. Everything it does is fed from memory and ends
#: with end-of-stream, so only a decoder waiting for ever reaches it; the mock clock jumps there at
#: once, so finding that costs no real time.
VIRTUAL_DEADLINE = 3600.0


class HangError(AssertionError):
    """The code under test was still waiting when the virtual deadline passed."""


class LoggedTraceback(AssertionError):
    """The code under test logged an error or a traceback: a node must not do that for peer input."""


class _LogGuard(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.bad: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(record)


_guard = _LogGuard()


def check_logs() -> None:
    """Raise :class:`LoggedTraceback` if anything since the last call logged an error or traceback."""
    if _guard.bad:
        record = _guard.bad[0]
        _guard.bad.clear()
        cause = record.exc_info[1] if record.exc_info else None
        raise LoggedTraceback(f"{record.name}: {record.getMessage()}: {cause!r}") from cause


def main(test_one_input: Callable[[bytes], None], **flags: object) -> None:
    """Fuzz ``test_one_input`` with ``sys.argv`` (corpus directories, libFuzzer flags); ``flags``
    override :data:`DEFAULT_FLAGS` (``max_len=16384``); the command line overrides both."""
    defaults = {**DEFAULT_FLAGS, **{f"-{k}": str(v) for k, v in flags.items()}}
    given = {arg.split("=", 1)[0] for arg in sys.argv[1:] if arg.startswith("-")}
    argv = sys.argv + [f"{k}={v}" for k, v in defaults.items() if k not in given]
    root = logging.getLogger()
    root.addHandler(_guard)
    # Every level, so a traceback logged at DEBUG or INFO is caught too; nothing is formatted.
    root.setLevel(logging.DEBUG)

    def one(data: bytes) -> None:
        _guard.bad.clear()
        test_one_input(data)
        check_logs()

    atheris.Setup(argv, one)
    atheris.Fuzz()


def run_trio(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` in a fresh trio run on an autojumping mock clock, within :data:`VIRTUAL_DEADLINE`.

    Raises:
        HangError: the deadline passed.
        whatever ``fn`` raises; an exception group of one exception is opened, so a crash report
            shows where that exception came from.
    """

    async def bounded() -> T:
        with trio.move_on_after(VIRTUAL_DEADLINE) as scope:
            return await fn()
        assert scope.cancelled_caught
        raise HangError(f"still running after {VIRTUAL_DEADLINE} virtual seconds")

    try:
        return trio.run(bounded, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseExceptionGroup as group:
        inner = list(leaves(group))
        if len(inner) != 1:
            # libFuzzer's report prints the group's own traceback only: add its members'.
            group.add_note("".join(traceback.format_exception(group)))
            raise
    raise inner[0]  # outside the except clause, so its own cause stays what is reported


def leaves(exc: BaseException) -> Iterable[BaseException]:
    """The exceptions inside ``exc``, exception groups opened."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def only(exc: BaseException, allowed: tuple[type[BaseException], ...]) -> bool:
    """True when every exception in ``exc`` (a group or not) is one of ``allowed``."""
    return all(isinstance(e, allowed) for e in leaves(exc))


def split(data: bytes, pattern: int) -> list[bytes]:
    """``data`` cut into the chunks a transport might deliver: whole for ``pattern`` 0, else
    ``pattern``-byte pieces (1 byte at a time for 1)."""
    if pattern == 0 or not data:
        return [data] if data else []
    return [data[i : i + pattern] for i in range(0, len(data), pattern)]


class FeedStream(trio.abc.HalfCloseableStream):
    """A peer that sends ``chunks`` and then ends its side (or, with ``eof=False``, goes silent for
    ever); what we send is kept in :attr:`sent`. Deterministic, unlike real sockets, so a crash
    reproduces from its input alone."""

    def __init__(self, chunks: Sequence[bytes], *, eof: bool = True, reads: int | None = None) -> None:
        """``reads``: bytes the peer reads of what we send before it stops reading (None: all);
        a write past that blocks until the stream is closed, as on a socket whose peer never reads."""
        self._chunks = [bytes(c) for c in chunks if c]
        self._eof = eof
        self._reads = reads
        self._closed_event = trio.Event()
        self.sent = bytearray()
        self.eof_sent = False
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError("stream closed")
        if not self._chunks:
            if not self._eof:
                await trio.sleep_forever()
            return b""
        chunk = self._chunks[0]
        if max_bytes is None or max_bytes >= len(chunk):
            self._chunks.pop(0)
            return chunk
        self._chunks[0] = chunk[max_bytes:]
        return chunk[:max_bytes]

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed or self.eof_sent:
            raise trio.ClosedResourceError("stream closed")
        if self._reads is not None and len(self.sent) + len(data) > self._reads:
            self.sent += bytes(data)[: max(0, self._reads - len(self.sent))]
            await self._closed_event.wait()
            raise trio.ClosedResourceError("stream closed while a write was blocked")
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.eof_sent = True

    async def aclose(self) -> None:
        self.closed = True
        self._closed_event.set()
        await trio.lowlevel.checkpoint()
