"""``signaltwin demo``: the whole closed loop on this machine, in one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.exit_codes import ExitCode

DESCRIPTION = """\
Run the whole closed loop locally: provision a SoftHSM2 token (if needed), start
the field emulator (the demo district with hidden, time-varying demand, in
accelerated time) behind one emulated OPC UA controller per traffic light, and
run the daemon's real cycle against them (observe over OPC UA, estimate demand,
propose, what-if on the SUMO twin, gate, render the what-if video, sign in the
HSM, push, record in the ledger). Stops after --cycles N cycles or on Ctrl-C,
then prints a summary and verifies the ledger with the public key.

Everything it writes is under the state directory (default: signaltwin-demo/
next to configs/, or --state-dir): the ledger, the videos, the token, the
certificates, demo-settings.toml (the effective settings) and controllers.log.
A second run reuses the token and the ledger.

While it runs, the operator console shows the cycles live in a browser: its URL
is printed at start-up (http://127.0.0.1:9110/ by default, --console-port).
The metrics and console ports are checked before anything starts.
"""

EPILOG = """\
exit codes: 0 the demo ran and its ledger verifies; 1 the ledger does not verify;
2 bad configuration, or the metrics or console port is taken (nothing was
started); 3 a component (SUMO, OPC UA, HSM) failed; 130 interrupted.
Afterwards: signaltwin audit verify --ledger STATE/ledger.sqlite --pubkey
STATE/hsm/signing-key.pub.pem, and signaltwin audit report for an HTML report.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command."""
    parser = subparsers.add_parser(
        "demo",
        help="run field emulator, emulated controllers, SoftHSM token and daemon locally",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="demo settings (default: the shipped configs/demo.toml)",
    )
    parser.add_argument("--state-dir", type=Path, help="where the demo keeps its state")
    parser.add_argument(
        "--cycles", type=int, default=None, help="stop after N cycles (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=8.0,
        help="field seconds per wall second (default 8: a 240 s cycle every 30 s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="the field's random seed")
    parser.add_argument("--no-video", action="store_true", help="skip the what-if videos")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the Prometheus metrics on 127.0.0.1:PORT (default: the settings' "
        "[metrics] port, 9108 in the shipped demo; 0: no metrics endpoint), e.g. when "
        "another demo or daemon already uses 9108",
    )
    parser.add_argument(
        "--console-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the operator console (a live, read-only web page) on 127.0.0.1:PORT "
        "(default: the settings' [console] port, 9110 in the shipped demo; 0: no console)",
    )
    parser.set_defaults(func=_run)


def _echo(line: str) -> None:
    print(line, flush=True)


def _run(args: argparse.Namespace) -> int:
    # the demo wiring pulls in SUMO, torch, asyncua and the HSM: only when it runs
    from controller.demo import DemoOptions, default_demo_config, run_demo
    from controller.ledger import load_keys, verify_ledger

    if args.cycles is not None and args.cycles < 1:
        print("signaltwin demo: --cycles must be at least 1", file=sys.stderr)
        return ExitCode.USAGE
    if not 0.1 <= args.speed <= 100:
        print("signaltwin demo: --speed must be within 0.1 and 100", file=sys.stderr)
        return ExitCode.USAGE
    options = DemoOptions(
        config=args.config or default_demo_config(),
        state_dir=args.state_dir,
        cycles=args.cycles,
        speed=args.speed,
        seed=args.seed,
        video=not args.no_video,
        echo=_echo,
        metrics_port=args.metrics_port,
        console_port=args.console_port,
    )
    summary = run_demo(options)
    _echo("")
    _echo("== summary")
    _echo(f"cycles: {summary.cycles}, deployments: {summary.deployments}")
    decisions = ", ".join(f"{k}: {v}" for k, v in sorted(summary.decisions.items()))
    _echo(f"gate decisions: {decisions or 'none'}")
    for line in summary.plan_lines():
        _echo(line)
    for failure in summary.failures:
        _echo(f"failure: {failure}")
    _echo(f"ledger: {summary.ledger}")
    _echo(f"public key: {summary.public_key}")
    for video in summary.videos:
        _echo(f"video: {video}")
    result = verify_ledger(summary.ledger, load_keys([summary.public_key]))
    if result.ok:
        _echo(f"ledger verifies: {result.records} records, {result.checkpoints} signed checkpoints")
        _echo(
            f"verify it yourself: signaltwin audit verify --ledger {summary.ledger} "
            f"--pubkey {summary.public_key}"
        )
        return ExitCode.OK
    _echo(f"LEDGER DOES NOT VERIFY: {result.first_problem}")
    return ExitCode.PROBLEM
