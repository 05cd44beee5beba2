"""`signaltwin network build` with the real netconvert: reproducible, checked against DIGESTS."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from controller.cli import run
from simulators.netbuild import DISTRICT_DIR, DISTRICT_FILES

pytestmark = pytest.mark.integration


def test_build_twice_is_bit_identical_and_matches_committed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["network", "build", "--out", str(a)]) == 0
    assert run(["network", "build", "--out", str(b)]) == 0
    names = [*DISTRICT_FILES, "DIGESTS"]
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []
    # ... and the committed district is exactly what the build produces
    match, mismatch, errors = filecmp.cmpfiles(a, DISTRICT_DIR, names, shallow=False)
    assert mismatch == [] and errors == [], "rebuild configs/district: signaltwin network build"
    net = (a / "district.net.xml").read_text()
    assert "generated on" not in net and str(tmp_path) not in net


def test_check_passes_then_fails_after_tampering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d"
    assert run(["network", "build", "--out", str(out)]) == 0
    assert run(["network", "build", "--check", "--out", str(out)]) == 0
    net = out / "district.net.xml"
    net.write_bytes(net.read_bytes().replace(b'duration="4"', b'duration="2"', 1))
    capsys.readouterr()
    assert run(["network", "build", "--check", "--out", str(out)]) == 1
    assert "district.net.xml: sha256 differs" in capsys.readouterr().out


def test_check_without_digests_is_a_config_error(tmp_path: Path) -> None:
    assert run(["network", "build", "--check", "--out", str(tmp_path)]) == 2


def test_info_on_a_foreign_network_generates_loops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulators.sumo import sumo_home

    net = sumo_home() / "tools" / "game" / "grid6" / "grid6.net.xml"
    det = tmp_path / "loops.add.xml"
    assert run(["network", "info", str(net), "--detectors", str(det), "--json"]) == 0
    assert det.is_file()
    assert '"detectors": 24' in capsys.readouterr().out
