"""SigLIP (transformers): ``SiglipVisionModel`` and the image side of ``SiglipModel``.

SigLIP has no CLS token (``tokens='cls'`` is refused); its final LayerNorm sees every token and
an attention-pool head (``hook_pooled``) gives the image vector.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sae_vlm_plugin.families._transformers import TransformersVisionFamily


class SiglipImageTower(torch.nn.Module):
    """The image side of a ``SiglipModel`` (its own ``vision_model``, not a copy)."""

    def __init__(self, vision_model: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model

    def forward(self, pixel_values: torch.Tensor) -> Any:
        return self.vision_model(pixel_values=pixel_values)


class SiglipFamily(TransformersVisionFamily):
    name = "siglip"
    description = "transformers SiglipVisionModel, SiglipModel (no CLS token)"
    model_classes = ("SiglipVisionModel", "SiglipModel", "SiglipImageTower")
    load_classes: ClassVar[dict[str, str]] = {
        "siglip": "SiglipVisionModel",
        "siglip_vision_model": "SiglipVisionModel",
    }
    post_norm_names = ("post_layernorm",)
    post_norm_all_tokens = True
    pooled_name = "head"
    cls_token = False

    def vision_root(self, module: Any) -> torch.nn.Module:
        if type(module).__name__ == "SiglipModel":
            return SiglipImageTower(module.vision_model)
        return module

    def image_processor(self, image_size: int) -> Any:
        from transformers import SiglipImageProcessor

        return SiglipImageProcessor(size={"height": image_size, "width": image_size})
