"""The family registry: built-in adapters plus any a third party registers."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from sae_vlm_plugin.families.base import Preprocessor, VisionFamily

_FAMILIES: dict[str, VisionFamily] = {}
_BUILTINS_LOADED = False

OPEN_CLIP_PREFIXES = ("open_clip:", "hf-hub:")
"""Model names that go to open_clip: ``open_clip:ARCH/PRETRAINED`` or ``hf-hub:ORG/REPO``."""


def is_local_path(name: str) -> bool:
    """Whether a model name means a local directory rather than a hub id (``org/name``) or an
    open_clip spec: it starts with ``.``, ``/`` or ``~``, has more than one ``/``, or its first
    path component exists here."""
    if name.startswith(OPEN_CLIP_PREFIXES):
        return False
    first = name.split("/", 1)[0]
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(first).exists()


def model_reference(name: str, *, strict: bool = True) -> str:
    """How a model name is recorded (``cache.json``, SAE metadata) so that it loads the same
    model from any directory: a local path becomes absolute; hub ids, open_clip specs and the
    shipped toy names stay as given.

    A local path that does not exist raises ``FileNotFoundError`` (else transformers would try
    it on the hub and report a connection error); with ``strict=False`` it is returned as
    given (a name recorded elsewhere, whose directory may have moved)."""
    from sae_vlm_plugin.families.toy_models import TOY_MODELS

    if name in TOY_MODELS or not is_local_path(name):
        return name
    path = Path(name).expanduser()
    if not path.exists():
        if strict:
            raise FileNotFoundError(f"no such directory: {name}")
        return name
    return str(path.resolve())


def _ensure_builtins() -> None:
    """Register the built-in families on first use (not at import: they are cheap, but the
    registry stays empty until someone asks, so importing the package registers nothing here)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from sae_vlm_plugin.families import aimv2, clip, llava, open_clip, siglip, webssl

    # LLaVA first: its vision tower is a CLIP build and must not be mistaken for one.
    for family in (
        llava.LlavaFamily(tower_family=detect_family),
        clip.ClipFamily(),
        siglip.SiglipFamily(),
        aimv2.Aimv2Family(),
        webssl.WebSslMaeFamily(),
        webssl.WebSslDinoFamily(),
        open_clip.OpenClipFamily(),
    ):
        register_family(family)


def register_family(family: VisionFamily) -> VisionFamily:
    """Add a family adapter; a name already registered raises ``ValueError``."""
    if not isinstance(family, VisionFamily):
        raise TypeError(f"expected a VisionFamily instance, got {type(family).__name__}")
    _ensure_builtins()
    if family.name in _FAMILIES:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def list_families() -> dict[str, str]:
    """Registered family names with a one-line description of the builds each covers."""
    _ensure_builtins()
    return {name: family.description for name, family in _FAMILIES.items()}


def get_family(name: str) -> VisionFamily:
    """The family registered as ``name``; unknown names raise, listing the known ones."""
    _ensure_builtins()
    if name not in _FAMILIES:
        close = difflib.get_close_matches(name, _FAMILIES, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model family {name!r}{hint}; known: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def detect_family(module: torch.nn.Module) -> VisionFamily:
    """The first registered family whose ``matches`` accepts ``module``."""
    _ensure_builtins()
    for family in _FAMILIES.values():
        if family.matches(module):
            return family
    raise ValueError(
        f"no registered model family recognises a {type(module).__name__}; known families: "
        + "; ".join(f"{name} ({family.description})" for name, family in _FAMILIES.items())
        + ". Pass family=... or register one with sae_vlm_plugin.register_family()."
    )


def load_by_name(
    name: str, family: str | None = None, **kwargs: Any
) -> tuple[torch.nn.Module, Preprocessor, VisionFamily]:
    """Load a hub id / local checkpoint with the family that handles it.

    open_clip names start with ``open_clip:`` or ``hf-hub:``; anything else is a transformers
    checkpoint whose ``config.model_type`` picks the family. The shipped toy models load by
    their registered names (``"toy-clip"``, see ``sae_vlm_plugin.families.toy_models``).
    """
    from sae_vlm_plugin.families.toy_models import resolve_model_name

    name = resolve_model_name(model_reference(name))
    chosen = get_family(family) if family is not None else family_for_model(name)
    module, preprocess = chosen.load(name, **kwargs)
    return module, preprocess, chosen


def family_for_model(name: str) -> VisionFamily:
    """The family that loads the model ``name``, from its name or config alone (no weights).

    open_clip names start with ``open_clip:`` or ``hf-hub:``; anything else is a transformers
    checkpoint whose ``config.model_type`` picks the family (the toy names resolve first).
    """
    from sae_vlm_plugin.families.toy_models import resolve_model_name

    _ensure_builtins()
    name = resolve_model_name(model_reference(name))
    if name.startswith(OPEN_CLIP_PREFIXES):
        return get_family("open_clip")
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(name).model_type
    candidates = [f for f in _FAMILIES.values() if model_type in f.model_types]
    if not candidates:
        supported = sorted({t for f in _FAMILIES.values() for t in f.model_types})
        raise ValueError(
            f"{name!r} is a transformers {model_type!r} model, which no registered family "
            f"loads; supported model types: {', '.join(supported)}"
        )
    return candidates[0]
