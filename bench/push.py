"""Push latency: stage + activate + read-back on 47 and 500 emulated controllers.

The controllers run in a child process (one event loop, as a gateway would host
them); the daemon's ControllerPool runs in this process with its secure sessions
already open. For each fleet size it prints (JSON lines):

* ``push_<n>``: median wall time of ``ControllerPool.push`` (StagePlan with the
  signed envelope on every controller, ActivatePlan at one common field time,
  read-back of the active sequence and digest), against three rounds of raw
  asyncua reads on the same sessions (the bare cost of a three-phase exchange;
  the controllers refuse OPC UA writes by design, so reads stand in for
  "raw write round trips");
* ``push_<n>_stage`` / ``_activate`` / ``_readback``: the phases;
* ``connect_<n>``: time to open every secure session (SignAndEncrypt,
  Basic256Sha256, user and password), for information.

Targets on the 2-core CI machine: push_47 <= 1 s, push_500 <= 5 s.

Run: ``.venv/bin/python bench/push.py [--sizes 47,500] [--repeats 5]``.
Certificates are generated once into ``--pki-dir`` (default
``~/.cache/signaltwin-bench/pki``) and reused.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncua import ua  # noqa: E402

from actuation import (  # noqa: E402
    ClientCredentials,
    ControllerPool,
    ControllerTarget,
)
from actuation import contract as c  # noqa: E402
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


def serve(n: int, pki_dir: str, public_key: bytes, conn: Connection) -> None:
    """Child process: run ``n`` controllers until told to stop."""
    ids = tls_ids(n)
    pki = cached_pki(Path(pki_dir), ids)

    async def main() -> None:
        fleet = make_fleet(pki, ids, FakeField(), [public_key], PasswordHash.create(PASSWORD))
        await fleet.start()
        conn.send(fleet.urls())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await fleet.stop()

    asyncio.run(main())


async def raw_rounds(pool: ControllerPool, rounds: int = 3) -> float:
    """Three rounds of one raw asyncua read per session, all sessions concurrently."""
    links = list(pool._links.values())  # noqa: SLF001 - the bench measures the bare sessions
    started = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(
            *(
                link.client.read_values(
                    [link.client.get_node(ua.NodeId(c.ACTIVE_SEQUENCE, link.ns))]
                )
                for link in links
                if link.client is not None
            )
        )
    return time.perf_counter() - started


def emit(figure: str, value: float, ratio: float | None = None, against: str | None = None) -> None:
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 4),
                "unit": "s",
                "ratio": ratio,
                "against": against,
            }
        ),
        flush=True,
    )


def bench(n: int, repeats: int, pki_dir: Path) -> None:
    ids = tls_ids(n)
    pki = cached_pki(pki_dir, ids)
    signer = SoftwareSigner()
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(
        target=serve, args=(n, str(pki_dir), signer.public_key_pem(), child), daemon=True
    )
    proc.start()
    try:
        urls: dict[str, str] = parent.recv()
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
            emit(f"connect_{n}", time.perf_counter() - started)
            totals, stages, activates, readbacks, raws = [], [], [], [], []
            for seq in range(1, repeats + 1):
                config = configuration(seq, {t: timing(30 + seq % 3, 26) for t in ids})
                envelope = signed(signer, config)
                report = await pool.push(envelope, seq, lead_s=60.0)
                if not report.ok:
                    raise SystemExit(f"push {seq} failed: {report.reason}")
                totals.append(report.total_s)
                stages.append(report.stage_s)
                activates.append(report.activate_s)
                readbacks.append(report.readback_s)
                raws.append(await raw_rounds(pool))
            ours, raw = statistics.median(totals), statistics.median(raws)
            emit(
                f"push_{n}",
                ours,
                round(ours / raw, 2),
                f"3 rounds of raw asyncua reads on the same {n} secure sessions ({raw:.3f} s)",
            )
            emit(f"push_{n}_stage", statistics.median(stages))
            emit(f"push_{n}_activate", statistics.median(activates))
            emit(f"push_{n}_readback", statistics.median(readbacks))
            await pool.close()

        asyncio.run(main())
    finally:
        parent.send("stop")
        proc.join(60)
        if proc.is_alive():
            proc.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="47,500")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pki-dir", type=Path, default=Path.home() / ".cache/signaltwin-bench/pki")
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        bench(size, args.repeats, args.pki_dir)
