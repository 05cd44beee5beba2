"""Start-up time of the ``signaltwin`` command line against a bare Python start.

Every figure is the median of ``--runs`` subprocess runs of ``.venv/bin/signaltwin``
(this checkout's code first on ``PYTHONPATH``), interleaved with runs of a bare
``python -c pass`` whose median is the ratio's reference, measured in the same
run. One JSON line per figure:

    {"figure": "cli_help_s", "value": 0.42, "unit": "s", "ratio": 3.1, "against": "python -c pass"}

Figures: ``cli_help_s`` (``signaltwin --help``), ``run_help_s`` (``signaltwin run
--help``), ``config_check_s`` (``signaltwin config check --schema-only
configs/demo.toml``) and ``audit_verify_small_s`` (``signaltwin audit verify`` of a
small demo-like ledger: key enrolment, a settings record, six cycles of which
four deploy a signed timing configuration, checkpoints; built with
``tests/support/ledgerdata.py`` and a software key, not the HSM). The load
average at the start and the end goes to stderr: the numbers depend on it.

    .venv/bin/python bench/cli.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AGAINST = "python -c pass"


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str | None) -> None:
    """Print one figure as a JSON line."""
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 3),
                "unit": unit,
                "ratio": None if ratio is None else round(ratio, 2),
                "against": against,
            }
        ),
        flush=True,
    )


def small_ledger(workdir: Path) -> tuple[Path, Path]:
    """A demo-like ledger and its public key PEM, signed with a software key."""
    from tests.support.ledgerdata import build_ledger, write_pubkey
    from tests.support.softkeys import SoftwareSigner

    signer = SoftwareSigner()
    ledger = workdir / "ledger.sqlite"
    build_ledger(ledger, signer, cycles=6)
    return ledger, write_pubkey(signer, workdir / "signing-key.pub.pem")


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one run; a failing command stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}"
        )
    return elapsed


def main() -> int:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (>= 5 advised)")
    args = parser.parse_args()
    python = sys.executable
    signaltwin = str(Path(python).parent / "signaltwin")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="signaltwin-bench-cli-") as tmp:
        ledger, pubkey = small_ledger(Path(tmp))
        commands = {
            "cli_help_s": [signaltwin, "--help"],
            "run_help_s": [signaltwin, "run", "--help"],
            "config_check_s": [
                signaltwin,
                "config",
                "check",
                "--schema-only",
                str(ROOT / "configs" / "demo.toml"),
            ],
            "audit_verify_small_s": [
                signaltwin,
                "audit",
                "verify",
                "--ledger",
                str(ledger),
                "--pubkey",
                str(pubkey),
            ],
        }
        bare: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():  # warm the file cache once
            timed(argv, env)
        for _ in range(args.runs):
            bare.append(timed([python, "-c", "pass"], env))
            for name, argv in commands.items():
                times[name].append(timed(argv, env))
    reference = statistics.median(bare)
    emit("python_start_s", reference, "s", None, None)
    for name, values in times.items():
        value = statistics.median(values)
        emit(name, value, "s", value / reference, AGAINST)
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
