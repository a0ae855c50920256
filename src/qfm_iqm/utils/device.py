"""The compute device a user names, checked before any work: a misspelt name or a device this machine
lacks is a usage error (``ValueError``, one line), not a traceback from deep inside PyTorch."""

from __future__ import annotations

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def usable_device(name: str | torch.device) -> torch.device:
    """The device ``name`` means on this machine: ``auto`` is the first CUDA GPU when there is one, else
    the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` must exist here.

    Raises:
        ValueError: an unknown name, or a device this machine does not have.
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(name)!r}: use {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA support"
            raise ValueError(f"device {str(name)!r}: no CUDA GPU is available on this machine (PyTorch "
                             f"{torch.__version__}, built with {built}); use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(name)!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(name)!r}: Apple's MPS is not available on this machine; use cpu or auto")
    elif device.type != "cpu":
        raise ValueError(f"device {str(name)!r}: not supported; use {DEVICE_CHOICES}")
    return device
