"""``signaltwin config check FILE``: validate a settings file before deploying it."""

from __future__ import annotations

import argparse
import sys

from configs.errors import ConfigError
from configs.settings_file import check_environment, load_settings
from controller.exit_codes import ExitCode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config`` and its sub-commands."""
    parser = subparsers.add_parser(
        "config",
        help="validate settings files",
        description="Validate daemon settings (TOML) without starting anything.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser(
        "check",
        help="validate a settings file and the files it refers to",
        description=(
            "Exit 0 when FILE is a valid configuration whose referenced files (network, "
            "PKCS#11 module, PIN and password files, certificates) exist and are readable; "
            "exit 2 with the TOML key, the bad value and what is expected otherwise."
        ),
    )
    check.add_argument("file", metavar="FILE", help="settings TOML, e.g. configs/demo.toml")
    check.add_argument(
        "--schema-only",
        action="store_true",
        help="check the TOML against the schema only, not the files it refers to",
    )
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    if not args.schema_only:
        detectors = settings.simulation.detectors
        if detectors is None or not detectors.is_file():
            target = detectors or settings.state_dir / "detectors.add.xml"
            print(
                f"simulation.detectors: {target} will be generated at start-up "
                "(an E1 loop on every incoming lane)"
            )
        problems = check_environment(settings)
        if problems:
            raise ConfigError(f"{args.file}:\n  " + "\n  ".join(problems))
    limits = settings.safety
    gate = settings.gate
    print(
        f"{args.file}: ok (mode={settings.mode}, interval {settings.schedule.interval_s} s, "
        f"gate: wait -{gate.min_wait_reduction:.0%} / NOx <+{gate.max_nox_increase:.1%} "
        f"on {settings.gate.decide_on}, {len(settings.controllers.endpoints)} endpoints, "
        f"cycle {limits.min_cycle_s}-{limits.max_cycle_s} s)",
        file=sys.stdout,
    )
    return ExitCode.OK
