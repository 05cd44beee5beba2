"""The what-if engine on a Ray cluster: the same runs as the local pool, on Ray actors.

Each (plan, seed) run is :func:`simulators.twin.run.run_plan`, unchanged, in one
of a pool of long-lived Ray actors (one libsumo simulation at a time each; the
actors keep their process, their imports and the scenario's files between
cycles). The request's files (network, routes, additional) go through the
object store once per what-if as one :class:`simulators.cluster.FileBundle`;
an actor writes them to its node's disk once per content. Results are assembled
by (plan, seed) exactly as the local backend assembles them, so the same
request gives the same numbers on either backend (the auditor's replay does not
care where a run ran).

The daemon never talks to Ray itself: a **driver process** of its own does
(``ray.init`` there, not in the daemon). Ray ends a driver whose cluster went
away, and connecting to an unreachable cluster can hang for minutes; in a
child, either costs one cycle (nothing deployed, the cause in the ledger), and
the next cycle starts a fresh driver, i.e. reconnects.

Faults, as a cycle sees them:

* a worker or node lost mid-what-if: its runs are retried on the remaining or
  replacement actors (``max_task_retries`` times each) within the deadline;
  beyond that the what-if fails with :class:`SimulationError` naming the runs
  and the cause;
* a run that fails in SUMO: the what-if fails with the run's own error, as locally;
* the deadline (``timeout_s``) passes: the busy actors are killed (a hung run
  must not hold a worker) and the what-if fails;
* cancel: the busy actors are killed and :class:`WhatIfCancelled` is raised
  within about a second;
* the cluster unreachable: :meth:`RayWhatIfEngine.connect` (start-up) raises
  :class:`ConfigError`; during a cycle the what-if fails with :class:`SimulationError`.
"""

from __future__ import annotations

__all__ = ["RayWhatIfEngine"]

import contextlib
import importlib
import logging
import multiprocessing
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from configs.errors import ConfigError, SimulationError, WhatIfCancelled
from configs.settings import ComputeSettings
from simulators.cluster import FileBundle, probe_address
from simulators.twin.pool import Runner, check_cancel, evaluate_staged
from simulators.twin.request import WhatIfRequest
from simulators.twin.results import RunMetrics, WhatIfResult
from simulators.twin.run import RunTask, run_plan

logger = logging.getLogger(__name__)

_POLL_S: Final = 0.2
"""How often the driver and the daemon look at cancel, deadline and messages (s)."""
_BACKSTOP_S: Final = 30.0
"""Grace beyond the what-if's deadline before the daemon kills an unanswering driver (s)."""
_STALE_FILES_S: Final = 3600.0
"""A node's copy of a scenario unused this long is removed by the next new scenario (s)."""

Message = tuple[Any, ...]


