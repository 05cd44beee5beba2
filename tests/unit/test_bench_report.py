"""bench/report.py: figures parsed from benchmark output, targets judged, README rewritten."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.bench_modules import load_bench


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_bench("report")


def _run(report: ModuleType, name: str, figures: list[dict[str, object]], error: str | None = None):  # type: ignore[no-untyped-def]
    bench = next(b for b in report.BENCHES if b.name == name)
    return {"bench": name, "command": bench.command, "commit": "def5678",
            "started": "2026-12-02T00:00:00+00:00",
            "wall_s": 1.0, "load_before": [2.5, 2.0, 1.0], "load_after": [2.0, 2.0, 1.0],
            "error": error, "figures": figures}  # fmt: skip


def test_only_figure_lines_are_taken_from_a_benchmarks_output(report: ModuleType) -> None:
    lines = [
        "starting the demo ...",
        '{"figure": "push_500", "value": 3.2, "unit": "s", "ratio": 1.4, "against": "raw"}',
        '{"not": "a figure"}',
        "{broken json",
        '  {"figure": "push_47", "value": 0.1, "unit": "s", "ratio": null, "against": null}',
    ]
    assert [f["figure"] for f in report.parse_lines(lines)] == ["push_500", "push_47"]


def test_targets_are_judged_on_the_value_or_the_ratio(report: ModuleType) -> None:
    row = report.Row("push", "push", "push_500", ("value", "<=", 5.0))
    assert report.verdict(row, {"value": 4.9}).endswith(": met")
    assert report.verdict(row, {"value": 5.1}).endswith("**missed**")
    ratio_row = report.Row("t", "whatif", "whatif_sim_throughput", ("ratio", ">=", 0.8))
    assert report.verdict(ratio_row, {"value": 9.0, "ratio": 0.79}).endswith("**missed**")
    assert report.verdict(ratio_row, {"value": 9.0, "ratio": None}) == "ratio ≥ 0.8: no ratio"
    assert report.verdict(report.Row("x", "hsm", "hsm_sign_throughput"), {"value": 1}) == ""


def test_the_table_replaces_only_the_marked_section_and_names_failures(
    report: ModuleType, tmp_path: Path
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{report.BEGIN}\nold table\n{report.END}\n\nafter\n")
    header = {"machine": {"cores": 2, "cpu": "test CPU", "memory_gib": 8, "gpu": "none"},
              "commit": "abc1234", "started": "2026-12-02T00:00:00+00:00"}  # fmt: skip
    runs = {
        "push": _run(
            report,
            "push",
            [
                {
                    "figure": "push_500",
                    "value": 6.5,
                    "unit": "s",
                    "ratio": 1.8,
                    "against": "raw",
                },
                {"figure": "push_47", "value": 0.0412, "unit": "s", "ratio": None, "against": None},
            ],
        ),  # fmt: skip
        "render": _run(report, "render", [], error="exit 1: no libx264"),
    }
    report.write_readme(report.table(header, runs), readme)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text and "abc1234" in text and "test CPU" in text
    push_500 = next(line for line in text.splitlines() if "`push_500`" in line)
    assert "6.5 s" in push_500 and "1.8 (raw)" in push_500 and "**missed**" in push_500
    assert "`.venv/bin/python bench/push.py`" in push_500
    assert push_500.endswith("| `def5678`, 2026-12-02 00:00, load 2.5 |")  # each row's own run
    assert "41.2 ms" in next(line for line in text.splitlines() if "`push_47`" in line)
    render = next(line for line in text.splitlines() if "`render_4k_block_latency_s`" in line)
    assert "not measured: exit 1: no libx264" in render
    cycle = next(line for line in text.splitlines() if "`cycle_total_p95`" in line)
    assert "not run" in cycle and "`.venv/bin/python bench/cycle.py`" in cycle


def test_results_round_trip_and_a_readme_without_markers_is_refused(
    report: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "measured.jsonl"
    header = {"machine": {"cores": 2}, "commit": "abc", "started": "now"}
    runs = {"hsm": _run(report, "hsm", [{"figure": "hsm_sign_throughput", "value": 8000.0}])}
    report.save_results(path, header, runs)
    assert report.load_results(path) == (header, runs)
    assert all(json.loads(line) for line in path.read_text().splitlines())
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        report.write_readme("table", plain)
    assert plain.read_text() == "# no markers\n"


def test_runs_without_their_own_commit_get_the_header_commit_of_their_run(
    report: ModuleType,
) -> None:
    runs = {name: _run(report, name, []) for name in ("hsm", "push", "cli")}
    for run in runs.values():
        del run["commit"]  # lines from before each run named its commit
    runs["cli"]["commit"] = "own0001"
    report.backfill_commits({"commit": "rerun01", "rerun": ["hsm"]}, runs)
    assert [runs[n].get("commit") for n in ("hsm", "push", "cli")] == ["rerun01", None, "own0001"]
    report.backfill_commits({"commit": "full001", "rerun": "all"}, runs)
    assert runs["push"]["commit"] == "full001" and runs["hsm"]["commit"] == "rerun01"
