"""The shipped toy models' names, and where their weights live.

Lower floors (the family registry, SAE loading, naming, steering) resolve the names
``"toy-clip"`` / ``"toy-llava"`` here, without importing the toy world (``sae_vlm_plugin.toy``)
that sits above them; the weights themselves stay in ``toy/weights``.

``VisionModel("toy-clip")`` and ``VisionModel("toy-llava")`` load the trained toy models
through the same code path as a hub checkpoint (``transformers`` ``from_pretrained`` on their
directory); ``toy_model_path`` gives the directory for plain
``transformers.CLIPModel.from_pretrained`` / ``LlavaForConditionalGeneration.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).parents[1] / "toy" / "weights"
TOY_MODELS: dict[str, str] = {"toy-clip": "clip", "toy-llava": "llava"}
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


def load_toy_clip() -> tuple[Any, Any]:
    """``(CLIPModel, CLIPProcessor)`` of the shipped toy CLIP (both towers)."""
    from transformers import CLIPModel, CLIPProcessor

    path = toy_model_path("toy-clip")
    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)


def load_toy_llava() -> tuple[Any, Any]:
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` of the shipped toy LLaVA."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    path = toy_model_path("toy-llava")
    return (
        LlavaForConditionalGeneration.from_pretrained(path).eval(),
        LlavaProcessor.from_pretrained(path),
    )
