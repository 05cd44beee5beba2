"""Crash safety: SIGKILL a process in the middle of appends, several times, then verify.

The child appends records ``n = 0, 1, 2, ...`` with ``dedupe_key = "rec-<n>"``,
signing a checkpoint every 7 records; after each kill a new child starts again
from ``n = 0`` (the re-appends of existing keys must be no-ops), exactly as a
restarted daemon retrying its last cycle would. Afterwards the ledger must
verify with the public key, hold each ``n`` exactly once in order, and have no
half-written record.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controller.ledger import Ledger, verify_ledger
from hsm.verify import load_public_key

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import hashlib, sys
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from controller.ledger import Ledger

    class FileSigner:
        def __init__(self, pem):
            self._key = serialization.load_pem_private_key(pem, password=None)
            der = self._key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            self.keyid = hashlib.sha256(der).hexdigest()
        def public_key_pem(self):
            return self._key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        def sign(self, data):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    path, key_path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    signer = FileSigner(open(key_path, "rb").read())
    ledger = Ledger.open(path, signer=signer, checkpoint_every=7)
    print("ready", flush=True)
    for n in range(total):
        ledger.append("config_change", {"sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                                        "summary": f"{n} " + "x" * (n % 50) * 40},
                      dedupe_key=f"rec-{n}")
    ledger.checkpoint(signer)
    ledger.close()
    print("done", flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_during_appends_leaves_a_verifiable_ledger(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp_path / "signer.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ledger_path = tmp_path / "ledger.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rng = random.Random(20261123)
    total = 100_000  # never reached before the kill
    sizes: list[int] = []
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, str(script), str(ledger_path), str(key_path), str(total)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.15, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        con = sqlite3.connect(ledger_path)
        sizes.append(con.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        con.close()
    assert sizes[-1] > 0 and sizes == sorted(sizes), sizes
    assert len(set(sizes)) > 3, f"the kills should land at different points: {sizes}"
    print("record counts after each SIGKILL:", sizes)

    # the restarted process finishes cleanly after all that (a short run)
    done = subprocess.run(
        [sys.executable, str(script), str(ledger_path), str(key_path), str(sizes[-1] + 5)],
        capture_output=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == [b"ready", b"done"]

    result = verify_ledger(ledger_path, [load_public_key(pub)], require_checkpoint=True)
    assert result.ok, [str(p) for p in result.problems]
    assert result.records == sizes[-1] + 5 and result.covered_size == result.records
    with Ledger.open(ledger_path, readonly=True) as led:
        ns = [int(r.body["summary"].split()[0]) for r in led.iter_records()]
        assert led.integrity_problems() == []
    assert ns == list(range(len(ns)))  # every n once, in order: no duplicate, no gap
