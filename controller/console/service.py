"""The console assembled from the settings: its feed, its HTTPS and users, its server.

:func:`start_console` is what ``signaltwin run`` and ``signaltwin demo`` call
before the daemon starts: it checks the ``[console]`` settings (HTTPS and a users
file off loopback), binds the port (so a port already taken fails the start at
once), and starts reading the ledger. The returned :class:`ConsoleService` is a
:class:`~controller.contracts.CycleObserver` to hand to the daemon.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import datetime

from configs.errors import ConfigError, SignaltwinError
from configs.settings import ConsoleSettings, Settings
from configs.settings_file import secret_path
from controller.console.auth import BasicAuth, load_users
from controller.console.feed import ConsoleFeed
from controller.console.network_map import render_map
from controller.console.page import render_page, static_asset
from controller.console.server import ConsoleAssets, ConsoleServer, start_console_server
from controller.console.views import ConsoleContext
from controller.contracts import CycleReportLike

__all__ = ["ConsoleService", "console_context", "start_console", "tls_context"]

logger = logging.getLogger(__name__)


@dataclass
class ConsoleService:
    """The running console: the daemon's cycle observer, and the server to close."""

    feed: ConsoleFeed
    server: ConsoleServer

    @property
    def url(self) -> str:
        """The page's URL."""
        return self.server.url

    def cycle_started(self, slot_time: datetime) -> None:
        """Tell the page a cycle began."""
        self.feed.cycle_started(slot_time)

    def cycle_finished(
        self, slot_time: datetime, report: CycleReportLike, result: str, duration_s: float
    ) -> None:
        """Tell the page a cycle ended."""
        self.feed.cycle_finished(slot_time, report, result, duration_s)

    def close(self) -> None:
        """Stop serving and reading."""
        self.server.close()


def console_context(settings: Settings, intersections: tuple[str, ...]) -> ConsoleContext:
    """What the console takes from the settings."""
    return ConsoleContext(
        network_id=settings.network_id,
        mode=settings.mode,
        interval_s=settings.schedule.interval_s,
        controllers=tuple(dict.fromkeys(e.intersection for e in settings.controllers.endpoints)),
        intersections=tuple(sorted(set(intersections))),
        min_wait_reduction=settings.gate.min_wait_reduction,
        max_nox_increase=settings.gate.max_nox_increase,
        cycles_shown=settings.console.cycles_shown,
    )


def tls_context(console: ConsoleSettings) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2 or later), or None without a certificate.

    Raises:
        ConfigError: the certificate or key cannot be read or do not match.
    """
    if console.tls_certificate is None or console.tls_private_key is None:
        return None
    key = secret_path(console.tls_private_key, "console.tls_private_key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(console.tls_certificate), keyfile=str(key))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"console.tls_certificate ({console.tls_certificate}) / console.tls_private_key "
            f"({console.tls_private_key}): cannot load them: {e}; give a PEM certificate and "
            "its unencrypted PEM key"
        ) from e
    return context


def start_console(settings: Settings, *, port: int | None = None) -> ConsoleService | None:
    """Start the console the settings describe (None when ``console.enabled`` is false).

    Args:
        settings: the daemon's settings.
        port: serve on this port instead of ``console.port`` (the demo's ``--console-port``).

    Raises:
        ConfigError: HTTPS or the users file is missing off loopback, or unreadable.
        SignaltwinError: the address cannot be bound (the port is taken, say).
    """
    from simulators.geometry import network_geometry

    console = settings.console
    if not console.enabled:
        return None
    tls = tls_context(console)
    auth = BasicAuth(load_users(console.users_file)) if console.users_file else None
    geometry = network_geometry(settings.simulation.network)
    context = console_context(settings, tuple(geometry.intersections))
    feed = ConsoleFeed(context, settings.ledger.path)

    def map_svg() -> bytes:
        state = feed.state()
        statuses = {i.id: i.status for i in state.intersections}
        return render_map(geometry, statuses, down=state.controllers.down, standalone=True).encode()

    assets = ConsoleAssets(
        page=render_page(render_map(geometry), settings.network_id),
        script=static_asset("console.js"),
        style=static_asset("console.css"),
        map_svg=map_svg,
        video_dir=settings.video.directory,
    )
    bind_port = console.port if port is None else port
    try:
        server = start_console_server(
            feed,
            assets,
            console.address,
            bind_port,
            tls=tls,
            auth=auth,
            max_clients=console.max_clients,
        )
    except OSError as e:
        raise SignaltwinError(
            f"cannot start the operator console on {console.address}:{bind_port}: "
            f"{e.strerror or e} (change console.address / console.port, or set "
            "console.enabled = false)"
        ) from e
    feed.start()
    return ConsoleService(feed, server)
