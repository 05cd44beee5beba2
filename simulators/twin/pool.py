"""The what-if engine: every plan with every seed, fanned out over worker processes.

Every plan (the current one and each candidate) is simulated with the same K
seeds (common random numbers: the same seed gives the same arrivals, vehicle
types and driver behaviour, so the paired difference isolates the plan's effect).
Each (plan, seed) run (:func:`simulators.twin.run.run_plan`) is one task in a
worker process (libsumo holds one simulation per process), so a district's
what-if fans out over the configured workers; results are assembled by (plan,
seed), never by completion order, so the same request always gives identical
numbers (the auditor's replay relies on it). A worker that dies raises
:class:`SimulationError` naming the plans and seeds that were running, never a
hang; a cancel event stops the what-if within about a second.
"""

from __future__ import annotations

__all__ = [
    "LibsumoWhatIfEngine",
    "Runner",
    "WhatIfEngine",
    "assemble",
    "check_cancel",
    "run_tasks",
]

import concurrent.futures as cf
import logging
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Final, Protocol

from configs.errors import ConfigError, SimulationError, WhatIfCancelled
from simulators.twin.plans import CURRENT
from simulators.twin.request import WhatIfRequest
from simulators.twin.results import RunMetrics, WhatIfResult, aggregate, paired_change
from simulators.twin.run import RunTask, run_plan

logger = logging.getLogger(__name__)

_CANCEL_POLL_S: Final = 0.2
"""How often a fan-out with a cancel event looks at it (s)."""


