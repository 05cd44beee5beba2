"""``signaltwin audit``: read, verify, prove, report, replay and export the ledger.

Only ``verify`` and ``report --pubkey`` need a public key; nothing here needs the
HSM, the network or the daemon's configuration (``--config`` is only a way to
find the ledger file). Each sub-command imports the ledger package when it runs,
and only ``replay`` imports the SUMO twin (:class:`TwinReplay`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.errors import ConfigError, LedgerError, SigningError
from controller.exit_codes import ExitCode
from controller.ledger.records import RECORD_KINDS, format_time, parse_time

if TYPE_CHECKING:
    from controller.ledger import Checkpoint, Ledger, ReplayTwin
    from hsm.verify import VerificationKey

# the ledger package is imported where a sub-command runs; the twin (SUMO) only by replay
EXIT_OK = ExitCode.OK
EXIT_PROBLEM = ExitCode.PROBLEM


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its sub-commands."""
    parser = subparsers.add_parser(
        "audit",
        help="inspect and verify the deployment ledger (offline, public key only)",
        description=(
            "Auditor tools for the tamper-evident deployment ledger. 'verify' needs only the "
            "ledger file and the public key; exit 0 when the ledger verifies, 1 when it does "
            "not (the first bad record is named), 2 on bad usage."
        ),
    )
    sub = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    def ledger_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--ledger", type=Path, help="the ledger file (SQLite)")
        p.add_argument(
            "--config", type=Path, help="daemon settings TOML to take [ledger].path from"
        )

    p = sub.add_parser("list", help="list records", description="List ledger records.")
    ledger_args(p)
    p.add_argument("--kind", choices=RECORD_KINDS, help="only records of this kind")
    p.add_argument("--since", help="only records at or after this UTC time (ISO 8601)")
    p.add_argument("--until", help="only records before this UTC time (ISO 8601)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run_list)

    p = sub.add_parser("show", help="show one record", description="Print record N as JSON.")
    ledger_args(p)
    p.add_argument("index", type=int, help="record index (from 1)")
    p.add_argument(
        "--proof", action="store_true", help="add its inclusion proof in the current tree"
    )
    p.set_defaults(func=_run_show)

    p = sub.add_parser(
        "verify",
        help="verify the whole ledger with the public key",
        description=(
            "Verify every record's hash chain, every signed checkpoint's Merkle root and "
            "signature, that checkpoints are numbered without gaps and consistent with each "
            "other, that every record is covered by one, and every deployment's signed "
            "envelope, using only the ledger file and the public key(s). Exit 0 when it "
            "verifies, 1 when not."
        ),
    )
    ledger_args(p)
    p.add_argument(
        "--pubkey",
        type=Path,
        action="append",
        required=True,
        help="trusted public key PEM (repeat for rotated keys)",
    )
    p.add_argument(
        "--allow-uncovered-tail",
        action="store_true",
        help="a live ledger: let records after the newest signed checkpoint through with a "
        "warning (never a ledger without any checkpoint)",
    )
    p.add_argument(
        "--require-checkpoint",
        action="store_true",
        help="(the default now; kept for old scripts) fail on records no checkpoint covers",
    )
    p.add_argument(
        "--trusted-head",
        action="append",
        default=[],
        metavar="FILE|SIZE:ROOT",
        help="tree heads kept from an earlier audit (a file written by --export-head or "
        "'audit checkpoints --export', or SIZE:HEXROOT); the ledger must be an extension of "
        "them, which is how a rollback is seen (repeatable)",
    )
    p.add_argument(
        "--export-head",
        type=Path,
        metavar="FILE",
        help="when the ledger verifies, write its newest signed checkpoint to FILE for the "
        "next audit's --trusted-head",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run_verify)

    p = sub.add_parser(
        "checkpoints",
        help="list the signed checkpoints",
        description="List the signed checkpoints (tree size, root, time, key) as signed notes "
        "or JSON. They are checked by 'audit verify'.",
    )
    ledger_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write the newest checkpoint to FILE (JSON Lines) for a later --trusted-head",
    )
    p.set_defaults(func=_run_checkpoints)

    p = sub.add_parser(
        "prove",
        help="print an inclusion or consistency proof",
        description=(
            "Print the RFC 9162 inclusion proof of record N (or, with --from M, the RFC 9162 "
            "section 2.1.4 consistency proof from tree size M: sizes, roots and the node "
            "hashes in the RFC's order) against tree size --size (default: now)."
        ),
    )
    ledger_args(p)
    p.add_argument("index", type=int, nargs="?", help="record index for an inclusion proof")
    p.add_argument("--from", dest="prior", type=int, help="prior tree size (consistency proof)")
    p.add_argument("--size", type=int, help="tree size to prove against (default: current)")
    p.set_defaults(func=_run_prove)

    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report",
        description=(
            "Write one HTML page (no network resources): timeline, predicted against "
            "measured charts, gate decisions, signature status and the what-if video."
        ),
    )
    ledger_args(p)
    p.add_argument("--deployment", type=int, help="report on this deployment record only")
    p.add_argument("--since", help="records at or after this UTC time (ISO 8601)")
    p.add_argument("--until", help="records before this UTC time (ISO 8601)")
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    p.add_argument("--pubkey", type=Path, action="append", help="verify with this public key first")
    p.add_argument(
        "--link-video",
        action="store_true",
        help="copy the videos next to the report and link them instead of embedding",
    )
    p.add_argument(
        "--inputs",
        type=Path,
        action="append",
        default=[],
        help="folder holding recorded files (videos) besides the ledger's own folder; no "
        "other file is read, and none whose sha256 differs from the record",
    )
    p.set_defaults(func=_run_report)

    p = sub.add_parser(
        "replay",
        help="re-run a cycle's what-if and compare the numbers",
        description=(
            "Re-run cycle record N's what-if from its recorded inputs and seeds on the SUMO "
            "twin and check the numbers equal the recorded ones (exit 0) or not (exit 1)."
        ),
    )
    ledger_args(p)
    p.add_argument("index", type=int, help="cycle record index")
    p.add_argument(
        "--inputs",
        type=Path,
        action="append",
        default=[],
        help="folder holding the recorded network/demand files, found by name and checked "
        "against their recorded sha256 (default: where recorded, or next to the ledger)",
    )
    p.add_argument(
        "--workers", type=int, help="simulation worker processes (default: cores, max 4)"
    )
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_run_replay)

    p = sub.add_parser(
        "export",
        help="export the ledger (JSON Lines, or a self-contained SQLite copy)",
        description="Export every record and checkpoint.",
    )
    ledger_args(p)
    p.add_argument("--format", choices=("jsonl", "sqlite"), default="jsonl")
    p.add_argument("--out", type=Path, help="output file (jsonl: default stdout)")
    p.set_defaults(func=_run_export)


