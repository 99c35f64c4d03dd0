"""open_clip builds: its own ViT (``visual.transformer.resblocks``; CLIP, EVA-less ViT models)
and timm trunks (``visual.trunk.blocks``; the ``*-SigLIP*`` models, no CLS token).

The plugin wraps ``model.visual``, whose forward is ``encode_image`` without normalisation, so
``hook_image_embeds`` is the vision tower's output. ``visual.proj`` is a parameter, not a
module, so the projection has no hook of its own.

Load by name with ``open_clip:ARCH/PRETRAINED`` (e.g. ``open_clip:ViT-L-14-336/openai``) or
``hf-hub:ORG/REPO`` (e.g. ``hf-hub:timm/ViT-SO400M-14-SigLIP-384``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from sae_vlm_plugin.families.base import Preprocessor, VisionFamily, module_at
from sae_vlm_plugin.hooks import HookPoint, block_hook_name

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class TransformPreprocessor:
    """A per-image open_clip / torchvision transform as a batch ``Preprocessor``."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])


def _is_timm(root: Any) -> bool:
    return hasattr(root, "trunk")


class OpenClipFamily(VisionFamily):
    name = "open_clip"
    description = "open_clip ViT models (visual.transformer) and timm-trunk models such as SigLIP"

    def matches(self, module: torch.nn.Module) -> bool:
        if not type(module).__module__.startswith("open_clip"):
            return False
        root = self.vision_root(module)
        return hasattr(root, "trunk") or hasattr(getattr(root, "transformer", None), "resblocks")

    def vision_root(self, module: Any) -> torch.nn.Module:
        visual = getattr(module, "visual", None)
        return visual if isinstance(visual, torch.nn.Module) else module

    def blocks_path(self, root: Any) -> str:
        return "trunk.blocks" if _is_timm(root) else "transformer.resblocks"

    def _has_cls(self, root: Any) -> bool:
        if _is_timm(root):
            return getattr(root.trunk, "cls_token", None) is not None
        return hasattr(root, "class_embedding")

    def _n_prefix_tokens(self, root: Any) -> int:
        if _is_timm(root):
            return int(getattr(root.trunk, "num_prefix_tokens", int(self._has_cls(root))))
        return 1

    def forward_inputs(
        self, root: Any, pixel_values: torch.Tensor
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (pixel_values,), {}

    def hook_points(self, root: Any) -> dict[str, HookPoint]:
        blocks = self.blocks_path(root)
        n_layers = len(module_at(root, blocks))
        if _is_timm(root):
            trunk = root.trunk
            d_model = int(trunk.embed_dim)
            token_major = False
            post_norm, post_norm_tokens = ("trunk.norm", True)
            pooled = "trunk.attn_pool" if getattr(trunk, "attn_pool", None) is not None else None
        else:
            d_model = int(root.transformer.width)
            token_major = not getattr(root.transformer, "batch_first", True)
            no_pool_before_norm = root.attn_pool is None and not root.final_ln_after_pool
            post_norm, post_norm_tokens = ("ln_post", no_pool_before_norm)
            pooled = None
        n_prefix, has_cls = self._n_prefix_tokens(root), self._has_cls(root)
        hooks = {
            block_hook_name(layer): HookPoint(
                block_hook_name(layer),
                f"{blocks}.{layer}",
                d_model,
                True,
                layer,
                token_major=token_major,
                n_prefix_tokens=n_prefix,
                has_cls=has_cls,
            )
            for layer in range(n_layers)
        }
        hooks["hook_post_norm"] = HookPoint(
            "hook_post_norm",
            post_norm,
            d_model,
            post_norm_tokens,
            n_layers,
            n_prefix_tokens=n_prefix if post_norm_tokens else 0,
            has_cls=has_cls and post_norm_tokens,
        )
        if pooled is not None:
            hooks["hook_pooled"] = HookPoint("hook_pooled", pooled, d_model, False, n_layers + 1)
        hooks["hook_image_embeds"] = HookPoint(
            "hook_image_embeds", "", self._embed_dim(root), False, n_layers + 2
        )
        return hooks

    def _embed_dim(self, root: Any) -> int:
        if not _is_timm(root):
            return int(root.output_dim)
        for module in reversed(list(root.head.modules())):
            if isinstance(module, torch.nn.Linear):
                return int(module.out_features)
        return int(root.trunk.num_features)

    def aliases(self, root: Any) -> dict[str, str]:
        return {
            self.blocks_path(root): "blocks",
            "trunk.norm" if _is_timm(root) else "ln_post": "post_norm",
        }

    def load(self, name: str, **kwargs: Any) -> tuple[torch.nn.Module, Preprocessor]:
        import open_clip

        if name.startswith("open_clip:"):
            arch, _, pretrained = name[len("open_clip:") :].partition("/")
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained or None, **kwargs
            )
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
        return model.eval(), TransformPreprocessor(preprocess)

    def default_preprocessor(self, root: Any) -> Preprocessor:
        import open_clip

        size = root.image_size
        mean, std = (SIGLIP_MEAN, SIGLIP_STD) if _is_timm(root) else (OPENAI_MEAN, OPENAI_STD)
        return TransformPreprocessor(
            open_clip.image_transform(size, is_train=False, mean=mean, std=std)
        )
