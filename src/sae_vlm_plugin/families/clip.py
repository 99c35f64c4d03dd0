"""CLIP (transformers): ``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, ``CLIPModel``.

CLIP's final LayerNorm (``post_layernorm``) sees only the pooled CLS token, so ``hook_post_norm``
is one vector per image; ``hook_image_embeds`` is ``visual_projection(post_layernorm(CLS))``,
the paper's "last" layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from sae_vlm_plugin.families._transformers import TransformersVisionFamily


class ClipImageTower(torch.nn.Module):
    """The image side of a ``CLIPModel``: the same submodules, run on pixels alone.

    ``forward(pixel_values) = visual_projection(vision_model(pixel_values).pooler_output)``
    (``CLIPModel.get_image_features``). It holds the model's own modules, not copies.
    """

    def __init__(self, vision_model: torch.nn.Module, visual_projection: torch.nn.Module) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.visual_projection(pooled)


class ClipFamily(TransformersVisionFamily):
    name = "clip"
    description = "transformers CLIPVisionModel, CLIPVisionModelWithProjection, CLIPModel"
    model_classes = (
        "CLIPVisionModel",
        "CLIPVisionModelWithProjection",
        "CLIPModel",
        "ClipImageTower",
    )
    load_classes: ClassVar[dict[str, str]] = {
        "clip": "CLIPVisionModelWithProjection",
        "clip_vision_model": "CLIPVisionModel",
    }
    post_norm_names = ("post_layernorm",)
    post_norm_all_tokens = False
    projection_name = "visual_projection"
    cls_token = True

    def vision_root(self, module: Any) -> torch.nn.Module:
        if type(module).__name__ == "CLIPModel":
            return ClipImageTower(module.vision_model, module.visual_projection)
        return module

    def image_processor(self, image_size: int) -> Any:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
