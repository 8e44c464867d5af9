"""``python -m physarum.cli NAME [flags]``: run the binary NAME (ping-monitor, bootstrap, peer, demo).

The thin scripts in bin/ call this, so they work from a source checkout without installing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _programs() -> dict[str, Callable[[list[str]], int]]:
    from physarum.cli import bootstrap, demo, peer, ping_monitor

    return {
        "ping-monitor": ping_monitor.main,
        "bootstrap": bootstrap.main,
        "peer": peer.main,
        "physarum-demo": demo.main,
        "demo": demo.main,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    programs = _programs()
    if not argv or argv[0] not in programs:
        names = ", ".join(p for p in programs if p != "demo")
        print(f"usage: python -m physarum.cli {{{names}}} [flags]", file=sys.stderr)
        return 2
    return programs[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
