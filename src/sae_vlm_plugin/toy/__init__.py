"""The toy world: procedural concept images with a known taxonomy and captions, and the small
models trained on it that ship with the package (a CLIP with both towers, a LLaVA on top of
its vision tower).

- ``world_images(n, seed)``: images and their ``WorldObject`` (shape, colour, texture, size);
  ``taxonomy()`` the family -> shape -> colour -> texture tree; ``caption(obj)`` the templated
  caption, ``attribute_prompt`` the one-attribute prompts used for zero-shot classification.
- ``load_toy_clip()``: the trained ``CLIPModel`` and its processor; ``VisionModel("toy-clip")``
  wraps its image tower like any hub checkpoint; ``toy_model_path("toy-clip")`` is its
  ``save_pretrained`` directory.
- ``load_toy_llava()``: the trained ``LlavaForConditionalGeneration`` and its processor
  (``VisionModel("toy-llava")``), which describes the image and answers about it.
- ``python -m sae_vlm_plugin.toy.train`` retrains the shipped weights (``clip_training.py``,
  ``llava_training.py``).
"""

from sae_vlm_plugin.families.toy_models import (
    TOY_MODELS,
    load_toy_clip,
    load_toy_llava,
    toy_model_path,
)
from sae_vlm_plugin.toy.world import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    COLOURS,
    IMAGE_SIZE,
    SHAPE_FAMILIES,
    SHAPES,
    SIZES,
    TEXTURES,
    WorldObject,
    all_objects,
    attribute_prompt,
    caption,
    taxonomy,
    world_image,
    world_images,
)

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_VALUES",
    "COLOURS",
    "IMAGE_SIZE",
    "SHAPES",
    "SHAPE_FAMILIES",
    "SIZES",
    "TEXTURES",
    "TOY_MODELS",
    "WorldObject",
    "all_objects",
    "attribute_prompt",
    "caption",
    "load_toy_clip",
    "load_toy_llava",
    "taxonomy",
    "toy_model_path",
    "world_image",
    "world_images",
]
