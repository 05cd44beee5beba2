"""The synchronous facade: a :class:`ControllerPool` owned by an event-loop thread.

The daemon runs its cycle in a worker thread; :class:`ThreadedActuator`
satisfies the :class:`~actuation.types.Actuator` protocol for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

from actuation.pool import ControllerPool
from actuation.types import ControllerSnapshot, PushReport
from configs.errors import ActuationError

__all__ = ["ThreadedActuator"]

T = TypeVar("T")


async def _cancel_leftover_tasks(timeout_s: float = 5.0) -> None:
    """Cancel tasks asyncua left behind for sessions that died (before the loop stops)."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)


class ThreadedActuator:
    """A :class:`ControllerPool` owned by an event-loop thread, for synchronous callers.

    Args:
        pool_factory: Builds the pool (called inside the loop thread).
        start_wait_s: How long the constructor waits for the sessions to come up
            (it returns anyway; unreachable controllers keep being retried).
        call_timeout_s: Limit for one synchronous call into the loop.
    """

    def __init__(
        self,
        pool_factory: Callable[[], ControllerPool],
        start_wait_s: float = 10.0,
        call_timeout_s: float = 120.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="opcua-actuator", daemon=True
        )
        self._thread.start()
        self._timeout_s = call_timeout_s
        self._closed = False

        async def make() -> ControllerPool:
            pool = pool_factory()
            await pool.start(wait_s=start_wait_s)
            return pool

        try:
            self._pool = self._run(make())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self._timeout_s)
        except TimeoutError as e:
            future.cancel()
            raise ActuationError(f"controller operation took longer than {self._timeout_s}s") from e

    @property
    def pool(self) -> ControllerPool:
        """The underlying pool (use only from the loop thread)."""
        return self._pool

    def connected(self) -> dict[str, bool]:
        """Whether each controller's session is up."""
        return self._run(self._connected())

    async def _connected(self) -> dict[str, bool]:
        return self._pool.connected()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until every session is up."""
        return self._run(self._pool.wait_connected(timeout_s))

    def read_all(self) -> dict[str, ControllerSnapshot]:
        """Every controller's snapshot."""
        return self._run(self._pool.read_all())

    def push(
        self,
        envelope: bytes,
        sequence: int,
        *,
        alignment_s: float | None = None,
        lead_s: float | None = None,
    ) -> PushReport:
        """See :meth:`ControllerPool.push`."""
        return self._run(
            self._pool.push(envelope, sequence, alignment_s=alignment_s, lead_s=lead_s)
        )

    def abort_staged(
        self, sequence: int, only: Iterable[str] | None = None
    ) -> dict[str, tuple[int, str] | str]:
        """See :meth:`ControllerPool.abort_staged`."""
        return self._run(self._pool.abort_staged(sequence, only))

    def close(self) -> None:
        """Close every session and stop the loop thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._pool.close())
            self._run(_cancel_leftover_tasks())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
