"""The command-line binaries: ``ping-monitor``, ``bootstrap``, ``peer`` and ``physarum-demo``.

Each module has ``main(argv=None) -> int`` (the console entry point) and ``parse_args``; the shared
flags are in :mod:`physarum.cli.flags` and the node itself in :mod:`physarum.cli.node`.
"""
