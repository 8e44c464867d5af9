"""Give memory back to the system once many peers have left.

A node that held a thousand connections and saw them go keeps their memory unless three things hold:

* **Nothing forms a reference cycle with a connection.** What a connection holds (~50 KB: buffers,
  ciphers, socket, tasks) is freed by reference counting as it closes, unless a cycle holds it: an
  exception kept in a local of a frame its traceback holds, a callback closing over its owner. Then
  it waits for a full collection, which the thresholds ``physarum node`` and ``ping-monitor`` set
  (full collections with 1,000 connected peers cost 0.2-0.5 s) may put off for minutes. The cycles
  found are broken where they form (the yamux session's close reason, the host's stream callback,
  the monitor's failed pings); a full collection here catches any left.
* **The C allocator returns free pages.** glibc keeps what was freed in its heap for reuse;
  ``malloc_trim(0)`` hands the free pages back (1-40 ms).
* **No cache keeps the crowd's peer ids.** The caches of peer ids' text forms and of their DHT keys
  are refilled by a crowd, so their entries end up among its freed memory, each pinning a page:
  256 of them kept 3 MiB after 1,100 fresh identities left. A reclaim empties them first
  (:func:`forget_peer_caches`); the peers still connected refill them at once.
* **CPython's small-object allocator is not in the way.** pymalloc takes memory in 1 MiB arenas
  and returns one only once every object in it is gone; the few objects that outlive a crowd (a
  task's next coroutine, a timer, a cached string) sit in most of the arenas the crowd filled.
  Measured on ``ping-monitor`` after 1,260 fresh identities held connections and left: 0.4 MB more
  live objects than before kept 49 more arenas, RSS +50 MiB, for good (``malloc_trim`` cannot touch
  arenas). With ``PYTHONMALLOC=malloc`` the objects pin 4 KiB pages instead, and the same attack
  came back to +13 to +25 MiB (from a peak of +60) within a second of the reclaim below. So
  ``ping-monitor`` restarts itself under ``PYTHONMALLOC=malloc`` (:func:`restart_with_system_malloc`)
  unless the variable is set; measured on the same attack, its peak RSS and CPU time stayed within
  the spread between runs.

The collection and the trim cost time on the event loop, so :class:`MemoryReclaimer` runs them only
when at least ``after`` peers (default 64) **and** at least as many as are still connected have left
since it last ran (its cost, which grows with what is live, is then about that of the departures it
cleans up after), at most every ``min_interval`` seconds (default 5), and once fewer than ``after``
peers left in the last ``settle`` seconds (default 1: a crowd leaves over a few seconds, and what is
freed after a reclaim stays in the heap until the next one; measured, a reclaim in the middle of
1,000 departures left RSS 37 MiB higher than one after them), or after ``min_interval`` under
sustained churn. ``min_interval`` after a reclaim the heap is trimmed once more: what the departed
connections' timers held (a ping's deadline, say) is freed only as they expire (after 1,000
departures, 2-7 MiB more).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from physarum.dht import keyspace
from physarum.errors import ConfigError
from physarum.overlay import identity

log = logging.getLogger(__name__)

#: Departures since the last reclaim that make the next one due (with at least as many as are still
#: connected): fewer leave too little behind to be worth a full collection.
RECLAIM_AFTER = 64

#: Seconds between two reclaims at least: under sustained churn a full collection runs at most this often.
RECLAIM_INTERVAL = 5.0

#: A due reclaim runs once fewer than ``after`` peers left in this many seconds: the crowd is gone.
RECLAIM_SETTLE = 1.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def malloc_trim() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim(0)``); False where the C
    library has no such call or nothing was returned."""
    return _MALLOC_TRIM is not None and _MALLOC_TRIM(0) == 1


