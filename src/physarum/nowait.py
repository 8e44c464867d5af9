"""Direct socket I/O under the stream layers: writes that do not wait, reads with one system call.

A ping is 32 bytes. Sending it through trio's ``SocketStream.send_all`` costs a trip through the
scheduler (trio yields after every successful send) on top of the system call; a monitor sending
1,000 pings a second pays that 1,000 times. The layers that sit directly on a TCP socket (the pnet
protector, or Noise when there is no pre-shared key) therefore also offer ``send_nowait(data)``:
encrypt, then hand the ciphertext to the kernel at once with :class:`DirectSocket`.

The kernel may take only part of it (its send buffer is full: the peer is not reading). The rest
is kept, already encrypted (the cipher state has moved on), and goes out first with the layer's
next ``send_all`` or ``flush()``; the caller (the yamux session) sends nothing else without
waiting while :attr:`DirectSocket.unsent` is non-zero, so what is kept is at most one small write.

Reads: trio's ``receive_some`` always tries the socket first and waits for readability only when
that fails, so a connection carrying one small message at a time (pings) pays two ``recv`` calls
per message. :meth:`DirectSocket.receive` waits first when the last read emptied the socket (it
was shorter than asked for), and tries first otherwise (bulk data): one call per message.

Receive times: after :meth:`DirectSocket.stamp_receives` each read also takes the kernel's time of
arrival of the bytes it returns (``SO_TIMESTAMPNS``), so a ping-monitor's RTT ends when the echo
reached the socket, not when this process got round to reading it.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import trio

# <asm-generic/socket.h> (x86-64, arm64 and most others); Python's socket module does not name them.
_SO_TIMESTAMPNS = 35
_SCM_TIMESTAMPNS = _SO_TIMESTAMPNS
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
_RecvMsg = Callable[[int, int], tuple[bytes, list[tuple[int, int, bytes]], int, Any]]


class DirectSocket:
    """The socket of a ``trio.SocketStream``, read and written directly: synchronous writes, keeping
    what the kernel did not take for the stream's next asynchronous write, and reads. Its owner
    serialises sends and receives (one task at a time each, as for ``send_all`` and
    ``receive_some``); closing stays the stream's."""

    __slots__ = ("_drained", "_recvmsg", "_stream", "_unsent", "received_at")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._unsent = b""
        self._drained = True
        self._recvmsg: _RecvMsg | None = None
        #: With :meth:`stamp_receives`: when the bytes of the last read reached the socket, in
        #: ``time.time()`` seconds (the kernel's stamp of the last packet among them); else 0.0.
        self.received_at = 0.0

    def stamp_receives(self) -> bool:
        """Have the kernel stamp arriving bytes and :meth:`receive` keep the stamps in
        :attr:`received_at`; False (and nothing changes) where the socket cannot."""
        if self._recvmsg is not None:
            return True
        # trio's socket wraps a stdlib one; only that one offers a synchronous recvmsg.
        sock = getattr(self._stream.socket, "_sock", None)
        if not isinstance(sock, socket.socket):
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError:
            return False
        self._recvmsg = sock.recvmsg
        return True

    @property
    def unsent(self) -> int:
        """Bytes written with :meth:`write` that the kernel has not taken yet."""
        return len(self._unsent)

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the kernel now; what it does not take waits for :meth:`take_unsent`.

        Raises:
            trio.ClosedResourceError: the socket was closed here.
            trio.BrokenResourceError: the connection is broken (reset, or the peer went away).
        """
        if self._unsent:
            self._unsent += data
            return
        fd = self._stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            raise trio.BrokenResourceError(f"socket write failed: {e}") from e
        if n < len(data):
            self._unsent = data[n:]

    def take_unsent(self) -> bytes:
        """What :meth:`write` left for the next asynchronous write, which must send it first."""
        unsent, self._unsent = self._unsent, b""
        return unsent

    def after_unsent(self, data: bytes) -> bytes:
        """``data`` behind what :meth:`write` left unsent: what the next asynchronous write sends."""
        return self.take_unsent() + data if self._unsent else data


    async def receive(self, max_bytes: int) -> bytes:
        """``receive_some(max_bytes)`` of the stream, in one system call where trio makes two.

        Raises:
            trio.ClosedResourceError: the socket was closed here (before or while waiting).
            trio.BrokenResourceError: the connection is broken (reset).
        """
        fd = self._stream.socket.fileno()
        if fd < 0:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the socket was closed")
        waited = self._drained
        if waited:
            await trio.lowlevel.wait_readable(fd)
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                if self._recvmsg is None:
                    data = os.read(fd, max_bytes)
                else:
                    data, ancillary, _flags, _addr = self._recvmsg(max_bytes, _ANCILLARY)
                    self._stamp(ancillary)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                waited = True
            except OSError as e:
                if self._stream.socket.fileno() < 0:
                    raise trio.ClosedResourceError("the socket was closed") from e
                raise trio.BrokenResourceError(f"socket read failed: {e}") from e
        if not waited:
            # As trio does after a read that did not wait: let other tasks run (a bulk reader
            # would otherwise never give way).
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._drained = len(data) < max_bytes
        return data

    def _stamp(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
                seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
                self.received_at = seconds + nanoseconds * 1e-9
                return
        self.received_at = time.time()  # no stamp (none came with these bytes): now is the best bound


def direct_socket(stream: trio.abc.Stream) -> DirectSocket | None:
    """A :class:`DirectSocket` for ``stream`` if it is a plain TCP socket stream, else None."""
    return DirectSocket(stream) if type(stream) is trio.SocketStream else None


__all__ = ["DirectSocket", "direct_socket"]