class RayWhatIfEngine:
    """The what-if engine on a Ray cluster (``[compute] backend = "ray"``).

    Args:
        compute: the settings' ``[compute]`` section (address, namespace, per-worker
            resources, timeouts, retries).
        workers: Ray actors in the pool (``simulation.workers``).
        runner: the per-run function (tests substitute one; it must be importable
            on every node).

    The driver process starts on :meth:`connect` or the first :meth:`evaluate`
    and stays for later ones; call :meth:`close` or use it as a context manager.
    """

    backend: Final = "ray"

    def __init__(self, compute: ComputeSettings, workers: int, *, runner: Runner = run_plan):
        if workers < 1:
            raise ConfigError(
                f"simulation.workers must be >= 1 with the Ray backend (got {workers})"
            )
        self.compute = compute
        self.workers = workers
        self.timeout_s: float = compute.timeout_s
        self._runner = runner
        self._context = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._alive = 0
        self.cluster: dict[str, Any] = {}
        self.retried: tuple[str, ...] = ()
        """Runs of the last what-if whose worker was lost and that were retried (and why)."""

    @property
    def workers_alive(self) -> int:
        """Actors ready to run, as of the driver's last report (0: no driver)."""
        return self._alive if self._conn is not None else 0

    def __enter__(self) -> RayWhatIfEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- driver

    def connect(self) -> dict[str, Any]:
        """Start the driver and wait until it reaches the cluster (the daemon's start-up).

        Returns:
            What the cluster reported: ``nodes`` (alive), ``cpus`` (total).

        Raises:
            ConfigError: the cluster did not answer within ``connect_timeout_s``.
        """
        try:
            return self._driver()
        except SimulationError as e:
            raise ConfigError(str(e)) from None

    def _driver(self) -> dict[str, Any]:
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            return self.cluster
        self._stop_driver()
        address, timeout = self.compute.address, self.compute.connect_timeout_s
        hint = (
            f"Ray cluster at {address!r} unreachable; start it (ray start --head) or set "
            '[compute] backend = "local"'
        )
        _probe(address, timeout, hint)
        parent, child = self._context.Pipe()
        proc = self._context.Process(
            target=_driver_main,
            args=(child, self.compute.model_dump(), self.workers, self._runner),
            name="signaltwin-ray-driver",
            daemon=True,
        )
        proc.start()
        child.close()
        self._conn, self._proc = parent, proc
        try:
            reply = self._receive(time.monotonic() + timeout, f"{hint} (no answer in {timeout} s)")
        except SimulationError:
            self._stop_driver()
            raise
        if reply[0] != "ready":
            self._stop_driver()
            raise SimulationError(f"{hint}: {reply[-1]}")
        self.cluster = dict(reply[1])
        logger.info(
            "connected to the Ray cluster at %s: %d nodes, %g CPUs; %d of %d actors started",
            address,
            self.cluster.get("nodes", 0),
            self.cluster.get("cpus", 0.0),
            self.cluster.get("workers", 0),
            self.workers,
        )
        return self.cluster

    def _receive(self, deadline: float, silent: str) -> Message:
        """The driver's next message; :class:`SimulationError` if it dies or stays silent."""
        while (message := self._next(_POLL_S)) is None:
            if time.monotonic() > deadline:
                self._stop_driver()
                raise SimulationError(silent)
        return message

    def _next(self, timeout_s: float) -> Message | None:
        """The driver's next message within ``timeout_s`` (None: none yet).

        Raises:
            SimulationError: the driver process died.
        """
        assert self._conn is not None
        end = time.monotonic() + timeout_s
        while True:
            try:
                if self._conn.poll(max(0.0, end - time.monotonic())):
                    message: Message = self._conn.recv()
                    if message[0] != "workers":
                        return message
                    self._alive = int(message[1])
                    continue
            except (EOFError, OSError):
                break
            if self._proc is not None and self._proc.is_alive():
                return None
            break
        code = None if self._proc is None else self._proc.exitcode
        self._stop_driver()
        raise SimulationError(
            f"the Ray driver process exited (code {code}): the cluster at "
            f"{self.compute.address!r} went away or refused the driver; the next what-if "
            "reconnects"
        )

    def _stop_driver(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        self._alive = 0
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("close",))
            conn.close()
        if proc is not None:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)

    def close(self) -> None:
        """Stop the driver (its actors end with it)."""
        self._stop_driver()

    # ----------------------------------------------------------------- what-if

    def evaluate(
        self,
        request: WhatIfRequest,
        progress: Callable[[int, int], None] | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> WhatIfResult:
        """Run every plan with every seed on the cluster; the same result as the local pool.

        Raises:
            ConfigError: the request is invalid.
            WhatIfCancelled: ``cancel`` was set before the what-if finished.
            SimulationError: a run failed, workers were lost beyond the retries, the
                deadline passed, or the cluster is unreachable.
        """
        request.validate()
        check_cancel(cancel, 0, 0)
        self.retried = ()
        paths = [request.network, request.demand, *request.additional]

        def run(
            tasks: list[RunTask], report: Callable[[int, int], None] | None
        ) -> dict[tuple[str, int], RunMetrics]:
            results = self._run(tasks, paths, report, cancel)
            self.retried = (*self.retried, *results[1])
            return results[0]

        return evaluate_staged(request, run, progress)

    def _run(
        self,
        tasks: list[RunTask],
        paths: list[str],
        progress: Callable[[int, int], None] | None,
        cancel: threading.Event | None,
    ) -> tuple[dict[tuple[str, int], RunMetrics], tuple[str, ...]]:
        """One batch of runs on the cluster: (results by (plan, seed), runs retried)."""
        self._driver()
        assert self._conn is not None
        self._conn.send(("evaluate", tasks, paths, self.timeout_s, self.compute.max_task_retries))
        cancelled = False
        deadline = time.monotonic() + self.timeout_s + _BACKSTOP_S
        silent = f"the Ray driver did not answer {_BACKSTOP_S:g} s past the what-if's deadline"
        while True:
            if cancel is not None and cancel.is_set() and not cancelled:
                self._conn.send(("cancel",))
                cancelled = True
            message = self._next(_POLL_S)
            if message is None:
                if time.monotonic() > deadline:
                    self._stop_driver()
                    raise SimulationError(silent)
                continue
            kind = message[0]
            if kind == "progress":
                if progress is not None:
                    progress(int(message[1]), int(message[2]))
            elif kind == "result":
                results: dict[tuple[str, int], RunMetrics] = message[1]
                retried = tuple(message[2])
                if retried:
                    logger.warning(
                        "Ray workers were lost mid-what-if; retried: %s", "; ".join(retried)
                    )
                return results, retried
            elif kind == "cancelled":
                raise WhatIfCancelled(
                    f"what-if cancelled with {message[1]} of {message[2]} runs done; "
                    "nothing was predicted"
                )
            elif kind == "error":
                if message[1] != "simulation":
                    # lost workers, a deadline or a broken cluster: the next what-if
                    # starts a fresh driver (a head that restarted is a new cluster)
                    self._stop_driver()
                raise SimulationError(str(message[2]))


def _probe(address: str, timeout_s: float, hint: str) -> None:
    try:
        probe_address(address, timeout_s)
    except OSError as e:
        raise SimulationError(f"{hint}: {e}") from None


# --------------------------------------------------------------------------- driver process


class _TwinActor:
    """One Ray actor: runs (plan, seed) tasks with the scenario's files on its node's disk."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._root = Path(tempfile.gettempdir()) / "signaltwin-ray-files"
        self._digest = ""
        self._local: dict[str, str] = {}

    def ready(self) -> str:
        """Answered once the actor is placed and started."""
        return "ready"

    def run(self, digest: str, box: list[Any], task: RunTask) -> RunMetrics:
        """Run ``task`` on the local copies of the files of bundle ``box[0]``."""
        if digest != self._digest:
            import ray

            bundle: FileBundle = ray.get(box[0])
            self._local = bundle.materialise(self._root)
            self._digest = digest
            _prune(self._root, keep={sha for sha, _ in bundle.files.values()})
        local = self._local
        request = task.request
        request = replace(
            request,
            network=local[request.network],
            demand=local[request.demand],
            additional=tuple(local[a] for a in request.additional),
        )
        return self._runner(replace(task, request=request, marker_dir=None))


def _prune(root: Path, keep: Iterable[str]) -> None:
    keep = set(keep)
    now = time.time()
    for entry in root.iterdir():
        try:
            if entry.name not in keep and now - entry.stat().st_mtime > _STALE_FILES_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def _driver_main(
    conn: Connection, compute: dict[str, Any], workers: int, runner: Runner
) -> None:  # pragma: no cover - runs in the driver process (covered by the Ray tests)
    """The driver process: connect, keep the actor pool, serve what-ifs until closed."""
    try:
        ray: Any = importlib.import_module("ray")  # its stubs are partial
        settings = ComputeSettings.model_validate(compute)
        ray.init(
            address=settings.address,
            namespace=settings.namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        resources = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        # place the actors now, so that the first cycle finds them started
        pool = _ActorPool(ray, settings, workers, runner, conn)
        pool.top_up()
        placing_until = time.monotonic() + settings.connect_timeout_s / 2
        while pool.pending and time.monotonic() < placing_until:
            pool.poll(_POLL_S)
        info = {
            "nodes": nodes,
            "cpus": float(resources.get("CPU", 0.0)),
            "workers": len(pool.idle),
        }
        conn.send(("ready", info))
    except Exception as e:
        with contextlib.suppress(OSError):
            conn.send(("error", "connect", f"{type(e).__name__}: {e}"))
        return
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message[0] == "close":
                return
            if message[0] == "evaluate":
                _, tasks, paths, timeout_s, retries = message
                conn.send(_fan_out(ray, conn, pool, tasks, paths, timeout_s, retries))
    except Exception as e:  # Ray lost its cluster, or the daemon went away
        with contextlib.suppress(OSError):
            conn.send(("error", "cluster", f"the Ray cluster failed: {type(e).__name__}: {e}"))
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()


class _ActorPool:
    """The driver's actors: idle ones, busy ones, and ones still being placed."""

    def __init__(
        self, ray: Any, settings: ComputeSettings, size: int, runner: Runner, conn: Connection
    ) -> None:
        self.ray = ray
        options: dict[str, Any] = {"num_cpus": settings.cpus_per_worker, "max_restarts": 0}
        if settings.memory_per_worker_mb is not None:
            options["memory"] = settings.memory_per_worker_mb * 1024 * 1024
        self._cls = ray.remote(_TwinActor).options(**options)
        self.size = size
        self.runner = runner
        self.conn = conn
        self.idle: list[Any] = []
        self.busy: set[Any] = set()
        self.pending: dict[Any, Any] = {}  # ready() ref -> actor
        self._reported = -1

    def top_up(self) -> None:
        """Start actors until the pool has ``size`` (placed or being placed)."""
        while len(self.idle) + len(self.busy) + len(self.pending) < self.size:
            actor = self._cls.remote(self.runner)
            self.pending[actor.ready.remote()] = actor

    def poll(self, timeout_s: float) -> None:
        """Move actors that have started to the idle list (dropping ones that failed to)."""
        if self.pending:
            done, _ = self.ray.wait(
                list(self.pending), num_returns=len(self.pending), timeout=timeout_s
            )
            for ref in done:
                actor = self.pending.pop(ref)
                try:
                    self.ray.get(ref)
                except Exception:
                    logger.warning("a what-if actor failed to start", exc_info=True)
                    self.kill(actor)
                else:
                    self.idle.append(actor)
        self.report()

    def report(self) -> None:
        alive = len(self.idle) + len(self.busy)
        if alive != self._reported:
            self._reported = alive
            self.conn.send(("workers", alive))

    def kill(self, actor: Any) -> None:
        self.busy.discard(actor)
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)

    def kill_busy(self) -> None:
        for actor in list(self.busy):
            self.kill(actor)
        self.report()


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    ex = ray.exceptions
    return tuple(
        getattr(ex, name)
        for name in (
            "RayActorError",
            "ActorUnavailableError",
            "WorkerCrashedError",
            "NodeDiedError",
            "ObjectLostError",
            "OwnerDiedError",
        )
        if hasattr(ex, name)
    )


