"""The README's main job, end to end: `signaltwin demo --cycles 3`, then an offline audit.

Real parts only: SUMO (field emulator and twin workers), 47 emulated OPC UA
controllers on 127.0.0.1 (SignAndEncrypt), a SoftHSM2 token, the daemon's
scheduler and cycle, the SQLite ledger; the auditor then verifies the ledger
with nothing but the public key, in a separate process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.ledger import Ledger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLI = [sys.executable, "-c", "from controller.cli import main; main()"]


def test_demo_runs_three_cycles_and_its_ledger_verifies(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    demo = subprocess.run(
        [*CLI, "demo", "--state-dir", str(state), "--cycles", "3", "--speed", "8"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = demo.stdout + demo.stderr
    assert demo.returncode == 0, log[-4000:]
    assert "47 controllers listening" in demo.stdout
    assert "ledger verifies" in demo.stdout

    ledger_path = state / "ledger.sqlite"
    pubkey = state / "hsm" / "signing-key.pub.pem"
    with Ledger.open(ledger_path, readonly=True) as ledger:
        cycles = [r for r in ledger.iter_records("cycle") if r.body["outcome"] != "skipped"]
        assert len(cycles) >= 3, [r.body["outcome"] for r in cycles]
        # every cycle got through observe and recorded its stage timings
        for record in cycles:
            assert "observe" in record.body["report"]["stage_s"]
        deployments = ledger.find("deployment")
        assert [d.body["sequence"] for d in deployments] == sorted(
            {d.body["sequence"] for d in deployments}
        ), "a sequence was reused"
        for d in deployments:
            if d.body["result"] == "deployed":
                assert d.body["push"]["results"]["outcome"] == "activated"
        assert ledger.find("key_enrolment"), "the signing key was not enrolled"

    audit = subprocess.run(
        [*CLI, "audit", "verify", "--ledger", str(ledger_path), "--pubkey", str(pubkey), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    verdict = json.loads(audit.stdout)
    assert verdict["ok"] is True and verdict["records"] >= 4

    # a tampered copy does not verify (the audit is not a check that cannot fail)
    tampered = tmp_path / "tampered.sqlite"
    tampered.write_bytes(ledger_path.read_bytes())
    data = bytearray(tampered.read_bytes())
    marker = data.find(b'"outcome":"')
    assert marker > 0
    data[marker + 11] = ord("X")
    tampered.write_bytes(bytes(data))
    bad = subprocess.run(
        [*CLI, "audit", "verify", "--ledger", str(tampered), "--pubkey", str(pubkey)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
