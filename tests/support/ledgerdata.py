"""Builders for realistic ledgers in tests: signed deployments, cycles, measured deltas."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from configs.digests import canonical_json, sha256_hex
from configs.outcomes import PushOutcome
from controller.ledger import Ledger
from hsm.envelope import sign_envelope
from tests.support.softkeys import SoftwareSigner


class FakeClock:
    """A clock that advances by ``step_s`` on every call."""

    def __init__(self, start: datetime | None = None, step_s: float = 60.0) -> None:
        self.now = start or datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
        self.step = timedelta(seconds=step_s)

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def predicted(wait: float = -0.18, nox: float = -0.01) -> dict[str, Any]:
    return {
        "wait_change": wait,
        "wait_change_ci": [wait - 0.04, wait + 0.04],
        "nox_change": nox,
        "nox_change_ci": [nox - 0.003, nox + 0.003],
        "horizon_s": 900,
        "seeds": [1, 2, 3],
    }


def timing_payload(sequence: int, pred: dict[str, Any]) -> bytes:
    doc = {
        "schema": "signaltwin.timing/v1",
        "network": {"id": "district", "sha256": "ab" * 32},
        "sequence": sequence,
        "issued_at": "2026-11-23T08:00:00Z",
        "valid_from": "2026-11-23T08:01:00Z",
        "valid_until": "2026-11-23T09:00:00Z",
        "predicted": pred,
        "evidence": {"video_sha256": None, "policy_sha256": None, "demand_sha256": "cd" * 32},
        "intersections": {
            "J1": {
                "mode": "fixed",
                "cycle_s": 90,
                "offset_s": 0,
                "phases": [{"state": "GGrr", "duration_s": 40}, {"state": "yyrr", "duration_s": 4}],
            }
        },
    }
    return canonical_json(doc)


def controller_ids(n: int) -> list[str]:
    """``n`` intersection ids as a district names them: ``n01`` … (unsorted on purpose)."""
    return [f"n{i:02d}" for i in range(n, 0, -1)]


def pool_push(
    sequence: int,
    digest: str,
    controllers: list[str],
    *,
    refused: dict[str, tuple[int, str]] | None = None,
    unread: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A ``deployment.push`` as the OPC UA pool writes it (:meth:`PushReport.to_dict`).

    Args:
        sequence: the plan's sequence.
        digest: the plan's configuration digest.
        controllers: the intersection ids pushed to.
        refused: intersection id -> (status code, message) of an ActivatePlan refusal.
        unread: intersection ids that activated but could not be read back.
    """
    from actuation.types import ControllerPushResult, PushReport  # asyncua: only when used

    refused = refused or {}
    rows = []
    for tls in controllers:
        row = ControllerPushResult(
            tls, stage_status=0, stage_message=f"plan {sequence} verified and staged"
        )
        if tls in refused:
            status, message = refused[tls]
            row = replace(row, activate_status=status, activate_message=message)
            row = replace(row, readback_sequence=sequence - 1, readback_digest="0" * 64)
        else:
            row = replace(
                row,
                activate_status=0,
                activate_message=f"plan {sequence} active from field time 5060.0",
            )
            if tls in unread:
                row = row.note("read-back timed out after 2.0 s")
            else:
                row = replace(row, readback_sequence=sequence, readback_digest=digest)
        rows.append(row)
    bad = set(refused) | set(unread)
    report = PushReport(
        sequence=sequence,
        digest=digest,
        outcome=PushOutcome.PARTIAL if bad else PushOutcome.ACTIVATED,
        activate_at_field_time_s=5060.0,
        controllers=rows,
        stage_s=0.214,
        activate_s=0.409,
        readback_s=0.097,
        total_s=0.72,
        reason=f"activation refused or not read back on {len(bad)}" if bad else "",
    )
    return {"ok": not bad, "message": report.reason, "results": report.to_dict()}


