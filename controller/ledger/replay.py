"""Replay of a cycle's what-if from its recorded inputs and seeds.

:func:`replay_cycle` locates the recorded input files (where recorded, next to
the ledger, or in ``--inputs`` folders), checks their sha256, hands the request
to a :class:`ReplayTwin` and compares its numbers with the recorded ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from configs.digests import sha256_file
from configs.errors import LedgerError
from controller.ledger.records import CycleRecord
from controller.ledger.store import Ledger, Record

__all__ = [
    "ReplayResult",
    "ReplayTwin",
    "contained_artifact",
    "replay_cycle",
    "resolve_artifact",
]


class ReplayTwin(Protocol):
    """The port through which a replay reaches a what-if engine (the SUMO twin).

    The auditor's command builds the real one from ``simulators.twin``; tests
    hand in a fake. The ledger package never imports a simulator.
    """

    def run_whatif(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run a recorded what-if request (input paths located) and return its result."""
        ...


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of :func:`replay_cycle`."""

    index: int
    ok: bool
    compared: int
    differences: tuple[str, ...]
    recorded: Mapping[str, Any]
    replayed: Mapping[str, Any]


def resolve_artifact(path_text: str, base_dir: Path, search: Sequence[Path] = ()) -> Path:
    """A file named in the ledger: as recorded, else relative to ``base_dir``, else by name.

    Recorded paths are the daemon host's; an auditor copies the files next to
    the ledger (or into a ``search`` folder) and they are found by file name.
    """
    p = Path(path_text)
    first = p if p.is_absolute() else base_dir / p
    if first.exists():
        return first
    for folder in (base_dir, *search):
        candidate = folder / p.name
        if candidate.exists():
            return candidate
    return first


def contained_artifact(path_text: str, roots: Sequence[Path]) -> Path | None:
    """A file named in the ledger, but only if it lies inside one of ``roots``.

    The recorded path is tried relative to each root (an absolute one only if it
    is inside a root), then the file name in each root. Links are followed
    before the check, so a link inside a root to a file outside is refused.
    Returns None when no such file is inside the roots: a ledger can then not
    make an auditor's tool read ``/etc/passwd``.
    """
    resolved = [r.resolve() for r in roots]
    p = Path(path_text)
    candidates = [p] if p.is_absolute() else [r / p for r in resolved]
    candidates += [r / p.name for r in resolved if p.name]
    for candidate in candidates:
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError):
            continue
        if real.is_file() and any(real.is_relative_to(r) for r in resolved):
            return real
    return None


def _locate_inputs(
    request: Any, base_dir: Path, search: Sequence[Path], problems: list[str], where: str
) -> Any:
    """Copy of ``request`` with every recorded input file located and its sha256 checked.

    Inputs are recorded either as ``{"path": ..., "sha256": ...}`` or as a key
    ``X`` with a sibling ``X_sha256`` (the twin's what-if request).
    """
    if isinstance(request, list):
        return [
            _locate_inputs(v, base_dir, search, problems, f"{where}[{n}]")
            for n, v in enumerate(request)
        ]
    if not isinstance(request, Mapping):
        return request
    out: dict[str, Any] = {}
    for key, value in request.items():
        digest_key = "sha256" if key == "path" else f"{key}_sha256"
        digest = request.get(digest_key)
        if isinstance(value, str) and isinstance(digest, str) and key != "sha256":
            file = resolve_artifact(value, base_dir, search)
            try:
                actual = sha256_file(file)
            except OSError as e:
                problems.append(
                    f"{where}.{key}: cannot read recorded input {value} (looked for {file}): "
                    f"{e.strerror}; copy it next to the ledger or pass --inputs DIR"
                )
            else:
                if actual != digest:
                    problems.append(
                        f"{where}.{key}: input {file} has sha256 {actual}, the record says {digest}"
                    )
            out[key] = str(file)
        else:
            out[key] = _locate_inputs(value, base_dir, search, problems, f"{where}.{key}")
    return out


#: metrics the twin reports since a later version: a record written before them
#: lacks them under ``changes`` (the replay computes them too); not a difference
_METRICS_ADDED_LATER = frozenset({"approach_wait", "approach_nox"})


def _compare(recorded: Any, replayed: Any, where: str, out: list[str]) -> int:
    """Compare two JSON values; numbers to 1e-9 relative. Returns the numbers compared.

    A metric the twin added after the record was written (``changes.approach_wait``
    in a replay of an older record) is not counted as a difference.
    """
    if isinstance(recorded, bool) or isinstance(replayed, bool):
        if recorded != replayed:
            out.append(f"{where}: recorded {recorded!r}, replayed {replayed!r}")
        return 0
    if isinstance(recorded, int | float) and isinstance(replayed, int | float):
        if not math.isclose(recorded, replayed, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{where}: recorded {recorded!r}, replayed {replayed!r}")
        return 1
    if isinstance(recorded, Mapping) and isinstance(replayed, Mapping):
        n = 0
        for key in sorted(set(recorded) | set(replayed)):
            if key not in replayed:
                out.append(f"{where}.{key}: missing from the replay")
            elif key not in recorded:
                if not (where.endswith(".changes") and key in _METRICS_ADDED_LATER):
                    out.append(f"{where}.{key}: not in the record")
            else:
                n += _compare(recorded[key], replayed[key], f"{where}.{key}", out)
        return n
    if isinstance(recorded, list) and isinstance(replayed, list):
        if len(recorded) != len(replayed):
            out.append(f"{where}: {len(recorded)} recorded items, {len(replayed)} replayed")
            return 0
        return sum(
            _compare(a, b, f"{where}[{k}]", out)
            for k, (a, b) in enumerate(zip(recorded, replayed, strict=True))
        )
    if recorded != replayed:
        out.append(f"{where}: recorded {recorded!r}, replayed {replayed!r}")
    return 0


def replay_cycle(
    ledger: Ledger,
    index: int,
    twin: ReplayTwin,
    *,
    base_dir: Path | None = None,
    search: Sequence[Path] = (),
) -> ReplayResult:
    """Re-run cycle record ``index``'s what-if from its recorded inputs and seeds.

    The cycle record's ``whatif`` holds ``request`` (network and demand files
    with their sha256, current plan, candidates, horizon, seeds) and
    ``result``; the replay must give the same numbers. Input files are looked
    for where recorded, then by name next to the ledger and in ``search``, and
    must have the recorded sha256; ``twin`` gets the request with the located
    paths.

    Raises:
        LedgerError: the record is not a cycle with a what-if, or a recorded
            input file is missing or changed.
    """
    record: Record = ledger.get(index)
    if record.kind != "cycle":
        raise LedgerError(f"record {index} is a {record.kind} record; replay needs a cycle record")
    body = record.model()
    whatif = body.whatif if isinstance(body, CycleRecord) else None
    if not isinstance(whatif, Mapping) or not isinstance(whatif.get("request"), Mapping):
        raise LedgerError(f"cycle record {index} has no what-if request to replay")
    recorded = whatif.get("result")
    if not isinstance(recorded, Mapping):
        raise LedgerError(f"cycle record {index} has no recorded what-if result to compare")
    where = base_dir if base_dir is not None else ledger.path.resolve().parent
    problems: list[str] = []
    request = _locate_inputs(whatif["request"], where, search, problems, "request")
    if problems:
        raise LedgerError(f"cycle record {index}: " + "; ".join(problems))
    replayed = twin.run_whatif(request)
    differences: list[str] = []
    compared = _compare(recorded, replayed, "result", differences)
    return ReplayResult(
        index=index,
        ok=not differences,
        compared=compared,
        differences=tuple(differences),
        recorded=recorded,
        replayed=replayed,
    )
