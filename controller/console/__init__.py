"""The operator console: a read-only web page served by the daemon and by the demo.

One concept per module:

- :mod:`~controller.console.views`: what the page shows (:class:`ConsoleState`
  and its parts, with their JSON);
- :mod:`~controller.console.digest`: :class:`LedgerDigest`, the ledger's records
  distilled into those views, bounded;
- :mod:`~controller.console.state`: the digest joined with the daemon's own
  cycle reports (:func:`build_state`);
- :mod:`~controller.console.feed`: :class:`ConsoleFeed`, the daemon's cycle
  observer that reads the ledger read-only in the background and publishes
  each change;
- :mod:`~controller.console.network_map`: the district as SVG, one marker per
  intersection;
- :mod:`~controller.console.page`: the HTML page, its script and stylesheet;
- :mod:`~controller.console.auth`: the users file (scrypt/PBKDF2 hashes) and
  HTTP Basic checks;
- :mod:`~controller.console.server`: the HTTP server (strict headers, SSE,
  videos, HTTPS);
- :mod:`~controller.console.service`: :func:`start_console`, all of it from the
  ``[console]`` settings.

It reads the ledger and is told about cycles; it changes nothing.
"""

from __future__ import annotations

from controller.console.auth import BasicAuth, PasswordHash, hash_password, load_users, parse_users
from controller.console.digest import LedgerDigest
from controller.console.feed import ConsoleFeed
from controller.console.network_map import MAP_STATUSES, render_map
from controller.console.server import (
    CONTENT_SECURITY_POLICY,
    ConsoleAssets,
    ConsoleServer,
    parse_range,
    sse_event,
    start_console_server,
)
from controller.console.service import ConsoleService, console_context, start_console
from controller.console.state import LiveCycles, build_state
from controller.console.views import ConsoleContext, ConsoleState

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAP_STATUSES",
    "BasicAuth",
    "ConsoleAssets",
    "ConsoleContext",
    "ConsoleFeed",
    "ConsoleServer",
    "ConsoleService",
    "ConsoleState",
    "LedgerDigest",
    "LiveCycles",
    "PasswordHash",
    "build_state",
    "console_context",
    "hash_password",
    "load_users",
    "parse_range",
    "parse_users",
    "render_map",
    "sse_event",
    "start_console",
    "start_console_server",
]
