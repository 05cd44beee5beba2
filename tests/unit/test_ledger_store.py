"""The ledger store: appends, reads, idempotency, append-only, checkpoints, proofs, bad files."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from configs.digests import canonical_json
from configs.errors import LedgerError
from controller.ledger import GENESIS_PREV, Checkpoint, Ledger, verify_checkpoint_signature
from controller.ledger.merkle import verify_inclusion_proof, verify_rfc9162_consistency
from hsm.verify import load_public_key
from tests.support.ledgerdata import FakeClock
from tests.support.softkeys import SoftwareSigner


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger.open(tmp_path / "ledger.sqlite", clock=FakeClock())
    yield led
    led.close()


def cycle(n: int, outcome: str = "refused") -> dict[str, object]:
    return {"cycle_id": f"c{n}", "outcome": outcome, "gate": {"decision": "refuse"}}


def test_records_chain_hash_and_read_back(ledger: Ledger) -> None:
    refs = [ledger.append("cycle", cycle(n)) for n in range(5)]
    assert [r.index for r in refs] == [1, 2, 3, 4, 5]
    assert ledger.size() == 5
    prev = GENESIS_PREV
    for ref in refs:
        rec = ledger.get(ref.index)
        assert rec.hash == ref.hash
        assert ref.hash == hashlib.sha256(b"\x00" + rec.raw).hexdigest()
        doc = rec.document()
        assert canonical_json(doc) == rec.raw
        assert (
            doc["prev"] == prev and doc["index"] == ref.index and doc["ledger"] == ledger.ledger_id
        )
        prev = ref.hash
    assert ledger.latest("cycle").index == 5  # type: ignore[union-attr]
    assert ledger.latest("deployment") is None
    assert [r.index for r in ledger.find("cycle", cycle_id="c3")] == [4]


def test_iter_records_filters_by_kind_and_time(ledger: Ledger) -> None:
    for n in range(4):
        ledger.append("cycle", cycle(n))
        ledger.append("config_change", {"sha256": f"{n:064x}"})
    assert [r.index for r in ledger.iter_records("config_change")] == [2, 4, 6, 8]
    t3 = ledger.get(3).time
    t6 = ledger.get(6).time
    assert [r.index for r in ledger.iter_records(since=t3, until=t6)] == [3, 4, 5]
    assert [r.index for r in ledger.iter_records(start=7)] == [7, 8]


def test_dedupe_key_makes_appends_idempotent(ledger: Ledger) -> None:
    first = ledger.append("cycle", cycle(1), dedupe_key="cycle-1")
    again = ledger.append("cycle", cycle(1), dedupe_key="cycle-1")
    assert again == first and ledger.size() == 1
    with pytest.raises(LedgerError, match="already record 1 of kind cycle"):
        ledger.append("config_change", {"sha256": "00" * 32}, dedupe_key="cycle-1")
    assert ledger.by_dedupe_key("cycle-1").index == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kind", "body", "match"),
    [
        ("bogus", {}, "unknown record kind 'bogus'"),
        ("cycle", {"outcome": "x"}, "needs field 'cycle_id'"),
        ("deployment", {"sequence": "7", "config_digest": "x", "envelope": {}}, "'sequence'"),
        ("cycle", {"cycle_id": "c", "outcome": "x", "gate": {"v": float("nan")}}, "not plain JSON"),
        (
            "cycle",
            {"cycle_id": "c", "outcome": "x", "gate": {"t": datetime.now(UTC)}},
            "not plain JSON",
        ),
        ("measured_delta", {"deployment": 1, "measured": {}}, "not a deployment record"),
    ],
)
def test_bad_records_are_refused_and_nothing_is_written(
    ledger: Ledger, kind: str, body: dict[str, object], match: str
) -> None:
    ledger.append("cycle", cycle(0))
    with pytest.raises(LedgerError, match=match):
        ledger.append(kind, body)
    assert ledger.size() == 1


def test_update_and_delete_fail_at_the_sqlite_level(ledger: Ledger) -> None:
    ledger.append("cycle", cycle(1))
    ledger.checkpoint(SoftwareSigner())
    con = sqlite3.connect(ledger.path)
    for sql in (
        "UPDATE records SET body = x'00' WHERE idx = 1",
        "DELETE FROM records WHERE idx = 1",
        "UPDATE checkpoints SET size = 7",
        "DELETE FROM checkpoints",
        "UPDATE meta SET value = 'x' WHERE key = 'ledger_id'",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(sql)
    con.close()


def test_checkpoints_every_n_and_on_demand_with_valid_signatures(tmp_path: Path) -> None:
    signer = SoftwareSigner()
    key = load_public_key(signer.public_key_pem())
    with Ledger.open(tmp_path / "l.sqlite", signer=signer, checkpoint_every=3) as led:
        for n in range(7):
            led.append("cycle", cycle(n))
        assert [c.size for c in led.checkpoints()] == [3, 6]
        cp = led.checkpoint(signer)
        assert cp.size == 7
        assert led.checkpoint(signer) == cp  # nothing new: no second checkpoint
        assert [c.size for c in led.checkpoints()] == [3, 6, 7]
        for c in led.checkpoints():
            assert c.root_hash.hex() == led.root(c.size)
            assert verify_checkpoint_signature(c, [key]) == signer.keyid
            assert c.note.decode().startswith(f"signaltwin.ledger/{led.ledger_id}\n{c.size}\n")
        assert "\n\n\u2014 signaltwin-ledger-" in cp.signed_note()
        other = load_public_key(SoftwareSigner().public_key_pem())
        assert verify_checkpoint_signature(cp, [other]) is None


def test_inclusion_and_consistency_proofs_verify_against_signed_roots(tmp_path: Path) -> None:
    signer = SoftwareSigner()
    with Ledger.open(tmp_path / "l.sqlite") as led:
        for n in range(5):
            led.append("cycle", cycle(n))
        old = led.checkpoint(signer)
        for n in range(5, 13):
            led.append("cycle", cycle(n))
        new = led.checkpoint(signer)
        p = led.prove_inclusion(4, new.size)
        verify_inclusion_proof(
            p["proof"], bytes.fromhex(led.get(4).hash), new.root_hash, 4, new.size
        )
        c = led.prove_consistency(old.size, new.size)
        path = [bytes.fromhex(h) for h in c["consistency_path"]]
        verify_rfc9162_consistency(path, old.size, new.size, old.root_hash, new.root_hash)
        with pytest.raises(LedgerError):
            led.prove_inclusion(14)
        json.dumps(p)  # plain JSON


def test_readonly_ledger_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as led:
        led.append("cycle", cycle(1))
    with Ledger.open(path, readonly=True) as ro:
        assert ro.get(1).body["cycle_id"] == "c1"
        with pytest.raises(LedgerError, match="read-only"):
            ro.append("cycle", cycle(2))


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as led:
        first = led.append("cycle", cycle(1))
        ledger_id = led.ledger_id
    with Ledger.open(path) as led:
        assert led.ledger_id == ledger_id
        second = led.append("cycle", cycle(2))
        assert second.index == 2 and led.get(2).prev == first.hash


def test_bad_files_give_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database, just some text that is long enough\n" * 20)
    with pytest.raises(LedgerError, match=r"notes\.txt.*not a readable signaltwin ledger"):
        Ledger.open(text)

    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match=r"other\.sqlite is an SQLite database but not a"):
        Ledger.open(other)

    future = tmp_path / "future.sqlite"
    Ledger.open(future).close()
    con = sqlite3.connect(future)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match=r"future\.sqlite has ledger schema version 99"):
        Ledger.open(future)

    with pytest.raises(LedgerError, match=r"no ledger at .*missing\.sqlite"):
        Ledger.open(tmp_path / "missing.sqlite", readonly=True)
    with pytest.raises(LedgerError, match="is a directory"):
        Ledger.open(tmp_path)


def test_checkpoint_parse_rejects_non_canonical_notes(ledger: Ledger) -> None:
    signer = SoftwareSigner()
    ledger.append("cycle", cycle(1))
    cp = ledger.checkpoint(signer)
    from controller.ledger import RawCheckpoint

    bad = RawCheckpoint(cp.seq, cp.size, cp.keyid, cp.note.replace(b"\ntime", b"\nwhen"), b"")
    with pytest.raises(LedgerError, match="checkpoint"):
        Checkpoint.parse(bad)
    wrong_size = RawCheckpoint(cp.seq, 99, cp.keyid, cp.note, cp.signature)
    with pytest.raises(LedgerError, match="size column 99"):
        Checkpoint.parse(wrong_size)


def test_a_ledger_opened_in_one_thread_is_used_from_others(tmp_path: Path) -> None:
    # the daemon opens the ledger at start-up and runs each cycle in a new thread
    import threading

    signer = SoftwareSigner()
    errors: list[BaseException] = []
    with Ledger.open(tmp_path / "l.sqlite", signer=signer, checkpoint_every=5) as led:

        def work(worker: int) -> None:
            try:
                for n in range(20):
                    led.append("cycle", cycle(worker * 100 + n), dedupe_key=f"{worker}-{n}")
                    led.latest("cycle")
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert led.size() == 80
        assert [r.index for r in led.iter_records()] == list(range(1, 81))
        assert led.checkpoints()[-1].size == 80
