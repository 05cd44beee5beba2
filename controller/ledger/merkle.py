"""RFC 9162 Merkle trees over stored leaf hashes (a thin adapter over pymerkle).

The ledger keeps one leaf hash per record (``SHA-256(0x00 || record bytes)``)
in its own table, written in the same transaction as the record. pymerkle does
the tree arithmetic (roots, inclusion and consistency proofs, with RFC 9162's
``0x00`` leaf and ``0x01`` node prefixes) over those hashes through a
:class:`LeafSource`, so there is no hand-written proof code here and no second
copy of the leaves.

Consistency proofs are handed out in RFC 9162 section 2.1.4 form
(:meth:`LeafTree.rfc9162_consistency`, the SUBPROOF algorithm over pymerkle's
cached subtree roots) so that any RFC 9162 verifier can check them; pymerkle's
own serialized layout stays available for its verifier.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

from pymerkle import ConsistencyProof, InclusionProof, InvalidChallenge, InvalidProof
from pymerkle.core import BaseMerkleTree

from configs.errors import LedgerError

__all__ = [
    "EMPTY_ROOT",
    "LeafSource",
    "LeafTree",
    "ListLeafSource",
    "ProofError",
    "leaf_hash",
    "node_hash",
    "rfc9162_audit_path",
    "verify_rfc9162_consistency",
    "verify_consistency_proof",
    "verify_inclusion_proof",
]

#: Root hash of the empty tree: SHA-256 of the empty string (RFC 9162 2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(LedgerError):
    """A Merkle inclusion or consistency proof is malformed or does not verify."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class LeafSource(Protocol):
    """Where a :class:`LeafTree` reads its leaf hashes from (1-based indices)."""

    def count(self) -> int:
        """Number of leaves."""
        ...

    def leaves(self, offset: int, width: int) -> Sequence[bytes]:
        """Leaf hashes ``offset + 1 .. offset + width`` (``offset`` counts from zero)."""
        ...


class ListLeafSource:
    """Leaf hashes held in a Python list (the auditor's recomputed leaves)."""

    def __init__(self, hashes: Sequence[bytes] = ()) -> None:
        self.hashes: list[bytes] = list(hashes)

    def count(self) -> int:
        """Number of leaves."""
        return len(self.hashes)

    def leaves(self, offset: int, width: int) -> Sequence[bytes]:
        """Leaf hashes ``offset + 1 .. offset + width``."""
        return self.hashes[offset : offset + width]


