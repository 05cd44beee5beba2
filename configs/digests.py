"""Canonical serialisation, strict JSON reading and sha256 digests: the one home of each.

Every digest the project records (timing documents, ledger records, video files,
policy weights, network files, envelopes) is computed here, so the daemon, the
controllers and an auditor agree byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["canonical_json", "sha256_file", "sha256_hex", "strict_json_loads"]

_BLOCK = 1 << 20


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` canonically: sorted keys, no whitespace, UTF-8, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate key {key[:80]!r} (the object repeats it)")
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (no NaN or Infinity)")


def strict_json_loads(data: bytes | str) -> Any:
    """Parse untrusted JSON strictly: UTF-8, no duplicate keys, no NaN/Infinity.

    Every signed or recorded document (envelopes, timing documents) is read
    through this, so the daemon, a controller and an auditor never read two
    different documents out of the same bytes (``json.loads`` keeps the last of
    duplicate keys).

    Raises:
        ValueError: not UTF-8, not JSON, a duplicate key, a non-standard constant,
            or nested too deeply (the message says which).
    """
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e}") from e
    except RecursionError as e:
        raise ValueError("nested too deeply") from e


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
