"""Issue 14.2: consistency proofs in RFC 9162 section 2.1.4 form, checked independently.

The tree hash (MTH, 2.1.1) and the proof verification (2.1.4.2) are written
out again here from the RFC text, importing nothing of the ledger's Merkle
code, and checked against the leaves 0x00..0x07 for every pair of sizes up to 8
and against the published root vectors of the certificate-transparency /
transparency-dev test suites.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from controller.cli import run
from controller.ledger import LeafTree, Ledger, ListLeafSource, leaf_hash
from controller.ledger.merkle import verify_rfc9162_consistency

# ---------------------------------------------------------------- independent RFC 9162 code


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(entries: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 2.1.1, recursively over the raw entries."""
    n = len(entries)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + entries[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + mth(entries[:k]) + mth(entries[k:]))


def rfc_verify(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: list[bytes]
) -> bool:
    """RFC 9162 2.1.4.2, step by step."""
    if first == second:
        return not path and first_hash == second_hash
    if not path:
        return False
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = _h(b"\x01" + c + fr)
            sr = _h(b"\x01" + c + sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = _h(b"\x01" + sr + c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_hash and sr == second_hash and sn == 0


# ------------------------------------------------------------------------------- vectors

SINGLE_BYTES = [bytes([i]) for i in range(8)]
#: The leaves of the RFC 6962 / transparency-dev reference test suites.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOT_1 = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
CT_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def tree_of(entries: list[bytes]) -> LeafTree:
    return LeafTree(ListLeafSource([leaf_hash(e) for e in entries]))


def test_roots_match_the_reference_vectors_and_the_independent_mth() -> None:
    tree = tree_of(CT_LEAVES)
    assert tree.root(1).hex() == CT_ROOT_1
    assert tree.root(8).hex() == CT_ROOT_8
    assert mth(CT_LEAVES).hex() == CT_ROOT_8
    for n in range(1, 9):
        assert tree.root(n) == mth(CT_LEAVES[:n])


@pytest.mark.parametrize("entries", [SINGLE_BYTES, CT_LEAVES], ids=["0x00..0x07", "ct"])
def test_every_consistency_proof_up_to_8_verifies_with_the_independent_verifier(
    entries: list[bytes],
) -> None:
    tree = tree_of(entries)
    for n in range(1, 9):
        for m in range(1, n + 1):
            path = tree.rfc9162_consistency(m, n)
            first, second = mth(entries[:m]), mth(entries[:n])
            assert rfc_verify(m, n, first, second, path), (m, n)
            verify_rfc9162_consistency(path, m, n, first, second)
            if m < n:
                # each node of the proof matters, and a wrong root is refused
                assert not rfc_verify(m, n, first, _h(b"x"), path)
                for i in range(len(path)):
                    bad = [*path[:i], _h(b"bad"), *path[i + 1 :]]
                    assert not rfc_verify(m, n, first, second, bad), (m, n, i)


def test_proof_lengths_follow_the_rfc() -> None:
    tree = tree_of(SINGLE_BYTES)
    # RFC 9162 2.1.4.3 examples (7 leaves: d0..d6): PROOF(3, D[7]) = [c, d, g, l]
    seven = tree_of(SINGLE_BYTES[:7])
    assert len(seven.rfc9162_consistency(3, 7)) == 4
    assert len(seven.rfc9162_consistency(4, 7)) == 1  # [l]
    assert len(seven.rfc9162_consistency(6, 7)) == 3  # [i, j, k]
    assert seven.rfc9162_consistency(4, 7) == [mth(SINGLE_BYTES[4:7])]
    assert tree.rfc9162_consistency(8, 8) == []


def test_audit_prove_from_prints_the_rfc_proof(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path) as led:
        for n in range(11):
            led.append("config_change", {"sha256": f"{n:064x}"})
        raws = [r.raw for r in led.iter_records()]
    for m in (1, 3, 4, 8, 11):
        assert run(["audit", "prove", "--ledger", str(path), "--from", str(m)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["prior_size"] == m and out["size"] == 11
        assert out["prior_root_hash"] == mth(raws[:m]).hex()
        assert out["root_hash"] == mth(raws).hex()
        proof = [bytes.fromhex(h) for h in out["consistency_path"]]
        assert rfc_verify(m, 11, mth(raws[:m]), mth(raws), proof)
