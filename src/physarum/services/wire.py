"""The framing of physarum's own request protocols (the registry, the allocator, the sidecar's
message stores): uvarint-length-prefixed JSON objects, one request per stream, answered by one or
more messages and the end of the stream; an answer ``{"error": CODE, "message": TEXT}`` is a refusal."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from physarum.errors import PEER_FAILURES, DecodeError
from physarum.overlay.streamio import BufferedStream, json_frame, read_json

#: Largest message either side takes (a signed registry entry in base64 and its JSON wrapping).
MAX_MESSAGE = 32768


frame = json_frame
"""``obj`` as one message (:func:`~physarum.overlay.streamio.json_frame`)."""


async def read_message(stream: BufferedStream, max_size: int = MAX_MESSAGE) -> dict[str, Any] | None:
    """The next message, None at a clean end of the stream (:func:`~physarum.overlay.streamio.read_json`).

    Raises:
        DecodeError: not a JSON object, too large, or cut short; or one of
            :data:`~physarum.errors.PEER_FAILURES`.
    """
    return await read_json(stream, max_size)


async def serve_request(
    stream: trio.abc.HalfCloseableStream,
    answer: Callable[[dict[str, Any]], Awaitable[Iterable[dict[str, Any]]]],
    *,
    timeout: float,
    log: logging.Logger,
    max_size: int = MAX_MESSAGE,
) -> bool:
    """One request-response exchange on ``stream``: read the request (within ``timeout``), write
    what ``answer`` returns, end the stream. Requests over ``max_size`` bytes are malformed. A request that does not decode is answered
    ``{"error": "malformed"}`` (logged at INFO); a peer that fails is logged at DEBUG. Returns
    whether a request was read. Never raises for what the peer did."""
    buffered = BufferedStream(stream)
    try:
        with trio.fail_after(timeout):
            request = await read_message(buffered, max_size)
        if request is None:
            return False
        for message in await answer(request):
            await stream.send_all(frame(message))
        await stream.send_eof()
        return True
    except DecodeError as e:
        log.info("bad request: %s", e)
        try:
            await stream.send_all(frame({"error": "malformed", "message": str(e)}))
        except PEER_FAILURES:
            pass
    except PEER_FAILURES as e:
        log.debug("stream failed: %s", e)
    return False


async def call(
    stream: trio.abc.HalfCloseableStream,
    request: dict[str, Any],
    *,
    refusal: Callable[[str, str], Exception],
    max_size: int = MAX_MESSAGE,
) -> list[dict[str, Any]]:
    """Send ``request`` on ``stream`` (a new stream of the protocol, which this closes) and read the
    answers up to the end of the stream. The caller sets the deadline.

    Raises:
        the exception ``refusal(code, message)`` makes when an answer is a refusal;
        DecodeError: an answer that does not decode; or one of :data:`~physarum.errors.PEER_FAILURES`.
    """
    try:
        await stream.send_all(frame(request))
        await stream.send_eof()
        buffered = BufferedStream(stream)
        answers = []
        while (msg := await read_message(buffered, max_size)) is not None:
            if "error" in msg:
                raise refusal(str(msg["error"]), str(msg.get("message", msg["error"])))
            answers.append(msg)
        return answers
    finally:
        await stream.aclose()


__all__ = ["MAX_MESSAGE", "call", "frame", "read_message", "serve_request"]
