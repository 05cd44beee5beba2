"""Fuzz a live emulated controller over real TCP; print JSON lines.

Starts one emulated controller (SignAndEncrypt, pinned) in its own process,
checks a proper daemon session stages a plan, sends ``--requests`` (default
1200) malformed requests - random bytes after Hello, oversized chunks, wrong
policies, truncated messages, garbage OpenSecureChannel - each on its own
connection, then checks the daemon session again and the server's RSS.

Figures (one JSON object per line):
``opcua_fuzz_requests`` (count), ``opcua_fuzz_rss_growth_mib`` (MiB, ratio null),
``opcua_fuzz_daemon_ok`` (1/0).

    python bench/opcua_fuzz.py [--requests 1200] [--seed 14]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.actuation_fleet import configuration, signed, timing  # noqa: E402
from tests.support.opcua_fuzz import ServerProcess, daemon_round_trip, fuzz  # noqa: E402
from tests.support.softkeys import SoftwareSigner  # noqa: E402


def _line(figure: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": value, "unit": unit, **extra}), flush=True)


def main() -> int:
    """Run the fuzz bench; exit 0 when the daemon session still works afterwards."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be positive")
    signer = SoftwareSigner()
    with tempfile.TemporaryDirectory(prefix="opcua-fuzz-") as tmp:
        server = ServerProcess.start(Path(tmp) / "ctl", signer.public_key_pem())
        try:
            first = signed(signer, configuration(1, {"J1": timing()}))
            ok_before = asyncio.run(daemon_round_trip(server.directory, server.url, first, 1))
            rss_before = server.rss_mib()
            started = time.monotonic()
            outcomes = asyncio.run(
                fuzz(server.url, args.requests, seed=args.seed, concurrency=args.concurrency)
            )
            elapsed = time.monotonic() - started
            alive = server.alive()
            second = signed(signer, configuration(2, {"J1": timing()}))
            ok_after = alive and asyncio.run(
                daemon_round_trip(server.directory, server.url, second, 2)
            )
            rss_after = server.rss_mib()
        finally:
            server.stop()
    daemon_ok = int(bool(ok_before and ok_after and alive))
    _line(
        "opcua_fuzz_requests",
        sum(outcomes.values()),
        "requests",
        ratio=None,
        seconds=round(elapsed, 2),
        outcomes=outcomes,
    )
    _line(
        "opcua_fuzz_rss_growth_mib",
        round(rss_after - rss_before, 2),
        "MiB",
        ratio=None,
        rss_before_mib=round(rss_before, 2),
        rss_after_mib=round(rss_after, 2),
    )
    _line("opcua_fuzz_daemon_ok", daemon_ok, "bool", ratio=None)
    return 0 if daemon_ok else 1


if __name__ == "__main__":
    sys.exit(main())
