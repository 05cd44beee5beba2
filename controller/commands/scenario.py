"""``signaltwin scenario check FILE...``: validate event day files against their networks."""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.exit_codes import ExitCode

# simulators is imported inside the command: registering runs at every start.


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``scenario`` command."""
    parser = subparsers.add_parser(
        "scenario",
        help="check event day files (the field's incidents, pulses, OD shifts, faults)",
        description="Work with event day files (schema signaltwin.event-day/v1, docs/field.md).",
    )
    sub = parser.add_subparsers(dest="scenario_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser(
        "check",
        help="validate event day files against their networks and summarise them",
        description=(
            "Read each event day file, validate it (unknown keys, times inside the day, "
            "edges, lanes, zones and loops of its network) and print a summary. With "
            "--demand DIR, also write each day's demand into DIR and count its trips. "
            "Exit codes: 0 every file is valid; 2 a file is missing or invalid (the "
            "message names the file, the key and the fix)."
        ),
    )
    check.add_argument("files", type=Path, nargs="+", metavar="FILE", help="event day TOML")
    check.add_argument(
        "--demand",
        type=Path,
        default=None,
        metavar="DIR",
        help="write each day's routes into DIR/<name>/ and count the trips",
    )
    check.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from simulators.field.event_day import load_event_day

    for file in args.files:
        day = load_event_day(file)
        demand = day.profile_path or ", ".join(p.name for p in day.routes_paths)
        print(f"{file}: {day.name}")
        print(f"  network  {day.net_path.name}, demand {Path(str(demand)).name}, seed {day.seed}")
        print(f"  day      {day.begin_s}-{day.end_s} s (field time), scale {day.demand_scale:g}")
        for c in day.closures:
            what = f"edge {c.edge_id}" if c.whole_edge else ", ".join(c.lane_ids)
            print(f"  closure  {what}: {c.from_s:g}-{c.to_s:g} s")
        for p in day.pulses:
            print(
                f"  pulse    {len(p.origins)} origins -> {len(p.destinations)} destinations, "
                f"{p.veh_per_h:g} veh/h: {p.from_s:g}-{p.to_s:g} s"
            )
        for s in day.od_shifts:
            print(f"  od shift {s.kind} from {s.at_s:g} s over {s.over_s:g} s")
        for f in day.faults:
            print(f"  fault    {f.kind} on {len(f.detector_ids)} loops: {f.from_s:g}-{f.to_s:g} s")
        if args.demand is not None:
            trips = 0
            for routes in day.write_demand(args.demand / day.name):
                trips += routes.read_text(encoding="utf-8").count("<trip ")
            print(f"  demand   {trips} trips written to {args.demand / day.name}")
    return ExitCode.OK
