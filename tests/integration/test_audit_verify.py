"""Tamper tests: every kind of after-the-fact change is caught by ``audit verify``, by index.

The ledger is a real SQLite file; tampering bypasses the append-only triggers
(dropping them, or editing the file's bytes) the way an attacker with file
access would.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from configs.digests import canonical_json
from controller.cli import run
from controller.ledger import Checkpoint, Ledger, verify_ledger
from controller.ledger.merkle import leaf_hash
from hsm.verify import VerificationKey, load_public_key
from tests.support.ledgerdata import build_ledger, tamper, write_pubkey
from tests.support.softkeys import SoftwareSigner

pytestmark = pytest.mark.integration

RECORDS = 16  # build_ledger(..., cycles=6): 1 key, 1 config, 4 x (deploy+cycle+measured), 2 refused


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SoftwareSigner]:
    d = tmp_path_factory.mktemp("pristine")
    signer = SoftwareSigner()
    build_ledger(d / "ledger.sqlite", signer, cycles=6, checkpoint_every=4)
    write_pubkey(signer, d / "pub.pem")
    return d / "ledger.sqlite", signer


@pytest.fixture
def ledger_copy(pristine: tuple[Path, SoftwareSigner], tmp_path: Path) -> Path:
    dest = tmp_path / "ledger.sqlite"
    dest.write_bytes(pristine[0].read_bytes())
    return dest


@pytest.fixture
def keys(pristine: tuple[Path, SoftwareSigner]) -> list[VerificationKey]:
    return [load_public_key(pristine[1].public_key_pem())]


def row(path: Path, index: int) -> tuple[str, str, str | None, bytes, bytes]:
    con = sqlite3.connect(path)
    r = con.execute(
        "SELECT kind, time, dedupe_key, leaf_hash, body FROM records WHERE idx = ?", (index,)
    ).fetchone()
    con.close()
    return r[0], r[1], r[2], bytes(r[3]), bytes(r[4])


def test_pristine_ledger_verifies(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    result = verify_ledger(ledger_copy, keys)
    assert result.ok, result.problems
    assert result.records == RECORDS and result.covered_size == RECORDS
    assert result.checkpoints == 4
    assert len(result.signatures) == 4 and all(s.ok for s in result.signatures.values())
    assert result.warnings == []


@pytest.mark.parametrize("index", range(1, RECORDS + 1))
def test_a_changed_byte_in_any_record_is_named(
    ledger_copy: Path, keys: list[VerificationKey], index: int
) -> None:
    body = row(ledger_copy, index)[4]
    data = bytearray(ledger_copy.read_bytes())
    at = data.find(body)
    assert at >= 0 and data.find(body, at + 1) < 0
    # flip one byte inside the record's "prev" hash: still valid JSON, same length
    pos = at + body.find(b'"prev":"') + 20
    data[pos] = ord("0") if data[pos] != ord("0") else ord("1")
    ledger_copy.write_bytes(bytes(data))
    result = verify_ledger(ledger_copy, keys)
    assert not result.ok
    first = result.first_problem
    assert first is not None and first.where == "record" and first.index == index, first
    assert "content changed" in first.message


def test_a_rewritten_record_with_recomputed_hash_is_named(
    ledger_copy: Path, keys: list[VerificationKey]
) -> None:
    kind, time, key, _, body = row(ledger_copy, 8)
    doc = json.loads(body)
    assert kind == "measured_delta"
    doc["body"]["measured"]["wait_change"] = -0.40  # a better-looking measurement
    new = canonical_json(doc)
    tamper(
        ledger_copy,
        "UPDATE records SET body = ?, leaf_hash = ? WHERE idx = 8",
        params=(new, leaf_hash(new)),
    )
    result = verify_ledger(ledger_copy, keys)
    assert not result.ok
    first = result.first_problem
    assert first is not None and first.index == 8 and "changed" in first.message, first
    assert any(p.where == "checkpoint" for p in result.problems)


def test_a_rewritten_last_record_is_caught_by_the_signed_checkpoint(
    ledger_copy: Path, keys: list[VerificationKey]
) -> None:
    doc = json.loads(row(ledger_copy, RECORDS)[4])
    doc["body"]["gate"]["reasons"] = ["nothing to see"]
    new = canonical_json(doc)
    tamper(
        ledger_copy,
        f"UPDATE records SET body = ?, leaf_hash = ? WHERE idx = {RECORDS}",
        params=(new, leaf_hash(new)),
    )
    result = verify_ledger(ledger_copy, keys)
    first = result.first_problem
    assert first is not None and first.where == "checkpoint"
    assert f"13..{RECORDS}" in first.message and "changed" in first.message


def test_a_deleted_record_is_named(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    tamper(ledger_copy, "DELETE FROM records WHERE idx = 6")
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and first.index == 6 and "missing" in first.message, first


def test_a_deleted_and_renumbered_record_is_named(
    ledger_copy: Path, keys: list[VerificationKey]
) -> None:
    tamper(
        ledger_copy,
        "DELETE FROM records WHERE idx = 9",
        "UPDATE records SET idx = idx - 1 WHERE idx > 9",
    )
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and first.index == 9, first
    assert "removed" in first.message


def test_deleted_last_records_are_named(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    tamper(ledger_copy, f"DELETE FROM records WHERE idx >= {RECORDS - 1}")
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and first.index == RECORDS - 1 and "missing" in first.message


def test_reordered_records_are_named(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    a, b = row(ledger_copy, 4), row(ledger_copy, 5)
    tamper(
        ledger_copy,
        "UPDATE records SET dedupe_key = NULL WHERE idx IN (4, 5)",
        "UPDATE records SET kind=?, time=?, dedupe_key=?, leaf_hash=?, body=? WHERE idx = 4",
        params=b,
    )
    tamper(
        ledger_copy,
        "UPDATE records SET kind=?, time=?, dedupe_key=?, leaf_hash=?, body=? WHERE idx = 5",
        params=a,
    )
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and first.index == 4 and "reordered" in first.message, first


def test_an_inserted_record_is_named(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    # a forged, well-formed deployment-looking record slipped in after record 10
    kind, time, _, prev_hash, _ = row(ledger_copy, 10)
    doc = json.loads(row(ledger_copy, 9)[4])
    doc.update(index=11, prev=leaf_hash(row(ledger_copy, 10)[4]).hex(), dedupe_key=None)
    forged = canonical_json(doc)
    tamper(
        ledger_copy,
        "UPDATE records SET idx = -idx WHERE idx > 10",
        "UPDATE records SET idx = -idx + 1 WHERE idx < 0",
    )
    tamper(
        ledger_copy,
        "INSERT INTO records(idx, kind, time, dedupe_key, leaf_hash, body) "
        "VALUES (11, ?, ?, NULL, ?, ?)",
        params=(doc["kind"], doc["time"], leaf_hash(forged), forged),
    )
    result = verify_ledger(ledger_copy, keys)
    first = result.first_problem
    assert first is not None and first.index == 11 and "inserted" in first.message, first


@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_a_truncated_file_is_detected(
    ledger_copy: Path, keys: list[VerificationKey], fraction: float
) -> None:
    data = ledger_copy.read_bytes()
    ledger_copy.write_bytes(data[: int(len(data) * fraction) // 4096 * 4096 + 100])
    result = verify_ledger(ledger_copy, keys)
    assert not result.ok
    assert str(ledger_copy) in str(result.first_problem) or result.first_problem.index


def test_an_empty_file_is_detected(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    ledger_copy.write_bytes(b"")
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and str(ledger_copy) in first.message


def test_a_replaced_checkpoint_is_named(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    # the attacker rewrote record 8 and re-signed checkpoint 2 (size 8) with their own key
    attacker = SoftwareSigner()
    with Ledger.open(ledger_copy, readonly=True) as led:
        origin = led.origin
        cp = led.checkpoints()[1]
    note = Checkpoint.make_note(origin, cp.size, b"\x11" * 32, cp.time)
    tamper(
        ledger_copy,
        "UPDATE checkpoints SET note = ?, signature = ?, keyid = ? WHERE seq = 2",
        params=(note, attacker.sign(note), attacker.keyid),
    )
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and first.where == "checkpoint" and first.index == 2, first
    assert "does not verify" in first.message


def test_a_checkpoint_with_a_changed_root_is_named(
    ledger_copy: Path, keys: list[VerificationKey]
) -> None:
    with Ledger.open(ledger_copy, readonly=True) as led:
        cp = led.checkpoints()[0]
    note = Checkpoint.make_note(cp.origin, cp.size, b"\x22" * 32, cp.time)
    tamper(ledger_copy, "UPDATE checkpoints SET note = ? WHERE seq = 1", params=(note,))
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and first.where == "checkpoint" and first.index == 1


def test_a_replaced_enrolled_key_is_named(ledger_copy: Path, keys: list[VerificationKey]) -> None:
    attacker = SoftwareSigner()
    doc = json.loads(row(ledger_copy, 1)[4])
    doc["body"]["public_key_pem"] = attacker.public_key_pem().decode()
    doc["body"]["keyid"] = attacker.keyid
    new = canonical_json(doc)
    tamper(
        ledger_copy,
        "UPDATE records SET body = ?, leaf_hash = ? WHERE idx = 1",
        params=(new, leaf_hash(new)),
    )
    first = verify_ledger(ledger_copy, keys).first_problem
    assert first is not None and first.index == 1, first


def test_the_wrong_public_key_fails(ledger_copy: Path) -> None:
    other = [load_public_key(SoftwareSigner().public_key_pem())]
    result = verify_ledger(ledger_copy, other)
    assert not result.ok
    assert any("envelope does not verify" in p.message for p in result.problems)
    assert any(p.where == "checkpoint" for p in result.problems)


def test_records_after_the_last_checkpoint_are_a_warning_or_a_problem(
    ledger_copy: Path, keys: list[VerificationKey], pristine: tuple[Path, SoftwareSigner]
) -> None:
    with Ledger.open(ledger_copy) as led:
        led.append("config_change", {"sha256": "ff" * 32})
    # a warning only when the auditor lets a live ledger's tail through (issue 14: strict default)
    result = verify_ledger(ledger_copy, keys, allow_uncovered_tail=True)
    assert result.ok and result.covered_size == RECORDS
    assert f"records {RECORDS + 1}..{RECORDS + 1} are not covered" in result.warnings[0]
    strict = verify_ledger(ledger_copy, keys)
    assert not strict.ok and strict.first_problem.index == RECORDS + 1  # type: ignore[union-attr]


def test_cli_verify_exit_codes_and_first_bad_record(
    ledger_copy: Path, pristine: tuple[Path, SoftwareSigner], capsys: pytest.CaptureFixture[str]
) -> None:
    pub = pristine[0].parent / "pub.pem"
    assert run(["audit", "verify", "--ledger", str(ledger_copy), "--pubkey", str(pub)]) == 0
    assert "OK:" in capsys.readouterr().out
    tamper(ledger_copy, "DELETE FROM records WHERE idx = 7")
    assert run(["audit", "verify", "--ledger", str(ledger_copy), "--pubkey", str(pub)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"FAILED: {ledger_copy}: record 7: missing")
    code = run(["audit", "verify", "--ledger", str(ledger_copy), "--pubkey", str(pub), "--json"])
    assert code == 1
    assert json.loads(capsys.readouterr().out)["problems"][0]["index"] == 7
    assert run(["audit", "verify", "--ledger", str(ledger_copy), "--pubkey", "/nonexistent"]) == 2


def test_a_ledger_cut_back_to_an_older_signed_state_fails_against_a_kept_head(
    ledger_copy: Path,
    keys: list[VerificationKey],
    pristine: tuple[Path, SoftwareSigner],
    capsys: pytest.CaptureFixture[str],
) -> None:
    head = verify_ledger(ledger_copy, keys).head
    assert head is not None and head[0] == RECORDS
    pub = str(pristine[0].parent / "pub.pem")
    kept = f"{head[0]}:{head[1]}"
    argv = ["audit", "verify", "--ledger", str(ledger_copy), "--pubkey", pub]
    assert run([*argv, "--trusted-head", kept]) == 0
    assert f"tree head: {kept}" in capsys.readouterr().out
    # cut back to the state of checkpoint 3 (size 12): verifies on its own...
    tamper(
        ledger_copy, "DELETE FROM records WHERE idx > 12", "DELETE FROM checkpoints WHERE seq > 3"
    )
    assert verify_ledger(ledger_copy, keys).ok
    # ...but not against the head kept from the earlier audit
    assert run([*argv, "--trusted-head", kept]) == 1
    assert "record 13: missing: your trusted tree head covers 16 records" in capsys.readouterr().out
    # and a rewritten ledger of the same size does not match the kept root
    assert run([*argv, "--trusted-head", f"12:{'00' * 32}"]) == 1
    assert "no longer hash to your trusted root" in capsys.readouterr().out
    assert run([*argv, "--trusted-head", "12:zz"]) == 2
