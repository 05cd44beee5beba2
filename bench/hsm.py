# ruff: noqa: E402  (sys.path is fixed before the imports, see below)
"""Signing latency and throughput: HsmSigner vs a raw python-pkcs11 loop, same token.

Provisions a throw-away SoftHSM2 token in a temporary state directory, then
alternates rounds of (a) a raw python-pkcs11 loop (one session, SHA-256 on the
host, CKM_ECDSA in the token) and (b) our HsmSigner.sign (same work plus the
module lock and r||s -> DER), and prints one JSON line per figure. ratio is
ours/raw (>1 means slower for latency, faster for throughput).

    .venv/bin/python bench/hsm.py [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path and its name
# would shadow the hsm package: drop it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse
import hashlib
import json
import statistics
import tempfile
import threading
import time

import pkcs11
from pkcs11 import KeyType, Mechanism, ObjectClass

from hsm import HsmSigner, provision_softhsm, sign_envelope, verify_envelope
from hsm.params import read_pin

PAYLOAD_BYTES = 10_000  # about one canonical timing configuration of the demo district


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def emit(figure: str, value: float, unit: str, ratio: float | None, against: str | None) -> None:
    print(
        json.dumps(
            {
                "figure": figure,
                "value": round(value, 9),
                "unit": unit,
                "ratio": None if ratio is None else round(ratio, 3),
                "against": against,
            }
        ),
        flush=True,
    )


def raw_round(module: str, token_label: str, key_label: str, pin: str, n: int) -> list[float]:
    lib = pkcs11.lib(module)  # already loaded/initialised with the bench's SOFTHSM2_CONF
    token = lib.get_token(token_label=token_label)
    times: list[float] = []
    with token.open(user_pin=pin) as session:
        key = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label=key_label)
        for i in range(n):
            data = b"%d" % i + b"x" * 64
            t0 = time.perf_counter()
            key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            times.append(time.perf_counter() - t0)
    return times


def ours_round(signer: HsmSigner, n: int) -> list[float]:
    times: list[float] = []
    for i in range(n):
        data = b"%d" % i + b"x" * 64
        t0 = time.perf_counter()
        signer.sign(data)
        times.append(time.perf_counter() - t0)
    return times


def threaded_throughput(signer: HsmSigner, threads: int, per_thread: int) -> float:
    def work() -> None:
        for i in range(per_thread):
            signer.sign(b"%d" % i)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return threads * per_thread / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="signatures per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="signaltwin-bench-hsm-") as tmp:
        result = provision_softhsm(Path(tmp))
        params = result.params
        pin = read_pin(params.pin_file)
        module = str(params.module.resolve())

        raw: list[float] = []
        ours: list[float] = []
        raw_wall = ours_wall = 0.0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            raw += raw_round(module, params.token_label, params.key_label, pin, args.n)
            raw_wall += time.perf_counter() - t0
            with HsmSigner(params) as signer:
                t0 = time.perf_counter()
                ours += ours_round(signer, args.n)
                ours_wall += time.perf_counter() - t0

        raw_p50, ours_p50 = statistics.median(raw), statistics.median(ours)
        raw_p99, ours_p99 = percentile(raw, 0.99), percentile(ours, 0.99)
        against = "raw python-pkcs11 loop (one session, host SHA-256, CKM_ECDSA)"
        emit("hsm_sign_latency_p50", ours_p50, "s", ours_p50 / raw_p50, against)
        emit("hsm_sign_latency_p99", ours_p99, "s", ours_p99 / raw_p99, against)
        raw_tput = len(raw) / raw_wall
        ours_tput = len(ours) / ours_wall
        emit("hsm_sign_throughput", ours_tput, "signatures/s", ours_tput / raw_tput, against)

        with HsmSigner(params) as signer:
            tput4 = threaded_throughput(signer, 4, args.n // 2)
            emit(
                "hsm_sign_throughput_4_threads",
                tput4,
                "signatures/s",
                tput4 / raw_tput,
                "raw python-pkcs11 loop, 1 thread (SoftHSM calls are serialised)",
            )
            payload = b"{" + b'"k":"' + b"v" * (PAYLOAD_BYTES - 10) + b'"}'
            env_times: list[float] = []
            for _ in range(200):
                t0 = time.perf_counter()
                envelope = sign_envelope(signer, payload)
                env_times.append(time.perf_counter() - t0)
            data = envelope.to_json()
            pem = signer.public_key_pem()
            ver_times: list[float] = []
            for _ in range(200):
                t0 = time.perf_counter()
                verify_envelope(data, [pem], payload_type=None)
                ver_times.append(time.perf_counter() - t0)
        emit(
            "hsm_envelope_sign_latency_p50_10kB",
            statistics.median(env_times),
            "s",
            statistics.median(env_times) / raw_p50,
            "raw python-pkcs11 sign of one digest (p50)",
        )
        emit(
            "envelope_verify_latency_p50_10kB",
            statistics.median(ver_times),
            "s",
            None,
            None,
        )


if __name__ == "__main__":
    main()
