"""Prometheus metrics of the daemon, registered in a registry the caller owns.

Every metric lives in the :class:`~prometheus_client.CollectorRegistry` given to
:class:`Metrics` (the daemon creates one; each test creates its own), never in
the library's global default registry. Label values are bounded: the fixed
label sets are listed below, and free-form values (stage names, gate decisions,
controller ids) are capped by :class:`BoundedLabel`, beyond which they are
folded into ``"other"``.

Metric list (also in docs/operations.md):

- ``signaltwin_cycle_duration_seconds`` histogram: a whole cycle.
- ``signaltwin_cycle_stage_duration_seconds{stage}`` histogram: one stage of a cycle.
- ``signaltwin_cycle_running`` gauge: 1 while a cycle runs.
- ``signaltwin_last_successful_cycle_timestamp_seconds`` gauge: Unix time of the
  end of the last cycle that completed without error.
- ``signaltwin_cycles_total{result}`` counter, result in
  deployed|shadow|refused|failed|aborted: what each cycle ended in.
- ``signaltwin_deployments_total{result}`` counter, result in deployed|shadow:
  plans that passed the gate and were signed (pushed, or only recorded in shadow mode).
- ``signaltwin_gate_decisions_total{decision}`` counter: pass, refuse_wait, ...
- ``signaltwin_cycle_skipped_total{reason}`` counter, reason in overrun|missed|busy.
- ``signaltwin_config_reload_total{result}`` counter, result in applied|rejected|unchanged.
- ``signaltwin_prediction_error_ratio`` histogram: relative error of the predicted
  change against the change measured in the field.
- ``signaltwin_feedback_runs_total{result}`` counter, result in ok|failed.
- ``signaltwin_hsm_errors_total`` counter.
- ``signaltwin_opcua_errors_total{controller}`` counter.
- ``signaltwin_controller_up{controller}`` gauge: 1 when the controller answered
  in the last cycle.
- ``signaltwin_whatif_workers{backend}`` gauge, backend in local|ray: what-if
  workers ready now (local processes, or Ray actors placed on the cluster; read
  at each scrape). The other backend's series reads 0.
- ``signaltwin_whatif_workers_configured{backend}`` gauge: what-if workers the
  settings ask for (``simulation.workers``) on the backend in force; 0 on the other.
"""

from __future__ import annotations

__all__ = [
    "COMPUTE_BACKENDS",
    "CYCLE_BUCKETS_S",
    "CYCLE_RESULTS",
    "DEPLOYMENT_RESULTS",
    "GATE_DECISIONS",
    "RELOAD_RESULTS",
    "SKIP_REASONS",
    "BoundedLabel",
    "Metrics",
    "MetricsServer",
    "build_registry",
    "start_metrics_server",
]

import logging
import re
import threading
from collections.abc import Iterable
from typing import Final, Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from configs.outcomes import DeploymentResult
from controller.contracts import STAGES, ComputeCapacity, ComputeStatus

logger = logging.getLogger(__name__)

SkipReasonLabel = Literal["overrun", "missed", "busy"]
ReloadResultLabel = Literal["applied", "rejected", "unchanged"]

CYCLE_RESULTS: Final = tuple(r.value for r in DeploymentResult)
"""Values of ``signaltwin_cycles_total{result}``: every cycle ends in one."""
DEPLOYMENT_RESULTS: Final = (DeploymentResult.DEPLOYED.value, DeploymentResult.SHADOW.value)
"""Values of ``signaltwin_deployments_total{result}``: the cycle results that sign a plan."""
SKIP_REASONS: Final = ("overrun", "missed", "busy")
RELOAD_RESULTS: Final = ("applied", "rejected", "unchanged")
COMPUTE_BACKENDS: Final = ("local", "ray")
"""Values of ``signaltwin_whatif_workers{backend}`` (``[compute] backend``)."""
GATE_DECISIONS: Final = ("pass", "refuse_wait", "refuse_nox", "refuse_failed")
"""Gate decisions shown (at zero) from start-up; other values are accepted up to a cap."""

CYCLE_BUCKETS_S: Final = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    90.0,
    120.0,
    180.0,
    240.0,
    300.0,
)
"""Histogram buckets for cycle and stage durations: 0.1 s to 300 s (longer ones go to +Inf)."""

PREDICTION_ERROR_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class BoundedLabel:
    """Admits at most ``cap`` distinct label values; later ones become ``"other"``.

    Also folds values that are not short identifiers into ``"other"``, so that an
    exception text can never become a label value.
    """

    def __init__(self, name: str, cap: int, initial: Iterable[str] = ()) -> None:
        """Create a bound for label ``name`` admitting ``cap`` values besides ``initial``."""
        self.name = name
        self.cap = cap
        self._seen: set[str] = set(initial)
        self._initial = len(self._seen)
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, value: str) -> str:
        """Return ``value`` if admitted, else ``"other"``."""
        if not _LABEL_VALUE.match(value):
            return "other"
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) - self._initial < self.cap:
                self._seen.add(value)
                return value
            if not self._warned:
                self._warned = True
                logger.warning(
                    "more than %d distinct values for metric label %r; %r and later ones "
                    "are counted as 'other'",
                    self.cap,
                    self.name,
                    value,
                )
            return "other"


