"""Where torch work runs: the one reading of a config's device setting (``train.device``,
``impute.device``, ``engine.device``)."""

from __future__ import annotations

from .errors import InputError


def on_cuda(device: object) -> bool:
    """Whether ``device`` (a name, a torch.device or None) is a CUDA device."""
    return bool(device) and str(device).startswith("cuda")


def pick_device(name: str, key: str) -> str:
    """``name`` (cpu, cuda, cuda:N or auto: CUDA when torch sees a GPU) as the device to use. CUDA
    asked for where torch sees none is an error naming the setting ``key``."""
    if name == "cpu":
        return name  # without importing torch, which costs a second of start-up
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        raise InputError(
            "config", f"{key} {name!r} is not a device", "Use cpu, cuda, cuda:N or auto"
        )
    if not torch.cuda.is_available():
        raise InputError(
            "config",
            f"{key} is {name} but torch sees no CUDA device",
            f"Set {key}: cpu (or auto), or run where a GPU is visible",
        )
    return name
