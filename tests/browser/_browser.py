"""A real headless chromium (Debian's package) driven by playwright-core (tests/browser/driver.mjs).

:func:`chromium_executable` finds chromium and the driver's node_modules, running
scripts/browser-setup.sh when either is missing. If they still cannot be had, the test fails under CI
(``CI`` set) and is skipped elsewhere, with the reason. :func:`open_browser` starts the driver as a
subprocess and talks to it over JSON lines; it gives up on any answer after its deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DRIVER = HERE / "driver.mjs"
SETUP = ROOT / "scripts" / "browser-setup.sh"
ARTIFACTS = ROOT / "build" / "test-artifacts"

#: Seconds chromium may take to start (a cold start on a loaded 2-core machine takes a few).
LAUNCH_TIMEOUT = 60.0
#: Seconds any other command may take, beyond the wait it was asked to make.
COMMAND_TIMEOUT = 30.0


def _ready() -> str | None:
    chromium = shutil.which("chromium")
    if chromium is None or shutil.which("node") is None:
        return None
    if not (HERE / "node_modules" / "playwright-core" / "package.json").is_file():
        return None
    return chromium


def chromium_executable() -> str:
    """The chromium executable, with playwright-core installed for the driver (installing both with
    scripts/browser-setup.sh when missing). Fails the test under CI if they cannot be had, else skips it."""
    found = _ready()
    if found is not None:
        return found
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900, check=False)
    found = _ready()
    if found is not None:
        return found
    reason = (
        "chromium, node or playwright-core is missing and scripts/browser-setup.sh could not install them "
        f"(exit {result.returncode}): {result.stderr.strip()[-1500:]}"
    )
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


class BrowserError(AssertionError):
    """The driver answered a command with an error (a wait that timed out, a page that did not load)."""


class Browser:
    """One chromium page, commanded through the driver (see driver.mjs for the commands)."""

    def __init__(self, process: trio.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.errors: list[str] = []
        """What the page logged as errors so far (console errors, exceptions, failed requests)."""
        self._buffer = b""

    async def _line(self) -> bytes:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some(65536)
            if not data:
                raise BrowserError(f"the browser driver exited; its log:\n{self._log_tail()}")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    async def answer(self, timeout: float) -> Any:
        """The driver's next answer's result.

        Raises:
            BrowserError: the driver answered with an error, or exited.
            trio.TooSlowError: no answer within ``timeout`` seconds.
        """
        with trio.fail_after(timeout):
            answer = json.loads(await self._line())
        self.errors = list(answer.get("errors", []))
        if not answer["ok"]:
            raise BrowserError(f"{answer['error']}\npage state: {json.dumps(answer.get('state'), indent=1)}")
        return answer.get("result")

    async def call(self, op: str, *, timeout: float = COMMAND_TIMEOUT, **args: object) -> Any:
        """Send one command and return its result (see :meth:`answer`)."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps({"op": op, **args}).encode() + b"\n")
        return await self.answer(timeout)

    async def wait_peers(self, peers: dict[str, str | None], *, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the page shows exactly ``peers`` (id -> state, None for any state); what it shows."""
        result: dict[str, Any] = await self.call(
            "wait_peers", peers=peers, timeout_ms=int(timeout * 1000), timeout=timeout + COMMAND_TIMEOUT
        )
        return result


@asynccontextmanager
async def open_browser(chromium: str, log_path: Path) -> AsyncIterator[Browser]:
    """A headless page of ``chromium`` (see :func:`chromium_executable`; the driver's stderr goes to
    ``log_path``), closed on exit."""
    with open(log_path, "wb") as log:
        process = await trio.lowlevel.open_process(
            ["node", str(DRIVER), chromium],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=str(HERE),
        )
        browser = Browser(process, log_path)
        try:
            await browser.answer(LAUNCH_TIMEOUT)  # "ready": chromium is up
            yield browser
        finally:
            with trio.CancelScope(shield=True):
                try:
                    with trio.move_on_after(10):
                        await browser.call("close", timeout=10)
                        await process.wait()
                except (BrowserError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    pass
                if process.returncode is None:
                    process.terminate()  # playwright closes chromium on SIGTERM
                    with trio.move_on_after(5):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                await process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        await pipe.aclose()
