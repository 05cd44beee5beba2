"""``signaltwin network build|info``: build the demo district, inspect any SUMO network."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from configs.settings import SafetySettings
from configs.settings_file import load_settings
from configs.timing import SafetyLimits
from controller.exit_codes import ExitCode

if TYPE_CHECKING:
    from simulators.network import NetworkModel

MANY_GREENS = 8
"""More greens than this in one program is unusual for a signal: worth a look."""

# simulators (sumolib, netconvert) is imported inside the commands: registering
# them runs at every `signaltwin` start and must stay cheap.


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``network`` command."""
    parser = subparsers.add_parser(
        "network",
        help="build the demo district or inspect a SUMO network",
        description="Build the demo district reproducibly, verify it, or summarise a network.",
    )
    sub = parser.add_subparsers(dest="network_command", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser(
        "build",
        help="build the demo district (network, detectors, demand) and its DIGESTS",
        description=(
            "Generate the 47-intersection demo district with netconvert from the SUMO wheel: "
            "network, induction loops, demand profile, routes and a sumocfg, plus a DIGESTS "
            "file of sha256 sums. Two builds give bit-identical files. With --check, verify "
            "the files in --out against DIGESTS instead (exit 1 on any difference)."
        ),
    )
    build.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: the shipped demo district, configs/district)",
    )
    build.add_argument(
        "--check",
        action="store_true",
        help="verify the files against DIGESTS instead of building; exit 1 on mismatch",
    )
    build.set_defaults(func=_run_build)
    info = sub.add_parser(
        "info",
        help="summarise a SUMO network's traffic lights, detectors and base programs",
        description=(
            "Load any SUMO .net.xml with traffic lights and summarise it: the file, its "
            "traffic lights (phases, greens, program type, cycle), lanes, edges, detectors "
            "and bounding box, with warnings (lights left out, lights with more than "
            f"{MANY_GREENS} greens, lights no plan fits within the safety limits). --json "
            "prints the full JSON model instead. With --detectors FILE, read E1 loops from "
            "FILE, generating them first if it is missing. Exit codes: 0 loaded; 2 the file "
            "is missing or not a usable network."
        ),
    )
    info.add_argument("net", type=Path, help="the .net.xml (or .net.xml.gz) file")
    info.add_argument(
        "--detectors",
        type=Path,
        default=None,
        help="additional file of E1 loops (generated there if it does not exist)",
    )
    info.add_argument(
        "--config",
        type=Path,
        default=None,
        help="settings TOML whose [safety] limits the warnings use (default: the schema's)",
    )
    info.add_argument("--json", action="store_true", help="print the JSON model instead")
    info.set_defaults(func=_run_info)


def _run_build(args: argparse.Namespace) -> int:
    from simulators.netbuild import DISTRICT_DIR, build_district, check_district
    from simulators.network import load_network

    out: Path = args.out or DISTRICT_DIR
    if args.check:
        problems = check_district(out)
        for line in problems:
            print(line)
        if problems:
            print(
                f"district in {out}: {len(problems)} problem(s); rebuild with "
                f"'signaltwin network build --out {out}'"
            )
            return ExitCode.PROBLEM
        print(f"district in {out}: all files match DIGESTS")
        return ExitCode.OK
    digests = build_district(out)
    for name, digest in digests.items():
        print(f"{digest}  {out / name}")
    model = load_network(out / "district.net.xml", out / "district.det.add.xml")
    print(
        f"built {model.id}: {len(model.intersections)} traffic lights, "
        f"{len(model.detectors)} induction loops, sha256 {model.sha256}"
    )
    return ExitCode.OK


