"""The floor of the proxy pair's stack: a bare HTTP/1.1 relay on trio and h11, nothing else.

    python bench/_h11_relay.py UPSTREAM_PORT

Listens on 127.0.0.1 (port 0; prints ``PORT`` on stdout) and relays each request of a keep-alive
client connection to 127.0.0.1:UPSTREAM_PORT over one keep-alive connection of its own, parsing and
re-encoding both directions with h11, as the proxies do. No overlay (no PSK, Noise, yamux or stream
per request), no selection, no timeouts, no streaming (bodies are collected): two of these chained
are what the proxy pair would cost if the overlay were free. bench/services.py measures them beside
the pair in the same run.
"""

from __future__ import annotations

import functools
import sys

import h11
import trio


async def _event(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(await stream.receive_some(1 << 16))


async def _message(conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Event, bytes]:
    """A whole request or response: its head and its body."""
    head = await _event(conn, stream)
    body = b""
    while isinstance(head, h11.Request | h11.Response):
        event = await _event(conn, stream)
        if isinstance(event, h11.EndOfMessage):
            break
        if not isinstance(event, h11.Data):
            raise ConnectionError(f"unexpected {event!r}")
        body += event.data
    return head, body


def _encode(conn: h11.Connection, head: h11.Event, body: bytes) -> bytes:
    events = [head, h11.Data(data=body)] if body else [head]
    return b"".join(conn.send(e) or b"" for e in [*events, h11.EndOfMessage()])


async def relay(client: trio.SocketStream, upstream_port: int) -> None:
    down, up = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
    async with client, upstream:
        while True:
            request, body = await _message(down, client)
            if not isinstance(request, h11.Request):
                return
            await upstream.send_all(
                _encode(
                    up,
                    h11.Request(method=request.method, target=request.target, headers=request.headers),
                    body,
                )
            )
            response, body = await _message(up, upstream)
            if not isinstance(response, h11.Response):
                return
            await client.send_all(
                _encode(
                    down,
                    h11.Response(
                        status_code=response.status_code, headers=response.headers, reason=response.reason
                    ),
                    body,
                )
            )
            if down.our_state is not h11.DONE or up.our_state is not h11.DONE:
                return
            down.start_next_cycle()
            up.start_next_cycle()


async def main(upstream_port: int) -> None:
    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            trio.serve_tcp, functools.partial(relay, upstream_port=upstream_port), 0, host="127.0.0.1"
        )
        listeners = await nursery.start(serve)
        print(listeners[0].socket.getsockname()[1], flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
