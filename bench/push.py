"""Push latency: stage + activate + read-back on 47 and 500 emulated controllers.

The emulated controllers are hosted in gateway processes of at most
``--gateway-size`` controllers each (default 50), as a field gateway hosts
them: one process, one event loop and one fleet per gateway. Controllers in one
process share the core's memo of verified envelopes and parsed documents, so a
gateway verifies and parses each envelope once per push, and a fleet of 500 in
10 gateways verifies it 10 times (in 10 processes), not once for the whole
district. ``--gateway-size 0`` puts the whole fleet in one process (the memo
then covers every controller; for comparison only, not the figure).

The daemon's ControllerPool runs in this process against every gateway's
controllers, its secure sessions already open. For each fleet size it prints
(JSON lines):

* ``push_<n>``: median wall time of ``ControllerPool.push`` (StagePlan with the
  signed envelope on every controller, ActivatePlan at one common field time,
  read-back of the active sequence and digest). Its ``against`` is the same
  exchange written with the raw asyncua client on the same sessions: StagePlan
  with an envelope of the same size (the next sequence, so the controllers
  accept it) together with a field-clock read, one re-read of the clock on the
  controller furthest ahead, ActivatePlan at one common field time with the
  same lead, and the read-back of the active sequence and digest, all
  controllers concurrently; every answer is checked afterwards and a refusal
  stops the bench. The two are interleaved per repeat (order alternating), and
  ``ratio`` = ours / raw: above 1 means the pool costs more than raw asyncua.
  The line also carries ``gateways`` and ``gateway_size``;
* ``push_<n>_stage`` / ``_activate`` / ``_readback``: the pool's phases;
* ``connect_<n>``: time to open every secure session (SignAndEncrypt,
  Basic256Sha256, user and password), for information.

Targets on the 2-core CI machine: push_47 <= 1 s, push_500 <= 5 s.

Run: ``.venv/bin/python bench/push.py [--sizes 47,500] [--repeats 5]
[--gateway-size 50]``. Certificates are generated once into ``--pki-dir``
(default ``~/.cache/signaltwin-bench/pki``) and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncua import ua as _ua  # noqa: E402

from actuation import (  # noqa: E402
    ClientCredentials,
    ControllerPool,
    ControllerTarget,
    aligned_activation_time,
)
from actuation import contract as c  # noqa: E402
from actuation.contract import PlanStatus  # noqa: E402
from actuation.session import ControllerSession  # noqa: E402
from actuation.users import PasswordHash  # noqa: E402
from tests.support.actuation_fleet import (  # noqa: E402
    PASSWORD,
    USER,
    FakeField,
    Pki,
    configuration,
    make_fleet,
    make_pki,
    signed,
    timing,
    tls_ids,
)
from tests.support.softkeys import SoftwareSigner  # noqa: E402

# asyncua types NodeId's arguments with its own aliases (as in actuation.pool): untyped.
ua: Any = _ua

#: Field seconds from "now" to the common activation time (pool and raw alike).
LEAD_S = 60.0


def cached_pki(directory: Path, ids: list[str]) -> Pki:
    """Certificates for ``ids``, generated once and reused across runs."""
    from actuation.security import CertificatePair

    need = [directory / "client.der"] + [directory / f"ctl-{t}.der" for t in ids]
    if not all(p.is_file() for p in need):
        return make_pki(directory, ids)
    client = CertificatePair(directory / "client.der", directory / "client.key.pem")
    servers = {
        t: CertificatePair(directory / f"ctl-{t}.der", directory / f"ctl-{t}.key.pem") for t in ids
    }
    return Pki(
        client,
        client.certificate.read_bytes(),
        servers,
        {t: p.certificate.read_bytes() for t, p in servers.items()},
    )


def chunks(ids: list[str], size: int) -> list[list[str]]:
    """``ids`` split into gateways of at most ``size`` (``size`` <= 0: one gateway)."""
    if size <= 0:
        return [ids]
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def serve(ids: list[str], pki: Pki, public_key: bytes, conn: Connection) -> None:
    """Gateway process: run the controllers ``ids`` (own loop, own fleet) until told to stop."""

    async def main() -> None:
        fleet = make_fleet(pki, ids, FakeField(), [public_key], PasswordHash.create(PASSWORD))
        try:
            await fleet.start()
        except Exception as e:  # noqa: BLE001 - reported to the parent, which stops
            conn.send(f"gateway {ids[0]}..{ids[-1]} failed to start: {type(e).__name__}: {e}")
            return
        conn.send(fleet.urls())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await fleet.stop()

    asyncio.run(main())


async def raw_push(
    links: list[ControllerSession], envelope: bytes, sequence: int, digest: str
) -> float:
    """The pool's exchange with bare asyncua calls on the same sessions; its wall time.

    Stage (with a field-clock read) on all, re-read the clock on the controller
    furthest ahead, activate all at one field time ``LEAD_S`` ahead, read back
    the active sequence and digest. Raises SystemExit if any controller refuses.
    """
    clients = []
    for link in links:
        if link.client is None:
            raise SystemExit(f"raw exchange: no session to {link.tls_id}")
        clients.append((link.tls_id, link.client, link.ns))
    started = time.perf_counter()

    async def stage(client: Any, ns: int) -> tuple[list[Any], list[Any]]:
        obj = client.get_node(ua.NodeId(c.OBJECT, ns))
        call = obj.call_method(
            ua.NodeId(c.STAGE_PLAN, ns), ua.Variant(envelope, ua.VariantType.ByteString)
        )
        clock = client.read_values([client.get_node(ua.NodeId(c.FIELD_TIME, ns))])
        answer, values = await asyncio.gather(call, clock)
        return answer, values

    staged = await asyncio.gather(*(stage(cl, ns) for _, cl, ns in clients))
    refused = [
        (t, a) for (t, _, _), (a, _) in zip(clients, staged, strict=True) if a[0] != PlanStatus.OK
    ]
    if refused:
        raise SystemExit(f"raw StagePlan {sequence} refused by {len(refused)}: {refused[:3]}")
    ahead = max(range(len(clients)), key=lambda i: float(staged[i][1][0]))
    _, client, ns = clients[ahead]
    (again,) = await client.read_values([client.get_node(ua.NodeId(c.FIELD_TIME, ns))])
    at = aligned_activation_time(max(float(staged[ahead][1][0]), float(again)), LEAD_S, None)
    activated = await asyncio.gather(
        *(
            cl.get_node(ua.NodeId(c.OBJECT, ns)).call_method(
                ua.NodeId(c.ACTIVATE_PLAN, ns),
                ua.Variant(sequence, ua.VariantType.UInt64),
                ua.Variant(at, ua.VariantType.Double),
            )
            for _, cl, ns in clients
        )
    )
    readback = await asyncio.gather(
        *(
            cl.read_values(
                [
                    cl.get_node(ua.NodeId(c.ACTIVE_SEQUENCE, ns)),
                    cl.get_node(ua.NodeId(c.ACTIVE_DIGEST, ns)),
                ]
            )
            for _, cl, ns in clients
        )
    )
    elapsed = time.perf_counter() - started
    wrong = [
        (t, a, r)
        for (t, _, _), a, r in zip(clients, activated, readback, strict=True)
        if a[0] != PlanStatus.OK or int(r[0]) != sequence or str(r[1]) != digest
    ]
    if wrong:
        raise SystemExit(f"raw push {sequence} not running on {len(wrong)}: {wrong[:3]}")
    return elapsed


def emit(
    figure: str,
    value: float,
    ratio: float | None = None,
    against: str | None = None,
    layout: dict[str, int] | None = None,
) -> None:
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 4),
                "unit": "s",
                "ratio": ratio,
                "against": against,
                **(layout or {}),
            }
        ),
        flush=True,
    )


def start_gateways(
    groups: list[list[str]],
    pki: Pki,
    public_key: bytes,
    gateways: list[tuple[BaseProcess, Connection]],
) -> dict[str, str]:
    """Fork one gateway per group into ``gateways``; every controller's URL."""
    ctx = mp.get_context("fork")
    for ids in groups:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(ids, pki, public_key, child), daemon=True)
        proc.start()
        child.close()  # so a gateway that dies is seen as EOF, not waited on forever
        gateways.append((proc, parent))
    urls: dict[str, str] = {}
    for _, conn in gateways:
        if not conn.poll(600):
            raise SystemExit("a gateway did not start its controllers within 600 s")
        answer = conn.recv()
        if isinstance(answer, str):
            raise SystemExit(answer)
        urls.update(answer)
    return urls


