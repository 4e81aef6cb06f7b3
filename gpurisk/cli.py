"""The ``gpurisk`` command: one subcommand per module in ``gpurisk.commands``.

Every subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
A user-facing error (``GpuriskError``) prints one line and exits non-zero; it
never shows a traceback. SIGTERM stops a command like Ctrl-C (``commands.signals``):
one line, exit 128 + the signal number (130 for SIGINT, 143 for SIGTERM). Help texts
are plain text: the reST markup of the docstrings they come from is removed.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import textwrap

from .errors import GpuriskError
from .redact import redact

#: subcommand name -> module in gpurisk.commands
COMMANDS = {
    "generate": "generate",
    "validate": "validate",
    "scenarios": "scenarios",
    "pnl": "pnl",
    "margin": "margin",
    "run": "run",
    "schedule": "schedule",
    "serve": "serve",
    "market": "market",
    "stress": "stress",
    "report": "report",
    "ingest": "ingest",
    "reconcile": "reconcile",
    "backtest": "backtest",
    "calibrate": "calibrate",
    "plan": "plan",
}


_ROLE = re.compile(r":[a-z]+:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")


def plain(text: str) -> str:
    """``text`` without reST inline markup: double-backquoted literals, roles (:func:`x`) and strong
    emphasis become their plain text; a literal-block ``::`` becomes ``:``."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    return re.sub(r"(?<=\S)::(?=\s|$)", ":", text)


class HelpFormatter(argparse.HelpFormatter):
    """Plain-text help: reST markup removed, paragraphs of a description kept apart, indented blocks kept as is."""

    def _format_text(self, text):
        if "%(prog)" in text:
            text = text % dict(prog=self._prog)
        width = max(self._width - self._current_indent, 11)
        indent = " " * self._current_indent
        out = []
        for para in re.split(r"\n\s*\n", textwrap.dedent(plain(text)).strip("\n")):
            lines = para.splitlines()
            if all(ln.startswith((" ", "\t")) for ln in lines if ln.strip()):
                out.append("\n".join(indent + ln.rstrip() for ln in lines))
            else:
                out.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out) + "\n\n"

    def _expand_help(self, action):
        try:
            text = super()._expand_help(action)
        except (ValueError, TypeError, KeyError):  # a literal "%" in a help text ("-66 % to +500 %")
            text = self._get_help_string(action)
        return plain(text)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``HelpFormatter`` by default (its subcommand parsers too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="gpurisk", description="Batch portfolio-margin engine for crypto derivatives.")
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
    from .commands.signals import Interrupted, stop_on_signals

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with stop_on_signals():
            return int(args.func(args) or 0)
    except GpuriskError as exc:
        print(f"gpurisk {args.command}: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        print(f"gpurisk {args.command}: stopped: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"gpurisk {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``gpurisk`` console script: ``main``, then exit with its code.

    Once the work is done the exit skips the interpreter's teardown (freeing every module and object, and
    the native runtimes' destructors: about 0.6 s after a batch run, which loaded pandas, JAX, Numba and
    Dask): the ``atexit`` handlers run (logging's flush among them), stdout and stderr are flushed, then
    the process ends. Every output is written and closed by then (the project's writer is atomic), and the
    embedded cluster is closed inside ``main``. A non-daemon thread still running means work in flight:
    then the normal exit waits for it. After a stop signal the process ends at once (logging flushed, no
    ``atexit`` handlers), whatever is running: a runtime stopped mid-work (XLA's compiler threads, a
    cluster's I/O loop) can crash a normal teardown (SIGSEGV, seen about one SIGTERM in three), which
    would turn exit 143 into -11."""
    import atexit
    import logging
    import os
    import signal
    import threading

    code = main()
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        logging.shutdown()
    elif any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    else:
        atexit._run_exitfuncs()  # what a normal exit runs (logging.shutdown is one), then no teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
