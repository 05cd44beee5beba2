"""The render command's reading of simulate JSON: tolerant, and clear about what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from configs.errors import ConfigError
from configs.timing import canonical_json, sha256_hex
from controller.commands.render import whatif_from_document


def _doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "geometry": {
            "polylines": {"a": [[0, 0], [100, 0]], "b": [[100, 0], [100, 80]]},
            "intersections": {"J1": [100, 0]},
        },
        "recording": {
            "edge_ids": ["a", "b"],
            "times_s": [0, 60],
            "seed": 5,
            "plans": {
                "current": {"occupancy": [[0.1, 0.2], [0.3, 0.4]], "queue": [[0, 1], [2, 3]]},
                "webster": {"occupancy": [[0.0, 0.1], [0.2, 0.3]]},
            },
        },
    }
    doc.update(extra)
    return doc


def test_reads_geometry_series_and_defaults() -> None:
    plans = {"webster": {"J1": {"cycle_s": 90}}}
    job = whatif_from_document(_doc(plans=plans, demand_sha256="d" * 64), base_dir=Path("."))
    assert job["geometry"].edge_ids == ("a", "b")
    assert job["geometry"].validated().bounds == (0.0, 0.0, 100.0, 80.0)
    assert job["current"].label.startswith("CURRENT PLAN")
    assert job["candidate"].label == "CANDIDATE (webster)"
    assert job["candidate"].queue_veh.shape == (2, 2)  # missing queue -> NaN, not an error
    att = job["attribution"]
    assert att.seed == 5 and att.demand_sha256 == "d" * 64
    assert att.plan_candidate_sha256 == sha256_hex(canonical_json(plans["webster"]))
    assert att.plan_current_sha256 == "unknown" and att.network_sha256 == "unknown"


def test_missing_pieces_are_named() -> None:
    with pytest.raises(ConfigError, match='no "recording"'):
        whatif_from_document({}, base_dir=Path("."))
    doc = _doc()
    del doc["recording"]["times_s"]
    with pytest.raises(ConfigError, match='lacks "times_s"'):
        whatif_from_document(doc, base_dir=Path("."))
    doc = _doc()
    del doc["recording"]["plans"]["webster"]
    with pytest.raises(ConfigError, match="needs two plans"):
        whatif_from_document(doc, base_dir=Path("."))
    doc = _doc()
    del doc["geometry"]
    with pytest.raises(ConfigError, match='neither "geometry" nor "network"'):
        whatif_from_document(doc, base_dir=Path("."))
    with pytest.raises(ConfigError, match="--candidate 'nope'"):
        whatif_from_document(_doc(), base_dir=Path("."), candidate="nope")
    doc = _doc()
    doc["recording"]["plans"]["current"]["occupancy"] = [[0.1], [0.2]]
    with pytest.raises(ConfigError, match="occupancy has shape"):
        whatif_from_document(doc, base_dir=Path("."))


def test_network_path_is_resolved_and_loaded_through_the_given_loader(tmp_path: Path) -> None:
    (tmp_path / "net.net.xml").write_text("<net/>")
    doc = _doc(network="net.net.xml")
    geometry = whatif_from_document(_doc(), base_dir=tmp_path)["geometry"]
    del doc["geometry"]
    seen: list[Path] = []

    def loader(path: Path) -> Any:
        seen.append(path)
        return geometry

    job = whatif_from_document(doc, base_dir=tmp_path, geometry_loader=loader)
    assert seen == [tmp_path / "net.net.xml"]
    assert job["attribution"].network_sha256 == sha256_hex(b"<net/>")