def stop_gateways(gateways: list[tuple[BaseProcess, Connection]]) -> None:
    for _, conn in gateways:
        try:
            conn.send("stop")
        except OSError:
            pass  # that gateway is gone already
    for proc, _ in gateways:
        proc.join(60)
        if proc.is_alive():
            proc.terminate()


def bench(n: int, repeats: int, pki_dir: Path, gateway_size: int) -> None:
    ids = tls_ids(n)
    pki = cached_pki(pki_dir, ids)
    signer = SoftwareSigner()
    groups = chunks(ids, gateway_size)
    layout = {"gateways": len(groups), "gateway_size": max(len(g) for g in groups)}
    gateways: list[tuple[BaseProcess, Connection]] = []
    try:
        urls = start_gateways(groups, pki, signer.public_key_pem(), gateways)
        endpoints = [ControllerTarget(t, u, pki.server_der[t]) for t, u in urls.items()]
        credentials = ClientCredentials(
            pki.client.certificate, pki.client.private_key, USER, PASSWORD
        )

        async def main() -> None:
            pool = ControllerPool(
                endpoints, credentials, call_timeout_s=30.0, connect_timeout_s=60.0, watchdog_s=30.0
            )
            started = time.perf_counter()
            await pool.start()
            if not await pool.wait_connected(600):
                raise SystemExit(f"not every controller connected: {pool.connected()}")
            emit(f"connect_{n}", time.perf_counter() - started, layout=layout)
            links = list(pool._links.values())  # noqa: SLF001 - the raw exchange uses the same sessions
            totals, stages, activates, readbacks, raws = [], [], [], [], []
            seq = 0
            for r in range(repeats):
                # alternate who goes first, so a drift in the machine's load hits both alike
                for ours_turn in (True, False) if r % 2 == 0 else (False, True):
                    seq += 1
                    config = configuration(seq, {t: timing(30 + seq % 3, 26) for t in ids})
                    envelope = signed(signer, config)
                    if ours_turn:
                        report = await pool.push(envelope, seq, lead_s=LEAD_S)
                        if not report.ok:
                            raise SystemExit(f"push {seq} failed: {report.reason}")
                        totals.append(report.total_s)
                        stages.append(report.stage_s)
                        activates.append(report.activate_s)
                        readbacks.append(report.readback_s)
                    else:
                        raws.append(await raw_push(links, envelope, seq, config.digest()))
            ours, raw = statistics.median(totals), statistics.median(raws)
            emit(
                f"push_{n}",
                ours,
                round(ours / raw, 2),
                f"raw asyncua stage+activate+read-back, same envelope size, same {n} "
                f"sessions ({raw:.3f} s); ratio = ours / raw",
                layout,
            )
            emit(f"push_{n}_stage", statistics.median(stages))
            emit(f"push_{n}_activate", statistics.median(activates))
            emit(f"push_{n}_readback", statistics.median(readbacks))
            await pool.close()

        asyncio.run(main())
    finally:
        stop_gateways(gateways)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="47,500")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--gateway-size",
        type=int,
        default=50,
        help="most controllers per gateway process (0: the whole fleet in one process)",
    )
    parser.add_argument("--pki-dir", type=Path, default=Path.home() / ".cache/signaltwin-bench/pki")
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        bench(size, args.repeats, args.pki_dir, args.gateway_size)