def build_registry(*, process_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry, with the process/platform/GC collectors when asked.

    The daemon uses this (``process_*`` metrics give RSS, CPU and open files);
    tests pass ``process_metrics=False`` or build a bare ``CollectorRegistry``.
    """
    registry = CollectorRegistry()
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class Metrics:
    """The daemon's metrics in one registry, with recording methods.

    Methods take plain values, so the cycle runner and the daemon can both
    record without knowing about Prometheus types.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        controllers: Iterable[str] = (),
        max_controllers: int = 2000,
        max_stages: int = 32,
        max_gate_decisions: int = 16,
    ) -> None:
        """Register every metric in ``registry``.

        Args:
            registry: where the metrics live (a fresh one per daemon or per test).
            controllers: controller (intersection) ids known from the settings; their
                per-controller series are shown from start-up.
            max_controllers: cap on distinct ``controller`` label values.
            max_stages: cap on distinct ``stage`` label values.
            max_gate_decisions: cap on gate decisions beyond :data:`GATE_DECISIONS`.
        """
        self.registry = registry
        self._stage = BoundedLabel("stage", max_stages)
        self._decision = BoundedLabel("decision", max_gate_decisions, GATE_DECISIONS)
        self._controller = BoundedLabel("controller", max_controllers)

        self.cycle_duration = Histogram(
            "signaltwin_cycle_duration_seconds",
            "Wall-clock duration of one control cycle, start to ledger record.",
            buckets=CYCLE_BUCKETS_S,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "signaltwin_cycle_stage_duration_seconds",
            f"Duration of one stage of a cycle ({', '.join(STAGES)}).",
            ["stage"],
            buckets=CYCLE_BUCKETS_S,
            registry=registry,
        )
        self.cycle_running = Gauge(
            "signaltwin_cycle_running",
            "1 while a cycle is running, else 0.",
            registry=registry,
        )
        self.last_success = Gauge(
            "signaltwin_last_successful_cycle_timestamp_seconds",
            "Unix time at which the last cycle without error ended (0: none yet).",
            registry=registry,
        )
        self.cycles = Counter(
            "signaltwin_cycles",
            "Cycles by outcome: deployed, shadow (passed the gate, not pushed: shadow "
            "mode), refused (by the gate), failed, aborted (by shutdown).",
            ["result"],
            registry=registry,
        )
        self.deployments = Counter(
            "signaltwin_deployments",
            "Plans that passed the gate and were signed: deployed (activated on every "
            "controller), shadow (recorded, not pushed: shadow mode).",
            ["result"],
            registry=registry,
        )
        self.gate_decisions = Counter(
            "signaltwin_gate_decisions",
            "Gate decisions by kind (pass, refuse_wait, refuse_nox, refuse_failed, ...).",
            ["decision"],
            registry=registry,
        )
        self.cycle_skipped = Counter(
            "signaltwin_cycle_skipped",
            "Cycle slots not run: overrun (previous cycle still running), missed (woke "
            "up too late), busy (feedback or a reload held the runner).",
            ["reason"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "signaltwin_config_reload",
            "Configuration reloads (SIGHUP) by result: applied, rejected, unchanged.",
            ["result"],
            registry=registry,
        )
        self.prediction_error = Histogram(
            "signaltwin_prediction_error_ratio",
            "Relative error of the twin's predicted change against the change measured "
            "in the field after a deployment.",
            buckets=PREDICTION_ERROR_BUCKETS,
            registry=registry,
        )
        self.feedback_runs = Counter(
            "signaltwin_feedback_runs",
            "Feedback collections (measured deltas, fine-tuning) by result: ok, failed.",
            ["result"],
            registry=registry,
        )
        self.hsm_errors = Counter(
            "signaltwin_hsm_errors",
            "Errors talking to the HSM (login, signing, key lookup).",
            registry=registry,
        )
        self.opcua_errors = Counter(
            "signaltwin_opcua_errors",
            "OPC UA errors per controller (connect, read, stage, activate, read-back).",
            ["controller"],
            registry=registry,
        )
        self.controller_up = Gauge(
            "signaltwin_controller_up",
            "1 when the controller answered in the last cycle, 0 when it did not.",
            ["controller"],
            registry=registry,
        )
        self.whatif_workers = Gauge(
            "signaltwin_whatif_workers",
            "What-if workers ready now: local processes or Ray actors placed on the cluster.",
            ["backend"],
            registry=registry,
        )
        self.whatif_workers_configured = Gauge(
            "signaltwin_whatif_workers_configured",
            "What-if workers the settings ask for (simulation.workers) on the backend in force.",
            ["backend"],
            registry=registry,
        )
        for backend in COMPUTE_BACKENDS:
            self.whatif_workers.labels(backend=backend)
            self.whatif_workers_configured.labels(backend=backend)
        for result in CYCLE_RESULTS:
            self.cycles.labels(result=result)
        for result in DEPLOYMENT_RESULTS:
            self.deployments.labels(result=result)
        for decision in GATE_DECISIONS:
            self.gate_decisions.labels(decision=decision)
        for reason in SKIP_REASONS:
            self.cycle_skipped.labels(reason=reason)
        for reload_result in RELOAD_RESULTS:
            self.config_reloads.labels(result=reload_result)
        for feedback_result in ("ok", "failed"):
            self.feedback_runs.labels(result=feedback_result)
        for controller in controllers:
            label = self._controller(controller)
            self.opcua_errors.labels(controller=label)

    # --- recording -----------------------------------------------------------------

    def observe_cycle(self, duration_s: float) -> None:
        """Record the duration of a whole cycle."""
        self.cycle_duration.observe(max(0.0, duration_s))

    def observe_stage(self, stage: str, duration_s: float) -> None:
        """Record the duration of one stage of a cycle."""
        self.stage_duration.labels(stage=self._stage(stage)).observe(max(0.0, duration_s))

    def set_cycle_running(self, running: bool) -> None:
        """Mark a cycle as running or not."""
        self.cycle_running.set(1 if running else 0)

    def mark_success(self, timestamp_s: float) -> None:
        """Record the Unix time at which a cycle ended without error."""
        self.last_success.set(timestamp_s)

    def count_cycle(self, result: DeploymentResult) -> None:
        """Count a cycle's outcome, and its deployment when it signed a plan."""
        value = DeploymentResult(result).value
        self.cycles.labels(result=value).inc()
        if value in DEPLOYMENT_RESULTS:
            self.deployments.labels(result=value).inc()

    def count_gate_decision(self, decision: str) -> None:
        """Count a gate decision (unknown kinds beyond the cap count as ``other``)."""
        self.gate_decisions.labels(decision=self._decision(decision)).inc()

    def count_skip(self, reason: SkipReasonLabel) -> None:
        """Count a cycle slot that was not run."""
        self.cycle_skipped.labels(reason=reason).inc()

    def count_reload(self, result: ReloadResultLabel) -> None:
        """Count a configuration reload."""
        self.config_reloads.labels(result=result).inc()

    def observe_prediction_error(self, ratio: float) -> None:
        """Record one relative prediction error (absolute value is taken)."""
        self.prediction_error.observe(abs(ratio))

    def count_feedback(self, ok: bool) -> None:
        """Count a feedback collection."""
        self.feedback_runs.labels(result="ok" if ok else "failed").inc()

    def count_hsm_error(self, count: int = 1) -> None:
        """Count HSM errors."""
        if count > 0:
            self.hsm_errors.inc(count)

    def count_opcua_error(self, controller: str, count: int = 1) -> None:
        """Count OPC UA errors of one controller."""
        if count > 0:
            self.opcua_errors.labels(controller=self._controller(controller)).inc(count)

    def watch_compute(self, status: ComputeStatus) -> None:
        """Serve ``signaltwin_whatif_workers`` from ``status`` (the runner in force).

        Also ``signaltwin_whatif_workers_configured`` when ``status`` says how many
        workers it was configured for (:class:`~controller.contracts.ComputeCapacity`).
        """
        capacity = status if isinstance(status, ComputeCapacity) else None
        for backend in COMPUTE_BACKENDS:
            alive = self.whatif_workers.labels(backend=backend)
            configured = self.whatif_workers_configured.labels(backend=backend)
            if backend != status.backend:
                alive.set_function(lambda: 0.0)
                configured.set_function(lambda: 0.0)
                continue
            alive.set_function(lambda: float(status.workers_alive))
            if capacity is None:
                configured.set_function(lambda: 0.0)
            else:
                configured.set_function(lambda: float(capacity.workers_configured))

    def set_controller_up(self, controller: str, up: bool) -> None:
        """Record whether a controller answered."""
        self.controller_up.labels(controller=self._controller(controller)).set(1 if up else 0)


class MetricsServer:
    """The HTTP endpoint serving a registry at ``/metrics`` (any path, in fact)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, address: str) -> None:
        """Wrap a running server (use :func:`start_metrics_server`)."""
        self._server = server
        self._thread = thread
        self.address = address
        self.port: int = int(server.server_port)

    @property
    def url(self) -> str:
        """The scrape URL, e.g. ``http://127.0.0.1:9464/metrics``."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout_s)


def start_metrics_server(registry: CollectorRegistry, address: str, port: int) -> MetricsServer:
    """Serve ``registry`` over HTTP on ``address:port`` in a daemon thread.

    ``port`` 0 picks a free port (read it back from :attr:`MetricsServer.port`).

    Raises:
        OSError: the address cannot be bound (in use, not local, no permission).
    """
    server, thread = start_http_server(port, addr=address, registry=registry)
    bound = MetricsServer(server, thread, address)
    logger.info("serving metrics on %s", bound.url)
    return bound