class WhatIfEngine(Protocol):
    """Seam: anything that evaluates a what-if request (libsumo here, a fake in tests)."""

    def evaluate(
        self,
        request: WhatIfRequest,
        progress: Callable[[int, int], None] | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> WhatIfResult:
        """Simulate every plan with every seed and compare against the current plan.

        Raises:
            WhatIfCancelled: ``cancel`` was set before the what-if finished.
        """
        ...


Runner = Callable[[RunTask], RunMetrics]


class LibsumoWhatIfEngine:
    """The what-if engine on libsumo, fanned out over worker processes.

    Args:
        workers: worker processes (0: run every simulation in this process, one
            after another; useful for debugging and profiling).
        timeout_s: wall-clock limit for one whole evaluation (None: no limit).
        mp_context: multiprocessing start method; ``spawn`` (default) or ``forkserver``
            (never ``fork``: libsumo's state must not be inherited).
        runner: the per-task function (tests substitute one; it must be importable
            by the worker processes).

    The pool is created on first use and kept for later evaluations (a daemon
    pays process start-up once); call :meth:`close` or use it as a context manager.
    """

    backend: Final = "local"

    def __init__(
        self,
        workers: int = 2,
        *,
        timeout_s: float | None = None,
        mp_context: str = "spawn",
        runner: Runner = run_plan,
    ) -> None:
        if workers < 0:
            raise ConfigError(f"simulation.workers must be >= 0 (got {workers})")
        if mp_context not in ("spawn", "forkserver"):
            raise ConfigError(f"mp_context must be 'spawn' or 'forkserver' (got {mp_context!r})")
        self.workers = workers
        self.timeout_s = timeout_s
        self._context = multiprocessing.get_context(mp_context)
        self._runner = runner
        self._pool: cf.ProcessPoolExecutor | None = None

    @property
    def workers_alive(self) -> int:
        """Worker processes of the pool (replaced when one dies; 0 runs in this process)."""
        return self.workers

    def __enter__(self) -> LibsumoWhatIfEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the worker pool down."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def evaluate(
        self,
        request: WhatIfRequest,
        progress: Callable[[int, int], None] | None = None,
        *,
        cancel: threading.Event | None = None,
    ) -> WhatIfResult:
        """Run every plan with every seed; return outcomes with paired changes.

        Args:
            request: the what-if.
            progress: called with (runs done, runs total) after each run.
            cancel: when set (from any thread), no further run is handed out, the
                running workers are killed within about a second (the pool is
                rebuilt on the next evaluation) and :class:`WhatIfCancelled` is
                raised. With ``workers=0`` it is honoured between runs.

        Raises:
            ConfigError: the request is invalid.
            WhatIfCancelled: ``cancel`` was set before the what-if finished.
            SimulationError: a run could not be simulated, a worker died, or the
                evaluation exceeded ``timeout_s``.
        """
        request.validate()
        check_cancel(cancel, 0, 0)

        def run(
            tasks: list[RunTask], report: Callable[[int, int], None] | None
        ) -> dict[tuple[str, int], RunMetrics]:
            if self.workers != 0:
                return self._fan_out(tasks, report, cancel)
            results = {}
            for i, task in enumerate(tasks):
                check_cancel(cancel, i, len(tasks))
                results[(task.plan, task.seed)] = self._runner(task)
                if report is not None:
                    report(i + 1, len(tasks))
            return results

        return evaluate_staged(request, run, progress)

    def _fan_out(
        self,
        tasks: list[RunTask],
        progress: Callable[[int, int], None] | None,
        cancel: threading.Event | None,
    ) -> dict[tuple[str, int], RunMetrics]:
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        results: dict[tuple[str, int], RunMetrics] = {}
        with tempfile.TemporaryDirectory(prefix="signaltwin-markers-") as markers:
            futures = self._submit(tasks, markers)
            try:
                pending = set(futures)
                while pending:
                    wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if cancel is not None:  # wake up often enough to notice a cancel
                        wait_s = _CANCEL_POLL_S if wait_s is None else min(wait_s, _CANCEL_POLL_S)
                    done, pending = cf.wait(pending, timeout=wait_s, return_when=cf.FIRST_COMPLETED)
                    check_cancel(cancel, len(results), len(tasks))
                    if not done:
                        if deadline is None or time.monotonic() < deadline:
                            continue
                        raise SimulationError(
                            f"what-if exceeded its time limit of {self.timeout_s} s with "
                            f"{len(pending)} of {len(tasks)} runs unfinished; raise the limit, "
                            "use fewer seeds or a shorter horizon"
                        )
                    for fut in done:
                        task = futures[fut]
                        results[(task.plan, task.seed)] = fut.result()
                        if progress is not None:
                            progress(len(results), len(tasks))
            except BrokenProcessPool as e:
                self._abandon_pool()
                running = _read_markers(Path(markers))
                where = ", ".join(f"plan {p!r} seed {s}" for p, s in running) or "unknown run"
                raise SimulationError(
                    f"a what-if worker process died while running {where}; SUMO crashed or "
                    "ran out of memory (see the worker's stderr)"
                ) from e
            except BaseException:
                for fut in futures:
                    fut.cancel()
                self._abandon_pool()
                raise
        return results

    def _submit(self, tasks: list[RunTask], markers: str) -> dict[cf.Future[RunMetrics], RunTask]:
        """Submit every task; a pool broken while idle (a worker killed) is replaced once."""
        for attempt in (1, 2):
            if self._pool is None:
                self._pool = cf.ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=self._context
                )
            pool = self._pool
            futures: dict[cf.Future[RunMetrics], RunTask] = {}
            try:
                for t in tasks:
                    task = RunTask(t.request, t.plan, t.seed, t.record, marker_dir=markers)
                    futures[pool.submit(_guarded, self._runner, task)] = t
            except BrokenProcessPool as e:
                for fut in futures:
                    fut.cancel()
                self._abandon_pool()
                if attempt == 2:
                    raise SimulationError(
                        "the what-if worker pool broke again right after it was rebuilt; "
                        "check memory and the workers' stderr"
                    ) from e
                logger.warning("what-if worker pool was broken (a worker died while idle); rebuilt")
                continue
            return futures
        raise AssertionError("unreachable")  # pragma: no cover

    def _abandon_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # ProcessPoolExecutor has no public way to stop busy workers before 3.14
        # (terminate_workers); killing them is the only way not to wait on a hung run.
        for proc in list(getattr(pool, "_processes", {}).values()):
            if proc.is_alive():
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)


RunBatch = Callable[
    [list[RunTask], Callable[[int, int], None] | None], dict[tuple[str, int], RunMetrics]
]