def _ledger_path(args: argparse.Namespace) -> Path:
    if args.ledger is not None:
        return Path(args.ledger)
    if args.config is not None:
        from configs.settings_file import load_settings

        return Path(load_settings(args.config).ledger.path)
    raise ConfigError("give the ledger file with --ledger FILE (or --config settings.toml)")


def _open(args: argparse.Namespace) -> Ledger:
    from controller.ledger import Ledger

    return Ledger.open(_ledger_path(args), readonly=True)


def _time_arg(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except LedgerError as e:
        raise ConfigError(f"{flag}: {e}") from e


def _keys(paths: list[Path]) -> list[VerificationKey]:
    from controller.ledger import load_keys

    try:
        return load_keys(paths)
    except SigningError as e:
        raise ConfigError(f"--pubkey: {e}") from e


def _run_list(args: argparse.Namespace) -> int:
    since = _time_arg(args.since, "--since")
    until = _time_arg(args.until, "--until")
    with _open(args) as ledger:
        for r in ledger.iter_records(args.kind, since=since, until=until):
            if args.json:
                line = {"index": r.index, "kind": r.kind, "time": format_time(r.time)}
                print(json.dumps({**line, "hash": r.hash, "body": r.body}, sort_keys=True))
            else:
                print(f"{r.index:>7}  {format_time(r.time)}  {r.kind:<15} {_brief(r.body)}")
    return EXIT_OK


def _brief(body: Mapping[str, Any]) -> str:
    keys = ("cycle_id", "outcome", "sequence", "deployment", "keyid", "sha256")
    return " ".join(f"{k}={str(body[k])[:24]}" for k in keys if k in body)


def _run_show(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        r = ledger.get(args.index)
        out: dict[str, Any] = {"index": r.index, "hash": r.hash, "record": r.document()}
        if args.proof:
            out["inclusion"] = ledger.prove_inclusion(r.index)
        print(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False))
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    from controller.ledger import verify_ledger, write_heads

    keys = _keys(args.pubkey)
    result = verify_ledger(
        _ledger_path(args),
        keys,
        allow_uncovered_tail=args.allow_uncovered_tail,
        trusted_heads=[h for text in args.trusted_head for h in _heads(text)],
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        if result.ok:
            print(
                f"OK: {result.path}: {result.records} records, {result.checkpoints} signed "
                f"checkpoints, records 1..{result.covered_size} covered; "
                f"{len(result.signatures)} signed envelopes verified"
            )
            if result.head is not None:
                print(f"tree head: {result.head[0]}:{result.head[1]}")
        else:
            print(f"FAILED: {result.path}: {result.first_problem}")
            for finding in result.problems[1:]:
                print(f"  also: {finding}")
            if result.truncated_findings:
                print("  (more problems not listed)")
        for w in result.warnings:
            print(f"warning: {w}")
    if args.export_head is not None:
        if not result.ok:
            print(f"not writing {args.export_head}: the ledger did not verify", file=sys.stderr)
        elif result.newest_checkpoint is None:
            print(f"not writing {args.export_head}: no signed checkpoint", file=sys.stderr)
        else:
            write_heads([result.newest_checkpoint], args.export_head)
            if not args.json:
                print(f"wrote the tree head to {args.export_head}")
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _heads(text: str) -> list[Checkpoint | tuple[int, bytes]]:
    from controller.ledger import read_heads

    if Path(text).is_file():
        return list(read_heads(Path(text)))
    size, sep, root = text.partition(":")
    try:
        value = (int(size), bytes.fromhex(root))
    except ValueError as e:
        raise ConfigError(
            f"--trusted-head {text!r}: no such file, and not SIZE:HEXROOT either"
        ) from e
    if not sep or value[0] < 1 or len(value[1]) != 32:
        raise ConfigError(f"--trusted-head {text!r}: expected a file, or SIZE:64-hex-digit root")
    return [value]


def _run_checkpoints(args: argparse.Namespace) -> int:
    from controller.ledger import write_heads

    with _open(args) as ledger:
        checkpoints = ledger.checkpoints()
        for cp in checkpoints:
            if args.json:
                print(json.dumps(cp.to_json(), sort_keys=True))
            else:
                print(f"# checkpoint {cp.seq}, keyid {cp.keyid}")
                print(cp.signed_note())
    if args.export is not None:
        if not checkpoints:
            raise LedgerError("the ledger has no checkpoint to export")
        write_heads(checkpoints[-1:], args.export)
        print(f"wrote checkpoint {checkpoints[-1].seq} to {args.export}", file=sys.stderr)
    return EXIT_OK


def _run_prove(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        if args.prior is not None:
            out = ledger.prove_consistency(args.prior, args.size)
        elif args.index is not None:
            out = ledger.prove_inclusion(args.index, args.size)
        else:
            raise ConfigError("give a record index (inclusion) or --from SIZE (consistency)")
        print(json.dumps(out, indent=2, sort_keys=True))
    return EXIT_OK


def _run_report(args: argparse.Namespace) -> int:
    if args.deployment is not None and (args.since or args.until):
        raise ConfigError("give either --deployment N or --since/--until, not both")
    from controller.ledger import Ledger, ReportSelection, verify_ledger, write_report

    selection = ReportSelection(
        deployment=args.deployment,
        since=_time_arg(args.since, "--since"),
        until=_time_arg(args.until, "--until"),
    )
    path = _ledger_path(args)
    verification = verify_ledger(path, _keys(args.pubkey)) if args.pubkey else None
    with Ledger.open(path, readonly=True) as ledger:
        out = write_report(
            ledger,
            args.out,
            selection=selection,
            verification=verification,
            link_video=args.link_video,
            inputs=args.inputs,
        )
    print(f"wrote {out}")
    if verification is not None and not verification.ok:
        print(f"FAILED verification: {verification.first_problem}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


class TwinReplay:
    """The SUMO twin as the ledger's :class:`~controller.ledger.ReplayTwin` port.

    Rebuilds the recorded request (:meth:`simulators.twin.WhatIfRequest.from_dict`,
    which re-checks the network and demand files' sha256), runs it on
    :class:`simulators.twin.LibsumoWhatIfEngine` with the recorded seeds and
    hands back :meth:`WhatIfResult.to_dict`. ``simulators`` is imported here,
    when a replay runs, so no other ``audit`` sub-command loads SUMO.
    """

    def __init__(self, workers: int | None = None) -> None:
        import os

        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)

    def run_whatif(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run the recorded request (input paths already located) and return the result."""
        from simulators.twin import LibsumoWhatIfEngine, WhatIfRequest

        try:
            parsed = WhatIfRequest.from_dict(request)
        except (KeyError, TypeError, ValueError) as e:
            raise LedgerError(f"the recorded what-if request is incomplete: {e!r}") from e
        except ConfigError as e:
            raise LedgerError(f"cannot replay: {e}") from e
        with LibsumoWhatIfEngine(workers=self.workers) as engine:
            result = engine.evaluate(parsed)
        data: Mapping[str, Any] = result.to_dict()
        return data


def default_replayer(workers: int | None = None) -> ReplayTwin:
    """The SUMO twin's what-if engine as the replay port.

    Raises:
        ConfigError: bad ``workers``, or the twin is not available in this installation.
    """
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")
    try:
        import simulators.twin  # noqa: F401 - fail here, before the ledger is read
    except ImportError as e:
        raise ConfigError(f"the what-if twin is not available for replay: {e}") from e
    return TwinReplay(workers)


def _run_replay(args: argparse.Namespace) -> int:
    from controller.ledger import replay_cycle

    twin = default_replayer(args.workers)
    with _open(args) as ledger:
        result = replay_cycle(ledger, args.index, twin, search=args.inputs)
    if args.json:
        print(
            json.dumps(
                {
                    "index": result.index,
                    "ok": result.ok,
                    "compared": result.compared,
                    "differences": list(result.differences),
                },
                indent=2,
            )
        )
    elif result.ok:
        print(f"OK: cycle record {result.index}: {result.compared} numbers replayed identically")
    else:
        print(f"DIFFERENT: cycle record {result.index}: {result.differences[0]}")
        for d in result.differences[1:20]:
            print(f"  also: {d}")
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _run_export(args: argparse.Namespace) -> int:
    from controller.ledger import export_jsonl

    with _open(args) as ledger:
        if args.format == "sqlite":
            if args.out is None:
                raise ConfigError("--format sqlite needs --out FILE")
            ledger.backup(args.out)
            print(f"wrote {args.out}")
            return EXIT_OK
        if args.out is None:
            export_jsonl(ledger, sys.stdout)
        else:
            try:
                with args.out.open("w", encoding="utf-8") as f:
                    n = export_jsonl(ledger, f)
            except OSError as e:
                raise LedgerError(f"cannot write {args.out}: {e.strerror}") from e
            print(f"wrote {n} lines to {args.out}")
    return EXIT_OK
