"""The shipped toy models, by name or directory.

``VisionModel("toy-clip")`` loads the trained toy CLIP through the same code path as a hub
checkpoint (``transformers`` ``from_pretrained`` on its directory); ``toy_model_path`` gives
the directory for plain ``transformers.CLIPModel.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
TOY_MODELS: dict[str, str] = {"toy-clip": "clip"}
"""Registered toy model names -> their directory under ``WEIGHTS_DIR``."""


def toy_model_path(name: str) -> Path:
    """The directory of a shipped toy model; unknown names raise, listing the known ones."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; known: {', '.join(TOY_MODELS)}")
    path = WEIGHTS_DIR / TOY_MODELS[name]
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path} holds no toy model; retrain it with `python -m sae_vlm_plugin.toy.train`"
        )
    return path


def resolve_model_name(name: str) -> str:
    """A toy model name becomes its directory; any other name is returned unchanged."""
    return str(toy_model_path(name)) if name in TOY_MODELS else name


def load_toy_clip() -> tuple[object, object]:
    """``(CLIPModel, CLIPProcessor)`` of the shipped toy CLIP (both towers)."""
    from transformers import CLIPModel, CLIPProcessor

    path = toy_model_path("toy-clip")
    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
