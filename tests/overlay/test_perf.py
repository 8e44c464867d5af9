"""``/perf/1.0.0`` over memory streams: the client's timing and byte counts, the server's limits."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from physarum.errors import ProtocolError, StreamEndedError, exception_leaves
from physarum.overlay import perf


async def _exchange(service: perf.PerfService, *, upload: int, download: int) -> perf.PerfResult:
    client, server = trio.testing.memory_stream_pair()
    result: list[perf.PerfResult] = []

    async def run_client() -> None:
        result.append(await perf.measure(client, upload=upload, download=download))

    async def run_server() -> None:
        await service.handle(server)
        await server.aclose()  # as the host does when a handler returns

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        nursery.start_soon(run_client)
    return result[0]


async def test_upload_then_download() -> None:
    with trio.fail_after(10):
        r = await _exchange(perf.PerfService(), upload=3 * perf.BLOCK + 5, download=2 * perf.BLOCK + 7)
    assert (r.uploaded, r.downloaded) == (3 * perf.BLOCK + 5, 2 * perf.BLOCK + 7)
    assert r.upload_seconds >= 0 and r.download_seconds >= 0 and r.seconds == r.upload_seconds + r.download_seconds
    with trio.fail_after(10):
        assert (await _exchange(perf.PerfService(), upload=0, download=0)).downloaded == 0


async def test_the_server_reads_the_whole_upload_before_answering() -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(perf.PerfService().handle, server)
        await client.send_all(struct.pack(">Q", 10) + b"x" * 100)
        with trio.move_on_after(0.2):
            assert await client.receive_some() == b""  # not reached: nothing comes before our EOF
            pytest.fail("the server answered before the upload ended")
        await client.send_eof()
        got = b""
        while chunk := await client.receive_some():
            got += chunk
        assert got == bytes(10)


async def test_a_request_over_the_limit_gets_nothing() -> None:
    # The server drops the stream: the client's upload breaks, or (nothing to upload) its download
    # ends short.
    with trio.fail_after(10), pytest.raises(BaseException) as info:
        await _exchange(perf.PerfService(max_download=999), upload=10, download=1000)
    assert {type(e) for e in exception_leaves(info.value)} <= {trio.BrokenResourceError, StreamEndedError}
    with trio.fail_after(10), pytest.raises(BaseException) as info:
        await _exchange(perf.PerfService(max_download=999), upload=0, download=1000)
    assert [type(e) for e in exception_leaves(info.value)] == [StreamEndedError]
    assert (await _exchange(perf.PerfService(max_download=999), upload=0, download=999)).downloaded == 999


async def test_a_server_sending_too_much_is_a_protocol_error() -> None:
    client, server = trio.testing.memory_stream_pair()

    async def generous() -> None:
        await server.receive_some(8)
        while await server.receive_some():
            pass
        await server.send_all(b"y" * 20)
        await server.send_eof()

    with trio.fail_after(10), pytest.RaisesGroup(ProtocolError, allow_unwrapped=True, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(generous)
            await perf.measure(client, upload=0, download=10)
