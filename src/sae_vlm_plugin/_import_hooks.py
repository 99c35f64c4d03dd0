"""Run a callback once a module is imported, without importing it (a post-import hook).

``import sae_vlm_plugin`` must stay cheap, and importing SAELens is not (it pulls transformers,
datasets and torchvision: seconds). Yet SAELens must see what the plugin adds to it whichever
of the two the user imports first. ``when_imported("sae_lens", callback)`` calls ``callback``
right away if ``sae_lens`` is already imported, else right after the ``sae_lens`` package has
finished executing - before the ``import`` statement that triggered it returns, so no user code
can observe SAELens without the plugin's additions.

Mechanism: a finder at the front of ``sys.meta_path`` answers only for the watched names. It
asks the other finders for the real spec and wraps that spec's loader's ``exec_module`` (the
loader instance belongs to that one spec). The callbacks stay pending until a wrapped loader
actually executes the module: ``importlib.util.find_spec`` also asks the finders, and the spec it
gets is never executed, so taking the callbacks at ``find_spec`` time would lose them.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

_PENDING: dict[str, list[Callable[[], None]]] = {}


def when_imported(module_name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` now if ``module_name`` is imported, else once it has been.

    Idempotent: a callback already waiting for ``module_name`` is not added twice. An exception
    raised by the callback propagates out of the ``import`` that triggered it.
    """
    if module_name in sys.modules:
        callback()
        return
    waiting = _PENDING.setdefault(module_name, [])
    if callback not in waiting:
        waiting.append(callback)
    if not any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; hooks the loaders of the modules ``_PENDING`` waits for."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in _PENDING:
            return None
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def execute_then_call_back(module: ModuleType) -> None:
            execute(module)
            for callback in _PENDING.pop(fullname, []):
                callback()

        setattr(spec.loader, "exec_module", execute_then_call_back)  # noqa: B010
        return spec
