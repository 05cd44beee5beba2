"""The training simulations on a Ray cluster (``signaltwin train --backend ray``).

Each simulation of :class:`rl.env.IntersectionVecEnv` is one Ray actor holding
one :class:`rl.env.SignalSimulation` (libsumo: one simulation per process, so
one per actor), driven exactly as the local worker processes are: the same
configuration, the same per-simulation seeds, the same environment maths, so a
run gives the same observations and rewards on either backend.

The files the simulations read (network, detectors, routes of every network of
the mix) go through the object store once per training run as one
:class:`simulators.cluster.FileBundle`; each actor writes them to a temporary
directory on its own node and builds its simulation on those copies.

This process is the Ray driver: :func:`connect` bounds ``ray.init``, which
otherwise waits for minutes on an address nothing answers. A simulation whose
actor, worker or node is lost fails the step with :class:`SimulationError`
naming it; training stops there and the run resumes from its last checkpoint.
Ray is imported only here, and only when the Ray backend is used.
"""

from __future__ import annotations

__all__ = ["RaySimulation", "TrainingActors", "connect", "disconnect"]

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from configs.errors import ConfigError, SignaltwinError, SimulationError
from configs.settings import ComputeSettings
from simulators.cluster import FileBundle, probe_address

if TYPE_CHECKING:
    from rl.env import EnvConfig, FloatArray, SignalSimulation, StepResult

logger = logging.getLogger(__name__)

_CLOSE_S: Final = 10.0
"""How long closing waits for an actor to stop its SUMO before the actor is killed (s)."""


def _unreachable(address: str, elapsed_s: float, cause: str) -> ConfigError:
    return ConfigError(
        f"Ray cluster at {address} unreachable after {elapsed_s:.1f} s: {cause}; start it "
        'with `ray start --head` or set [compute] backend = "local"'
    )


def _probe(address: str, timeout_s: float) -> None:
    started = time.monotonic()
    try:
        probe_address(address, timeout_s)
    except OSError as e:
        raise _unreachable(address, time.monotonic() - started, str(e)) from None


class _NotMainThread(logging.Filter):
    """Drops Ray's notice that ``ray.init`` outside the main thread sets no SIGTERM handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def connect(address: str, namespace: str, timeout_s: float) -> bool:
    """Make this process a driver of the Ray cluster at ``address`` within ``timeout_s``.

    ``ray.init`` runs in a thread of its own, so that a cluster that never
    answers costs ``timeout_s``, not Ray's own retries (minutes); after such a
    timeout the thread is left behind and the process should end (the CLI does).

    Args:
        address: ``auto``, ``host:port`` of the cluster's GCS, or ``ray://host:port``.
        namespace: the Ray namespace of the run's actors.
        timeout_s: how long to wait for the cluster.

    Returns:
        True when this call connected (the caller :func:`disconnect` s later);
        False when this process was a driver already (that connection is used).

    Raises:
        ConfigError: the cluster did not answer within ``timeout_s``, or refused.
    """
    import ray

    if ray.is_initialized():
        return False
    started = time.monotonic()
    _probe(address, timeout_s)
    outcome: list[BaseException | None] = []

    def init() -> None:
        try:
            ray.init(
                address=address,
                namespace=namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except BaseException as e:  # reported to the caller's thread
            outcome.append(e)
        else:
            outcome.append(None)

    quiet = _NotMainThread()
    worker_log = logging.getLogger("ray._private.worker")
    worker_log.addFilter(quiet)
    try:
        thread = threading.Thread(target=init, name="signaltwin-ray-connect", daemon=True)
        thread.start()
        thread.join(max(0.0, timeout_s - (time.monotonic() - started)))
    finally:
        worker_log.removeFilter(quiet)
    elapsed = time.monotonic() - started
    if not outcome:
        raise _unreachable(address, elapsed, "ray.init did not return")
    error = outcome[0]
    if error is not None:
        raise _unreachable(address, elapsed, f"{type(error).__name__}: {error}") from error
    logger.info("connected to the Ray cluster at %s (namespace %s)", address, namespace)
    return True


def disconnect() -> None:
    """End this process's connection to the Ray cluster (its actors end with it)."""
    import ray

    ray.shutdown()


