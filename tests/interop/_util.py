"""Helpers the interop tests share."""

from __future__ import annotations

from physarum.overlay import addr as addrs_
from physarum.overlay import ping
from physarum.overlay.yamux import YamuxStream


class PingStreams:
    """physarum's ping handler, counting the streams it is given (a partner that pings on one
    stream gives one)."""

    def __init__(self) -> None:
        self.streams = 0

    async def __call__(self, stream: YamuxStream) -> None:
        self.streams += 1
        await ping.handle_ping(stream)


def bare(addr: str) -> str:
    """``addr`` without its ``/p2p/<id>`` suffix."""
    return str(addrs_.without_peer(addrs_.parse(addr)))
