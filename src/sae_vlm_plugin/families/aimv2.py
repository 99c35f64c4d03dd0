"""AIMv2 (transformers ``Aimv2VisionModel``): no CLS token, RMSNorm over every token, and an
optional attention-pool head."""

from __future__ import annotations

from typing import Any, ClassVar

from sae_vlm_plugin.families._transformers import TransformersVisionFamily


class Aimv2Family(TransformersVisionFamily):
    name = "aimv2"
    description = "transformers Aimv2VisionModel (no CLS token)"
    model_classes = ("Aimv2VisionModel",)
    load_classes: ClassVar[dict[str, str]] = {
        "aimv2_vision_model": "Aimv2VisionModel",
        "aimv2": "Aimv2VisionModel",
    }
    post_norm_names = ("rms_norm",)
    post_norm_all_tokens = True
    pooled_name = "head"
    cls_token = False

    def image_processor(self, image_size: int) -> Any:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
