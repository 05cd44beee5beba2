"""Malformed OPC UA requests over real TCP to a controller in its own process; the daemon
still stages afterwards, the server survives and its memory stays bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.actuation_fleet import configuration, signed, timing
from tests.support.opcua_fuzz import CASES, ServerProcess, daemon_round_trip, fuzz
from tests.support.softkeys import SoftwareSigner

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_malformed_requests_leave_the_controller_serving(tmp_path: Path) -> None:
    signer = SoftwareSigner()
    server = ServerProcess.start(tmp_path / "ctl", signer.public_key_pem())
    try:
        envelope = signed(signer, configuration(1, {"J1": timing()}))
        assert asyncio.run(daemon_round_trip(server.directory, server.url, envelope, 1))
        before = server.rss_mib()
        outcomes = asyncio.run(fuzz(server.url, 240, seed=14))
        assert sum(outcomes.values()) == 240
        assert server.alive()
        # Every case that reaches the security layer is answered with ERR and a closed socket.
        for kind in ("oversized_chunk", "policy_none", "bogus_policy", "garbage_open"):
            assert outcomes.get(f"{kind}:closed_err", 0) == 240 // len(CASES), outcomes
        envelope2 = signed(signer, configuration(2, {"J1": timing()}))
        assert asyncio.run(daemon_round_trip(server.directory, server.url, envelope2, 2))
        assert server.rss_mib() - before < 64
    finally:
        server.stop()