def evaluate_staged(
    request: WhatIfRequest,
    run: RunBatch,
    progress: Callable[[int, int], None] | None = None,
) -> WhatIfResult:
    """Run a what-if's tasks through ``run``, in two rounds when it eliminates.

    Without elimination every (plan, seed) runs at once. With it
    (:meth:`WhatIfRequest.eliminates`), every plan first runs on the first
    ``elimination_seeds`` seeds; the ``finalists`` candidates with the lowest
    paired mean wait change there (ties by name; failed ones never) and the
    current plan then run the remaining seeds. Which runs happen depends only
    on the request and the runs' results, so a replay repeats them.

    Args:
        request: the what-if (validated).
        run: runs a batch of tasks and returns their metrics by (plan, seed);
            it reports its own progress as (done, total) of that batch.
        progress: called with (runs done, runs expected) over both rounds.
    """
    # recorded runs take longest: handed out first, they do not finish last alone
    tasks = sorted(run_tasks(request), key=lambda t: not t.record)
    if not request.eliminates():
        return assemble(request, run(tasks, progress))
    first = set(request.seeds[: request.elimination_seeds])
    round_one = [t for t in tasks if t.seed in first]
    rest = len(request.seeds) - len(first)
    expected = len(round_one) + (1 + request.finalists) * rest

    def report(offset: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, _total: progress(offset + done, expected)

    results = run(round_one, report(0))
    chosen = set(finalists(request, results))
    round_two = [t for t in tasks if t.seed not in first and t.plan in {CURRENT, *chosen}]
    results.update(run(round_two, report(len(round_one))))
    return assemble(request, results)


def finalists(
    request: WhatIfRequest, results: Mapping[tuple[str, int], RunMetrics]
) -> tuple[str, ...]:
    """The candidates that run every seed: the best by paired mean wait change on the first.

    Candidates that failed a first-round run never go on; neither does any
    when the current plan failed one.
    """
    first = request.seeds[: request.elimination_seeds]
    current = [results[(CURRENT, s)] for s in first]
    if any(r.failed for r in current):
        return ()
    scored = []
    for name in sorted(request.candidates):
        runs = [results[(name, s)] for s in first]
        if any(r.failed for r in runs):
            continue
        change = paired_change(
            [r.metric("wait") for r in current],
            [r.metric("wait") for r in runs],
            request.confidence_level,
        )
        scored.append((change.mean, name))
    return tuple(name for _, name in sorted(scored)[: request.finalists])


def run_tasks(request: WhatIfRequest) -> list[RunTask]:
    """Every (plan, seed) run of ``request``, in plan then seed order."""
    recorded_seed = request.seeds[request.record.seed_index] if request.record else None
    return [
        RunTask(request=request, plan=name, seed=seed, record=seed == recorded_seed)
        for name in request.plan_names()
        for seed in request.seeds
    ]


def assemble(request: WhatIfRequest, results: dict[tuple[str, int], RunMetrics]) -> WhatIfResult:
    """The what-if's result from its runs, by (plan, seed) whatever order they finished in."""
    recordings = {
        name: rec
        for (name, _), run in sorted(results.items())
        if (rec := run.recording) is not None
    }
    return WhatIfResult(
        outcomes=aggregate(request, results),
        horizon_s=request.horizon_s,
        warmup_s=request.warmup_s,
        seeds=request.seeds,
        confidence_level=request.confidence_level,
        recordings=recordings,
    )


def check_cancel(cancel: threading.Event | None, done: int, total: int) -> None:
    """Raise :class:`WhatIfCancelled` if ``cancel`` is set (``done`` of ``total`` runs done)."""
    if cancel is not None and cancel.is_set():
        raise WhatIfCancelled(
            f"what-if cancelled with {done} of {total} runs done; nothing was predicted"
        )


def _guarded(runner: Callable[[RunTask], RunMetrics], task: RunTask) -> RunMetrics:
    """Run ``runner`` in a worker, leaving a marker naming the task while it runs.

    If the worker dies, the markers left behind say which (plan, seed) it was running.
    """
    marker = None
    if task.marker_dir is not None:
        marker = Path(task.marker_dir) / f"{os.getpid()}"
        marker.write_text(f"{task.plan}\n{task.seed}\n", encoding="utf-8")
    try:
        return runner(task)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def _read_markers(directory: Path) -> list[tuple[str, int]]:
    found = []
    for marker in sorted(directory.iterdir()):
        try:
            plan, seed = marker.read_text(encoding="utf-8").splitlines()[:2]
            found.append((plan, int(seed)))
        except (OSError, ValueError):
            continue
    return found
