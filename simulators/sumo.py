"""Where SUMO lives: binaries and tools of the pinned ``eclipse-sumo`` wheel.

Every part of :mod:`simulators` that starts a SUMO tool (``netconvert``,
``sumo``) finds it here, so that the project always runs the pinned version
(see ``pyproject.toml``) and never whatever ``sumo`` happens to be on ``PATH``.
"""

from __future__ import annotations

__all__ = [
    "SUMO_VERSION",
    "sumo_binary",
    "sumo_home",
    "tool_binary",
]

import os
import shutil
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from configs.errors import SimulationError


def _version() -> str:
    try:
        return metadata.version("eclipse-sumo")
    except metadata.PackageNotFoundError:
        return "unknown"


SUMO_VERSION: str = _version()
"""Version of the installed ``eclipse-sumo`` wheel (``"unknown"`` without it)."""


@lru_cache(maxsize=1)
def sumo_home() -> Path:
    """Return SUMO_HOME: the wheel's data directory, else ``$SUMO_HOME``.

    Raises:
        SimulationError: neither the wheel nor ``$SUMO_HOME`` is present.
    """
    try:
        import sumo  # the eclipse-sumo wheel's package

        return Path(sumo.SUMO_HOME)
    except ImportError:
        env = os.environ.get("SUMO_HOME")
        if env and Path(env).is_dir():
            return Path(env)
    raise SimulationError(
        "SUMO is not installed: install the 'eclipse-sumo' wheel pinned in pyproject.toml "
        "(pip install eclipse-sumo==1.28.0) or set SUMO_HOME to a SUMO installation"
    )


def tool_binary(name: str) -> Path:
    """Return the path of a SUMO executable such as ``netconvert`` or ``sumo``.

    Args:
        name: executable name without extension.

    Raises:
        SimulationError: the executable is not part of the installation.
    """
    candidate = sumo_home() / "bin" / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise SimulationError(
        f"SUMO tool {name!r} not found under {sumo_home() / 'bin'}; reinstall eclipse-sumo"
    )


def sumo_binary() -> Path:
    """Return the path of the command-line ``sumo`` simulator."""
    return tool_binary("sumo")
