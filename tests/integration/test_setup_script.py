"""The README's set-up path without test tools (what `scripts/demo.sh` runs first).

CI runs `scripts/setup.sh --dev`; this checks the plain path too, which once
exited early under `set -e`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_plain_setup_succeeds_and_is_idempotent() -> None:
    for _ in range(2):
        run = subprocess.run(
            ["bash", str(ROOT / "scripts" / "setup.sh")],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "ready: .venv/bin/signaltwin" in run.stderr
    # the second run found everything in place
    assert "python environment up to date" in run.stderr
    assert (ROOT / ".venv" / "bin" / "signaltwin").exists()
