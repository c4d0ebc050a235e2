"""Command line: ``python -m explorer serve | sweep | evaluate | zoo | convert | bench | compare | ablation``.

A thin dispatcher: each command is a module of this package with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> exit code``; flags and helpers they share live in
``common``. Every command runs inside one error handler: a user error (a bad flag value, an
unknown name, a missing or rejected file) is one line ``error: ...`` on stderr and exit
status 2, never a traceback. Nothing outside this package imports it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from explorer.core.device import check_device
from explorer.core.errors import message_of
from explorer.executors.base import ExecutorError

from . import ablation, bench, compare, convert, evaluate, serve, sweep, zoo
from .common import check_out

# Subcommand name -> module, in the order ``--help`` lists them.
COMMANDS: dict[str, ModuleType] = {"serve": serve, "sweep": sweep, "evaluate": evaluate, "zoo": zoo,
                                   "convert": convert, "bench": bench, "compare": compare,
                                   "ablation": ablation}

# What a user can cause by what they typed: one line, exit 2. ``CheckpointError`` is a ValueError;
# ``FileNotFoundError``/``PermissionError``/``IsADirectoryError`` are OSErrors; ``ExecutorError``:
# Ray missing or unreachable.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, ExecutorError)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose parse errors (``--n 1e12``: not an int, a missing value, an
    unknown flag) are one line ``error: ...`` on stderr and exit status 2, as every other user
    error, instead of the usage block (``--help`` shows it)."""

    def error(self, message: str):   # argparse's contract: print and exit, never return
        print(f"error: {self.prog}: {' '.join(message.split())} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (each subparser's ``run`` default is the command to call)."""
    ap = OneLineParser(prog="python -m explorer", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=first_paragraph(module.__doc__))
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return ap


def first_paragraph(doc: str) -> str:
    """A docstring's first paragraph as one line (a summary wrapped over two lines stays whole)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def error_line(exc: BaseException) -> str:
    """``exc`` as one line (a KeyError's message without the quotes ``str`` adds)."""
    text = " ".join(message_of(exc).split()) or type(exc).__name__
    return f"error: {text}"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit status (2 for a user error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:   # --help (0) or a parse error, already printed in one line (2)
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        check_device(getattr(args, "device", None))   # every command's --device and --out, before any work
        check_out(getattr(args, "out", None))
        return args.run(args)
    except USER_ERRORS as exc:
        logging.getLogger("explorer.cli").debug("user error", exc_info=True)
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:   # a command may say what it kept (sweep: points done, stored)
        print(f"error: interrupted {exc}".rstrip(), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
