"""The ``gpurisk`` command: one subcommand per module in ``gpurisk.commands``.

Every subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
A user-facing error (``GpuriskError``) prints one line and exits non-zero; it
never shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import GpuriskError

#: subcommand name -> module in gpurisk.commands
COMMANDS = {
    "generate": "generate",
    "validate": "validate",
    "scenarios": "scenarios",
    "pnl": "pnl",
    "margin": "margin",
    "run": "run",
    "schedule": "schedule",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="gpurisk", description="Batch portfolio-margin engine for crypto derivatives.")
    parser.add_argument("--version", action="version", version=f"gpurisk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"gpurisk.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gpurisk.commands.{module}":
                continue  # subcommand not built yet
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GpuriskError as exc:
        print(f"gpurisk {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"gpurisk {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
