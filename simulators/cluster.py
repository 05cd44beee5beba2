"""What a Ray cluster's nodes need to run the twin: the scenario's files, shipped once.

A node of a Ray cluster need not share a filesystem with the daemon. The files a
simulation reads (network, routes, detector and other additional files) travel
as one :class:`FileBundle` through Ray's object store, put once per cycle (or
per training run), and each worker writes them to its own node's disk once per
content (:meth:`FileBundle.materialise` is keyed by the files' sha256, so a
worker that already holds this cycle's network writes nothing).

This module is plain data; the Ray calls live with their users
(:mod:`simulators.twin.ray_engine` for the what-if, :mod:`rl.ray_env` for training).
"""

from __future__ import annotations

__all__ = ["FileBundle", "probe_address"]

import hashlib
import os
import socket
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from configs.errors import ConfigError


def probe_address(address: str, timeout_s: float) -> None:
    """Fail fast when nothing listens on a Ray ``host:port`` address (``auto`` is Ray's to find).

    ``ray.init`` against an address with nothing behind it can hang for minutes;
    a plain TCP connection tells within ``timeout_s`` (at most 5 s).

    Raises:
        OSError: nothing accepted the connection (its message names host and port).
    """
    if address == "auto":
        return
    host, port = address.removeprefix("ray://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout_s, 5.0)):
            pass
    except OSError as e:
        raise OSError(f"{host}:{port}: {e or type(e).__name__}") from None


_MAX_BUNDLE_BYTES = 2 * 1024**3
"""A scenario bigger than this is not shipped through the object store (2 GiB)."""


@dataclass(frozen=True)
class FileBundle:
    """Named file contents with their digests.

    Attributes:
        files: the path the daemon knows the file by -> (sha256 hex, content).
    """

    files: Mapping[str, tuple[str, bytes]]

    @classmethod
    def of(cls, paths: Iterable[str | Path]) -> FileBundle:
        """Read ``paths`` (each once, in order).

        Raises:
            ConfigError: a file is missing or unreadable, or the bundle exceeds 2 GiB.
        """
        files: dict[str, tuple[str, bytes]] = {}
        total = 0
        for path in paths:
            key = str(path)
            if key in files:
                continue
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise ConfigError(f"cannot read {path} to ship it to the Ray cluster: {e}") from e
            total += len(data)
            if total > _MAX_BUNDLE_BYTES:
                raise ConfigError(
                    f"the scenario's files exceed {_MAX_BUNDLE_BYTES} bytes at {path}; "
                    "put them on storage every node mounts instead"
                )
            files[key] = (hashlib.sha256(data).hexdigest(), data)
        return cls(files)

    @property
    def digest(self) -> str:
        """sha256 over the names and digests (identifies the bundle)."""
        h = hashlib.sha256()
        for name, (sha, _) in sorted(self.files.items()):
            h.update(f"{name}\0{sha}\n".encode())
        return h.hexdigest()

    def materialise(self, root: Path) -> dict[str, str]:
        """Write the files under ``root`` (once per content); map each name to its copy.

        Each file goes to ``root/<sha256>/<its base name>`` (the base name kept:
        SUMO resolves relative references inside a file against its directory, and
        reads ``.gz`` by suffix). A copy already present is trusted only if its
        size matches; files are written to a temporary name and renamed, so a
        worker killed mid-write never leaves a truncated copy behind.
        """
        out: dict[str, str] = {}
        for name, (sha, data) in self.files.items():
            target = root / sha / Path(name).name
            if not (target.is_file() and target.stat().st_size == len(data)):
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            out[name] = str(target)
        return out
