"""The content hash of what determines the shipped toy models (their recipe).

``python -m sae_vlm_plugin.toy.train`` records ``recipe_sha256(model)`` in each model's
``training.json``; ``tests/toy/test_toy.py`` recomputes it and fails, naming the command to retrain,
when the training code, the world or the recipe changed since the weights were trained. The
slow retraining test runs only then (or when asked for), so CI does not retrain on every run.

What is hashed, per model (``RECIPE_SOURCES`` and ``_llava_imported_values``):

- ``clip``: the files ``toy/world.py`` (images, objects, captions, caption vocabulary),
  ``toy/tokenizer.py``, ``toy/clip_training.py`` (``ToyClipTraining``'s settings, loss,
  schedule, evaluation) and ``toy/train.py`` (which settings run, what is saved and how, the
  model card);
- ``llava``: the CLIP's files (its vision tower is the shipped CLIP's), ``toy/llava_training.py``,
  and the values it takes from outside ``toy/``: ``steering.evaluation``'s ``DESCRIBE_PROMPT``,
  ``ONE_WORD_PROMPT``, ``INSERTION_PROMPTS`` and ``white_image(IMAGE_SIZE)``'s pixels. Those are
  hashed as values, not as the file they live in, so that other edits of that module (or a move
  of the names) do not mark the weights stale.

Not hashed, as no change there alters training: ``families/toy_models.py`` and ``toy/__init__.py``
(loading and names), ``metrics/hierarchy.py`` (``taxonomy()`` only, which training never calls).
The installed libraries (torch, transformers, tokenizers, Pillow) are not package sources;
``training.json`` records the torch version that trained.

Files are hashed by their path relative to the package and their text with line endings
normalised to ``\\n``: the same digest on every machine and clone (no mtimes, no absolute paths).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CLIP_SOURCES: tuple[str, ...] = (
    "toy/world.py",
    "toy/tokenizer.py",
    "toy/clip_training.py",
    "toy/train.py",
)
RECIPE_SOURCES: dict[str, tuple[str, ...]] = {
    "clip": CLIP_SOURCES,
    "llava": (*CLIP_SOURCES, "toy/llava_training.py"),
}
"""Per shipped toy model (its directory under ``toy/weights``), the package files, relative to
the package directory, whose content determines it."""
RETRAIN_COMMAND: dict[str, str] = {
    "clip": "python -m sae_vlm_plugin.toy.train",
    "llava": "python -m sae_vlm_plugin.toy.train --only llava",
}
"""The command that retrains a model when only its own recipe is stale (a stale CLIP needs both
retrained: the LLaVA's vision tower is the CLIP's)."""


def _llava_imported_values() -> bytes:
    """The values the LLaVA recipe takes from ``steering.evaluation``, serialised."""
    from sae_vlm_plugin.steering.evaluation import (
        DESCRIBE_PROMPT,
        INSERTION_PROMPTS,
        ONE_WORD_PROMPT,
        white_image,
    )
    from sae_vlm_plugin.toy.world import IMAGE_SIZE

    blank = white_image(IMAGE_SIZE)
    prompts = [DESCRIBE_PROMPT, ONE_WORD_PROMPT, list(INSERTION_PROMPTS)]
    header = json.dumps({"prompts": prompts, "white_image": [blank.mode, list(blank.size)]})
    return header.encode() + b"\0" + blank.tobytes()


def recipe_sha256(model: str) -> str:
    """The hex sha256 of ``model``'s recipe (``"clip"`` or ``"llava"``), as the module docstring
    lists it: each file as its relative path, its normalised text's length and the text."""
    if model not in RECIPE_SOURCES:
        raise ValueError(f"unknown toy model {model!r}; known: {', '.join(RECIPE_SOURCES)}")
    digest = hashlib.sha256()
    for name in RECIPE_SOURCES[model]:
        text = (PACKAGE_DIR / name).read_text(encoding="utf-8")
        content = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
        digest.update(f"{name}\0{len(content)}\0".encode())
        digest.update(content)
    if model == "llava":
        values = _llava_imported_values()
        digest.update(f"steering.evaluation values\0{len(values)}\0".encode())
        digest.update(values)
    return digest.hexdigest()
