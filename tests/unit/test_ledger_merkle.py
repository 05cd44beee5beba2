"""The Merkle adapter against the RFC 6962/9162 reference vectors (certificate-transparency)."""

from __future__ import annotations

import hashlib

import pytest

from controller.ledger.merkle import (
    EMPTY_ROOT,
    LeafTree,
    ListLeafSource,
    ProofError,
    leaf_hash,
    node_hash,
    rfc9162_audit_path,
    verify_consistency_proof,
    verify_inclusion_proof,
)

# The 8 leaf inputs and tree heads of the certificate-transparency reference
# tests (merkle_tree_test), used by every RFC 6962 implementation.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index from 1, tree size, RFC 9162 audit path)
CT_INCLUSION = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def tree_of(data: list[bytes]) -> LeafTree:
    return LeafTree(ListLeafSource([leaf_hash(d) for d in data]))


def rfc_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH, written out recursively as an independent reference."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(rfc_root(leaves[:k]), rfc_root(leaves[k:]))


def rfc_verify_inclusion(index0: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root an audit path implies."""
    fn, sn, r = index0, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("path too long")
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("path too short")
    return r


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert tree_of([]).root(0).hex() == CT_ROOTS[0]


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_certificate_transparency_vectors(size: int) -> None:
    tree = tree_of(CT_LEAVES)
    assert tree.root(size).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_inclusion_paths_match_the_reference(index: int, size: int, path: list[str]) -> None:
    tree = tree_of(CT_LEAVES)
    proof = tree.inclusion(index, size)
    assert rfc9162_audit_path(proof) == path
    leaf = leaf_hash(CT_LEAVES[index - 1])
    root = bytes.fromhex(CT_ROOTS[size])
    verify_inclusion_proof(proof, leaf, root, index, size)
    # an independent RFC 9162 verifier agrees
    assert rfc_verify_inclusion(index - 1, size, leaf, [bytes.fromhex(p) for p in path]) == root


def test_every_inclusion_and_consistency_proof_verifies_and_tampering_fails() -> None:
    data = [bytes([i, i * 7 % 256]) for i in range(37)]
    leaves = [leaf_hash(d) for d in data]
    tree = LeafTree(ListLeafSource(leaves))
    for size in range(1, len(leaves) + 1):
        root = tree.root(size)
        assert root == rfc_root(leaves[:size])
        for index in range(1, size + 1):
            proof = tree.inclusion(index, size)
            verify_inclusion_proof(proof, leaves[index - 1], root, index, size)
            path = [bytes.fromhex(h) for h in rfc9162_audit_path(proof)]
            assert rfc_verify_inclusion(index - 1, size, leaves[index - 1], path) == root
        for prior in range(1, size + 1):
            proof = tree.consistency(prior, size)
            verify_consistency_proof(proof, tree.root(prior), root, prior, size)
    proof = tree.inclusion(5, 20)
    with pytest.raises(ProofError):
        verify_inclusion_proof(proof, leaves[5], tree.root(20), 5, 20)
    with pytest.raises(ProofError):
        verify_inclusion_proof(proof, leaves[4], tree.root(19), 5, 20)
    cproof = tree.consistency(7, 20)
    with pytest.raises(ProofError):
        verify_consistency_proof(cproof, tree.root(8), tree.root(20), 7, 20)


def test_out_of_range_proofs_are_refused() -> None:
    tree = tree_of(CT_LEAVES)
    with pytest.raises(ProofError, match="record 9"):
        tree.inclusion(9, 8)
    with pytest.raises(ProofError):
        tree.consistency(9, 8)
    with pytest.raises(ProofError):
        tree.root(9)
