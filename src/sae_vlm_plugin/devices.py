"""Checking a device name before anything is loaded onto it.

``torch.device("banana")`` raises a RuntimeError, and ``cuda`` on a machine without a GPU fails
only when the first tensor moves there, deep inside a model load. ``check_device`` says either
at once, listing the devices this machine has. Its spelling check imports nothing, so the
command line runs it before importing torch.
"""

from __future__ import annotations

import re
from typing import Any

DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")
DEVICE_SPELLINGS = "cpu, cuda, cuda:N, mps, xpu"


def check_device_name(device: Any) -> None:
    """ValueError unless ``device`` (None: the default) is spelled as a device."""
    if device is not None and not DEVICE_PATTERN.fullmatch(str(device)):
        raise ValueError(f"device {str(device)!r} is not a device; valid: {DEVICE_SPELLINGS}")


def available_devices() -> list[str]:
    """The devices of this machine: ``cpu``, then ``cuda:0`` ... , ``mps``, ``xpu:0`` ..."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def check_device(device: Any) -> None:
    """ValueError unless ``device`` (a name or ``torch.device``; None: the default) is one this
    machine has; a bare ``cuda`` / ``xpu`` needs one device of that kind."""
    check_device_name(device)
    if device is None or str(device) == "cpu":
        return
    name = str(device)
    found = available_devices()
    kind = name.split(":")[0]
    if name in found or (name == kind and any(d.split(":")[0] == kind for d in found)):
        return
    raise ValueError(
        f"device {name!r} is not available on this machine; valid here: {', '.join(found)}"
    )
