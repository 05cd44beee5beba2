"""The feedback collector end to end on SUMO: field counters -> counterfactual -> ledger.

A real field (grid6, TraCI) runs its base programs, one light gets a longer
first green at t=600 s; the collector sees the field's counters every 100 s,
the wiring's :class:`~controller.wiring.CounterfactualAdapter` re-simulates
both plans on the twin (libsumo worker) with each window's own detector
counts, and :class:`~controller.wiring.CalibrationFile` learns the demand
scale. Checked: one ``measured_delta`` record of the right shape and window,
a ``calibration`` record, and the calibration file on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs.settings import FeedbackSettings, ScheduleSettings, Settings, SimulationSettings
from configs.timing import IntersectionTiming, TimingConfiguration
from controller.contracts import Observation
from controller.feedback import QUANTITY, FeedbackCollector
from controller.ledger import Ledger
from controller.wiring import CalibrationFile, CounterfactualAdapter, TwinAdapter
from simulators.field import FieldConfig, FieldEmulator
from simulators.network import ensure_detectors, load_network
from simulators.sumo import sumo_home
from simulators.twin import LibsumoWhatIfEngine
from tests.unit.test_feedback_windows import Proposer, config

pytestmark = pytest.mark.integration

GRID6 = sumo_home() / "tools" / "game" / "grid6"


def test_a_deployment_on_sumo_is_estimated_recorded_and_calibrates_the_twin(
    tmp_path: Path,
) -> None:
    net = GRID6 / "grid6.net.xml"
    det = ensure_detectors(net, tmp_path / "det.add.xml")
    model = load_network(net, det)
    settings = Settings(
        simulation=SimulationSettings(
            network=net, detectors=det, horizon_s=300, warmup_s=120, seeds=2, workers=1
        ),
        state_dir=tmp_path,
        schedule=ScheduleSettings(interval_s=120),
        feedback=FeedbackSettings(window_s=300, estimator_seeds=2),
    )
    bases = {t: IntersectionTiming.from_base(b) for t, b in model.base_programs().items()}
    tls = sorted(bases)[0]
    phases = list(bases[tls].phases)
    phases[0] = phases[0].model_copy(update={"duration_s": phases[0].duration_s + 10})
    longer = bases[tls].model_copy(
        update={"phases": tuple(phases), "cycle_s": bases[tls].cycle_s + 10}
    )
    deployed: TimingConfiguration = config(1, 40).model_copy(
        update={"intersections": {**bases, tls: longer}}
    )
    calibration = CalibrationFile(tmp_path / "calibration.json")
    engine = LibsumoWhatIfEngine(0)
    twin = TwinAdapter(
        settings, model, {d.id: d.lane_id for d in model.detectors}, engine, calibration
    )
    field_config = FieldConfig(
        net_path=net,
        detectors_path=det,
        routes_path=GRID6 / "grid6.rou.xml",
        seed=3,
        backend="traci",
        work_dir=tmp_path / "work",
    )
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger, FieldEmulator(field_config) as field:
        collector = FeedbackCollector(
            settings,
            ledger,
            field.counters,
            Proposer(),
            counterfactual=CounterfactualAdapter(settings, twin),
            calibration=calibration,
        )

        def observe() -> Observation:
            return Observation(
                field_time_s=field.field_time_s,
                counts={},
                interval_s=100.0,
                active={},
                measurements={},
                counters=field.counters(),
            )

        for t in range(100, 700, 100):
            field.step_until(t)
            if t == 600:
                ref = ledger.append(
                    "deployment",
                    {"sequence": 1, "config_digest": deployed.digest(), "envelope": {}},
                )
                collector.deployed(ref.index, deployed, observe(), 600.0, previous=bases)
                field.apply(tls, longer, at_field_time_s=600)
            collector.observed(observe())
        assert collector.holding(field.field_time_s) == "measuring plan 1 until t=900 s"
        for t in (700, 800, 900):
            field.step_until(t)
            collector.observed(observe())
        report = collector.collect()
        (record,) = ledger.find("measured_delta")
        calibrations = ledger.find("calibration")
    engine.close()

    body = record.body
    assert report.measured == 1, body["measured"]
    assert body["status"] == "measured" and body["quantity"] == QUANTITY
    assert body["window"] == {"begin_s": 600.0, "end_s": 900.0}
    assert body["measured"]["intersections"] == [tls]
    assert body["measured"]["before_window"] == {"begin_s": 300.0, "end_s": 600.0}
    assert body["measured"]["wait_before_veh_s"] > 0
    estimated = body["estimated"]
    assert estimated["method"] == "twin-ratio/v1"
    low, high = estimated["wait_ci"]
    assert low <= estimated["wait_change"] <= high
    assert body["errors"]["estimated_minus_predicted_pp"] == pytest.approx(
        100 * (estimated["wait_change"] - body["predicted"]["wait_change"]), abs=1e-3
    )
    (cal,) = calibrations
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["demand_scale"] == pytest.approx(cal.body["demand_scale"])
    assert cal.body["previous_demand_scale"] == 1.0 != cal.body["demand_scale"]
