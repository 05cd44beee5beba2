"""Property tests for the parsers of untrusted ledger content (hypothesis)."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.errors import LedgerError
from controller.ledger import Checkpoint, Ledger, RawCheckpoint, verify_ledger
from hsm.verify import load_public_key
from tests.support.softkeys import SoftwareSigner

SIGNER = SoftwareSigner()
KEYS = [load_public_key(SIGNER.public_key_pem())]


@given(note=st.binary(max_size=300), size=st.integers(min_value=-5, max_value=2**40))
def test_checkpoint_parse_only_raises_ledger_error(note: bytes, size: int) -> None:
    try:
        cp = Checkpoint.parse(RawCheckpoint(1, size, "ab" * 32, note, b""))
    except LedgerError:
        return
    assert cp.size == size and Checkpoint.make_note(cp.origin, size, cp.root_hash, cp.time) == note


@settings(max_examples=40, deadline=None)
@given(
    index=st.integers(min_value=1, max_value=6),
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=80).map(str.encode),
        st.sampled_from([b"{}", b"[]", b"null", b'{"body":{}}', b'{"index":1e999}', b'{"a":NaN}']),
    ),
)
def test_verify_names_any_garbage_record_and_never_crashes(
    tmp_path_factory: pytest.TempPathFactory, index: int, body: bytes
) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "l.sqlite"
    with Ledger.open(path) as led:
        for n in range(6):
            led.append("cycle", {"cycle_id": f"c{n}", "outcome": "refused"})
        led.checkpoint(SIGNER)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("DROP TRIGGER records_no_update")
    con.execute("UPDATE records SET body = ? WHERE idx = ?", (body, index))
    con.close()
    result = verify_ledger(path, KEYS)
    assert not result.ok
    assert result.first_problem is not None and result.first_problem.index == index
