"""What a bug report needs: the versions of the ecosystem the plugin runs in, and the device."""

from __future__ import annotations

import importlib.metadata
import platform

ECOSYSTEM_DISTRIBUTIONS = (
    "sae-vlm-plugin",
    "torch",
    "torchvision",
    "sae-lens",
    "transformer-lens",
    "sae-dashboard",
    "nnsight",
    "transformers",
    "open-clip-torch",
    "timm",
    "numpy",
    "datasets",
    "pyarrow",
)


def library_versions() -> dict[str, str]:
    """Installed version of each distribution in ``ECOSYSTEM_DISTRIBUTIONS`` ("missing" if absent)."""
    versions = {}
    for name in ECOSYSTEM_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def environment_report() -> dict[str, str]:
    """Python, platform, library versions and the accelerator torch sees."""
    import torch

    report = {"python": platform.python_version(), "platform": platform.platform()}
    report.update(library_versions())
    if torch.cuda.is_available():
        report["device"] = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        report["device"] = "cpu"
    report["cpu_threads"] = str(torch.get_num_threads())
    return report
