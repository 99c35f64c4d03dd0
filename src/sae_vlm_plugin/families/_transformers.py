"""Shared machinery for transformers vision towers (CLIP, SigLIP, AIMv2, ViT, DINOv2).

Paths are found by structure, not by transformers version: the vision module is the shallowest
module with an ``encoder`` holding a ``layers`` / ``layer`` ModuleList (``vision_model`` in
transformers 4.x, the root itself in 5.x's flattened layouts and in AIMv2 / ViT / DINOv2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from sae_vlm_plugin.families.base import (
    Preprocessor,
    VisionFamily,
    join,
    module_at,
)
from sae_vlm_plugin.hooks import HookPoint, block_hook_name

BLOCK_LIST_NAMES = ("layers", "layer")


class ImageProcessorPreprocessor:
    """A transformers image processor as a ``Preprocessor``. PIL images are height x width x
    channels, which it is told: left to guess, it takes an image 1 or 3 pixels tall for a
    channels-first array (a 48x3 red image came out black, a 1x1 image raised)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.processor(
            images=list(images), return_tensors="pt", input_data_format="channels_last"
        )["pixel_values"]

    def __repr__(self) -> str:
        return f"ImageProcessorPreprocessor({type(self.processor).__name__})"


def find_vision_path(root: Any) -> str:
    """Dotted path of the shallowest module that has ``encoder.layers`` (or ``encoder.layer``)."""
    candidates = []
    for path, module in root.named_modules():
        encoder = getattr(module, "encoder", None)
        if isinstance(encoder, torch.nn.Module) and any(
            isinstance(getattr(encoder, n, None), torch.nn.ModuleList) for n in BLOCK_LIST_NAMES
        ):
            candidates.append(path)
    if not candidates:
        raise ValueError(f"{type(root).__name__} has no encoder.layers: not a ViT-style tower")
    return min(candidates, key=lambda p: (p.count(".") if p else -1, p))


def vision_config(root: Any, vision_path: str) -> Any:
    """The vision config (``hidden_size``, ``image_size`` ...) of a tower."""
    config = getattr(module_at(root, vision_path), "config", None) or root.config
    return getattr(config, "vision_config", config)


class TransformersVisionFamily(VisionFamily):
    """A transformers ViT-style vision tower, described by a few class attributes."""

    model_classes: ClassVar[tuple[str, ...]]
    """transformers class names that are builds of this family."""
    load_classes: ClassVar[dict[str, str]]
    """``config.model_type`` -> class loaded for it by hub id / path."""
    post_norm_names: ClassVar[tuple[str, ...]]
    """Candidate names (under the vision module) of the final norm."""
    post_norm_all_tokens: ClassVar[bool]
    """Whether the final norm sees every token (False: CLIP norms only the pooled CLS)."""
    pooled_name: ClassVar[str | None] = None
    """Name (under the vision module) of an attention-pool head."""
    projection_name: ClassVar[str | None] = None
    """Name (under the root) of the projection producing ``image_embeds``."""
    cls_token: ClassVar[bool]

    @property
    def model_types(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.load_classes)

    def matches(self, module: torch.nn.Module) -> bool:
        return type(module).__name__ in self.model_classes

    def blocks_path(self, root: Any) -> str:
        vision = find_vision_path(root)
        encoder = module_at(root, join(vision, "encoder"))
        name = next(
            n
            for n in BLOCK_LIST_NAMES
            if isinstance(getattr(encoder, n, None), torch.nn.ModuleList)
        )
        return join(vision, "encoder", name)

    def n_prefix_tokens(self, root: Any) -> int:
        if not self.cls_token:
            return 0
        config = vision_config(root, find_vision_path(root))
        return 1 + int(getattr(config, "num_register_tokens", 0) or 0)

    def _optional(self, root: Any, base: str, names: Sequence[str | None]) -> str | None:
        for name in names:
            if name and isinstance(getattr(module_at(root, base), name, None), torch.nn.Module):
                return join(base, name)
        return None

    def hook_points(self, root: Any) -> dict[str, HookPoint]:
        vision = find_vision_path(root)
        blocks = self.blocks_path(root)
        d_model = int(vision_config(root, vision).hidden_size)
        n_layers = len(module_at(root, blocks))
        n_prefix = self.n_prefix_tokens(root)
        hooks = {
            block_hook_name(layer): HookPoint(
                block_hook_name(layer),
                join(blocks, str(layer)),
                d_model,
                True,
                layer,
                n_prefix_tokens=n_prefix,
                has_cls=self.cls_token,
            )
            for layer in range(n_layers)
        }
        post_norm = self._optional(root, vision, self.post_norm_names)
        if post_norm is not None:
            hooks["hook_post_norm"] = HookPoint(
                "hook_post_norm",
                post_norm,
                d_model,
                self.post_norm_all_tokens,
                n_layers,
                n_prefix_tokens=n_prefix if self.post_norm_all_tokens else 0,
                has_cls=self.cls_token and self.post_norm_all_tokens,
            )
        pooled = self._optional(root, vision, [self.pooled_name])
        if pooled is not None:
            hooks["hook_pooled"] = HookPoint("hook_pooled", pooled, d_model, False, n_layers + 1)
        projection = self._optional(root, "", [self.projection_name])
        if projection is not None:
            d_embed = int(module_at(root, projection).out_features)
            hooks["hook_image_embeds"] = HookPoint(
                "hook_image_embeds", projection, d_embed, False, n_layers + 2
            )
        return hooks

    def aliases(self, root: Any) -> dict[str, str]:
        vision = find_vision_path(root)
        names = {self.blocks_path(root): "blocks"}
        post_norm = self._optional(root, vision, self.post_norm_names)
        if post_norm is not None:
            names[post_norm] = "post_norm"
        return names

    def load(self, name: str, **kwargs: Any) -> tuple[torch.nn.Module, Preprocessor]:
        import transformers

        config = transformers.AutoConfig.from_pretrained(name)
        if config.model_type not in self.load_classes:
            raise ValueError(
                f"the {self.name} family loads model types {', '.join(self.load_classes)}; "
                f"{name!r} is a {config.model_type!r} model"
            )
        # A checkpoint saved from one of the vision classes loads as that class (a saved
        # CLIPVisionModelWithProjection keeps its projection); a full model loads its vision side.
        architecture = (config.architectures or [None])[0]
        class_name = (
            architecture
            if architecture in self.load_classes.values()
            else self.load_classes[config.model_type]
        )
        model_class = getattr(transformers, class_name)
        module = model_class.from_pretrained(name, **kwargs).eval()
        # The PIL-based processor the checkpoint was saved with (and the reference used); saying
        # so also silences transformers' notice that fast processors become the default.
        processor = transformers.AutoImageProcessor.from_pretrained(name, use_fast=False)
        return module, ImageProcessorPreprocessor(processor)

    def default_preprocessor(self, root: Any) -> Preprocessor:
        config = vision_config(root, find_vision_path(root))
        return ImageProcessorPreprocessor(self.image_processor(int(config.image_size)))

    def image_processor(self, image_size: int) -> Any:
        """The family's standard transformers image processor at ``image_size``."""
        raise NotImplementedError
