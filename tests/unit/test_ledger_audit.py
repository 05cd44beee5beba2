"""Auditor tools without a browser or a twin: replay (fake replayer), export, report, CLI."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from configs.errors import LedgerError
from configs.timing import canonical_json
from controller.cli import run
from controller.ledger import (
    Ledger,
    ReportSelection,
    build_report,
    export_jsonl,
    replay_cycle,
    verify_ledger,
)
from hsm.verify import load_public_key
from tests.support.ledgerdata import build_ledger, write_pubkey
from tests.support.softkeys import SoftwareSigner


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, SoftwareSigner]:
    signer = SoftwareSigner()
    (tmp_path / "district.net.xml").write_text("<net/>")
    video = tmp_path / "whatif.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    build_ledger(tmp_path / "ledger.sqlite", signer, cycles=3, video=video)
    write_pubkey(signer, tmp_path / "pub.pem")
    return tmp_path / "ledger.sqlite", signer


class FakeTwin:
    """Deterministic 'twin': returns the recorded numbers of the cycle, optionally nudged."""

    def __init__(self, ledger: Ledger, nudge: float = 0.0) -> None:
        self.ledger = ledger
        self.nudge = nudge
        self.requests: list[Mapping[str, Any]] = []

    def run_whatif(self, request: Mapping[str, Any]) -> Mapping[str, Any]:
        self.requests.append(request)
        assert Path(request["network"]["path"]).is_file()  # located for the replayer
        cycle = self.ledger.latest("cycle")
        assert cycle is not None
        result = copy.deepcopy(cycle.body["whatif"]["result"])
        result["candidates"][0]["wait_change"] += self.nudge
        return dict(result)


def with_real_inputs(path: Path) -> Path:
    """Rewrite the ledger so its what-if requests name a real network file (new ledger)."""
    d = path.parent
    net = d / "district.net.xml"
    digest = hashlib.sha256(net.read_bytes()).hexdigest()
    out = d / "replayable.sqlite"
    with Ledger.open(path, readonly=True) as src, Ledger.open(out) as dst:
        for r in src.iter_records():
            body = copy.deepcopy(dict(r.body))
            if r.kind == "cycle":
                body["whatif"]["request"]["network"]["sha256"] = digest
            if r.kind == "measured_delta":
                continue
            dst.append(r.kind, body)
    return out


def test_replay_with_identical_numbers_passes(built: tuple[Path, SoftwareSigner]) -> None:
    path = with_real_inputs(built[0])
    with Ledger.open(path, readonly=True) as led:
        index = led.latest("cycle").index  # type: ignore[union-attr]
        twin = FakeTwin(led)
        result = replay_cycle(led, index, twin)
    assert result.ok and result.compared == 2 and result.differences == ()
    assert twin.requests[0]["seeds"] == [1, 2, 3]


def test_replay_with_different_numbers_names_them(built: tuple[Path, SoftwareSigner]) -> None:
    path = with_real_inputs(built[0])
    with Ledger.open(path, readonly=True) as led:
        index = led.latest("cycle").index  # type: ignore[union-attr]
        result = replay_cycle(led, index, FakeTwin(led, nudge=0.01))
    assert not result.ok
    assert result.differences[0].startswith("result.candidates[0].wait_change: recorded")


def test_replay_refuses_changed_inputs_and_non_cycles(built: tuple[Path, SoftwareSigner]) -> None:
    with Ledger.open(built[0], readonly=True) as led:
        index = led.latest("cycle").index  # type: ignore[union-attr]
        with pytest.raises(LedgerError, match=r"district\.net\.xml has sha256 .* the record says"):
            replay_cycle(led, index, FakeTwin(led))
        with pytest.raises(LedgerError, match="replay needs a cycle record"):
            replay_cycle(led, 1, FakeTwin(led))


def test_jsonl_export_round_trips_every_record_hash(built: tuple[Path, SoftwareSigner]) -> None:
    buf = io.StringIO()
    with Ledger.open(built[0], readonly=True) as led:
        n = export_jsonl(led, buf)
        size, checkpoints = led.size(), len(led.checkpoints())
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert n == len(lines) == size + checkpoints
    records = [x for x in lines if x["type"] == "record"]
    assert [x["index"] for x in records] == list(range(1, size + 1))
    for x in records:
        raw = canonical_json(x["document"])
        assert hashlib.sha256(b"\x00" + raw).hexdigest() == x["hash"]
    assert lines[-1]["type"] == "checkpoint" and lines[-1]["size"] == size


def test_report_shows_verification_gates_charts_and_flags_a_changed_video(
    built: tuple[Path, SoftwareSigner],
) -> None:
    path, signer = built
    verification = verify_ledger(path, [load_public_key(signer.public_key_pem())])
    with Ledger.open(path, readonly=True) as led:
        page = build_report(led, path.parent / "r.html", verification=verification)
        assert "verified: 9 records" in page
        assert page.count("<svg") == 1 + 2 + 1  # timeline, two deployments, scatter
        assert "Cycles that deployed nothing" in page and "cycle-0003" in page
        assert "sha256 matches the record" in page
        (path.parent / "whatif.mp4").write_bytes(b"changed")
        page = build_report(led, path.parent / "r.html", selection=ReportSelection(deployment=3))
        assert "the video file was changed" in page
        assert "not verified" in page
        with pytest.raises(LedgerError, match="not a deployment"):
            build_report(led, path.parent / "r.html", selection=ReportSelection(deployment=4))
        t = led.get(5).time
        page = build_report(led, path.parent / "r.html", selection=ReportSelection(since=t))
        assert "Deployment record 3:" not in page and "Deployment record 6:" in page


def test_cli_list_show_prove_export(
    built: tuple[Path, SoftwareSigner], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = str(built[0])
    assert run(["audit", "list", "--ledger", ledger, "--kind", "deployment"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "sequence=1" in out[0]
    assert run(["audit", "show", "--ledger", ledger, "3", "--proof"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["record"]["kind"] == "deployment" and shown["inclusion"]["index"] == 3
    assert run(["audit", "checkpoints", "--ledger", ledger, "--json"]) == 0
    cps = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert cps and cps[-1]["size"] == 9 and cps[-1]["note"].endswith("Z\n")
    assert run(["audit", "prove", "--ledger", ledger, "--from", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["prior_size"] == 4
    assert run(["audit", "export", "--ledger", ledger, "--out", str(tmp_path / "x.jsonl")]) == 0
    assert (tmp_path / "x.jsonl").read_text().count("\n") > 10
    copy_path = tmp_path / "copy.sqlite"
    assert (
        run(["audit", "export", "--ledger", ledger, "--format", "sqlite", "--out", str(copy_path)])
        == 0
    )
    capsys.readouterr()
    pub = str(built[0].parent / "pub.pem")
    assert run(["audit", "verify", "--ledger", str(copy_path), "--pubkey", pub]) == 0
    assert run(["audit", "show", "--ledger", ledger, "99"]) == 3
    assert run(["audit", "list"]) == 2
    assert "--ledger FILE" in capsys.readouterr().err


def test_verify_flags_a_reused_deployment_sequence(built: tuple[Path, SoftwareSigner]) -> None:
    path, signer = built
    with Ledger.open(path) as led:
        first = led.find("deployment")[0]
        again = led.append("deployment", dict(first.body))  # properly chained, same sequence
        led.checkpoint(signer)
    result = verify_ledger(path, [load_public_key(signer.public_key_pem())])
    first_problem = result.first_problem
    assert first_problem is not None and first_problem.index == again.index
    assert "sequences must strictly increase" in first_problem.message