def _fan_out(
    ray: Any,
    conn: Connection,
    pool: _ActorPool,
    tasks: list[RunTask],
    paths: list[str],
    timeout_s: float,
    retries: int,
) -> Message:  # pragma: no cover - runs in the driver process (covered by the Ray tests)
    """One what-if on the pool; the message to send back."""
    deadline = time.monotonic() + timeout_s
    lost_errors = _lost_errors(ray)
    try:
        bundle = FileBundle.of(paths)
    except ConfigError as e:
        return ("error", "simulation", str(e))
    box = [ray.put(bundle)]  # in a list: passed by reference, fetched by the actor once
    digest = bundle.digest
    queue: deque[tuple[RunTask, int]] = deque((t, 0) for t in tasks)
    inflight: dict[Any, tuple[Any, RunTask, int]] = {}
    results: dict[tuple[str, int], RunMetrics] = {}
    lost: list[str] = []
    pool.top_up()
    while queue or inflight:
        pool.poll(0.0 if pool.idle or inflight else _POLL_S)
        while queue and pool.idle:
            actor = pool.idle.pop()
            pool.busy.add(actor)
            task, attempt = queue.popleft()
            inflight[actor.run.remote(digest, box, task)] = (actor, task, attempt)
        if conn.poll() and conn.recv()[0] == "cancel":
            pool.kill_busy()
            return ("cancelled", len(results), len(tasks))
        if time.monotonic() > deadline:
            pool.kill_busy()
            waiting = f"; {len(pool.pending)} actors still waiting for room" if pool.pending else ""
            return (
                "error",
                "timeout",
                f"what-if exceeded its time limit of {timeout_s:g} s with "
                f"{len(tasks) - len(results)} "
                f"of {len(tasks)} runs unfinished on the Ray cluster{waiting}; raise "
                "[compute] timeout_s, add cluster CPUs, or use fewer seeds",
            )
        if not inflight:
            pool.top_up()
            continue
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
        for ref in done:
            actor, task, attempt = inflight.pop(ref)
            try:
                run: RunMetrics = ray.get(ref)
            except lost_errors as e:
                pool.kill(actor)
                where = f"plan {task.plan!r} seed {task.seed}"
                lost.append(f"{where} ({type(e).__name__})")
                if attempt >= retries:
                    pool.kill_busy()
                    return (
                        "error",
                        "lost",
                        f"Ray workers were lost mid-what-if and {where} was tried "
                        f"{attempt + 1} times: {'; '.join(lost)}; a node died or ran out of memory",
                    )
                logger.warning("Ray worker lost running %s; retrying it", where)
                queue.appendleft((task, attempt + 1))
                pool.top_up()
            except ray.exceptions.RayTaskError as e:
                pool.busy.discard(actor)
                pool.idle.append(actor)
                pool.kill_busy()
                cause = getattr(e, "cause", None) or e
                return ("error", "simulation", str(cause))
            else:
                pool.busy.discard(actor)
                pool.idle.append(actor)
                results[(task.plan, task.seed)] = run
                conn.send(("progress", len(results), len(tasks)))
        pool.report()
    return ("result", results, lost)