# --------------------------------------------------------------------------- the actor


class _SimulationActor:
    """One Ray actor: one :class:`SignalSimulation` on copies of the run's files."""

    def __init__(self, bundle: FileBundle, config: EnvConfig) -> None:
        # placing the actor is kept apart from loading the network (start), so
        # that the driver can tell a cluster without room from a slow network
        self._bundle = bundle
        self._config = config
        self._root: Path | None = None
        self._sim: SignalSimulation | None = None

    def ready(self) -> bool:
        """Answered once the actor is placed and started."""
        return True

    def start(self) -> int:
        """Write the files to this node and load the simulation; return its number of lights."""
        from rl.env import SignalSimulation

        self._root = Path(tempfile.mkdtemp(prefix="signaltwin-train-"))
        local = self._bundle.materialise(self._root)
        config = self._config
        config = replace(
            config,
            net_file=Path(local[str(config.net_file)]),
            detectors_file=Path(local[str(config.detectors_file)]),
            route_files=tuple(Path(local[str(p)]) for p in config.route_files),
        )
        self._sim = SignalSimulation(config)
        return self._sim.n

    def _simulation(self) -> SignalSimulation:
        if self._sim is None:
            raise ConfigError("start() the training actor before using it")
        return self._sim

    def reset(self, seed: int | None) -> FloatArray:
        """:meth:`SignalSimulation.reset`."""
        return self._simulation().reset(seed)

    def step(self, actions: FloatArray) -> StepResult:
        """:meth:`SignalSimulation.step`."""
        return self._simulation().step(actions)

    def close(self) -> None:
        """Stop SUMO and remove the copies of the files."""
        if self._sim is not None:
            self._sim.close()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)


class RaySimulation:
    """One training simulation in a Ray actor, driven like a local worker process.

    :meth:`step_async` submits the step, :meth:`step_wait` waits for it.
    """

    def __init__(self, index: int, actor: Any, n: int) -> None:
        self.index = index
        self.n = n
        self._actor = actor
        self._pending: Any = None

    def _get(self, ref: Any) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            # the simulation itself failed (SUMO, a bad file): as it would locally
            cause = e.cause
            if isinstance(cause, SignaltwinError):
                raise cause from None
            raise SimulationError(
                f"training simulation {self.index} failed on the Ray cluster: "
                f"{type(cause).__name__}: {cause}"
            ) from cause
        except ray.exceptions.RayError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise SimulationError(
                f"training simulation {self.index} was lost on the Ray cluster "
                f"({type(e).__name__}: {first}): its node died, ran out of memory or left "
                "the cluster; resume the run from its last checkpoint (signaltwin train "
                "... --resume)"
            ) from e

    def reset(self, seed: int | None) -> FloatArray:
        """Start a new episode; return the first observations."""
        obs: FloatArray = self._get(self._actor.reset.remote(seed))
        return obs

    def step_async(self, actions: FloatArray) -> None:
        """Submit one step (one action per light)."""
        self._pending = self._actor.step.remote(np.asarray(actions))

    def step_wait(self) -> StepResult:
        """The submitted step's observations, rewards, done and info.

        Raises:
            SimulationError: the actor was lost, or its simulation failed.
        """
        if self._pending is None:
            raise ConfigError("step_wait() without step_async()")
        ref, self._pending = self._pending, None
        result: StepResult = self._get(ref)
        return result

    def close(self) -> None:
        """Stop the simulation and its actor."""
        import ray

        with contextlib.suppress(Exception):
            ray.get(self._actor.close.remote(), timeout=_CLOSE_S)
        with contextlib.suppress(Exception):
            ray.kill(self._actor, no_restart=True)


