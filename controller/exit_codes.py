"""The exit codes of every ``signaltwin`` command, in one table.

Only the CLI calls ``sys.exit``; commands return one of these. docs/operations.md
documents the same table for operators and for systemd's ``SuccessExitStatus=``.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    """What a ``signaltwin`` command's exit status means."""

    OK = 0
    """Done; for ``run``, stopped by a signal after the running cycle ended in time."""
    PROBLEM = 1
    """The work was done and found a problem (verification failed, gate refused,
    the daemon's shutdown deadline passed with a cycle still running)."""
    USAGE = 2
    """Bad arguments or an invalid settings file: nothing was started."""
    COMPONENT = 3
    """A component failed (HSM, controllers, SUMO, metrics port, a failed cycle)."""
    INTERRUPTED = 130
    """Interrupted (Ctrl-C, or a second SIGINT forced the daemon's exit)."""