class LeafTree(BaseMerkleTree):  # type: ignore[misc]
    """An RFC 9162 tree (SHA-256, second-preimage prefixes) over a :class:`LeafSource`.

    Appending goes through the source's owner (the ledger), never through
    this object; it only reads. Subroots of 128 or more leaves are cached by
    pymerkle, which is sound because stored leaves never change.
    """

    def __init__(self, source: LeafSource) -> None:
        self.source = source
        super().__init__("sha256")

    def _encode_entry(self, data: bytes) -> bytes:
        return data

    def _store_leaf(self, data: bytes, digest: bytes) -> int:
        raise LedgerError("LeafTree is read-only: append records through the Ledger")

    def _get_leaf(self, index: int) -> bytes:
        return bytes(self.source.leaves(index - 1, 1)[0])

    def _get_leaves(self, offset: int, width: int) -> Sequence[bytes]:
        got = self.source.leaves(offset, width)
        if len(got) != width:
            raise LedgerError(
                f"leaf store returned {len(got)} leaf hashes for {offset + 1}..{offset + width}"
            )
        return got

    def _get_size(self) -> int:
        return self.source.count()

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the first ``size`` leaves (all of them by default)."""
        try:
            return bytes(self.get_root(size))
        except ValueError as e:
            raise ProofError(f"no tree of size {size}: the tree has {self.get_size()}") from e

    def inclusion(self, index: int, size: int | None = None) -> dict[str, Any]:
        """Inclusion proof of leaf ``index`` (1-based) in the tree of ``size`` leaves, as JSON."""
        try:
            proof = self.prove_inclusion(index, size)
        except InvalidChallenge as e:
            raise ProofError(
                f"no inclusion proof for record {index} in a tree of size "
                f"{size if size is not None else self.get_size()}: {e}"
            ) from e
        data: dict[str, Any] = proof.serialize()
        return data

    def consistency(self, prior_size: int, later_size: int | None = None) -> dict[str, Any]:
        """Consistency proof between tree sizes ``prior_size`` and ``later_size``, as JSON."""
        try:
            proof = self.prove_consistency(prior_size, later_size)
        except InvalidChallenge as e:
            raise ProofError(
                f"no consistency proof from size {prior_size} to "
                f"{later_size if later_size is not None else self.get_size()}: {e}"
            ) from e
        data: dict[str, Any] = proof.serialize()
        return data

    def subtree_root(self, start: int, end: int) -> bytes:
        """MTH of leaves ``start .. end - 1`` (counting from zero), RFC 9162 2.1.1."""
        if not 0 <= start <= end <= self.get_size():
            raise ProofError(f"no leaf range {start}..{end} in a tree of {self.get_size()}")
        return bytes(self._get_root(start, end))

    def rfc9162_consistency(self, prior_size: int, later_size: int | None = None) -> list[bytes]:
        """The RFC 9162 2.1.4.1 consistency proof ``PROOF(m, D[n])``, node hashes in RFC order.

        Empty when ``m == n`` (and when ``m == 0``, which any tree is consistent with).

        Raises:
            ProofError: ``prior_size`` is above ``later_size`` or the tree is smaller.
        """
        n = self.get_size() if later_size is None else later_size
        if not 0 <= prior_size <= n <= self.get_size():
            raise ProofError(
                f"no consistency proof from size {prior_size} to {n}: the tree has "
                f"{self.get_size()} leaves"
            )
        if prior_size in (0, n):
            return []
        return self._subproof(prior_size, 0, n, True)

    def _subproof(self, m: int, start: int, end: int, complete: bool) -> list[bytes]:
        # SUBPROOF(m, D[start:end], b) of RFC 9162 2.1.4.1
        n = end - start
        if m == n:
            return [] if complete else [self.subtree_root(start, end)]
        k = 1 << ((n - 1).bit_length() - 1)  # largest power of two below n
        if m <= k:
            return self._subproof(m, start, start + k, complete) + [
                self.subtree_root(start + k, end)
            ]
        return self._subproof(m - k, start + k, end, False) + [self.subtree_root(start, start + k)]


def verify_rfc9162_consistency(
    proof: Sequence[bytes], prior_size: int, later_size: int, prior_root: bytes, later_root: bytes
) -> None:
    """Verify an RFC 9162 consistency proof (the algorithm of section 2.1.4.2).

    Raises:
        ProofError: the proof does not show that ``prior_root`` (of ``prior_size``
            leaves) is a prefix of ``later_root`` (of ``later_size`` leaves).
    """
    where = f"consistency proof from size {prior_size} to {later_size}"
    if not 0 <= prior_size <= later_size:
        raise ProofError(f"{where}: the prior size is above the later one")
    if prior_size == later_size:
        if proof or prior_root != later_root:
            raise ProofError(f"{where}: equal sizes need an empty proof and equal roots")
        return
    if prior_size == 0:
        if proof:
            raise ProofError(f"{where}: a proof from the empty tree must be empty")
        return
    path = list(proof)
    if prior_size & (prior_size - 1) == 0:  # a power of two: the prior root is a node
        path.insert(0, prior_root)
    if not path:
        raise ProofError(f"{where}: the proof is empty")
    fn, sn = prior_size - 1, later_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"{where}: the proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != prior_root or sr != later_root:
        raise ProofError(f"{where}: the proof does not verify against the two roots")


def rfc9162_audit_path(proof: dict[str, Any]) -> list[str]:
    """The RFC 9162 inclusion path (sibling hashes, leaf to root, hex) of a serialized proof.

    pymerkle's path starts with the leaf hash itself; RFC 9162 lists only the
    siblings, bottom-up, which is the rest of pymerkle's path.
    """
    path = proof.get("path")
    if not isinstance(path, list) or not path:
        raise ProofError("inclusion proof has no path")
    return [str(h) for h in path[1:]]


def verify_inclusion_proof(
    proof: dict[str, Any], leaf: bytes, root: bytes, index: int, size: int
) -> None:
    """Check a serialized inclusion proof of ``leaf`` at ``index`` against ``root`` of ``size``.

    Raises:
        ProofError: the proof is malformed or does not verify.
    """
    try:
        parsed = InclusionProof.deserialize(proof)
        parsed.verify(leaf, root, index=index, size=size, algorithm="sha256")
    except InvalidProof as e:
        raise ProofError(f"inclusion proof of record {index} in tree size {size}: {e}") from e


def verify_consistency_proof(
    proof: dict[str, Any], prior_root: bytes, later_root: bytes, prior_size: int, later_size: int
) -> None:
    """Check a serialized consistency proof between two tree heads.

    Raises:
        ProofError: the proof is malformed or does not verify.
    """
    try:
        parsed = ConsistencyProof.deserialize(proof)
        parsed.verify(
            prior_root,
            later_root,
            prior_size=prior_size,
            later_size=later_size,
            algorithm="sha256",
        )
    except InvalidProof as e:
        raise ProofError(f"consistency proof from size {prior_size} to {later_size}: {e}") from e