def _run_info(args: argparse.Namespace) -> int:
    from simulators.network import ensure_detectors, load_network

    det = ensure_detectors(args.net, args.detectors) if args.detectors is not None else None
    model = load_network(args.net, det)
    if not args.json:
        limits = load_settings(args.config).safety if args.config else SafetyLimits()
        for line in summary_lines(model, limits):
            print(line)
        return ExitCode.OK
    by_tls = model.detectors_by_intersection()
    summary = {
        "id": model.id,
        "sha256": model.sha256,
        "bounds": list(model.bounds),
        "lanes": len(model.lanes),
        "detectors": len(model.detectors),
        "intersections": {
            t: {
                "position": list(i.position),
                "approaches": list(i.approaches),
                "incoming_lanes": len(i.incoming_lanes),
                "pedestrian_links": list(i.pedestrian_links),
                "detectors": len(by_tls[t]),
                "cycle_s": i.base.cycle_s,
                "phases": [
                    {"state": p.state, "duration_s": p.duration_s, "kind": p.kind}
                    | ({"pedestrians": True} if p.serves_pedestrians else {})
                    for p in i.base.phases
                ],
            }
            for t, i in sorted(model.intersections.items())
        },
    }
    print(json.dumps(summary, indent=1))
    return ExitCode.OK


def _size(n_bytes: int) -> str:
    if n_bytes < 1024:
        return f"{n_bytes} B"
    if n_bytes < 1024**2:
        return f"{n_bytes / 1024:.1f} KiB"
    return f"{n_bytes / 1024**2:.1f} MiB"


def summary_lines(model: NetworkModel, limits: SafetySettings | SafetyLimits) -> list[str]:
    """The human summary of ``network info``: file, lights, lanes, detectors, warnings."""
    from controller.commands.simulate import unfit_lights

    xmin, ymin, xmax, ymax = model.bounds
    lights = model.intersections
    modes = Counter(i.base.mode for i in lights.values())
    by_tls = model.detectors_by_intersection()
    lines = [
        f"network   {model.path} ({_size(model.path.stat().st_size)})",
        f"id        {model.id}, sha256 {model.sha256}",
        f"extent    {xmax - xmin:.0f} m x {ymax - ymin:.0f} m "
        f"(x {xmin:.1f}..{xmax:.1f}, y {ymin:.1f}..{ymax:.1f})",
        f"edges     {len(model.edges)} edges, {len(model.lanes)} lanes",
        f"lights    {len(lights)} traffic lights ("
        + ", ".join(f"{n} {mode}" for mode, n in sorted(modes.items()))
        + ")",
    ]
    if model.detectors_path is not None:
        lines.append(f"detectors {len(model.detectors)} E1 loops in {model.detectors_path}")
    else:
        lines.append("detectors none read (--detectors FILE reads them, generating them if absent)")
    lines += ["", f"{'light':<24} {'type':<9} {'phases':>6} {'greens':>6} {'cycle s':>7} "
              f"{'lanes in':>8} {'loops':>5}  approaches"]  # fmt: skip
    for tls_id, light in sorted(lights.items()):
        base = light.base
        shown = tls_id if len(tls_id) <= 24 else tls_id[:21] + "..."
        lines.append(
            f"{shown:<24} {base.mode:<9} {len(base.phases):>6} {len(base.green_indices):>6} "
            f"{base.cycle_s:>7} {len(light.incoming_lanes):>8} {len(by_tls[tls_id]):>5}  "
            f"{len(light.approaches)}"
        )
    warnings = [f"{t}: left out: {why}" for t, why in sorted(model.unsupported.items())]
    warnings += [
        f"{t}: {len(i.base.green_indices)} greens in one program (more than {MANY_GREENS}); "
        "check that its base program is the approved one"
        for t, i in sorted(lights.items())
        if len(i.base.green_indices) > MANY_GREENS
    ]
    bases = model.base_programs()
    unfit = unfit_lights(bases, limits)
    warnings += [
        f"{t}: no plan fits the safety limits: {why}; set "
        f"[safety.intersections.{json.dumps(t)}] (e.g. max_cycle_s) in the settings"
        for t, why in unfit.items()
    ]
    warnings += [
        f"{t}: no plan within one deployment's change of its base program: {why}; set "
        f"[safety.intersections.{json.dumps(t)}] (e.g. max_cycle_change_s) in the settings"
        for t, why in unfit_lights(bases, limits, from_base=True).items()
        if t not in unfit
    ]
    if model.detectors_path is not None:
        warnings += [
            f"{t}: no detector on its incoming lanes" for t, d in sorted(by_tls.items()) if not d
        ]
    if warnings:
        lines += ["", f"warnings ({len(warnings)}):", *(f"  {w}" for w in warnings)]
    return lines
