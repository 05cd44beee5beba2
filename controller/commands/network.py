"""``signaltwin network build|info``: build the demo district, inspect any SUMO network."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from controller.exit_codes import ExitCode

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
            "Load any SUMO .net.xml with traffic lights and print a JSON summary. With "
            "--detectors FILE, read E1 loops from FILE, generating them first if it is missing."
        ),
    )
    info.add_argument("net", type=Path, help="the .net.xml (or .net.xml.gz) file")
    info.add_argument(
        "--detectors",
        type=Path,
        default=None,
        help="additional file of E1 loops (generated there if it does not exist)",
    )
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
