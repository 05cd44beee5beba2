"""Metrics in a fresh registry per test, scraped over loopback HTTP and parsed."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from configs.outcomes import DeploymentResult
from controller.contracts import STAGES
from controller.metrics import (
    CYCLE_BUCKETS_S,
    BoundedLabel,
    Metrics,
    MetricsServer,
    build_registry,
    start_metrics_server,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    srv = start_metrics_server(registry, "127.0.0.1", 0)
    yield srv
    srv.close()


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_every_metric_is_scraped_and_parsed(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    metrics = Metrics(registry, controllers=["J1", "J2"])
    metrics.observe_cycle(83.2)
    metrics.observe_stage("whatif", 61.0)
    metrics.count_gate_decision("refuse_nox")
    metrics.count_cycle(DeploymentResult.REFUSED)
    metrics.count_cycle(DeploymentResult.SHADOW)
    metrics.count_skip("overrun")
    metrics.count_reload("rejected")
    metrics.observe_prediction_error(-0.07)
    metrics.count_feedback(True)
    metrics.count_hsm_error()
    metrics.count_opcua_error("J2", 3)
    metrics.set_controller_up("J1", True)
    metrics.set_controller_up("J2", False)
    metrics.mark_success(1_700_000_000.0)

    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    s = scrape(server.url)
    assert s["signaltwin_cycle_duration_seconds_count"] == 1
    assert s["signaltwin_cycle_duration_seconds_sum"] == pytest.approx(83.2)
    assert s['signaltwin_cycle_duration_seconds_bucket{le="90.0"}'] == 1
    assert s['signaltwin_cycle_duration_seconds_bucket{le="60.0"}'] == 0
    assert s['signaltwin_cycle_stage_duration_seconds_count{stage="whatif"}'] == 1
    assert s['signaltwin_gate_decisions_total{decision="refuse_nox"}'] == 1
    assert s['signaltwin_gate_decisions_total{decision="pass"}'] == 0  # shown from start-up
    assert s['signaltwin_cycles_total{result="refused"}'] == 1
    assert s['signaltwin_cycles_total{result="shadow"}'] == 1
    assert s['signaltwin_cycles_total{result="aborted"}'] == 0  # shown from start-up
    assert s['signaltwin_deployments_total{result="shadow"}'] == 1
    assert s['signaltwin_deployments_total{result="deployed"}'] == 0
    assert s['signaltwin_cycle_skipped_total{reason="overrun"}'] == 1
    assert s['signaltwin_config_reload_total{result="rejected"}'] == 1
    assert s["signaltwin_prediction_error_ratio_count"] == 1
    assert s['signaltwin_prediction_error_ratio_bucket{le="0.1"}'] == 1
    assert s['signaltwin_feedback_runs_total{result="ok"}'] == 1
    assert s["signaltwin_hsm_errors_total"] == 1
    assert s['signaltwin_opcua_errors_total{controller="J1"}'] == 0
    assert s['signaltwin_opcua_errors_total{controller="J2"}'] == 3
    assert s['signaltwin_controller_up{controller="J2"}'] == 0
    assert s['signaltwin_controller_up{controller="J1"}'] == 1
    assert s["signaltwin_last_successful_cycle_timestamp_seconds"] == 1_700_000_000.0
    assert s["signaltwin_cycle_running"] == 0


def test_only_cycles_that_signed_a_plan_count_as_deployments(
    registry: CollectorRegistry,
) -> None:
    metrics = Metrics(registry)
    for result in DeploymentResult:
        metrics.count_cycle(result)
    value = registry.get_sample_value
    for result in DeploymentResult:
        assert value("signaltwin_cycles_total", {"result": result.value}) == 1
    deployments = {
        s.labels["result"]: s.value
        for f in registry.collect()
        if f.name == "signaltwin_deployments"
        for s in f.samples
        if s.name == "signaltwin_deployments_total"
    }
    assert deployments == {"deployed": 1, "shadow": 1}


def test_stage_help_names_the_cycle_stages(registry: CollectorRegistry) -> None:
    Metrics(registry)
    (family,) = (
        f for f in registry.collect() if f.name == "signaltwin_cycle_stage_duration_seconds"
    )
    listed = family.documentation[
        family.documentation.index("(") + 1 : family.documentation.index(")")
    ]
    assert tuple(listed.split(", ")) == STAGES


def test_metrics_never_touch_the_global_registry(registry: CollectorRegistry) -> None:
    Metrics(registry)
    Metrics(CollectorRegistry())  # a second daemon (or test) registers without clashing
    assert REGISTRY.get_sample_value("signaltwin_hsm_errors_total") is None


def test_buckets_cover_a_tenth_of_a_second_to_five_minutes() -> None:
    assert CYCLE_BUCKETS_S[0] == 0.1 and CYCLE_BUCKETS_S[-1] == 300.0
    assert list(CYCLE_BUCKETS_S) == sorted(CYCLE_BUCKETS_S)


def test_label_values_are_bounded(registry: CollectorRegistry) -> None:
    metrics = Metrics(registry, max_stages=3, max_gate_decisions=1)
    for stage in ("observe", "push", "sign", "render", "record"):
        metrics.observe_stage(stage, 1.0)
    metrics.count_gate_decision("refuse_other")
    metrics.count_gate_decision("refuse_yet_another")
    metrics.count_gate_decision("pass")  # a known decision is never folded
    stages = {
        s.labels["stage"]
        for f in registry.collect()
        if f.name == "signaltwin_cycle_stage_duration_seconds"
        for s in f.samples
    }
    assert stages == {"observe", "push", "sign", "other"}
    value = registry.get_sample_value
    assert value("signaltwin_gate_decisions_total", {"decision": "refuse_other"}) == 1
    assert value("signaltwin_gate_decisions_total", {"decision": "other"}) == 1
    assert value("signaltwin_gate_decisions_total", {"decision": "pass"}) == 1


def test_free_text_never_becomes_a_label_value() -> None:
    bound = BoundedLabel("controller", cap=10)
    assert bound("J1") == "J1"
    assert bound("connection refused: [Errno 111]") == "other"
    assert bound("x" * 65) == "other"


def test_process_collectors_only_when_asked() -> None:
    with_process = build_registry(process_metrics=True)
    names = {f.name for f in with_process.collect()}
    assert "python_info" in names
    assert not {f.name for f in build_registry(process_metrics=False).collect()}


def test_a_port_in_use_raises_oserror(registry: CollectorRegistry) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            start_metrics_server(registry, "127.0.0.1", taken.getsockname()[1])


def test_close_releases_the_port(registry: CollectorRegistry) -> None:
    first = start_metrics_server(registry, "127.0.0.1", 0)
    port = first.port
    first.close()
    second = start_metrics_server(registry, "127.0.0.1", port)
    assert second.port == port
    second.close()


class _Compute:
    def __init__(self, backend: str, alive: int) -> None:
        self.backend = backend
        self.workers_alive = alive


def test_whatif_workers_are_read_from_the_runner_at_each_scrape(
    registry: CollectorRegistry, server: MetricsServer
) -> None:
    metrics = Metrics(registry)
    url = f"http://127.0.0.1:{server.port}/metrics"
    assert scrape(url)['signaltwin_whatif_workers{backend="ray"}'] == 0.0
    compute = _Compute("ray", 4)
    metrics.watch_compute(compute)
    assert scrape(url)['signaltwin_whatif_workers{backend="ray"}'] == 4.0
    compute.workers_alive = 3  # a node lost: the next scrape says so
    samples = scrape(url)
    assert samples['signaltwin_whatif_workers{backend="ray"}'] == 3.0
    assert samples['signaltwin_whatif_workers{backend="local"}'] == 0.0
    # a reload to the local backend moves the series
    metrics.watch_compute(_Compute("local", 2))
    samples = scrape(url)
    assert samples['signaltwin_whatif_workers{backend="local"}'] == 2.0
    assert samples['signaltwin_whatif_workers{backend="ray"}'] == 0.0
    # a runner that does not say what it was configured for reads 0 (no alert)
    assert samples['signaltwin_whatif_workers_configured{backend="local"}'] == 0.0


class _ConfiguredCompute(_Compute):
    def __init__(self, backend: str, alive: int, configured: int) -> None:
        super().__init__(backend, alive)
        self.workers_configured = configured


def test_configured_whatif_workers_are_served_next_to_the_ready_ones(
    registry: CollectorRegistry,
) -> None:
    metrics = Metrics(registry)
    metrics.watch_compute(_ConfiguredCompute("ray", 3, 4))
    value = registry.get_sample_value
    assert value("signaltwin_whatif_workers", {"backend": "ray"}) == 3.0
    assert value("signaltwin_whatif_workers_configured", {"backend": "ray"}) == 4.0
    assert value("signaltwin_whatif_workers_configured", {"backend": "local"}) == 0.0
