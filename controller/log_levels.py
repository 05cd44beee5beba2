"""Log levels of the libraries the daemon uses, set where logging is configured.

Some libraries log every routine operation at INFO: asyncua writes a line per
read, browse and session step (about 141 lines a cycle for the demo district),
APScheduler one per job start. The daemon logs its cycles itself, so at
``info`` those lines only bury what an operator needs to see.
"""

from __future__ import annotations

__all__ = ["set_library_levels"]

import logging


def set_library_levels(level: int) -> None:
    """Keep the chatty libraries' loggers at WARNING unless ``level`` is debug.

    Args:
        level: the root logger's level (``logging.INFO``, ...).
    """
    debug = level <= logging.DEBUG
    # at debug, asyncua's lines are what one needs to follow an OPC UA exchange
    logging.getLogger("asyncua").setLevel(logging.NOTSET if debug else logging.WARNING)
    # a line per job start says nothing the daemon's own cycle lines do not
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, level))
