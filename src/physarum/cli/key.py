"""``physarum key generate``: a new private-network key, as a libp2p swarm key file.

The file is the format every libp2p reads (``/key/swarm/psk/1.0.0/``, ``/base16/``, 64 hex digits),
created with mode 0600 so no other local user can read it. Give it to every node with
``-psk-file PATH``; unlike ``-psk PASS``, the key never appears in the process list.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from physarum.cli.flags import FlagParser, UsageError, flag, normalize_bool_flags
from physarum.cli.node import run_sync_main
from physarum.psk import KeyFileError, format_key_file, generate_psk, write_key_file

PROG = "physarum key"

DESCRIPTION = """\
Write a new random private-network key (a libp2p swarm key file, /key/swarm/psk/1.0.0/).

  physarum key generate -o swarm.key       create swarm.key, mode 0600 (refuses to overwrite)
  physarum key generate                    print the key file on stdout

Give the file to every node of the network: ping-monitor -psk-file swarm.key ..."""


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=FlagParser)
    gen = commands.add_parser("generate", help="write a new key file", prog=f"{PROG} generate")
    flag(gen, "o", dest="output", metavar="FILE", help="write the key file here, mode 0600 (default: stdout)")
    flag(
        gen,
        "encoding",
        choices=("base16", "base64", "bin"),
        default="base16",
        help="how the key is written (default base16, which every libp2p reads)",
    )
    flag(gen, "force", action="store_true", help="replace FILE if it exists")
    return parser


def generate(output: str | None, encoding: str, force: bool) -> int:
    """Write a fresh key to ``output`` (0600) or stdout.

    Raises:
        UsageError: the file exists (without ``force``) or cannot be written.
    """
    psk = generate_psk()
    if output is None:
        if encoding == "bin" and sys.stdout.isatty():
            raise UsageError("generate: a /bin/ key is not for a terminal: give -o FILE")
        sys.stdout.buffer.write(format_key_file(psk, encoding))  # type: ignore[arg-type]
        sys.stdout.flush()
        return 0
    try:
        write_key_file(output, psk, encoding=encoding, overwrite=force)  # type: ignore[arg-type]
    except KeyFileError as e:
        if isinstance(e.__cause__, FileExistsError):
            raise UsageError(f"generate: {output} exists (give -force to replace it)") from None
        raise UsageError(f"generate: {e}") from None
    print(f"wrote {output} (mode 0600); use it with -psk-file {output}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``physarum key``."""
    args_list = list(sys.argv[1:] if argv is None else argv)

    def start() -> int:
        args = build_parser().parse_args(normalize_bool_flags(args_list, ("force",)))
        if args.command != "generate":
            raise UsageError("give a command: generate (see physarum key -help)")
        return generate(args.output, args.encoding, args.force)

    return run_sync_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
