"""The HTML report in a real browser: headless Chromium loads and plays the embedded video.

Needs Debian's ``chromium`` (scripts/setup.sh --dev installs it); Debian builds it
with the proprietary ffmpeg codecs, so the H.264 MP4 written here with PyAV
(libx264) really decodes and plays.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from controller.cli import run
from tests.support.ledgerdata import build_ledger, make_mp4, write_pubkey
from tests.support.softkeys import SoftwareSigner

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Videos(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.videos: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "video":
            self.videos.append(dict(attrs))


def dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--autoplay-policy=no-user-gesture-required",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return done.stdout


def videos_in(dom: str) -> list[dict[str, str | None]]:
    parser = _Videos()
    parser.feed(dom)
    return parser.videos


@pytest.fixture(scope="module")
def ledger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("report")
    signer = SoftwareSigner()
    video = make_mp4(d / "whatif-cycle.mp4")
    build_ledger(d / "ledger.sqlite", signer, cycles=3, video=video)
    write_pubkey(signer, d / "pub.pem")
    return d


def make_report(ledger_dir: Path, out: Path, *extra: str) -> None:
    code = run(
        [
            "audit",
            "report",
            "--ledger",
            str(ledger_dir / "ledger.sqlite"),
            "--pubkey",
            str(ledger_dir / "pub.pem"),
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0


def assert_played(video: dict[str, str | None]) -> None:
    assert video.get("data-error") is None, video
    assert video.get("data-play-error") is None, video
    ready = int(video.get("data-ready-state") or 0)
    current = float(video.get("data-current-time") or 0)
    assert video.get("data-played") == "yes", video
    assert ready >= 3 or current > 0, video
    assert current > 0, video


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh --dev)")
def test_embedded_video_loads_and_plays_in_headless_chromium(
    ledger_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    make_report(ledger_dir, out, "--deployment", "3")
    page = out.read_text()
    assert "data:video/mp4;base64," in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # nothing from the network
    assert "<svg" in page and "Gate decision" in page and "verified" in page
    dom = dump_dom(out.as_uri() + "#autoplay", tmp_path / "profile")
    videos = videos_in(dom)
    assert len(videos) == 1
    assert_played(videos[0])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh --dev)")
def test_linked_video_next_to_the_report_plays(ledger_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "report.html"
    make_report(ledger_dir, out, "--link-video")
    page = out.read_text()
    assert "data:video/mp4" not in page
    linked = sorted(p.name for p in out.parent.glob("*.mp4"))
    assert len(linked) == 2  # the two deployed cycles of three
    dom = dump_dom(out.as_uri() + "#autoplay", tmp_path / "profile")
    videos = videos_in(dom)
    assert len(videos) == 2
    for v in videos:
        assert v.get("src") in linked
        assert_played(v)
