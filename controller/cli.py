"""The ``signaltwin`` command line: one entry point, one module per command.

Each module in :mod:`controller.commands` exposes ``register(subparsers)``, which
adds its sub-command and sets ``func`` (taking the parsed namespace, returning an
exit code). Only this module calls :func:`sys.exit`.

Registering runs at every start, even for ``--help``, so a command module imports
its heavy dependencies (torch, SUMO, asyncua, the HSM, the daemon) only inside
the function that runs the command.

Exit codes: :class:`controller.exit_codes.ExitCode` (the table in
docs/operations.md).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from configs.errors import ConfigError, SignaltwinError
from controller.exit_codes import ExitCode
from controller.log_levels import set_library_levels

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with every command module's sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="signaltwin",
        description=(
            "Closed-loop traffic-signal control: observe controllers, propose timings, "
            "prove them on a SUMO twin, sign in an HSM, push over OPC UA, record in a ledger."
        ),
        epilog=(
            f"Exit codes: {ExitCode.OK:d} ok, {ExitCode.PROBLEM:d} problem found, "
            f"{ExitCode.USAGE:d} usage/config error, {ExitCode.COMPONENT:d} component failure, "
            f"{ExitCode.INTERRUPTED:d} interrupted (see docs/operations.md). "
            "Run 'signaltwin COMMAND --help' for a command's options."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from controller import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"controller.commands.{info.name}")
        module.register(sub)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # `signaltwin -v demo` runs the daemon's cycle in this process: asyncua's
    # per-read INFO lines would drown it
    set_library_levels(level)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen command and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        code: int = func(args)
        return code
    except ConfigError as e:
        print(f"signaltwin: configuration error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except SignaltwinError as e:
        print(f"signaltwin: {type(e).__name__}: {e}", file=sys.stderr)
        return ExitCode.COMPONENT
    except KeyboardInterrupt:
        print("signaltwin: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # output piped into e.g. `head`: stop quietly, like other Unix tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
