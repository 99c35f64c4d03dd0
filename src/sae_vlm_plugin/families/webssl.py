"""WebSSL encoders: MAE checkpoints (facebook/webssl-mae*) load as a plain ``ViTModel`` - not
``ViTMAEModel``, which also shuffles and masks patches on every call unless given ``noise`` - and
DINO checkpoints (facebook/webssl-dino*) as ``Dinov2Model``. Both have a CLS token and a final
LayerNorm over every token."""

from __future__ import annotations

from typing import Any, ClassVar

from sae_vlm_plugin.families._transformers import TransformersVisionFamily


class WebSslMaeFamily(TransformersVisionFamily):
    name = "webssl_mae"
    description = "transformers ViTModel (WebSSL MAE checkpoints)"
    model_classes = ("ViTModel",)
    load_classes: ClassVar[dict[str, str]] = {"vit": "ViTModel"}
    post_norm_names = ("layernorm",)
    post_norm_all_tokens = True
    cls_token = True

    def image_processor(self, image_size: int) -> Any:
        from transformers import ViTImageProcessor

        return ViTImageProcessor(
            size={"height": image_size, "width": image_size},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )


class WebSslDinoFamily(TransformersVisionFamily):
    name = "webssl_dino"
    description = "transformers Dinov2Model (WebSSL DINO checkpoints, DINOv2)"
    model_classes = ("Dinov2Model",)
    load_classes: ClassVar[dict[str, str]] = {"dinov2": "Dinov2Model"}
    post_norm_names = ("layernorm",)
    post_norm_all_tokens = True
    cls_token = True

    def image_processor(self, image_size: int) -> Any:
        from transformers import BitImageProcessor

        return BitImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            do_center_crop=True,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
