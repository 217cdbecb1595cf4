"""Where the course runs: pick a device and make runs repeatable.

`pick_device()` prefers CUDA, then Apple's MPS, then the CPU. The environment variable
``COURSE_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) overrides the choice, so a
learner can force the CPU on a GPU machine and the same notebook still runs.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["pick_device", "seed_everything", "describe_device"]


def pick_device(prefer: str | None = None) -> torch.device:
    """Return the device the course should use: ``COURSE_DEVICE``, else cuda > mps > cpu.

    ``prefer`` overrides the environment variable. A requested device that is not
    available raises ``ValueError`` naming it and what is available.
    """
    wanted = prefer if prefer is not None else os.environ.get("COURSE_DEVICE", "").strip()
    if wanted:
        try:
            device = torch.device(wanted)
        except RuntimeError as err:
            raise ValueError(
                f"COURSE_DEVICE/prefer={wanted!r} is not a device name; expected 'cpu', 'cuda', "
                f"'cuda:N' or 'mps'"
            ) from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"COURSE_DEVICE/prefer={wanted!r} asks for CUDA but torch sees no CUDA GPU; "
                "unset COURSE_DEVICE or set it to 'cpu'"
            )
        if device.type == "mps" and not _mps_available():
            raise ValueError(
                f"COURSE_DEVICE/prefer={wanted!r} asks for MPS but it is not available; "
                "unset COURSE_DEVICE or set it to 'cpu'"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe_device(device: torch.device | None = None) -> str:
    """A one-line human description, e.g. ``'cpu (2 threads)'`` or ``'cuda: NVIDIA H100'``."""
    device = device if device is not None else pick_device()
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) so a run repeats exactly."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
