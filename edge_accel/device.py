"""Choose the torch device every edge_accel computation runs on.

The choice comes from the ``[edge] device`` setting: ``"auto"`` takes CUDA when
a usable GPU is present and the CPU otherwise; ``"cpu"`` and ``"cuda"`` force
one. Asking for CUDA on a machine without it is a configuration error, never a
silent fallback, so that a bureau that paid for a GPU notices when it is unused.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import torch

from configs.errors import ConfigError

__all__ = ["DevicePreference", "describe_device", "select_device"]

logger = logging.getLogger(__name__)

DevicePreference = Literal["auto", "cpu", "cuda"]


def select_device(preference: str = "auto") -> torch.device:
    """Return the device to run on.

    Args:
        preference: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or
            ``"cuda"`` (also ``"cuda:N"`` for a specific GPU); normally the
            ``[edge] device`` setting.

    Returns:
        The chosen :class:`torch.device`.

    Raises:
        ConfigError: The preference is unknown, or names CUDA (or a CUDA index)
            that this machine does not have.
    """
    pref = preference.strip().lower()
    if pref == "auto":
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        logger.debug("edge device auto -> %s", device)
        return device
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"[edge] device = {preference!r}, but no CUDA device is usable here "
                f"(torch {torch.__version__}, cuda build: {torch.version.cuda or 'none'}); "
                'set [edge] device = "auto" or "cpu", or install a CUDA build of torch'
            )
        index = 0
        if ":" in pref:
            try:
                index = int(pref.split(":", 1)[1])
            except ValueError as e:
                raise ConfigError(
                    f"[edge] device = {preference!r}: expected 'cuda' or 'cuda:N'"
                ) from e
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(
                f"[edge] device = {preference!r}, but only {torch.cuda.device_count()} "
                "CUDA device(s) are present"
            )
        return torch.device("cuda", index)
    choices = ", ".join(repr(c) for c in get_args(DevicePreference))
    raise ConfigError(f"[edge] device = {preference!r} is not one of {choices}")


def describe_device(device: torch.device) -> str:
    """Return a short human description of ``device`` (for logs and benches)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"
