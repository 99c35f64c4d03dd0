"""Lazy package exports: a package lists ``{name: module}`` and imports the module on first use.

Each package keeps its own module-level ``__getattr__`` (so type checkers see it) and calls
``lazy_attribute`` from it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, MutableMapping
from typing import Any


def lazy_attribute(
    package: str, exports: Mapping[str, str], name: str, namespace: MutableMapping[str, Any]
) -> Any:
    """``name`` imported from the module ``exports[name]``, then cached in ``namespace`` (the
    package's ``globals()``) so the next access skips this; AttributeError for other names."""
    module_name = exports.get(name)
    if module_name is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    namespace[name] = value
    return value