class TrainingActors:
    """A training run's simulations as Ray actors, and this process's connection to them.

    Args:
        configs: simulation ``k`` runs ``configs[k]``.
        compute: the settings' ``[compute]`` section (address, namespace, the
            resources each actor reserves, the connect timeout).

    Raises:
        ConfigError: the cluster is unreachable, a file cannot be read, or the
            actors do not start (no room on the cluster, or slow) within
            ``compute.connect_timeout_s``.
        SimulationError: an actor could not start its simulation.
    """

    def __init__(self, configs: Sequence[EnvConfig], compute: ComputeSettings) -> None:
        self.compute = compute
        self.sims: list[RaySimulation] = []
        self._actors: list[Any] = []
        self._placed: list[Any] = []  # those that answered ready(): closed, then killed
        self._connected = connect(compute.address, compute.namespace, compute.connect_timeout_s)
        try:
            self._start(configs)
        except BaseException:
            self.close()
            raise

    def _start(self, configs: Sequence[EnvConfig]) -> None:
        import ray

        compute = self.compute
        paths = [p for c in configs for p in (c.net_file, c.detectors_file, *c.route_files)]
        bundle = ray.put(FileBundle.of(paths))  # once per run; each actor fetches it once
        options: dict[str, Any] = {"num_cpus": compute.cpus_per_worker, "max_restarts": 0}
        if compute.memory_per_worker_mb is not None:
            options["memory"] = compute.memory_per_worker_mb * 1024 * 1024
        actor_class = ray.remote(_SimulationActor).options(**options)
        self._actors = [actor_class.remote(bundle, config) for config in configs]
        ready = [actor.ready.remote() for actor in self._actors]
        timeout = compute.connect_timeout_s
        answered, waiting = ray.wait(ready, num_returns=len(ready), timeout=timeout)
        done = set(answered)
        self._placed = [a for a, ref in zip(self._actors, ready, strict=True) if ref in done]
        if waiting:
            raise ConfigError(self._not_started(len(waiting), len(ready), timeout))
        sims = [RaySimulation(k, actor, 0) for k, actor in enumerate(self._actors)]
        for sim, ref in zip(sims, ready, strict=True):
            sim._get(ref)  # an actor that could not be created says why
        # every simulation loads its network at once, in its own actor
        for sim, n_ref in zip(sims, [a.start.remote() for a in self._actors], strict=True):
            sim.n = int(sim._get(n_ref))
        self.sims = sims
        logger.info(
            "%d training simulations started on the Ray cluster at %s",
            len(sims),
            compute.address,
        )

    def _not_started(self, waiting: int, total: int, timeout_s: float) -> str:
        import ray

        compute = self.compute
        cluster = ray.cluster_resources()  # type: ignore[no-untyped-call]
        free = ray.available_resources()  # type: ignore[no-untyped-call]
        cpus = float(cluster.get("CPU", 0.0))
        asked = f"{total} x {compute.cpus_per_worker:g} CPUs"
        fits = total * compute.cpus_per_worker <= cpus
        if compute.memory_per_worker_mb is not None:
            asked += f" and {compute.memory_per_worker_mb} MB"
            memory_mb = float(cluster.get("memory", 0.0)) / 1024**2
            fits = fits and total * compute.memory_per_worker_mb <= memory_mb
        hint = (
            "the cluster is busy or slow to start workers: raise [compute] connect_timeout_s "
            "or try again"
            if fits
            else "use fewer simulations (--envs), lower [compute] cpus_per_worker, or add nodes"
        )
        return (
            f"{waiting} of {total} training simulations did not start on the Ray cluster at "
            f"{compute.address} within {timeout_s:g} s: they ask for {asked}, the cluster "
            f"has {cpus:g} CPUs ({float(free.get('CPU', 0.0)):g} free); {hint}"
        )

    def close(self) -> None:
        """Stop every simulation and actor; disconnect if this run connected."""
        import ray

        closing = []
        for actor in self._placed:  # an actor never placed would not answer
            with contextlib.suppress(Exception):
                closing.append(actor.close.remote())
        if closing:
            with contextlib.suppress(Exception):
                ray.wait(closing, num_returns=len(closing), timeout=_CLOSE_S)
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._actors, self._placed, self.sims = [], [], []
        if self._connected:
            self._connected = False
            disconnect()
