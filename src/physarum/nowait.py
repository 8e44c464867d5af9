"""Writes that do not wait: the synchronous send path under the stream layers.

A ping is 32 bytes. Sending it through trio's ``SocketStream.send_all`` costs a trip through the
scheduler (trio yields after every successful send) on top of the system call; a monitor sending
1,000 pings a second pays that 1,000 times. The layers that sit directly on a TCP socket (the pnet
protector, or Noise when there is no pre-shared key) therefore also offer ``send_nowait(data)``:
encrypt, then hand the ciphertext to the kernel at once with :class:`DirectWriter`.

The kernel may take only part of it (its send buffer is full: the peer is not reading). The rest
is kept, already encrypted (the cipher state has moved on), and goes out first with the layer's
next ``send_all`` or ``flush()``; the caller (the yamux session) sends nothing else without
waiting while :attr:`DirectWriter.unsent` is non-zero, so what is kept is at most one small write.
"""

from __future__ import annotations

import os

import trio


class DirectWriter:
    """Synchronous writes to the socket of a ``trio.SocketStream``, keeping what the kernel did not
    take for the stream's next asynchronous write. Its owner serialises sends (only one writer at
    a time, as for ``send_all``)."""

    __slots__ = ("_stream", "_unsent")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._unsent = b""

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


def direct_writer(stream: trio.abc.Stream) -> DirectWriter | None:
    """A :class:`DirectWriter` for ``stream`` if it is a plain TCP socket stream, else None."""
    return DirectWriter(stream) if type(stream) is trio.SocketStream else None


__all__ = ["DirectWriter", "direct_writer"]
