"""The auditor's tools load no daemon, simulator, torch or OPC UA code (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.ledgerdata import build_ledger, write_pubkey
from tests.support.softkeys import SoftwareSigner

ROOT = Path(__file__).resolve().parents[2]
DAEMON = ("cycle", "daemon", "wiring", "feedback", "recovery", "demo")
HEAVY = ("torch", "libsumo", "traci", "sumolib", "asyncua", "stable_baselines3", "simulators")


def test_audit_verify_imports_nothing_heavy(tmp_path: Path) -> None:
    signer = SoftwareSigner()
    build_ledger(tmp_path / "l.sqlite", signer, cycles=2)
    pub = write_pubkey(signer, tmp_path / "pub.pem")
    code = f"""
import argparse, sys
from controller.commands import audit
parser = argparse.ArgumentParser()
audit.register(parser.add_subparsers())
args = parser.parse_args(["audit", "verify", "--ledger", {str(tmp_path / "l.sqlite")!r},
                          "--pubkey", {str(pub)!r}])
code = args.func(args)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
loaded = sorted(m for m in sys.modules if m.startswith("controller.")
                and m.split(".")[1] in {DAEMON!r})
print(code, heavy, loaded)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 [] []"
