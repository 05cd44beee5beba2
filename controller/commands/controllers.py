"""``signaltwin controllers serve|status``: emulated OPC UA controllers, and a look at them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from configs.errors import ConfigError
from configs.settings import Settings
from configs.settings_file import load_settings, read_secret
from configs.timing import BaseProgram, NetworkRef
from controller.exit_codes import ExitCode

if TYPE_CHECKING:
    # actuation (asyncua, cryptography) and simulators (SUMO) are imported inside
    # the commands, so that registering them at every `signaltwin` start stays cheap.
    from actuation import EmulatedFleet, SignalField

SERVE_DESCRIPTION = """\
Run one emulated traffic controller (a secured OPC UA server) per traffic light,
all driving one field emulator (a SUMO of the network with hidden demand).

Each controller listens on the URL of its [[controllers.endpoints]] entry (or,
with controllers.auto_provision and no endpoints, on 127.0.0.1 from
--base-port upwards), with the certificate and key
<pki>/controller-<id>-cert.der / -key.pem. It accepts only SignAndEncrypt
sessions (Basic256Sha256, Aes256Sha256RsaPss) from the pinned client
certificate (controllers.client_certificate, plus --trust-client) with the
configured user and password, and only plans signed by controllers.public_keys
that pass every safety invariant against its own base program and limits.

On start it prints one JSON line per controller ({"intersection", "url",
"server_certificate"}); it runs until SIGINT/SIGTERM.

Exit codes: 0 stopped cleanly; 2 bad configuration; 3 a component (SUMO, a
port, a certificate) failed.
"""

STATUS_DESCRIPTION = """\
Connect to every configured controller as the daemon does (pinned server
certificate, client certificate, user and password) and print what each one
reports: field time, health, active and staged plan, detectors, measurements.

