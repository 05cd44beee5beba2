"""Run the benchmarks and write the README's measured table from their JSON lines.

Every benchmark under ``bench/`` prints one JSON line per figure
(``{"figure", "value", "unit", "ratio", "against", ...}``). This script runs
the ones the README quotes, one after the other in this process's session (so
they share the machine the same way), keeps every line they print in
``docs/measured.jsonl`` (with the date, the machine, the load average and the
commit), and rewrites the table between the ``measured:begin``/``measured:end``
markers of ``README.md``. No figure in that table is typed by hand.

    .venv/bin/python bench/report.py                 # run everything (about 25 min on 2 cores)
    .venv/bin/python bench/report.py --only render,push   # rerun some, keep the others' lines
    .venv/bin/python bench/report.py --table-only    # rewrite the table from docs/measured.jsonl

A benchmark that fails or times out is recorded as such (its rows say
"not measured: ..."), and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "measured.jsonl"
README = ROOT / "README.md"
BEGIN = "<!-- measured:begin (written by bench/report.py; do not edit by hand) -->"
END = "<!-- measured:end -->"


@dataclass(frozen=True)
class Bench:
    """One benchmark run: its name (for --only), its arguments and its time limit."""

    name: str
    args: tuple[str, ...]
    timeout_s: int

    @property
    def command(self) -> str:
        return " ".join((".venv/bin/python", *self.args))


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure of a benchmark, and the target it is held to."""

    what: str
    bench: str
    figure: str
    #: ("value" | "ratio", "<=" | ">=", bound), or None when there is no target
    target: tuple[str, str, float] | None = None


BENCHES = (
    Bench("cycle", ("bench/cycle.py",), 1200),
    Bench("cycle_production", ("bench/cycle.py", "--production"), 1500),
    Bench("screen", ("bench/screen.py",), 900),
    Bench("whatif", ("bench/whatif.py",), 1500),
    Bench("render", ("bench/render.py",), 600),
    Bench("push", ("bench/push.py",), 900),
    Bench("hsm", ("bench/hsm.py",), 300),
    Bench("field", ("bench/field.py",), 300),
    Bench("cli", ("bench/cli.py",), 300),
)

