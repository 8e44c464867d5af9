"""Callback lists: what a host tells its users and services (a connection opened, closed, identified)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from physarum.overlay.logfmt import clip

log = logging.getLogger(__name__)

T = TypeVar("T")


class Callbacks(list[Callable[[T], None]], Generic[T]):
    """A list of callbacks (``append`` and ``remove`` as usual) that :meth:`fire` calls in order.

    A callback that raises is logged with its traceback and the others still run: one user's bug
    must not stop the host's bookkeeping or another user's callback.
    """

    def fire(self, arg: T) -> None:
        for cb in list(self):  # a copy: a callback may remove itself
            try:
                cb(arg)
            except Exception:
                log.exception("callback %s failed", clip(getattr(cb, "__qualname__", repr(cb))))


class HandlerHost(Protocol):
    """What a simple service needs of a host: to serve a protocol (:meth:`Host.set_handler`)."""

    def set_handler(self, protocol: str, handler: Callable[[Any], Awaitable[None]]) -> None: ...
