"""The one place for workarounds of dependency bugs. Each is applied explicitly, never at import.

``datasets`` 3.x formats torch columns by checking ``isinstance(value, torchvision.io.VideoReader)``
whenever torchvision is imported, but torchvision >= 0.28 removed ``VideoReader``, so
``Dataset.set_format("torch")`` (which SAELens' ``ActivationsStore`` calls) raises ``ImportError``.
The fix gives ``torchvision.io`` a placeholder class that nothing is an instance of, which is
exactly the behaviour datasets had before the removal. ``patch_numpy_trapezoid`` gives numpy < 2
the name its integration function has in numpy 2.
"""

from __future__ import annotations

import sys


class _NoVideoReader:
    """Stand-in for the removed ``torchvision.io.VideoReader``; never instantiated."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("torchvision.io.VideoReader was removed in torchvision 0.28")


def patch_datasets_torch_formatting() -> bool:
    """Let ``datasets`` 3.x torch-format columns when torchvision >= 0.28 is imported.

    Returns True if the placeholder was installed, False if nothing needed fixing (torchvision
    not imported, or it still has ``VideoReader``). Safe to call any number of times.
    """
    if "torchvision" not in sys.modules:
        return False
    import torchvision.io as torchvision_io

    if hasattr(torchvision_io, "VideoReader"):
        return False
    torchvision_io.VideoReader = _NoVideoReader
    return True


def patch_numpy_trapezoid() -> bool:
    """Give numpy < 2 the name ``numpy.trapezoid``, which numpy 2.0 gave ``numpy.trapz`` (the
    same function; ViSAEBench's ``sparse_probing`` calls it, and this install keeps numpy < 2:
    see the README's installation notes). Returns True if the alias was added, False if numpy
    already has it. Safe to call any number of times."""
    import numpy

    if hasattr(numpy, "trapezoid"):
        return False
    numpy.trapezoid = numpy.trapz  # type: ignore[attr-defined]  # noqa: NPY201 (numpy < 2 only)
    return True
