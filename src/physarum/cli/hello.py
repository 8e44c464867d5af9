"""``physarum hello``: the hello-world HTTP service of the services demo (PhysarumSM's example).

Answers every GET with ``Hello, world`` (and HEAD with its headers) on 127.0.0.1:PORT, where PORT is
``-port``, else ``$SERVICE_PORT`` (what an allocator hands an instance). The ``x-served-by`` header
names the instance (``$SERVICE_NAME`` and the port), so a demo can show which one answered.

It is an instance started on demand, so its start-up time is part of a first request's latency:
it uses the standard library's socketserver (a thread per connection) and h11, no event loop, and
starts in about 50 ms where trio alone takes 110 ms to import.
"""

from __future__ import annotations

import os
import socketserver
import sys
from collections.abc import Sequence

import h11

BODY = b"Hello, world\n"
IDLE_TIMEOUT = 30.0


class _Handler(socketserver.BaseRequestHandler):
    served_by = b"hello"

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(IDLE_TIMEOUT)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Request):
                    ok = event.method in (b"GET", b"HEAD")
                    body = BODY if ok else b"only GET and HEAD\n"
                    headers = [(b"content-type", b"text/plain; charset=utf-8"),
                               (b"content-length", str(len(body)).encode()), (b"x-served-by", self.served_by)]
                    out = conn.send(h11.Response(status_code=200 if ok else 405, headers=headers,
                                                 reason=b"OK" if ok else b"Method Not Allowed")) or b""
                    if event.method != b"HEAD":
                        out += conn.send(h11.Data(data=body)) or b""
                    sock.sendall(out + (conn.send(h11.EndOfMessage()) or b""))
                elif isinstance(event, h11.Data):
                    continue  # a request body (already answered 405): read and dropped to keep the connection
                elif isinstance(event, h11.EndOfMessage):
                    if conn.our_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                else:  # ConnectionClosed, PAUSED (the client pipelines before we answered)
                    return
        except (h11.ProtocolError, OSError):
            return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops connections when a sidecar opens many at once
    # (one per request): 100 concurrent clients saw refusals.
    request_queue_size = 1024


def main(argv: Sequence[str] | None = None) -> int:
    """``physarum hello [-port PORT]``; status 2 without a port, 1 when it cannot listen."""
    args = list(sys.argv[1:] if argv is None else argv)
    port_text = os.environ.get("SERVICE_PORT", "")
    if len(args) == 2 and args[0].lstrip("-") == "port":
        port_text = args[1]
    elif args:
        print("usage: physarum hello [-port PORT]   (default $SERVICE_PORT)", file=sys.stderr)
        return 2
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        print(f"physarum hello: give -port PORT or $SERVICE_PORT (got {port_text!r})", file=sys.stderr)
        return 2
    _Handler.served_by = f"{os.environ.get('SERVICE_NAME', 'hello')}@127.0.0.1:{port}".encode()
    try:
        server = _Server(("127.0.0.1", port), _Handler)
    except OSError as e:
        print(f"physarum hello: cannot listen on 127.0.0.1:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