def add_cycle(
    ledger: Ledger,
    signer: SoftwareSigner,
    n: int,
    *,
    deploy: bool = True,
    video: Path | None = None,
    wait: float = -0.18,
    measured_wait: float | None = -0.15,
    video_path: str | None = None,
    push: Callable[[int, str], Any] | None = None,
) -> dict[str, int]:
    """Append one cycle (and, when deployed, a deployment and a measured delta).

    ``video_path`` records that path for ``video`` instead of its file name (a
    crafted ledger naming a file elsewhere); ``push``, when given, is a callable
    ``(sequence, digest) -> push`` whose result is recorded as the deployment's
    push instead of one row for J1.
    """
    cycle_id = f"cycle-{n:04d}"
    pred = predicted(wait)
    out: dict[str, int] = {}
    whatif = {
        "request": {
            "network": {"path": "district.net.xml", "sha256": "ab" * 32},
            "candidates": [{"name": "rl", "green_s": [30, 40]}],
            "horizon_s": 900,
            "seeds": [1, 2, 3],
        },
        "result": {"candidates": [{"name": "rl", "wait_change": wait, "nox_change": -0.01}]},
    }
    if deploy:
        payload = timing_payload(n, pred)
        envelope = sign_envelope(signer, payload).to_dict()
        push_body = (
            push(n, sha256_hex(payload))
            if push is not None
            else [
                {
                    "intersection": "J1",
                    "endpoint": "opc.tcp://127.0.0.1:4840",
                    "ok": True,
                    "status": "Good",
                    "message": "staged and activated",
                }
            ]
        )
        ref = ledger.append(
            "deployment",
            {
                "cycle_id": cycle_id,
                "sequence": n,
                "config_digest": sha256_hex(payload),
                "envelope": envelope,
                "predicted": pred,
                "push": push_body,
            },
            dedupe_key=f"{cycle_id}:deployment",
        )
        out["deployment"] = ref.index
    body: dict[str, Any] = {
        "cycle_id": cycle_id,
        "outcome": "deployed" if deploy else "refused",
        "gate": {
            "decision": "pass" if deploy else "refuse",
            "reasons": [f"wait change {wait:+.2%} vs threshold -12.00%", "NOx change -1.00%"],
        },
        "candidates": [{"name": "rl", "predicted": pred}],
        "whatif": whatif,
        "video": None,
    }
    if video is not None:
        name = video.name if video_path is None else video_path
        body["video"] = {"path": name, "sha256": sha256_hex(video.read_bytes())}
    out["cycle"] = ledger.append("cycle", body, dedupe_key=cycle_id).index
    if deploy and measured_wait is not None:
        out["measured"] = ledger.append(
            "measured_delta",
            {
                "deployment": out["deployment"],
                "window": {"from": "2026-11-23T08:05:00Z", "until": "2026-11-23T08:20:00Z"},
                "measured": {"wait_change": measured_wait, "nox_change": -0.004},
            },
            dedupe_key=f"{cycle_id}:measured",
        ).index
    return out


def build_ledger(
    path: Path,
    signer: SoftwareSigner,
    cycles: int = 6,
    *,
    checkpoint_every: int = 4,
    video: Path | None = None,
) -> None:
    """A ledger: key enrolment, ``cycles`` cycles (every third refused), final checkpoint."""
    with Ledger.open(
        path, signer=signer, checkpoint_every=checkpoint_every, clock=FakeClock()
    ) as ledger:
        ledger.enrol_key(signer)
        ledger.append("config_change", {"sha256": "ee" * 32, "summary": "initial settings"})
        for n in range(1, cycles + 1):
            add_cycle(ledger, signer, n, deploy=n % 3 != 0, video=video)
        ledger.checkpoint(signer)


def write_pubkey(signer: SoftwareSigner, path: Path) -> Path:
    path.write_bytes(signer.public_key_pem())
    return path


def make_mp4(path: Path, frames: int = 24, fps: int = 12) -> Path:
    """A short real H.264 MP4 (libx264 through PyAV)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, :, 0] = (i * 10) % 256
            img[10:30, (i * 2) % 60 : (i * 2) % 60 + 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def tamper(path: Path, *sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` on a ledger file as an attacker would: append-only triggers dropped first."""
    con = sqlite3.connect(path, isolation_level=None)
    for table in ("records", "checkpoints", "meta"):
        for action in ("update", "delete"):
            con.execute(f"DROP TRIGGER IF EXISTS {table}_no_{action}")
    for stmt in sql:
        con.execute(stmt, params if "?" in stmt else ())
    con.close()
