"""Short log fields: an address once, a reason in a few words, peer ids shortened.

Log lines about peers are read in floods (see the resource manager's summaries); each field here
is bounded, so a peer cannot make a line long by what it sends.
"""

from __future__ import annotations

from physarum.errors import PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import PskMismatchError

REASON_MAX = 96


def clip(text: object, limit: int = REASON_MAX) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    line = str(text).strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def short(peer: object) -> str:
    """A peer id as go-libp2p's ShortString: ``12*abcdef``."""
    text = str(peer)
    return text if len(text) <= 10 else f"{text[:2]}*{text[-6:]}"


def ipport(addr: Multiaddr | None) -> str:
    """``1.2.3.4:5`` / ``[::1]:5`` for a TCP multiaddr; the multiaddr text otherwise."""
    if addr is None:
        return "?"
    try:
        ep = addrs_.tcp_endpoint(addr)
    except PhysarumError:
        return clip(addr, 80)
    return f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}"


#: Log reasons for errors whose messages are written for a person reading one error, not a log.
_SHORT_REASONS: dict[type[BaseException], str] = {
    PskMismatchError: "not in this private network (another pre-shared key, or none)",
}


def reason(e: BaseException) -> str:
    """``ClassName: first line of the message`` (the ``reason`` attribute when there is one),
    clipped; a trailing ``(... address ...)`` that repeats what the log line already says is cut."""
    fixed = _SHORT_REASONS.get(type(e))
    if fixed is not None:
        return f"{type(e).__name__}: {fixed}"
    why = getattr(e, "reason", None)
    text = why if type(why) is str and why else str(e)
    if not text and e.__cause__ is not None:
        return f"{type(e).__name__} ({reason(e.__cause__)})"
    text = text.strip().split("\n", 1)[0]
    if text.endswith(")") and " (" in text and "address " in text.rsplit(" (", 1)[1]:
        text = text.rsplit(" (", 1)[0]
    return clip(f"{type(e).__name__}: {text}" if text else type(e).__name__)
