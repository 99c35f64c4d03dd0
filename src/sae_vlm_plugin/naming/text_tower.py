"""A CLIP-family model's two towers: text embeddings of concept words, and the image side of the
same model as a ``VisionModel`` whose hook gives the image embedding in the shared space.

Supported: transformers ``CLIPModel`` (image side ``hook_image_embeds``) and ``SiglipModel``
(``hook_pooled``), open_clip CLIPs (``hook_image_embeds``), and the shipped ``toy-clip``. A
concept's embedding over prompt templates is CLIP's zero-shot ensemble: the mean of the unit
text embeddings of ``template.format(word)``, renormalised. The default template is the bare
word, as in the paper's steering score (``steering_score.py`` embeds each label alone).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

DEFAULT_TEMPLATES: tuple[str, ...] = ("{}",)
IMAGE_HOOKS = {
    "clip": "hook_image_embeds",
    "siglip": "hook_pooled",
    "open_clip": "hook_image_embeds",
}
"""Per family, the hook of the image embedding in the space the text tower embeds into."""
TEXT_MODEL_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
"""transformers ``config.model_type`` -> the two-tower class loaded for it."""


@dataclass
class TextTower:
    """The text tower of ``name`` and the image side of the same model."""

    name: str
    """What loads it again (hub id, ``open_clip:ARCH/PRETRAINED``, ``toy-clip``)."""
    encode: Callable[[list[str]], Tensor]
    """``texts -> (n, d)`` raw text embeddings."""
    image_model: Any
    """A ``VisionModel`` of the same model's image tower."""
    image_hook: str
    """The hook of ``image_model`` whose vector shares the text embeddings' space."""
    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    def embed(self, words: Sequence[str], batch_size: int = 256) -> Tensor:
        """``(len(words), d)`` unit concept embeddings, ensembled over ``templates``."""
        if not words:
            raise ValueError("no words to embed")
        for template in self.templates:
            if "{}" not in template:
                raise ValueError(f"template {template!r} has no '{{}}' for the concept word")
        total: Tensor | None = None
        for template in self.templates:
            texts = [template.format(word) for word in words]
            with torch.no_grad():
                parts = [
                    self.encode(texts[i : i + batch_size]).float().cpu()
                    for i in range(0, len(texts), batch_size)
                ]
            unit = torch.nn.functional.normalize(torch.cat(parts), dim=-1)
            total = unit if total is None else total + unit
        assert total is not None
        return torch.nn.functional.normalize(total, dim=-1)


def load_text_tower(
    model: str | Any,
    *,
    tokenizer: Any = None,
    templates: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> TextTower:
    """The ``TextTower`` of a CLIP-family model.

    ``model``: a hub id or folder of a transformers CLIP / SigLIP, ``open_clip:ARCH/PRETRAINED``
    or ``hf-hub:ORG/REPO``, ``toy-clip``; or a built two-tower module (``CLIPModel``,
    ``SiglipModel``, open_clip ``CLIP``) with its ``tokenizer``.

    Raises:
        ValueError: a model without a text tower (a vision-only checkpoint, AIMv2, DINOv2 ...).
    """
    from sae_vlm_plugin.families.registry import OPEN_CLIP_PREFIXES, model_reference
    from sae_vlm_plugin.model import VisionModel

    chosen = tuple(templates) if templates is not None else DEFAULT_TEMPLATES
    if isinstance(model, str):
        name = model_reference(model)  # the name VisionModel gives the same checkpoint
        if name.startswith(OPEN_CLIP_PREFIXES):
            module, preprocess, tokenizer = _load_open_clip(name)
        else:
            module, preprocess, tokenizer = _load_transformers(name)
    else:
        if tokenizer is None:
            raise ValueError("a built model needs its tokenizer: pass tokenizer=")
        module, preprocess = model, None
        name = (
            getattr(getattr(module, "config", None), "_name_or_path", "") or type(module).__name__
        )
    encode_text = _text_encoder(module, tokenizer)
    module.eval()
    if device is not None:
        module.to(device)
    image_model = VisionModel(module, preprocess=preprocess)
    family = image_model.family.name
    if family not in IMAGE_HOOKS:
        raise ValueError(
            f"{name} ({family}) has no text tower; name a CLIP-family model "
            f"({', '.join(IMAGE_HOOKS)}), e.g. openai/clip-vit-base-patch32"
        )
    return TextTower(name, encode_text, image_model, IMAGE_HOOKS[family], chosen)


def _load_transformers(name: str) -> tuple[Any, Any, Any]:
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    from sae_vlm_plugin.families._transformers import ImageProcessorPreprocessor
    from sae_vlm_plugin.families.toy_models import resolve_model_name

    path = resolve_model_name(name)
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in TEXT_MODEL_TYPES:
        raise ValueError(
            f"{name!r} is a transformers {model_type!r} model, which has no text tower; text "
            f"towers come from {', '.join(TEXT_MODEL_TYPES)} checkpoints or open_clip:ARCH/PRETRAINED"
        )
    module = AutoModel.from_pretrained(path)
    if type(module).__name__ != TEXT_MODEL_TYPES[model_type]:
        raise ValueError(f"{name!r} loaded as {type(module).__name__}, not a two-tower model")
    processor = AutoImageProcessor.from_pretrained(path, use_fast=False)  # as VisionModel's
    preprocess = ImageProcessorPreprocessor(processor)
    return module, preprocess, AutoTokenizer.from_pretrained(path)


def _load_open_clip(name: str) -> tuple[Any, Any, Any]:
    import open_clip

    from sae_vlm_plugin.families.registry import get_family

    module, preprocess = get_family("open_clip").load(name)
    arch = name[len("open_clip:") :].partition("/")[0] if name.startswith("open_clip:") else name
    return module, preprocess, open_clip.get_tokenizer(arch)


def _text_encoder(module: Any, tokenizer: Any) -> Callable[[list[str]], Tensor]:
    """``texts -> raw embeddings`` for a transformers two-tower model or an open_clip CLIP."""
    if hasattr(module, "get_text_features"):
        # SigLIP was trained on text padded to its full length; CLIP pools at the EOS token.
        siglip = type(module).__name__.startswith("Siglip")
        padding = "max_length" if siglip else True
        context = module.config.text_config.max_position_embeddings  # 77 for CLIP

        def encode_transformers(texts: list[str]) -> Tensor:
            for text, ids in zip(texts, tokenizer(texts)["input_ids"], strict=True):
                if len(ids) > context:  # the tower cannot read it whole: say which text
                    raise ValueError(
                        f"{text!r} is {len(ids)} tokens long, but the text tower reads at most "
                        f"{context} tokens; shorten it"
                    )
            # Nothing is longer than the tower reads (refused above), so only SigLIP, padded to
            # its full length, truncates (a tokenizer without a model_max_length, as the toy
            # CLIP's, would warn at every call that it cannot truncate)
            inputs = tokenizer(texts, padding=padding, truncation=siglip, return_tensors="pt")
            device = next(module.parameters()).device
            return module.get_text_features(**{k: v.to(device) for k, v in inputs.items()})

        return encode_transformers
    if hasattr(module, "encode_text"):

        def encode_open_clip(texts: list[str]) -> Tensor:
            device = next(module.parameters()).device
            return module.encode_text(tokenizer(texts).to(device))

        return encode_open_clip
    raise ValueError(
        f"{type(module).__name__} has no text tower (neither get_text_features nor encode_text)"
    )
