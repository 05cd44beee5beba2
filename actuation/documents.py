"""Strict reading of a timing document at the controller (untrusted, signed bytes).

The daemon signs :meth:`TimingConfiguration.canonical_bytes`; an auditor reads
the same bytes from the ledger. A controller must read *exactly* that document,
so it refuses anything a lenient parser would quietly reinterpret:

* duplicate object keys (``json`` keeps the last one; another reader may keep the first);
* payload bytes that are not the canonical serialisation (sorted keys, no
  whitespace, UTF-8; :func:`configs.digests.canonical_json`);
* loose types (``"30"``, ``66.0`` or ``true`` where an integer is expected):
  the document is validated in pydantic strict mode;
* a document that does not re-serialise to the very bytes that were signed.
"""

from __future__ import annotations

from pydantic import ValidationError

from configs.digests import canonical_json
from configs.errors import ConfigError
from configs.timing import TimingConfiguration, read_document

__all__ = ["parse_strict"]


def parse_strict(payload: bytes) -> TimingConfiguration:
    """Parse a signed timing document exactly as the daemon and the auditor read it.

    Raises:
        ConfigError: the bytes are too large, not UTF-8 JSON, have a duplicate
            key, are not canonical, break the schema in strict mode, or do not
            re-serialise to themselves (the message names which).
    """
    raw = read_document(payload)
    try:
        canonical = canonical_json(raw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"timing document cannot be serialised canonically: {e}") from e
    if canonical != payload:
        raise ConfigError(
            "timing document is not in canonical form (sorted keys, no whitespace, UTF-8): "
            "sign TimingConfiguration.canonical_bytes()"
        )
    try:
        config = TimingConfiguration.model_validate_json(payload, strict=True)
    except ValidationError as e:
        parts = []
        for item in e.errors()[:5]:
            where = ".".join(str(p) for p in item["loc"]) or "(document)"
            parts.append(f"{where}: {item['msg']}")
        raise ConfigError(f"timing document invalid (strict types): {'; '.join(parts)}") from e
    if config.canonical_bytes() != payload:
        raise ConfigError(
            "timing document does not re-serialise to the signed bytes "
            "(a field is spelt in a non-canonical form, e.g. a timestamp not as "
            "YYYY-MM-DDTHH:MM:SSZ, or a default left out)"
        )
    return config
