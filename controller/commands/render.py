"""``signaltwin render``: the what-if video (current plan | candidate) from simulate output."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from configs.errors import ConfigError
from configs.settings import VideoSettings, X264Preset
from configs.timing import canonical_json, sha256_hex
from controller.exit_codes import ExitCode

if TYPE_CHECKING:
    # torch and PyAV come with edge_accel: imported where a video is made, so that
    # registering this command (every `signaltwin` start) stays cheap.
    from edge_accel import SceneGeometry

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Render the what-if video of a simulate run in three panels: the current plan,
the candidate, and their difference. Roads are coloured by occupancy (scaled
to the recording, stated in the legend), vehicles drawn as oriented marks
coloured by speed and signal heads by their state, where the recording has
them; the difference panel colours each edge by the change of its mean queue
so far. Strip charts show both sides' running mean wait and NOx; a box quotes
the paired multi-seed estimate when the input has the what-if's outcomes.
Encoded as H.264 MP4 on the best device present (CUDA, else CPU), with a JSON
sidecar (FILE.mp4.json) holding one attribution tag set per frame (network,
demand and plan digests, simulator version, seed, simulated time).

--input is the JSON of 'signaltwin simulate --json' (or any JSON of that
shape) carrying a recording:
  {"network": "district.net.xml",
   "recording": {"edge_ids": [...], "times_s": [...], "seed": 1,
                 "plans": {"current": {"occupancy": [[...]], "queue": [[...]],
                                        "mean_wait_s": [...], "nox_mg": [...]},
                           "<candidate>": {...}}}}
"mean_wait_s"/"nox_mg" (running values per sample) are optional. With
"outcomes" and "seeds" (simulate --json has them) the candidate's paired
change of wait and NOx is quoted. Digests are read from "network_sha256",
"demand_sha256", recording.plans.<name>.plan_sha256 and "simulator" when
present, computed from the files when possible, and otherwise recorded as
"unknown". Geometry comes from "geometry" in the JSON or from the network file
(--network overrides).

The video spans the recorded simulated time; samples are linearly
interpolated between recorded times (ends held) to fill --duration-s.

Exit codes: 0 written; 2 bad input/configuration; 3 encoding failed.
"""

