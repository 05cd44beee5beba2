"""Issue 14: ``audit verify`` does not pass a rewritten, thinned or rolled-back history.

Real SQLite ledgers signed with a software ECDSA key (as the other tamper tests),
tampered with the way an attacker with write access to the file would: the
append-only triggers dropped, checkpoints deleted, records rewritten with their
leaf and previous-record hashes recomputed so the chain is whole again.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from configs.digests import canonical_json
from controller.cli import run
from controller.ledger import leaf_hash, read_heads, verify_ledger
from hsm.verify import VerificationKey, load_public_key
from tests.support.ledgerdata import build_ledger, tamper, write_pubkey
from tests.support.softkeys import SoftwareSigner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECORDS = 16  # build_ledger(cycles=6)
CHECKPOINTS = 4  # every 4 records (sizes 4, 8, 12, 16); the final one is the same head


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SoftwareSigner]:
    d = tmp_path_factory.mktemp("strict")
    signer = SoftwareSigner()
    build_ledger(d / "ledger.sqlite", signer, cycles=6, checkpoint_every=4)
    write_pubkey(signer, d / "pub.pem")
    return d / "ledger.sqlite", signer


@pytest.fixture
def copy(pristine: tuple[Path, SoftwareSigner], tmp_path: Path) -> Path:
    dest = tmp_path / "ledger.sqlite"
    dest.write_bytes(pristine[0].read_bytes())
    return dest


@pytest.fixture
def keys(pristine: tuple[Path, SoftwareSigner]) -> list[VerificationKey]:
    return [load_public_key(pristine[1].public_key_pem())]


def rewrite_with_recomputed_hashes(path: Path, index: int) -> None:
    """Change record ``index``'s body and re-chain every later record (hashes recomputed)."""
    con = sqlite3.connect(path, isolation_level=None)
    for action in ("update", "delete"):
        con.execute(f"DROP TRIGGER IF EXISTS records_no_{action}")
    rows = con.execute("SELECT idx, body FROM records ORDER BY idx").fetchall()
    prev = None
    for idx, body in rows:
        doc = json.loads(body)
        if idx == index:
            assert doc["kind"] == "measured_delta"
            doc["body"]["measured"]["wait_change"] = -0.99  # a much better field result
        if prev is not None and idx >= index:
            doc["prev"] = prev
        raw = canonical_json(doc)
        digest = leaf_hash(raw)
        con.execute("UPDATE records SET body = ?, leaf_hash = ? WHERE idx = ?", (raw, digest, idx))
        prev = digest.hex()
    con.close()


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in a fresh interpreter (``python -m controller.cli``)."""
    code = "import sys; from controller.cli import run; sys.exit(run(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_copy_with_its_checkpoints_deleted_fails(
    copy: Path, keys: list[VerificationKey], pristine: tuple[Path, SoftwareSigner]
) -> None:
    tamper(copy, "DELETE FROM checkpoints")
    result = verify_ledger(copy, keys)
    assert not result.ok
    assert result.first_problem is not None and result.first_problem.index == 1
    assert "covered by no verified signed checkpoint" in result.first_problem.message
    # the live-ledger relaxation never lets a ledger without any checkpoint through
    assert not verify_ledger(copy, keys, allow_uncovered_tail=True).ok
    pub = str(pristine[0].parent / "pub.pem")
    done = cli("audit", "verify", "--ledger", str(copy), "--pubkey", pub)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith(f"FAILED: {copy}: record 1:")
    done = cli("audit", "verify", "--ledger", str(copy), "--pubkey", pub, "--allow-uncovered-tail")
    assert done.returncode == 1


def test_a_middle_checkpoint_deleted_fails(copy: Path, keys: list[VerificationKey]) -> None:
    tamper(copy, "DELETE FROM checkpoints WHERE seq = 2")
    result = verify_ledger(copy, keys)
    assert not result.ok
    assert result.first_problem is not None
    assert result.first_problem.where == "checkpoint" and result.first_problem.index == 3
    assert "checkpoint(s) 2 were deleted" in result.first_problem.message


def test_the_newest_checkpoint_deleted_fails_unless_the_tail_is_allowed(
    copy: Path, keys: list[VerificationKey]
) -> None:
    tamper(copy, f"DELETE FROM checkpoints WHERE seq = {CHECKPOINTS}")
    assert verify_ledger(copy, keys).covered_size == 12
    assert not verify_ledger(copy, keys).ok
    relaxed = verify_ledger(copy, keys, allow_uncovered_tail=True)
    assert relaxed.ok and "records 13..16 are not covered" in relaxed.warnings[0]


def test_records_rewritten_with_recomputed_hashes_and_no_checkpoints_fail(
    copy: Path, keys: list[VerificationKey], pristine: tuple[Path, SoftwareSigner]
) -> None:
    rewrite_with_recomputed_hashes(copy, 5)
    # with the checkpoints still there, the signed roots expose the rewrite
    assert not verify_ledger(copy, keys).ok
    tamper(copy, "DELETE FROM checkpoints")
    result = verify_ledger(copy, keys)
    # the chain itself is whole again: only the missing signed coverage tells
    assert not result.ok
    assert all("covered by no verified signed checkpoint" in p.message for p in result.problems)
    pub = str(pristine[0].parent / "pub.pem")
    assert cli("audit", "verify", "--ledger", str(copy), "--pubkey", pub).returncode == 1


def test_a_tail_cut_with_its_checkpoints_fails_against_the_exported_trusted_head(
    copy: Path, keys: list[VerificationKey], pristine: tuple[Path, SoftwareSigner], tmp_path: Path
) -> None:
    pub = str(pristine[0].parent / "pub.pem")
    head = tmp_path / "head.jsonl"
    done = cli(
        "audit", "verify", "--ledger", str(copy), "--pubkey", pub, "--export-head", str(head)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [kept] = read_heads(head)
    assert kept.size == RECORDS
    # 'audit checkpoints --export' writes the same newest head
    other = tmp_path / "checkpoints.jsonl"
    argv = ["audit", "checkpoints", "--ledger", str(copy), "--export", str(other)]
    assert run(argv) == 0
    assert read_heads(other)[0].note == kept.note
    # rollback: the tail and its checkpoints cut together; verifies on its own...
    tamper(copy, "DELETE FROM records WHERE idx > 12", "DELETE FROM checkpoints WHERE seq > 3")
    assert verify_ledger(copy, keys).ok
    # ...but not as an extension of the head the auditor kept
    done = cli(
        "audit", "verify", "--ledger", str(copy), "--pubkey", pub, "--trusted-head", str(head)
    )
    assert done.returncode == 1, done.stdout
    assert "record 13: missing: your trusted tree head covers 16 records" in done.stdout
    result = verify_ledger(copy, keys, trusted_heads=[kept])
    assert not result.ok


def test_a_trusted_head_file_that_is_not_signed_by_the_key_is_refused(
    copy: Path, keys: list[VerificationKey], tmp_path: Path
) -> None:
    head = tmp_path / "head.jsonl"
    assert run(["audit", "checkpoints", "--ledger", str(copy), "--export", str(head)]) == 0
    doc = json.loads(head.read_text())
    other = SoftwareSigner()
    doc["signature"] = __import__("base64").b64encode(other.sign(doc["note"].encode())).decode()
    head.write_text(json.dumps(doc) + "\n")
    result = verify_ledger(copy, keys, trusted_heads=read_heads(head))
    assert not result.ok and "trusted head" in str(result.first_problem)
