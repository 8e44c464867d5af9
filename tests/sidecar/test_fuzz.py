"""The sidecar's API fuzzed against its own OpenAPI document with schemathesis: a sidecar process on
127.0.0.1 (not joined to any network), a bounded number of examples per operation. No answer may be a
500, every answer is a documented status with a JSON body matching the document, and nothing hangs."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from physarum.overlay.multiaddr import Multiaddr
from physarum.sidecar.openapi import OPENAPI
from tests.integration.test_cli import LOCAL, PASS, script

#: Examples per operation (12 operations, plus the methods the document does not list): about 12 s here.
EXAMPLES = 100
#: Seconds any one request may take before the test calls it a hang.
REQUEST_TIMEOUT = 15.0

schema = schemathesis.openapi.from_dict(json.loads(json.dumps(OPENAPI)))


def _first_line(proc: subprocess.Popen[bytes], prefix: str) -> str:
    """The first line ``proc`` prints that starts with ``prefix`` (a process that never prints one
    is killed after 30 s, which ends the wait)."""
    killer = threading.Timer(30, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode().strip()
            if line.startswith(prefix):
                return line
    finally:
        killer.cancel()
    raise AssertionError(f"the process exited before printing {prefix!r}")


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def network() -> Iterator[tuple[str, str]]:
    """(the sidecar's API URL, the bootstrap's multiaddr): a sidecar joined through a bootstrap, so
    operations that need the network succeed and any 5xx is a bug."""
    boot = _start([*script("bootstrap"), *LOCAL, "-psk", PASS])
    procs = [boot]
    try:
        boot_addr = _first_line(boot, "/")
        sidecar = _start(
            [*script("sidecar"), *LOCAL, "-psk", PASS, "-api", "127.0.0.1:0", "-bootstrap", boot_addr]
        )
        procs.append(sidecar)
        url = _first_line(sidecar, "api ").split()[1]
        deadline = time.monotonic() + 20
        while not json.loads(urllib.request.urlopen(f"{url}/v1/info", timeout=5).read())["joined"]:
            assert time.monotonic() < deadline, "the sidecar did not join within 20 s"
            time.sleep(0.05)
        yield url, boot_addr
        assert all(p.poll() is None for p in procs), "a process died during the fuzzing"
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _loopback_only(case: Any, boot_addr: str) -> None:
    """Test traffic goes to 127.0.0.1 only: a generated join address that parses is replaced by the
    bootstrap's (a join that then succeeds)."""
    body = case.body
    if case.operation.path == "/v1/join" and isinstance(body, dict) and isinstance(body.get("address"), str):
        try:
            Multiaddr(body["address"])
        except Exception:
            return
        body["address"] = boot_addr


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_against_its_openapi_document(case: Any, network: tuple[str, str]) -> None:
    base_url, boot_addr = network
    _loopback_only(case, boot_addr)
    response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT)
    assert response.status_code != 500, response.text
    assert isinstance(response.json(), dict)
    operation = OPENAPI["paths"][case.operation.path].get(case.method.lower())
    if operation is None:  # schemathesis also tries methods the document does not list
        assert response.status_code == 405, (response.status_code, response.text)
        return
    assert str(response.status_code) in operation["responses"], (response.status_code, response.text)
    # Schemathesis' other checks (documented status and headers, bodies matching their schemas...),
    # except "schema-valid data must be accepted": a JSON schema cannot say which base58 strings are
    # peer ids or which strings are multiaddrs, and those are rightly 400.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])