GeometryLoader = Callable[[Path], "SceneGeometry"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``render`` sub-command."""
    parser = subparsers.add_parser(
        "render",
        help="render the what-if video (current | candidate) from simulate --json output",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", type=Path, required=True, help="simulate --json output")
    parser.add_argument("--out", type=Path, required=True, help="the .mp4 to write")
    parser.add_argument("--config", type=Path, help="settings TOML ([video], [edge] device)")
    parser.add_argument("--network", type=Path, help="SUMO .net.xml (overrides the JSON's)")
    parser.add_argument("--current", default=None, help="plan shown left (default 'current')")
    parser.add_argument("--candidate", default=None, help="plan shown right (default: first other)")
    parser.add_argument("--width", type=int, help="frame width (default 1920; 3840 for 4K)")
    parser.add_argument("--height", type=int, help="frame height (default 1080; 2160 for 4K)")
    parser.add_argument("--fps", type=int, help="frames per second (default 30)")
    parser.add_argument("--duration-s", type=float, help="video length in seconds (default 20)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="overrides [edge] device")
    parser.add_argument(
        "--preset",
        choices=get_args(X264Preset),
        help="libx264 preset (default: [video] preset, ultrafast; see docs/video.md)",
    )
    parser.add_argument(
        "--crf", type=int, help="libx264 constant rate factor 0-51 (default: [video] crf, 26)"
    )
    parser.add_argument(
        "--colormap",
        choices=("greys", "viridis", "cividis"),
        default="greys",
        help="the roads' occupancy colours (default greys, under the coloured vehicles)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from edge_accel import describe_device, probe_video, render_whatif, select_device

    video = VideoSettings()
    device_pref = "auto"
    if args.config is not None:
        from configs.settings_file import load_settings

        settings = load_settings(args.config)
        video = settings.video
        device_pref = settings.edge.device
    width, height, fps, duration_s = video.width, video.height, video.fps, video.duration_s
    preset = args.preset or video.preset
    crf = video.crf if args.crf is None else args.crf
    if not 0 <= crf <= 51:
        raise ConfigError(f"--crf must be 0..51, got {crf}")
    width = args.width or width
    height = args.height or height
    fps = args.fps or fps
    duration_s = args.duration_s or duration_s
    device = select_device(args.device or device_pref)

    document = _read_json(args.input)
    job = whatif_from_document(
        document,
        base_dir=args.input.parent,
        network_override=args.network,
        current=args.current,
        candidate=args.candidate,
    )
    print(
        f"rendering {job['current'].label} | {job['candidate'].label}: "
        f"{width}x{height} {fps} fps {duration_s:g} s on {describe_device(device)}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    artifact = render_whatif(
        job["geometry"],
        job["current"],
        job["candidate"],
        job["attribution"],
        args.out,
        width,
        height,
        fps,
        device,
        duration_s=duration_s,
        preset=preset,
        crf=crf,
        colormap=args.colormap,
        estimate=job["estimate"],
    )
    wall_s = time.perf_counter() - started
    probe = probe_video(artifact.path)
    print(
        json.dumps(
            {
                "video": str(artifact.path),
                "sha256": artifact.sha256,
                "sidecar": str(artifact.sidecar_path),
                "sidecar_sha256": artifact.sidecar_sha256,
                "frames": artifact.frames,
                "duration_s": artifact.duration_s,
                "width": artifact.width,
                "height": artifact.height,
                "codec": probe.codec,
                "wall_s": round(wall_s, 3),
            },
            indent=2,
        )
    )
    return ExitCode.OK


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--input {path}: cannot read: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ConfigError(f"--input {path}: not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--input {path}: expected a JSON object")
    return data


def geometry_from_network(net_path: Path) -> SceneGeometry:
    """The drawn geometry of a SUMO network (:func:`simulators.geometry.network_geometry`)."""
    from edge_accel import SceneGeometry
    from simulators.geometry import network_geometry

    return SceneGeometry(**vars(network_geometry(net_path)))


def _geometry_from_json(data: Any) -> SceneGeometry:
    from edge_accel import SceneGeometry

    if not isinstance(data, Mapping) or not isinstance(data.get("polylines"), Mapping):
        raise ConfigError(
            '"geometry" must be {"polylines": {edge: [[x, y], ...]}, "widths_m": {...}, '
            '"intersections": {id: [x, y]}, "bounds": [xmin, ymin, xmax, ymax]}'
        )
    polylines = {
        str(e): [(float(p[0]), float(p[1])) for p in pts] for e, pts in data["polylines"].items()
    }
    bounds = data.get("bounds")
    return SceneGeometry(
        edge_ids=tuple(sorted(polylines)),
        polylines=polylines,
        widths_m={str(k): float(v) for k, v in dict(data.get("widths_m", {})).items()},
        intersections={
            str(k): (float(v[0]), float(v[1]))
            for k, v in dict(data.get("intersections", {})).items()
        },
        bounds=tuple(float(v) for v in bounds) if bounds else None,  # type: ignore[arg-type]
    )


def _file_digest(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return sha256_hex(path.read_bytes())


def whatif_from_document(
    document: Mapping[str, Any],
    *,
    base_dir: Path,
    network_override: Path | None = None,
    current: str | None = None,
    candidate: str | None = None,
    geometry_loader: GeometryLoader = geometry_from_network,
) -> dict[str, Any]:
    """Turn a simulate JSON document into the inputs of :func:`render_whatif`.

    Returns:
        ``{"geometry", "current", "candidate", "attribution", "estimate"}``
        (``estimate``: the candidate's paired change from ``outcomes``, or None).

    Raises:
        ConfigError: Something needed is missing; the message names the key.
    """
    import numpy as np

    from edge_accel import Attribution, WhatIfFrames

    recording = document.get("recording")
    if not isinstance(recording, Mapping):
        raise ConfigError(
            'the input has no "recording" object; run simulate with recording enabled '
            '(the JSON needs "recording": {"edge_ids", "times_s", "plans"})'
        )
    for key in ("edge_ids", "times_s", "plans"):
        if key not in recording:
            raise ConfigError(f'the input\'s "recording" lacks "{key}"')
    plans = recording["plans"]
    if not isinstance(plans, Mapping) or len(plans) < 2:
        names = list(plans) if isinstance(plans, Mapping) else plans
        raise ConfigError(
            f'"recording.plans" needs two plans (current and a candidate), got {names}'
        )
    current_name = current or ("current" if "current" in plans else next(iter(plans)))
    if current_name not in plans:
        raise ConfigError(f"--current {current_name!r} is not among recorded plans {list(plans)}")
    others = [n for n in plans if n != current_name]
    candidate_name = candidate or others[0]
    if candidate_name not in plans or candidate_name == current_name:
        raise ConfigError(f"--candidate {candidate_name!r} must be another of {list(plans)}")

    edge_ids = [str(e) for e in recording["edge_ids"]]
    times = recording["times_s"]

    def side(name: str, label: str) -> WhatIfFrames:
        plan = plans[name]
        if not isinstance(plan, Mapping) or "occupancy" not in plan:
            raise ConfigError(f'"recording.plans.{name}" lacks "occupancy" ([frames][edges])')
        queue = plan.get("queue", plan.get("queue_veh"))
        try:
            return WhatIfFrames.from_arrays(
                label,
                edge_ids,
                plan.get("times_s", times),
                np.asarray(plan["occupancy"], dtype=np.float32),
                None if queue is None else np.asarray(queue, dtype=np.float32),
                plan.get("mean_wait_s"),
                plan.get("nox_mg"),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f'"recording.plans.{name}": arrays are not numeric ({e})') from e

    frames_current = side(current_name, f"CURRENT PLAN ({current_name})")
    frames_candidate = side(candidate_name, f"CANDIDATE ({candidate_name})")

    net_value = document.get("network")
    net_path = network_override or (
        (base_dir / str(net_value))
        if net_value and not Path(str(net_value)).is_absolute()
        else (Path(str(net_value)) if net_value else None)
    )
    if "geometry" in document:
        geometry = _geometry_from_json(document["geometry"])
    elif net_path is not None:
        if not net_path.is_file():
            raise ConfigError(
                f'network {net_path} (from the input\'s "network") does not exist; pass --network'
            )
        geometry = geometry_loader(net_path)
    else:
        raise ConfigError('the input has neither "geometry" nor "network"; pass --network FILE')

    def digest(key: str, fallback: str | None) -> str:
        value = document.get(key)
        if isinstance(value, str) and value:
            return value
        if fallback:
            return fallback
        logger.warning("attribution: %s is not in the input; recorded as 'unknown'", key)
        return "unknown"

    def plan_digest(name: str) -> str:
        plan = plans[name]
        value = plan.get("plan_sha256") or plan.get("digest")
        if isinstance(value, str) and value:
            return value
        timing = (
            (document.get("plans") or {}).get(name)
            if isinstance(document.get("plans"), Mapping)
            else None
        )
        if timing is not None:
            return sha256_hex(canonical_json(timing))
        logger.warning("attribution: no digest for plan %r; recorded as 'unknown'", name)
        return "unknown"

    demand_value = document.get("demand")
    demand_path = (
        base_dir / str(demand_value)
        if isinstance(demand_value, str) and not Path(demand_value).is_absolute()
        else (Path(demand_value) if isinstance(demand_value, str) else None)
    )
    seeds = document.get("seeds") or [0]
    attribution = Attribution(
        network_sha256=digest("network_sha256", _file_digest(net_path)),
        demand_sha256=digest("demand_sha256", _file_digest(demand_path)),
        plan_current_sha256=plan_digest(current_name),
        plan_candidate_sha256=plan_digest(candidate_name),
        simulator_version=str(document.get("simulator") or "sumo (version not recorded)"),
        seed=int(recording.get("seed", seeds[0] if isinstance(seeds, list) and seeds else 0)),
    )
    return {
        "geometry": geometry,
        "current": frames_current,
        "candidate": frames_candidate,
        "attribution": attribution,
        "estimate": _estimate(document, candidate_name),
    }


def _estimate(document: Mapping[str, Any], candidate: str) -> Any:
    """The candidate's paired change of wait and NOx from a what-if result, if it has one."""
    from edge_accel import PairedEstimate

    outcomes = document.get("outcomes")
    if not isinstance(outcomes, list):
        return None
    for outcome in outcomes:
        if not isinstance(outcome, Mapping) or outcome.get("name") != candidate:
            continue
        changes = outcome.get("changes") or {}
        try:
            wait, nox = changes["wait"], changes["nox"]
            return PairedEstimate(
                wait_change=float(wait["mean"]),
                wait_ci=(float(wait["ci"][0]), float(wait["ci"][1])),
                nox_change=float(nox["mean"]),
                nox_ci=(float(nox["ci"][0]), float(nox["ci"][1])),
                seeds=tuple(int(s) for s in document.get("seeds") or ()),
                confidence_level=float(document.get("confidence_level", 0.95)),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            logger.warning(
                "outcome of %r has no paired wait and NOx change; none quoted", candidate
            )
            return None
    return None