def restart_with_system_malloc(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> None:
    """Run this program again in place (``execve``: same pid, same open files) as ``python *argv``
    with ``PYTHONMALLOC=malloc``, so that memory freed after a crowd of peers left goes back to the
    system (see the module docstring). Returns, doing nothing, when ``PYTHONMALLOC`` is already set
    (to anything: ``PYTHONMALLOC=pymalloc`` keeps CPython's allocator), where the C library has no
    ``malloc_trim`` (not glibc: nothing would give the memory back anyway), in a frozen executable
    (no interpreter to run), or if the exec fails.

    ``argv``: the interpreter's arguments, e.g. ``["-m", "physarum.cli.ping_monitor", *flags]``;
    ``environ``: the environment to start from (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    if "PYTHONMALLOC" in environ or _MALLOC_TRIM is None or getattr(sys, "frozen", False):
        return
    env = {**environ, "PYTHONMALLOC": "malloc"}
    try:
        os.execve(sys.executable, [sys.executable, *argv], env)
    except OSError as e:  # an odd interpreter path, say: run on with pymalloc
        log.debug("cannot restart under PYTHONMALLOC=malloc: %s", e)


def forget_peer_caches() -> None:
    """Empty the caches that fill with the ids of the peers a node meets (see the module docstring)."""
    identity.clear_text_cache()
    keyspace.peer_key.cache_clear()


class MemoryReclaimer:
    """Collect garbage and trim the C heap once enough peers have left (see the module docstring).

    The owner counts departures with :meth:`departed` and asks :meth:`maybe_reclaim` now and then
    (the ping monitor does at every sweep). ``forget``, ``collect`` and ``trim`` are the steps
    (:func:`forget_peer_caches`, a full :func:`gc.collect` and :func:`malloc_trim` by default; None
    skips one); ``after`` 0 never reclaims.

    Raises:
        ConfigError: a negative ``after``, ``min_interval`` or ``settle``.
    """

    def __init__(
        self,
        *,
        after: int = RECLAIM_AFTER,
        min_interval: float = RECLAIM_INTERVAL,
        settle: float = RECLAIM_SETTLE,
        collect: Callable[[], object] | None = gc.collect,
        trim: Callable[[], object] | None = malloc_trim,
        forget: Callable[[], object] | None = forget_peer_caches,
    ) -> None:
        if after < 0 or min_interval < 0 or settle < 0:
            raise ConfigError(
                f"after, min_interval and settle must not be negative, got {after}, {min_interval}, {settle}"
            )
        self.after = after
        self.min_interval = min_interval
        self.settle = settle
        self.collect = collect
        self.trim = trim
        self.forget = forget
        self.pending = 0
        """Departures since the last reclaim."""
        self.reclaims = 0
        self._last = -math.inf
        self._recent: deque[float] = deque(maxlen=max(after, 1))  # when the latest departures were
        self._due_since: float | None = None
        self._trim_again_at = math.inf

    def departed(self, now: float, n: int = 1) -> None:
        """Count ``n`` peers that left at ``now``."""
        self.pending += n
        self._recent.extend([now] * min(n, self._recent.maxlen or 1))

    def due(self, now: float, connected: int) -> bool:
        """Whether enough peers left for a reclaim (at least ``after`` and ``connected``), and the
        last one is ``min_interval`` old at ``now``."""
        return self._enough(connected) and now - self._last >= self.min_interval

    def _enough(self, connected: int) -> bool:
        return self.after > 0 and self.pending >= max(self.after, connected)

    def maybe_reclaim(self, now: float, connected: int) -> bool:
        """Reclaim if :meth:`due` and fewer than ``after`` peers left in the last ``settle`` seconds,
        or enough peers have been gone for ``min_interval``; True if it did. Trim once more
        ``min_interval`` after a reclaim."""
        if now >= self._trim_again_at:
            self._trim_again_at = math.inf
            if self.trim is not None:
                self.trim()
        if not self._enough(connected):
            self._due_since = None
            return False
        if self._due_since is None:
            self._due_since = now
        if now - self._last < self.min_interval:
            return False
        recent = self._recent
        leaving = len(recent) == recent.maxlen and now - recent[0] < self.settle
        if leaving and now - self._due_since < self.min_interval:
            return False
        self.reclaim(now)
        return True

    def reclaim(self, now: float) -> None:
        """Forget the peer caches, collect, then trim, now."""
        started = time.perf_counter()
        if self.forget is not None:
            self.forget()
        freed = self.collect() if self.collect is not None else None
        collected = time.perf_counter()
        if self.trim is not None:
            self.trim()
        log.debug(
            "reclaimed memory after %d departures: collection %.0f ms (%s objects), trim %.1f ms",
            self.pending,
            (collected - started) * 1000,
            freed,
            (time.perf_counter() - collected) * 1000,
        )
        self.pending = 0
        self.reclaims += 1
        self._last = now
        self._due_since = None
        self._trim_again_at = now + self.min_interval


__all__ = [
    "RECLAIM_AFTER",
    "RECLAIM_INTERVAL",
    "RECLAIM_SETTLE",
    "MemoryReclaimer",
    "forget_peer_caches",
    "malloc_trim",
    "restart_with_system_malloc",
]
