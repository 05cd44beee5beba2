"""One controller's persistent SignAndEncrypt session, reconnected with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from asyncua import ua as _ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies

from actuation import contract as c
from actuation.types import ClientCredentials, ControllerTarget, status_name
from configs.errors import ActuationError

# asyncua's ``ua`` package re-exports its names without ``__all__``, which strict
# mypy rejects, and types NodeId's arguments with its own aliases: use it untyped.
ua: Any = _ua

__all__ = ["ControllerSession"]

logger = logging.getLogger(__name__)

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}


class ControllerSession:
    """One controller's persistent session, reconnected with exponential backoff.

    Args:
        endpoint: The controller (URL and pinned certificate).
        credentials: How the daemon authenticates.
        connect_timeout_s: Limit for one connection attempt.
        call_timeout_s: Limit for one method call or read.
        watchdog_s: How often asyncua checks that an idle session is alive.
        backoff_max_s: Longest wait between reconnection attempts.
        connect_gate: Bounds the handshakes in flight across a pool.
    """

    def __init__(
        self,
        endpoint: ControllerTarget,
        credentials: ClientCredentials,
        connect_timeout_s: float,
        call_timeout_s: float,
        watchdog_s: float,
        backoff_max_s: float,
        connect_gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._gate = connect_gate
        self._credentials = credentials
        self._connect_timeout_s = connect_timeout_s
        self._call_timeout_s = call_timeout_s
        self._watchdog_s = watchdog_s
        self._backoff_max_s = backoff_max_s
        self.client: Client | None = None
        self.ns = 0
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        #: A plan to abort as soon as the session is back (its abort failed).
        self.pending_abort: int | None = None

    @property
    def tls_id(self) -> str:
        """The intersection id of this controller."""
        return self.endpoint.tls_id

    def node(self, node_id: str) -> ua.NodeId:
        """``node_id`` in the controller's signaltwin namespace."""
        return ua.NodeId(node_id, self.ns)

    def start(self) -> None:
        """Start the supervisor task that connects and reconnects (inside a running loop)."""
        self._task = asyncio.create_task(self._supervise(), name=f"link-{self.tls_id}")

    async def close(self) -> None:
        """Stop reconnecting and drop the session."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop()

    async def _drop(self) -> None:
        self.connected.clear()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=2.0)

    def mark_lost(self, reason: str) -> None:
        """Record that the session is gone; the supervisor reconnects."""
        if self.connected.is_set():
            logger.warning("controller %s: session lost (%s)", self.tls_id, reason)
        self.last_error = reason
        self.connected.clear()
        self._lost.set()

    async def _connect_once(self) -> None:
        cred = self._credentials
        client = Client(
            self.endpoint.url, timeout=self._call_timeout_s, watchdog_intervall=self._watchdog_s
        )
        client.application_uri = cred.application_uri
        client.session_timeout = 600_000  # the controllers' maximum; asyncua warns otherwise
        client.name = "signaltwin daemon"
        client.description = "signaltwin daemon"
        client.set_user(cred.user)
        client.set_password(cred.password)
        await client.set_security(
            _POLICIES[cred.policy],
            certificate=str(cred.certificate),
            private_key=str(cred.private_key),
            server_certificate=self.endpoint.server_certificate_der,
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )

        async def lost(exc: Exception) -> None:
            self.mark_lost(f"{type(exc).__name__}: {exc}")

        client.connection_lost_callback = lost
        try:
            await asyncio.wait_for(client.connect(auto_reconnect=False), self._connect_timeout_s)
            namespaces = await asyncio.wait_for(client.get_namespace_array(), self._call_timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            raise
        if c.NAMESPACE_URI not in namespaces:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise ActuationError(
                f"{self.endpoint.url} does not serve namespace {c.NAMESPACE_URI}: not a "
                "signaltwin traffic controller"
            )
        self.ns = namespaces.index(c.NAMESPACE_URI)
        self.client = client

    async def _supervise(self) -> None:
        delay = 0.5
        while not self._closing:
            try:
                if self._gate is None:
                    await self._connect_once()
                else:
                    async with self._gate:
                        await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means retry later
                self.last_error = f"connect failed: {type(e).__name__}: {e}"
                logger.info(
                    "controller %s: %s (retry in %.1fs)", self.tls_id, self.last_error, delay
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff_max_s)
                continue
            delay = 0.5
            self.last_error = None
            self._lost.clear()
            self.connected.set()
            await self._abort_pending()
            await self._lost.wait()
            await self._drop()

    async def _abort_pending(self) -> None:
        sequence = self.pending_abort
        if sequence is None:
            return
        try:
            status, message = await self.call(
                c.ABORT_STAGED, ua.Variant(sequence, ua.VariantType.UInt64)
            )
        except ActuationError as e:
            logger.warning(
                "controller %s: abort of plan %d still pending: %s", self.tls_id, sequence, e
            )
            return
        self.pending_abort = None
        logger.info(
            "controller %s: pending abort of plan %d after reconnect: %s %s",
            self.tls_id,
            sequence,
            status_name(status),
            message,
        )

    async def call(self, method: str, *args: ua.Variant) -> tuple[int, str]:
        """Call a contract method; return its (status code, message).

        Raises:
            ActuationError: not connected, timed out, transport failure or a bad answer.
        """
        client = self.client
        if client is None or not self.connected.is_set():
            raise ActuationError(f"not connected ({self.last_error or 'connecting'})")
        request = ua.CallMethodRequest()
        request.ObjectId = self.node(c.OBJECT)
        request.MethodId = self.node(method)
        request.InputArguments = list(args)
        try:
            results = await asyncio.wait_for(client.uaclient.call([request]), self._call_timeout_s)
        except TimeoutError as e:
            raise ActuationError(f"{method} timed out after {self._call_timeout_s}s") from e
        except (ConnectionError, OSError, ua.UaError) as e:
            self.mark_lost(f"{type(e).__name__}: {e}")
            raise ActuationError(f"{method} failed: {type(e).__name__}: {e}") from e
        result = results[0]
        if not result.StatusCode.is_good():
            raise ActuationError(f"{method} refused by the server: {result.StatusCode}")
        outputs = result.OutputArguments
        if len(outputs) != 2:
            raise ActuationError(f"{method} returned {len(outputs)} values; the contract says 2")
        return int(outputs[0].Value), str(outputs[1].Value)

    async def read(self, node_ids: list[str]) -> list[Any]:
        """Read the values of ``node_ids`` in one Read request.

        Raises:
            ActuationError: not connected, timed out, refused or transport failure.
        """
        client = self.client
        if client is None or not self.connected.is_set():
            raise ActuationError(f"not connected ({self.last_error or 'connecting'})")
        nodes = [client.get_node(self.node(n)) for n in node_ids]
        try:
            return await asyncio.wait_for(client.read_values(nodes), self._call_timeout_s)
        except TimeoutError as e:
            raise ActuationError(f"read timed out after {self._call_timeout_s}s") from e
        except (ConnectionError, OSError, ua.UaError) as e:
            if isinstance(e, ua.UaStatusCodeError):
                raise ActuationError(f"read refused: {e}") from e
            self.mark_lost(f"{type(e).__name__}: {e}")
            raise ActuationError(f"read failed: {type(e).__name__}: {e}") from e
