"""A real two-node Ray cluster on 127.0.0.1 for the scale-out tests.

The head and a second node are each a ``ray start --block`` process in a
session of its own, so the test can kill one node (its raylet and every worker
it started) with one signal, and stop the cluster without touching any other
Ray on the machine. Both nodes use a private temporary directory and small
object stores (the CI machine has two cores and little shared memory to spare).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_RAY = str(Path(sys.executable).with_name("ray"))
_OBJECT_STORE = str(100 * 1024 * 1024)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RayCluster:
    """``ray start --head`` plus ``ray start --address`` (``node_cpus=None``: the head alone)."""

    def __init__(self, *, head_cpus: int = 1, node_cpus: int | None = 1) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # short: Ray's unix sockets live under it (a 107-byte path limit)
        self.temp_dir = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
        self.head_cpus = head_cpus
        self.node_cpus = node_cpus
        self.head: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self._env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(Path(self.temp_dir) / log, "wb") as out:  # the child keeps its own copy
            return subprocess.Popen(
                [_RAY, "start", "--block", "--node-ip-address=127.0.0.1", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env,
                process_group=0,  # killpg reaches it; our session (and CPU autogroup)
            )

    def start(self, timeout_s: float = 90.0) -> RayCluster:
        """Start both nodes; return once the cluster reports two alive nodes."""
        self.head = self._start(
            [
                "--head",
                f"--port={self.port}",
                f"--num-cpus={self.head_cpus}",
                f"--temp-dir={self.temp_dir}",
                "--include-dashboard=false",
                f"--object-store-memory={_OBJECT_STORE}",
                "--disable-usage-stats",
            ],
            "head.log",
        )
        self._wait_nodes(1, timeout_s)
        if self.node_cpus is not None:
            self.start_node(timeout_s)
        return self

    def start_node(self, timeout_s: float = 90.0) -> None:
        """(Re)start the second node; return once the cluster counts it alive."""
        assert self.node_cpus is not None, "a head-only cluster"
        self.node = self._start(
            [
                f"--address={self.address}",
                f"--num-cpus={self.node_cpus}",
                f"--object-store-memory={_OBJECT_STORE}",
                "--disable-usage-stats",
            ],
            "node.log",
        )
        self._wait_nodes(2, timeout_s)

    def alive_nodes(self) -> int:
        """Alive nodes as the cluster's GCS reports them (-1: the head does not answer)."""
        probe = (
            f"import ray; ray.init(address={self.address!r}, logging_level='ERROR', "
            "log_to_driver=False); print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        try:
            done = subprocess.run(
                [sys.executable, "-c", probe],
                capture_output=True,
                text=True,
                env=self._env,
                timeout=30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return -1
        lines = done.stdout.split()
        if done.returncode != 0 or not lines or not lines[-1].isdigit():
            return -1
        return int(lines[-1])

    def _wait_nodes(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc, name in ((self.head, "head"), (self.node, "node")):
                if proc is not None and proc.poll() is not None:
                    log = (Path(self.temp_dir) / f"{name}.log").read_text(errors="replace")
                    raise RuntimeError(f"ray {name} exited ({proc.returncode}):\n{log[-2000:]}")
            if self.alive_nodes() >= n:
                return
            time.sleep(1.0)
        raise RuntimeError(f"the Ray cluster did not reach {n} alive nodes in {timeout_s} s")

    def kill_node(self) -> None:
        """Kill the second node at once (SIGKILL to its raylet and its workers).

        Ray starts each worker in a process group of its own, so the group's signal
        alone leaves the node's actors running (and answering) until they notice
        their raylet is gone: they are found in the process tree and killed too.
        """
        if self.node is not None:
            for pid in descendants(self.node.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _kill(self.node)
        self.node = None

    def stop(self) -> None:
        """Kill both nodes and remove the temporary directory."""
        _kill(self.node)
        _kill(self.head)
        self.node = self.head = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = text[text.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