ROWS = (
    Row("one cycle, demo size, p95", "cycle", "cycle_total_p95", ("value", "<=", 24.0)),
    Row("one cycle, demo size, p50", "cycle", "cycle_total_p50"),
    Row(
        "one cycle, production size, p95",
        "cycle_production",
        "production_cycle_total_p95",
        ("value", "<=", 24.0),
    ),  # fmt: skip
    Row("one cycle, production size, p50", "cycle_production", "production_cycle_total_p50"),
    Row(
        "screening, proposals to kept candidates",
        "screen",
        "screen_candidates_per_s",
        ("value", ">=", 10_000.0),
    ),  # fmt: skip
    Row(
        "surrogate rank agreement with the twin within a snapshot",
        "screen",
        "surrogate_spearman_wait_within_snapshot",
    ),  # fmt: skip
    Row(
        "what-if simulation throughput", "whatif", "whatif_sim_throughput", ("ratio", ">=", 0.8)
    ),  # fmt: skip
    Row(
        "what-if throughput against stepping with the same outputs",
        "whatif",
        "whatif_sim_throughput_vs_measured",
        ("ratio", ">=", 0.95),
    ),  # fmt: skip
    Row("what-if, 5 plans x 5 seeds x 15 min, 2 workers", "whatif", "whatif_wall_5x5_micro"),
    Row(
        "the same what-if with sequential elimination (2 seeds, 1 finalist)",
        "whatif",
        "whatif_wall_5x5_micro_elimination",
    ),
    Row("demand estimation: edges within GEH 5", "whatif", "demand_geh_lt5_share"),
    Row(
        "4K block: 30 frames rendered and encoded",
        "render",
        "render_4k_block_latency_s",
        ("value", "<=", 0.8),
    ),  # fmt: skip
    Row("what-if video, 1080p", "render", "render_1080p_fps"),
    Row("push to 47 controllers", "push", "push_47", ("value", "<=", 1.0)),
    Row("push to 500 controllers", "push", "push_500", ("value", "<=", 5.0)),
    Row("HSM signature, p50", "hsm", "hsm_sign_latency_p50"),
    Row("HSM signatures per second", "hsm", "hsm_sign_throughput"),
    Row("field emulator step", "field", "field_step"),
    Row("field emulator against the wall clock", "field", "field_realtime_error"),
    Row("`signaltwin --help`", "cli", "cli_help_s"),
)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = "none"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": gpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def commit() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_bench(bench: Bench) -> dict[str, Any]:
    """Run one benchmark; its figures, or why there are none."""
    started = time.time()
    load_before = os.getloadavg()
    print(f"== {bench.command} (limit {bench.timeout_s} s)", file=sys.stderr, flush=True)
    figures: list[dict[str, Any]] = []
    error = None
    try:
        proc = subprocess.run(
            [sys.executable, *bench.args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=bench.timeout_s,
        )
        figures = list(parse_lines(proc.stdout.splitlines()))
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            error = f"exit {proc.returncode}: {tail[:300]}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        figures = list(parse_lines(out.splitlines()))
        error = f"timed out after {bench.timeout_s} s"
    wall = time.time() - started
    for f in figures:
        print("   " + json.dumps(f), file=sys.stderr, flush=True)
    if error:
        print(f"   {bench.name}: {error}", file=sys.stderr, flush=True)
    return {
        "bench": bench.name,
        "command": bench.command,
        "commit": commit(),
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "error": error,
        "figures": figures,
    }


def parse_lines(lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    """The figure lines among a benchmark's output (other lines are ignored)."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict) and isinstance(item.get("figure"), str) and "value" in item:
            yield item


def load_results(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The header and the runs by benchmark name of a results file (empty when absent)."""
    header: dict[str, Any] = {}
    runs: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return header, runs
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path}:{number}: not JSON ({e}); run without --table-only") from e
        if "machine" in item:
            header = item
        elif "bench" in item:
            runs[item["bench"]] = item
    return header, runs


def save_results(path: Path, header: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    lines = [json.dumps(header)] + [json.dumps(runs[b.name]) for b in BENCHES if b.name in runs]
    path.write_text("\n".join(lines) + "\n")


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}".replace(",", "\u202f")
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _quantity(value: float, unit: str) -> str:
    """A value with its unit, seconds below 0.1 s shown in ms or µs."""
    if unit == "s" and 0 < abs(value) < 0.1:
        return f"{_number(value * 1e3)} ms" if abs(value) >= 1e-3 else f"{_number(value * 1e6)} µs"
    return f"{_number(value)} {unit}".strip()


def verdict(row: Row, figure: dict[str, Any]) -> str:
    if row.target is None:
        return ""
    on, op, bound = row.target
    value = figure.get(on)
    shown = f"{on} {op.replace('<=', '≤').replace('>=', '≥')} {_number(bound)}"
    if not isinstance(value, int | float):
        return f"{shown}: no {on}"
    met = value <= bound if op == "<=" else value >= bound
    return f"{shown}: {'met' if met else '**missed**'}"


def table(header: dict[str, Any], runs: dict[str, dict[str, Any]]) -> str:
    """The README section: where and when, then one row per figure."""
    m = header.get("machine", {})
    rerun = header.get("rerun", "all")
    last = "all benchmarks" if rerun == "all" else ", ".join(rerun)
    out = [
        BEGIN,
        "",
        f"Measured by `.venv/bin/python bench/report.py` on {m.get('cores', '?')} cores "
        f"({m.get('cpu', '?')}), {m.get('memory_gib', '?')} GiB, GPU: {m.get('gpu', '?')}; "
        f"the last run ({last}) started {header.get('started', '?')} at commit "
        f"{header.get('commit', '?')}. The last column names each row's run: its commit, its "
        "start (UTC) and the load average (1 min) before it; other jobs shared this machine "
        "when that is above the core count. Each benchmark measures its reference side by side "
        "in the same run; `ratio` is ours divided by that reference. All lines: "
        "[docs/measured.jsonl](docs/measured.jsonl).",
        "",
        "| what | figure | value | ratio (against) | target | command | run |",
        "|---|---|---|---|---|---|---|",
    ]
    commands = {b.name: b.command for b in BENCHES}
    for row in ROWS:
        run = runs.get(row.bench)
        command = f"`{run['command'] if run else commands[row.bench]}`"
        if run is None:
            out.append(f"| {row.what} | `{row.figure}` | not run | | | {command} | |")
            continue
        found = [f for f in run["figures"] if f["figure"] == row.figure]
        when = str(run.get("started", "?"))[:16].replace("T", " ")
        load = f"`{run.get('commit', '?')}`, {when}, load {_number(run['load_before'][0])}"
        if not found:
            why = run["error"] or "the benchmark printed no such figure"
            missed = verdict(row, {}) if row.target else ""
            out.append(
                f"| {row.what} | `{row.figure}` | not measured: {why} | | {missed} | {command} "
                f"| {load} |"
            )
            continue
        f = found[-1]
        value = _quantity(float(f["value"]), str(f.get("unit") or ""))
        ratio = ""
        if isinstance(f.get("ratio"), int | float):
            ratio = f"{_number(float(f['ratio']))} ({f.get('against') or '?'})"
        out.append(f"| {row.what} | `{row.figure}` | {value} | {ratio} | {verdict(row, f)} | "
                   f"{command} | {load} |")  # fmt: skip
    out += ["", END]
    return "\n".join(out)


def backfill_commits(header: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    """Name the commit of runs written before each run recorded its own (from the header).

    The header names the commit of its run: of every benchmark after a full
    run, of the rerun ones after ``--only``; the others stay unnamed ("?").
    """
    rerun = header.get("rerun", "all")
    for name, run in runs.items():
        if "commit" not in run and (rerun == "all" or name in rerun):
            run["commit"] = header.get("commit", "?")


def write_readme(text: str, readme: Path = README) -> None:
    content = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme}: no '{BEGIN}' ... '{END}' markers to write the table between")
    readme.write_text(pattern.sub(lambda _: text, content, count=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Benchmarks: " + ", ".join(b.name for b in BENCHES),
    )
    parser.add_argument("--only", help="comma-separated benchmark names to (re)run")
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite README's table from the results file"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the JSON lines file")
    args = parser.parse_args(argv)
    header, runs = load_results(args.results)
    backfill_commits(header, runs)
    if not args.table_only:
        names = [b.name for b in BENCHES]
        chosen = names if not args.only else [n.strip() for n in args.only.split(",")]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {names}")
        if not args.only:
            runs = {}
        header = {
            "machine": machine(),
            "commit": commit(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "rerun": chosen if args.only else "all",
        }
        for bench in BENCHES:
            if bench.name in chosen:
                runs[bench.name] = run_bench(bench)
                save_results(args.results, header, runs)
    if not runs:
        raise SystemExit(f"{args.results}: no results; run without --table-only first")
    write_readme(table(header, runs))
    print(f"README.md table written from {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
