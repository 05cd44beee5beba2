"""Issue 14.11 (report part): a crafted ledger cannot make ``audit report`` carry other files.

Only files inside the ledger's folder or an ``--inputs`` folder, with the
recorded sha256, are embedded or linked.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from controller.cli import run
from controller.ledger import Ledger
from tests.support.ledgerdata import FakeClock, add_cycle, write_pubkey
from tests.support.softkeys import SoftwareSigner

pytestmark = pytest.mark.integration

SECRET = b"root:x:0:0:root:/root:/bin/bash\nsecret-token-9f2c\n"


def crafted(d: Path, video: Path, recorded: str) -> Path:
    """A signed ledger whose deployed cycle names ``recorded`` as its video (``video``'s digest)."""
    signer = SoftwareSigner()
    path = d / "ledger.sqlite"
    with Ledger.open(path, signer=signer, clock=FakeClock()) as led:
        led.enrol_key(signer)
        add_cycle(led, signer, 1, video=video, video_path=recorded)
        led.checkpoint(signer)
    write_pubkey(signer, d / "pub.pem")
    return path


def report(ledger: Path, out: Path, *extra: str) -> str:
    argv = ["audit", "report", "--ledger", str(ledger), "--out", str(out), *extra]
    assert run(argv) == 0
    return out.read_text()


def leaked(page: str) -> bool:
    return base64.b64encode(SECRET).decode() in page or "secret-token" in page


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "elsewhere" / "passwd"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    return secret


def test_an_absolute_path_outside_the_ledger_folder_is_not_embedded(
    tmp_path: Path, outside: Path
) -> None:
    d = tmp_path / "audit"
    d.mkdir()
    ledger = crafted(d, outside, str(outside))  # the recorded digest even matches
    page = report(ledger, tmp_path / "r.html")
    assert not leaked(page)
    assert "data:video" not in page
    assert "or an --inputs folder; copy it there" in page
    # linking copies nothing either
    site = tmp_path / "site"
    page = report(ledger, site / "r.html", "--link-video")
    assert not leaked(page) and sorted(p.name for p in site.iterdir()) == ["r.html"]


def test_etc_passwd_is_not_embedded(tmp_path: Path) -> None:
    passwd = Path("/etc/passwd")
    if not passwd.is_file():
        pytest.skip("no /etc/passwd here")
    ledger = crafted(tmp_path, passwd, "/etc/passwd")
    page = report(ledger, tmp_path / "r.html")
    assert base64.b64encode(passwd.read_bytes()).decode() not in page
    assert "data:video" not in page


def test_relative_escapes_and_links_out_of_the_folder_are_refused(
    tmp_path: Path, outside: Path
) -> None:
    d = tmp_path / "audit"
    d.mkdir()
    ledger = crafted(d, outside, "../elsewhere/passwd")
    page = report(ledger, tmp_path / "r.html")
    assert not leaked(page) and "data:video" not in page
    # a link inside the folder pointing out of it
    d2 = tmp_path / "audit2"
    d2.mkdir()
    os.symlink(outside, d2 / "whatif.mp4")
    ledger2 = crafted(d2, outside, "whatif.mp4")
    page = report(ledger2, tmp_path / "r2.html")
    assert not leaked(page) and "data:video" not in page


def test_a_file_whose_digest_differs_is_not_embedded_but_a_matching_one_in_inputs_is(
    tmp_path: Path,
) -> None:
    d = tmp_path / "audit"
    d.mkdir()
    video = d / "whatif.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 the recorded video")
    ledger = crafted(d, video, "/daemon/host/videos/whatif.mp4")
    page = report(ledger, tmp_path / "r.html")
    assert "data:video/mp4;base64," in page  # found by name next to the ledger, digest matches
    video.write_bytes(SECRET)  # replaced after it was recorded
    page = report(ledger, tmp_path / "r.html")
    assert not leaked(page) and "data:video" not in page
    assert "the video file was changed" in page
    # the right file in an --inputs folder is found and embedded
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "whatif.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 the recorded video")
    video.unlink()
    page = report(ledger, tmp_path / "r.html", "--inputs", str(inputs))
    assert "data:video/mp4;base64," in page
