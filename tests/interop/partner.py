"""Drive an interop partner process (js-libp2p, py-libp2p, ...) over JSON lines.

A *partner* is any program that speaks this protocol on its standard streams:

* it prints one JSON object per line on stdout, and nothing else (logs go to stderr);
* first ``{"event": "ready", "peer_id": "12D3Koo...", "addrs": ["/ip4/127.0.0.1/tcp/N/p2p/..."]}``
  (or ``{"event": "fatal", "error": "..."}`` and exit if it cannot start);
* later events such as ``{"event": "connect", "peer_id": ...}`` and ``{"event": "disconnect", ...}``;
* it reads commands ``{"id": N, "cmd": "ping", ...}`` on stdin and answers each with
  ``{"id": N, "ok": true, ...}`` or ``{"id": N, "ok": false, "error": "..."}``, possibly out of order;
* ``{"cmd": "stop"}`` is answered and then the process exits; it also exits when stdin closes.

``tests/interop/js/peer.mjs`` is the js-libp2p partner; a py-libp2p partner speaks the same protocol.
Usage::

    async with open_partner(js_peer_argv("--psk-file", str(key))) as js:
        reply = await js.call("ping", peer=addr, count=3, timeout=15)
        await js.wait_event(lambda e: e["event"] == "connect", timeout=5)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

__all__ = [
    "GO09_DIR",
    "GO09_PEER",
    "GO_DIR",
    "GO_PEER",
    "JS_DIR",
    "JS_PEER",
    "RUST_DIR",
    "RUST_PEER",
    "Partner",
    "PartnerError",
    "PartnerExited",
    "PartnerSetupError",
    "PartnerTimeout",
    "go09_peer_argv",
    "go_peer_argv",
    "js_peer_argv",
    "open_partner",
    "rust_peer_argv",
    "write_psk_key_file",
]

JS_DIR: Path = Path(__file__).resolve().parent / "js"
"""The npm project holding the js-libp2p partner (``npm ci`` installs it)."""

JS_PEER: Path = JS_DIR / "peer.mjs"
"""The js-libp2p partner program."""

Event = dict[str, Any]
EventPredicate = Callable[[Event], bool]

_STDERR_TAIL_CHARS = 6000


class PartnerError(Exception):
    """A partner command failed, or the partner misbehaved.

    Attributes:
        cmd: the command that failed, if any.
        error: the partner's own error text (from an ``ok: false`` reply), if any.
        stderr: the tail of the partner's stderr at the time of the failure.
    """

    def __init__(
        self, message: str, *, cmd: str | None = None, error: str | None = None, stderr: str = ""
    ) -> None:
        self.cmd = cmd
        self.error = error
        self.stderr = stderr
        text = message
        if stderr:
            text += f"\n--- partner stderr (tail) ---\n{stderr}"
        super().__init__(text)


class PartnerTimeout(PartnerError, TimeoutError):
    """The partner did not answer (or send the awaited event) in time."""


class PartnerExited(PartnerError):
    """The partner's stdout closed (the process exited) before the answer came.

    Attributes:
        returncode: the exit status, when already known.
    """

    def __init__(self, message: str, *, returncode: int | None = None, **kwargs: Any) -> None:
        self.returncode = returncode
        super().__init__(message, **kwargs)


class PartnerSetupError(PartnerError):
    """The partner cannot be started here (missing node, missing node_modules, ...)."""


def js_peer_argv(*extra: str) -> list[str]:
    """Return the command line that starts the js-libp2p partner with ``extra`` arguments.

    Raises:
        PartnerSetupError: node is not on PATH, or ``tests/interop/js/node_modules`` is missing
            (run ``npm ci`` in tests/interop/js).
    """
    node = shutil.which("node")
    if node is None:
        raise PartnerSetupError(
            "node is not on PATH: install Node.js >= 20 to run the js-libp2p interop tests"
        )
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        raise PartnerSetupError(f"js-libp2p is not installed: run npm ci in tests/interop/js ({JS_DIR})")
    return [node, str(JS_PEER), *extra]


PY_DIR = Path(__file__).resolve().parent / "py"


def py_peer_argv(*extra: str) -> list[str]:
    """Return the command line that starts the py-libp2p partner (its own virtualenv).

    Raises:
        PartnerSetupError: the virtualenv is missing (run ``bash tests/interop/py/setup.sh``).
    """
    python = PY_DIR / ".venv" / "bin" / "python"
    if not python.exists():
        raise PartnerSetupError(f"py-libp2p is not installed: run bash tests/interop/py/setup.sh ({python})")
    return [str(python), str(PY_DIR / "peer.py"), *extra]


RUST_DIR: Path = Path(__file__).resolve().parent / "rust"
"""The cargo project of the rust-libp2p partner (``bash tests/interop/rust/setup.sh`` builds it)."""

RUST_PEER: Path = RUST_DIR / "target" / "release" / "physarum-interop-rust-peer"
"""The rust-libp2p partner program, once built."""


def rust_peer_argv(*extra: str) -> list[str]:
    """Return the command line that starts the rust-libp2p partner with ``extra`` arguments.

    Raises:
        PartnerSetupError: the binary is not built (run ``bash tests/interop/rust/setup.sh``).
    """
    if not RUST_PEER.is_file():
        raise PartnerSetupError(
            f"the rust-libp2p partner is not built: run bash tests/interop/rust/setup.sh ({RUST_PEER})"
        )
    return [str(RUST_PEER), *extra]


GO_DIR: Path = Path(__file__).resolve().parent / "go"
"""The Go module of the go-libp2p partner (``bash tests/interop/go/setup.sh`` builds it)."""

GO_PEER: Path = GO_DIR / "bin" / "gopeer"
"""The go-libp2p partner program, once built."""

_GO_SOURCES = ("go.mod", "go.sum", "main.go", "setup.sh")


def go_peer_argv(*extra: str) -> list[str]:
    """Return the command line that starts the go-libp2p partner with ``extra`` arguments.

    Raises:
        PartnerSetupError: the binary is not built, or was built from other sources than those in
            tests/interop/go (run ``bash tests/interop/go/setup.sh``).
    """
    setup = f"run bash tests/interop/go/setup.sh ({GO_PEER})"
    if not GO_PEER.is_file():
        raise PartnerSetupError(f"the go-libp2p partner is not built: {setup}")
    # setup.sh records the SHA-256 of the concatenated sources it built from: a stale binary
    # would test yesterday's partner.
    built = (GO_DIR / "bin" / ".built").read_text().strip() if (GO_DIR / "bin" / ".built").is_file() else ""
    sources = hashlib.sha256(b"".join((GO_DIR / name).read_bytes() for name in _GO_SOURCES)).hexdigest()
    if built != sources:
        raise PartnerSetupError(f"the go-libp2p partner was built from other sources: {setup}")
    return [str(GO_PEER), *extra]


GO09_DIR: Path = Path(__file__).resolve().parent / "go09"
"""The Go module of the go-libp2p v0.9 partner configured as PhysarumSM's nodes
(``bash tests/interop/go09/setup.sh`` builds it)."""

GO09_PEER: Path = GO09_DIR / "bin" / "go09peer"
"""The go-libp2p v0.9 (PhysarumSM) partner program, once built."""


def go09_peer_argv(*extra: str) -> list[str]:
    """Return the command line that starts the go-libp2p v0.9 (PhysarumSM) partner with ``extra``.

    Raises:
        PartnerSetupError: the binary is not built, or was built from other sources than those in
            tests/interop/go09 (run ``bash tests/interop/go09/setup.sh``).
    """
    setup = f"run bash tests/interop/go09/setup.sh ({GO09_PEER})"
    if not GO09_PEER.is_file():
        raise PartnerSetupError(f"the go-libp2p v0.9 (PhysarumSM) partner is not built: {setup}")
    marker = GO09_DIR / "bin" / ".built"
    built = marker.read_text().strip() if marker.is_file() else ""
    sources = hashlib.sha256(b"".join((GO09_DIR / name).read_bytes() for name in _GO_SOURCES)).hexdigest()
    if built != sources:
        raise PartnerSetupError(f"the go-libp2p v0.9 (PhysarumSM) partner was built from other sources: {setup}")
    return [str(GO09_PEER), *extra]


def write_psk_key_file(path: Path, key: bytes | None = None) -> bytes:
    """Write a libp2p v1 swarm key file (``/key/swarm/psk/1.0.0/``, ``/base16/``, lowercase hex).

    Args:
        path: where to write the file.
        key: the 32-byte key; a random one when None.

    Returns:
        The 32-byte key that was written.

    Raises:
        ValueError: ``key`` is not 32 bytes.
        OSError: the file cannot be written.
    """
    if key is None:
        key = os.urandom(32)
    if len(key) != 32:
        raise ValueError(f"a swarm key is 32 bytes, got {len(key)}")
    path.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{key.hex()}")
    return key


class Partner:
    """A running partner process. Made by :func:`open_partner`; use it only inside that block.

    Attributes:
        argv: the command line it was started with.
        ready: the ``ready`` event it printed.
        peer_id: its peer id (from ``ready``).
        addrs: its listen addresses, each ending in ``/p2p/<peer_id>`` (from ``ready``).
        events: every event line seen so far, oldest first (replies to commands are not events).
        protocol_errors: stdout lines that were not JSON objects (a partner bug).
    """

    def __init__(self, process: trio.Process, argv: Sequence[str], stderr_path: Path) -> None:
        self.argv: list[str] = list(argv)
        self.ready: Event = {}
        self.peer_id: str = ""
        self.addrs: list[str] = []
        self.events: list[Event] = []
        self.protocol_errors: list[str] = []
        self._process = process
        self._stderr_path = stderr_path
        self._next_id = 1
        self._pending: dict[int, trio.MemorySendChannel[Event]] = {}
        self._send_lock = trio.StrictFIFOLock()
        self._changed = trio.Event()
        self._eof = False

    # ------------------------------------------------------------ public API

    @property
    def returncode(self) -> int | None:
        """The process's exit status, or None while it runs."""
        return self._process.returncode

    @property
    def exited(self) -> bool:
        """True once the partner's stdout has closed."""
        return self._eof

    def stderr_text(self, tail: int | None = _STDERR_TAIL_CHARS) -> str:
        """Return the partner's stderr so far (only the last ``tail`` characters unless None)."""
        try:
            text = self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        if tail is not None and len(text) > tail:
            text = "..." + text[-tail:]
        return text

    async def call(self, cmd: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send command ``cmd`` with keyword ``args`` and return the partner's ``ok: true`` reply.

        Args:
            cmd: the command name (``"dial"``, ``"ping"``, ...).
            timeout: seconds to wait for the reply.
            **args: the command's fields, sent as JSON (``id`` and ``cmd`` are set here).

        Raises:
            PartnerError: the partner answered ``ok: false``; ``.error`` holds its error text.
            PartnerTimeout: no answer within ``timeout`` seconds.
            PartnerExited: the partner exited before answering.
        """
        request_id = self._next_id
        self._next_id += 1
        send, receive = trio.open_memory_channel[Event](1)
        self._pending[request_id] = send
        try:
            with trio.move_on_after(timeout) as scope:
                await self._send_line({**args, "id": request_id, "cmd": cmd})
                async with receive:
                    try:
                        reply = await receive.receive()
                    except trio.EndOfChannel:
                        raise PartnerExited(
                            f"partner exited before answering {cmd!r}",
                            cmd=cmd,
                            returncode=self.returncode,
                            stderr=self.stderr_text(),
                        ) from None
        finally:
            self._pending.pop(request_id, None)
        if scope.cancelled_caught:
            raise PartnerTimeout(
                f"partner did not answer {cmd!r} within {timeout} s", cmd=cmd, stderr=self.stderr_text()
            )
        if reply.get("ok") is not True:
            error = str(reply.get("error", "no error text"))
            raise PartnerError(f"partner command {cmd!r} failed: {error}", cmd=cmd, error=error)
        return reply

    async def wait_event(
        self,
        predicate: EventPredicate | str,
        *,
        timeout: float = 10.0,
        after: int = 0,
        **fields: Any,
    ) -> Event:
        """Return the first event (from index ``after`` of :attr:`events`) that matches.

        Events already seen are searched first, so an event that happened before this call is found.

        Args:
            predicate: a function of the event dict, or an event name (``"connect"``).
            timeout: seconds to wait for a matching event.
            after: skip the first ``after`` events (e.g. ``len(p.events)`` taken before an action).
            **fields: extra equality conditions on the event's fields (``peer_id=...``).

        Raises:
            PartnerTimeout: no matching event within ``timeout`` seconds.
            PartnerExited: the partner exited without sending a matching event.
        """
        match = _event_matcher(predicate, fields)
        index = after
        with trio.move_on_after(timeout):
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if match(event):
                        return event
                if self._eof:
                    raise PartnerExited(
                        f"partner exited without the awaited event ({_describe(predicate, fields)})",
                        returncode=self.returncode,
                        stderr=self.stderr_text(),
                    )
                await self._changed.wait()
        raise PartnerTimeout(
            f"no event matching {_describe(predicate, fields)} within {timeout} s; events: {self.events[after:]}",
            stderr=self.stderr_text(),
        )

    # ------------------------------------------------------------- internals

    async def _send_line(self, obj: Mapping[str, Any]) -> None:
        if self._eof:
            raise PartnerExited(
                "partner has exited",
                cmd=obj.get("cmd"),
                returncode=self.returncode,
                stderr=self.stderr_text(),
            )
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        stdin = self._process.stdin
        assert stdin is not None
        async with self._send_lock:
            try:
                await stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PartnerExited(
                    "partner's stdin is closed",
                    cmd=obj.get("cmd"),
                    returncode=self.returncode,
                    stderr=self.stderr_text(),
                ) from exc

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _dispatch(self, line: bytes) -> None:
        text = line.decode(errors="replace").strip()
        if not text:
            return
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            self.protocol_errors.append(text)
            return
        if "event" in obj:
            self.events.append(obj)
            self._notify()
            return
        request_id = obj.get("id")
        channel = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if channel is None:
            # a reply nobody waits for (timed out, or an id=null complaint): keep it visible
            self.protocol_errors.append(text)
            return
        try:
            channel.send_nowait(obj)
        except (trio.BrokenResourceError, trio.WouldBlock):
            self.protocol_errors.append(text)
        channel.close()

    async def _read_loop(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        buffer = b""
        try:
            while True:
                try:
                    chunk = await stdout.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._dispatch(line)
            if buffer:
                self._dispatch(buffer)
        finally:
            self._eof = True
            for channel in list(self._pending.values()):
                channel.close()
            self._pending.clear()
            self._notify()

    async def _wait_ready(self, timeout: float) -> None:
        try:
            event = await self.wait_event(lambda e: e.get("event") in ("ready", "fatal"), timeout=timeout)
        except PartnerExited as exc:
            with trio.move_on_after(2):
                await self._process.wait()
            raise PartnerExited(
                f"partner exited (status {self.returncode}) before it was ready: {' '.join(self.argv)}",
                returncode=self.returncode,
                stderr=self.stderr_text(),
            ) from exc
        except PartnerTimeout:
            raise PartnerTimeout(
                f"partner not ready within {timeout} s: {' '.join(self.argv)}", stderr=self.stderr_text()
            ) from None
        if event["event"] == "fatal":
            raise PartnerError(
                f"partner could not start: {event.get('error')}",
                error=str(event.get("error")),
                stderr=self.stderr_text(),
            )
        self.ready = event
        self.peer_id = str(event["peer_id"])
        self.addrs = [str(a) for a in event.get("addrs", [])]

    async def _shutdown(self, stop_timeout: float) -> None:
        """Ask the partner to stop; kill it if it has not exited within ``stop_timeout`` seconds."""
        process = self._process
        if process.returncode is None and not self._eof:
            with trio.move_on_after(stop_timeout):
                try:
                    await self.call("stop", timeout=stop_timeout)
                except PartnerError:
                    pass
        if process.stdin is not None:
            with trio.move_on_after(1):
                await process.stdin.aclose()
        with trio.move_on_after(stop_timeout):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def _event_matcher(predicate: EventPredicate | str, fields: Mapping[str, Any]) -> EventPredicate:
    def match(event: Event) -> bool:
        if isinstance(predicate, str):
            if event.get("event") != predicate:
                return False
        elif not predicate(event):
            return False
        return all(event.get(key) == value for key, value in fields.items())

    return match


def _describe(predicate: EventPredicate | str, fields: Mapping[str, Any]) -> str:
    name = repr(predicate) if isinstance(predicate, str) else getattr(predicate, "__name__", "predicate")
    return name + "".join(f", {k}={v!r}" for k, v in fields.items())


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_partner(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 30.0,
    stop_timeout: float = 5.0,
) -> AsyncIterator[Partner]:
    """Start a partner process, wait for its ``ready`` event, and stop it when the block ends.

    Args:
        argv: the command line (e.g. from :func:`js_peer_argv`).
        cwd: working directory for the process.
        env: its whole environment (default: this process's).
        ready_timeout: seconds to wait for ``ready``.
        stop_timeout: on exit, seconds to wait for the reply to ``stop`` and then for the exit,
            before the process is killed.

    Raises:
        PartnerExited: the process exited before it was ready.
        PartnerTimeout: no ``ready`` event within ``ready_timeout``.
        PartnerError: the partner reported a start-up failure (``fatal`` event).
        OSError: the program cannot be started.
    """
    if not math.isfinite(ready_timeout) or ready_timeout <= 0:
        raise ValueError("ready_timeout must be a positive number of seconds")
    fd, name = tempfile.mkstemp(prefix="partner-", suffix=".stderr")
    os.close(fd)
    stderr_path = Path(name)
    try:
        # O_APPEND: the child's writes always land at the end, whatever we read meanwhile
        with open(stderr_path, "ab") as stderr_file:
            process = await trio.lowlevel.open_process(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                cwd=cwd,
                env=dict(env) if env is not None else None,
            )
        partner = Partner(process, argv, stderr_path)
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(partner._read_loop)
                    try:
                        await partner._wait_ready(ready_timeout)
                        yield partner
                    finally:
                        with trio.CancelScope(shield=True):
                            await partner._shutdown(stop_timeout)
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # The reader task never raises, so the group only wraps the error of the block
                # (or of start-up): hand that to the caller unwrapped.
                single = _sole_exception(group)
                if single is None:
                    raise
                raise single from single.__cause__
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
    finally:
        stderr_path.unlink(missing_ok=True)