Exit codes: 0 every controller answered and is healthy; 1 some did not or
report a fault; 2 bad configuration; 3 none could be reached.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``controllers serve`` and ``controllers status``."""
    parser = subparsers.add_parser(
        "controllers",
        help="emulated OPC UA traffic controllers (serve) and a status check",
        description="Emulated OPC UA traffic controllers; see docs/controller-contract.md.",
    )
    sub = parser.add_subparsers(dest="controllers_command", metavar="SUBCOMMAND")
    serve = sub.add_parser(
        "serve",
        help="run emulated controllers over a field emulator",
        description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", type=Path, required=True, help="settings TOML")
    serve.add_argument("--pki", type=Path, help="certificate directory (default <state_dir>/pki)")
    serve.add_argument("--host", default="127.0.0.1", help="address for auto endpoints")
    serve.add_argument("--base-port", type=int, default=4841, help="first port for auto endpoints")
    serve.add_argument(
        "--speed", type=float, default=1.0, help="field seconds per wall second (default 1)"
    )
    serve.add_argument("--seed", type=int, default=0, help="field random seed (hidden demand)")
    serve.add_argument("--routes", type=Path, help="field demand: a SUMO routes file")
    serve.add_argument(
        "--demand-profile",
        type=Path,
        help="field demand: a demand profile JSON (default <network>.demand.json if present)",
    )
    serve.add_argument(
        "--begin-s",
        type=int,
        help="field time at start (default: 15 minutes before the demand profile's first "
        "peak, else 0)",
    )
    serve.add_argument(
        "--staged-ttl-s", type=float, default=120.0, help="field seconds a staged plan waits"
    )
    serve.add_argument(
        "--trust-client",
        type=Path,
        action="append",
        default=[],
        help="also pin this client certificate, read-only (an operator's OPC UA tool); repeatable",
    )
    serve.set_defaults(func=_serve)
    status = sub.add_parser(
        "status",
        help="read every controller as the daemon does",
        description=STATUS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("--config", type=Path, required=True, help="settings TOML")
    status.add_argument("--wait-s", type=float, default=20.0, help="how long to wait for sessions")
    status.add_argument("--json", action="store_true", help="print JSON lines")
    status.set_defaults(func=_status)

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return ExitCode.USAGE

    parser.set_defaults(func=usage)


@dataclass(frozen=True)
class ServedEndpoint:
    """Where one emulated controller listens."""

    intersection: str
    host: str
    port: int
    certificate: Path
    private_key: Path


def plan_endpoints(
    settings: Settings, intersections: Sequence[str], pki: Path, host: str, base_port: int
) -> list[ServedEndpoint]:
    """The controllers to serve: the configured endpoints, or one per light (auto)."""
    from actuation import controller_certificate_paths

    ctl = settings.controllers
    found: list[ServedEndpoint] = []
    if ctl.endpoints:
        for e in ctl.endpoints:
            if e.intersection not in intersections:
                raise ConfigError(
                    f"controllers.endpoints: {e.intersection!r} is not a traffic light of "
                    f"{settings.simulation.network}"
                )
            url = urlparse(e.url)
            if url.port is None:
                raise ConfigError(f"controllers.endpoints[{e.intersection}].url needs a port")
            paths = controller_certificate_paths(pki, e.intersection)
            found.append(
                ServedEndpoint(
                    e.intersection,
                    url.hostname or host,
                    url.port,
                    e.server_certificate or paths.certificate,
                    paths.private_key,
                )
            )
        return found
    if not ctl.auto_provision:
        raise ConfigError(
            "controllers.endpoints is empty: list the controllers to serve, or set "
            "controllers.auto_provision = true (demo) to serve one per traffic light"
        )
    for i, tls in enumerate(sorted(intersections)):
        paths = controller_certificate_paths(pki, tls)
        found.append(ServedEndpoint(tls, host, base_port + i, paths.certificate, paths.private_key))
    return found


def build_fleet(
    settings: Settings,
    field_port: SignalField,
    network: NetworkRef,
    bases: Mapping[str, BaseProgram],
    endpoints: Sequence[ServedEndpoint],
    extra_clients: Sequence[Path] = (),
    staged_ttl_s: float = 120.0,
) -> EmulatedFleet:
    """Emulated controllers for ``endpoints``, provisioned from ``settings``.

    Raises:
        ConfigError: a key, certificate or the password is missing.
    """
    from actuation import (
        CertificatePair,
        ControllerAccess,
        ControllerCore,
        ControllerProvisioning,
        EmulatedController,
        EmulatedFleet,
        PasswordHash,
        TrustedKeys,
        pinned_clients,
    )

    ctl = settings.controllers
    if not ctl.public_keys:
        raise ConfigError(
            "controllers.public_keys is empty: the controllers need the signing public key "
            "('signaltwin hsm info --export-public-key FILE')"
        )
    pems = []
    for path in ctl.public_keys:
        try:
            pems.append(Path(path).read_bytes())
        except OSError as e:
            raise ConfigError(f"controllers.public_keys: cannot read {path}: {e.strerror}") from e
    trusted = TrustedKeys.from_pem(pems)
    if ctl.client_certificate is None:
        raise ConfigError("controllers.client_certificate is not set: nothing to pin")
    password = read_secret(ctl.password_file, "controllers.password_file").get_secret_value()
    access = ControllerAccess(
        user=ctl.user,
        password=PasswordHash.create(password),
        client_certificates_der=pinned_clients([ctl.client_certificate]),
        operator_certificates_der=pinned_clients(extra_clients),
    )
    controllers = []
    for ep in endpoints:
        base = bases.get(ep.intersection)
        if base is None:
            raise ConfigError(f"no base program for traffic light {ep.intersection!r}")
        provisioning = ControllerProvisioning(
            tls_id=ep.intersection,
            base=base,
            limits=settings.safety.limits_for(ep.intersection),
            network=network,
            trusted_keys=trusted,
            staged_ttl_s=staged_ttl_s,
            state_dir=settings.state_dir / "controllers",
        )
        controllers.append(
            EmulatedController(
                ControllerCore(provisioning, field_port),
                CertificatePair(ep.certificate, ep.private_key),
                access,
                host=ep.host,
                port=ep.port,
            )
        )
    return EmulatedFleet(controllers)


def _field_config(settings: Settings, args: argparse.Namespace) -> Any:
    from simulators.field import FieldConfig
    from simulators.netbuild import DemandProfile

    net = Path(settings.simulation.network)
    profile = args.demand_profile
    if args.routes is None and profile is None:
        guess = net.with_name(net.name.removesuffix(".net.xml") + ".demand.json")
        profile = guess if guess.is_file() else None
    begin_s = args.begin_s
    if begin_s is None:
        begin_s = max(0, DemandProfile.load(profile).peak_begin_s - 900) if profile else 0
    return FieldConfig(
        net_path=net,
        detectors_path=settings.simulation.detectors,
        routes_path=args.routes,
        demand_profile_path=profile,
        seed=args.seed,
        begin_s=begin_s,
        step_length_s=settings.simulation.step_length_s,
    )


def _serve(args: argparse.Namespace) -> int:
    from actuation import provision_demo_pki
    from simulators.field import FieldEmulator, FieldSignals

    settings = load_settings(args.config)
    if args.speed <= 0:
        raise ConfigError(f"--speed must be positive, got {args.speed}")
    pki = args.pki or settings.state_dir / "pki"
    field = FieldEmulator(_field_config(settings, args))
    intersections = sorted(field.network.intersections)
    if settings.controllers.auto_provision:
        provision_demo_pki(pki, intersections)
    endpoints = plan_endpoints(settings, intersections, pki, args.host, args.base_port)
    network = NetworkRef(id=settings.network_id, sha256=field.network.sha256)
    fleet = build_fleet(
        settings,
        FieldSignals(field),
        network,
        field.network.base_programs(),
        endpoints,
        args.trust_client,
        args.staged_ttl_s,
    )
    field.start()
    try:
        asyncio.run(_serve_until_signalled(fleet, field, args.speed, endpoints))
    finally:
        field.close()
    return ExitCode.OK


async def _serve_until_signalled(
    fleet: EmulatedFleet, field: Any, speed: float, endpoints: Sequence[ServedEndpoint]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await fleet.start()
    try:
        by_id = fleet.by_id()
        for ep in endpoints:
            line = {
                "intersection": ep.intersection,
                "url": by_id[ep.intersection].url,
                "server_certificate": str(ep.certificate),
            }
            print(json.dumps(line), flush=True)
        print(
            f"signaltwin: {len(endpoints)} controllers serving; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        field.start_thread(speed)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            field.stop_thread()
        await fleet.stop()


def _status(args: argparse.Namespace) -> int:
    from actuation import ThreadedActuator, pool_from_settings

    settings = load_settings(args.config)
    password = read_secret(
        settings.controllers.password_file, "controllers.password_file"
    ).get_secret_value()
    actuator = ThreadedActuator(
        lambda: pool_from_settings(settings.controllers, password), start_wait_s=args.wait_s
    )
    try:
        snaps = actuator.read_all()
    finally:
        actuator.close()
    bad = 0
    for tls in sorted(snaps):
        snap = snaps[tls]
        healthy = snap.reachable and snap.health == "ok"
        bad += not healthy
        if args.json:
            print(json.dumps(snap.to_dict(), sort_keys=True))
        elif snap.reachable:
            print(
                f"{tls:<16} field {snap.field_time_s:9.0f}s  {snap.health:<10} "
                f"active {snap.active_sequence} ({snap.active_digest[:12] or 'base'})  "
                f"staged {snap.staged_sequence}  detectors {len(snap.detectors)}  "
                f"wait {snap.mean_wait_s:.1f}s  NOx {snap.nox_mg:.0f}mg"
            )
        else:
            print(f"{tls:<16} UNREACHABLE: {snap.error}")
    if snaps and all(not s.reachable for s in snaps.values()):
        return ExitCode.COMPONENT
    return ExitCode.PROBLEM if bad else ExitCode.OK
