"""Tiny, randomly initialised models of every family the plugin supports, built offline.

Every builder makes its model from a config object (no download, no network) in well under a
second, in eval mode, with a fixed seed so that two calls give identical weights. Shapes follow
one convention so that tests can be written once for all families:

- images are ``IMAGE_SIZE`` x ``IMAGE_SIZE`` pixels, patches ``PATCH_SIZE`` pixels wide,
  so an encoder sees ``N_PATCHES`` patch tokens (+1 where the family has a CLS token);
- residual width ``WIDTH``, ``N_LAYERS`` blocks.

The open_clip SigLIP model needs a timm trunk; timm builds trunks by registered name, so this
module registers ``tiny_siglip_vit_test`` with timm the first time it is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sae_vlm_plugin.tiny import images as synthetic
from sae_vlm_plugin.tiny.llava import IMAGE_TOKEN, word_tokenizer

IMAGE_SIZE = 32
PATCH_SIZE = 8
N_PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
WIDTH = 32
N_LAYERS = 3
N_HEADS = 4
MLP_WIDTH = 64
PROJECTION_DIM = 24
SEED = 0

TINY_SIGLIP_TIMM_NAME = "tiny_siglip_vit_test"


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return build().eval()


def clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=PROJECTION_DIM,
    )


def clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=99,
        hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=N_HEADS,
        max_position_embeddings=16,
        projection_dim=PROJECTION_DIM,
    )


def clip_vision_model():
    from transformers import CLIPVisionModel

    return _seeded(lambda: CLIPVisionModel(clip_vision_config()))


def save_clip_checkpoint(module: Any, directory: Path) -> Path:
    """Save a CLIP vision ``module`` and a ``CLIPImageProcessor`` sized to its input into
    ``directory``: what ``VisionModel(str(directory))`` and ``--model DIRECTORY`` load."""
    from transformers import CLIPImageProcessor

    size = module.config.image_size
    module.save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(directory)
    return directory


def clip_vision_model_with_projection():
    from transformers import CLIPVisionModelWithProjection

    return _seeded(lambda: CLIPVisionModelWithProjection(clip_vision_config()))


def clip_model():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=clip_text_config().to_dict(),
        vision_config=clip_vision_config().to_dict(),
        projection_dim=PROJECTION_DIM,
    )
    return _seeded(lambda: CLIPModel(config))


def siglip_vision_config():
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )


def siglip_vision_model():
    from transformers import SiglipVisionModel

    return _seeded(lambda: SiglipVisionModel(siglip_vision_config()))


def aimv2_vision_model():
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    config = Aimv2VisionConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return _seeded(lambda: Aimv2VisionModel(config))


def webssl_mae_model():
    """WebSSL MAE checkpoints (facebook/webssl-mae*) load as a plain ``ViTModel``."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return _seeded(lambda: ViTModel(config, add_pooling_layer=False))


def webssl_dino_model():
    """WebSSL DINO checkpoints (facebook/webssl-dino*) load as ``Dinov2Model``."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=WIDTH,
        mlp_ratio=2,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return _seeded(lambda: Dinov2Model(config))


def _open_clip_text_cfg() -> dict:
    return {"context_length": 16, "vocab_size": 99, "width": WIDTH, "heads": N_HEADS, "layers": 2}


def open_clip_vit_model():
    """An open_clip ``CLIP`` with its own ViT (``visual.transformer.resblocks``)."""
    import open_clip

    vision_cfg = {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "width": WIDTH,
        "layers": N_LAYERS,
        "head_width": WIDTH // N_HEADS,
        "mlp_ratio": MLP_WIDTH / WIDTH,
    }
    return _seeded(
        lambda: open_clip.CLIP(
            embed_dim=PROJECTION_DIM, vision_cfg=vision_cfg, text_cfg=_open_clip_text_cfg()
        )
    )


@functools.cache
def _register_tiny_siglip_trunk() -> None:
    """Register a tiny SigLIP-style timm ViT (no CLS token, attention-pool head)."""
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    def tiny_siglip_vit_test(pretrained: bool = False, **kwargs) -> VisionTransformer:
        del pretrained
        for factory_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(factory_only, None)
        args: dict[str, Any] = {
            "img_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "embed_dim": WIDTH,
            "depth": N_LAYERS,
            "num_heads": N_HEADS,
            "mlp_ratio": MLP_WIDTH / WIDTH,
            "class_token": False,
            "global_pool": "map",
        }
        args.update(kwargs)
        return VisionTransformer(**args)

    tiny_siglip_vit_test.__name__ = TINY_SIGLIP_TIMM_NAME
    register_model(tiny_siglip_vit_test)


def open_clip_siglip_model():
    """An open_clip ``CustomTextCLIP`` whose vision tower is a timm trunk (``visual.trunk``)."""
    import open_clip

    _register_tiny_siglip_trunk()
    vision_cfg = {
        "image_size": IMAGE_SIZE,
        "timm_model_name": TINY_SIGLIP_TIMM_NAME,
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    }
    text_cfg = {**_open_clip_text_cfg(), "no_causal_mask": True, "pool_type": "last"}
    return _seeded(
        lambda: open_clip.CustomTextCLIP(
            embed_dim=WIDTH, vision_cfg=vision_cfg, text_cfg=text_cfg, init_logit_bias=-10
        )
    )


# --- LLaVA -------------------------------------------------------------------------------------

LLAVA_WORDS = tuple(
    [
        "a",
        "an",
        "the",
        "of",
        "and",
        "is",
        "on",
        "in",
        "with",
        "what",
        "shown",
        "image",
        "describe",
        "write",
        "poem",
        "about",
        "love",
        "white",
        "pencil",
        "knife",
        "dog",
        "cat",
        "red",
        "blue",
        "green",
        "square",
        "circle",
        "triangle",
        "one",
        "word",
        "use",
        "exactly",
    ]
)


@dataclass(frozen=True)
class TinyLlava:
    """A tiny LLaVA-1.5-style model and the processor that prepares its inputs."""

    model: torch.nn.Module
    processor: object


def llava_tokenizer():
    """A word-level fast tokenizer with Llama-style specials and ``<image>``, built offline."""
    return word_tokenizer(LLAVA_WORDS)


def llava_model() -> TinyLlava:
    """LLaVA-1.5 layout: CLIP vision tower, 2-layer MLP projector, Llama language model.

    ``vision_feature_layer=-2`` and the "default" strategy (CLS dropped) as in llava-1.5.
    """
    from transformers import (
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = llava_tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        intermediate_size=MLP_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = _seeded(lambda: LlavaForConditionalGeneration(config))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    return TinyLlava(model=model, processor=processor)


# --- images ------------------------------------------------------------------------------------

SHAPES = synthetic.SHAPES
COLOURS = synthetic.COLOURS


def synthetic_image(shape: str, colour: str, size: int = IMAGE_SIZE, seed: int = 0) -> Image.Image:
    """A solid ``shape`` in ``colour`` on a noisy background (``sae_vlm_plugin.tiny.images``)."""
    return synthetic.concept_image(synthetic.Concept(shape, colour), size=size, seed=seed)


def synthetic_images(n: int, size: int = IMAGE_SIZE) -> tuple[list[Image.Image], list[str]]:
    """``n`` solid images cycling through shapes x colours; returns (images, labels)."""
    images, concepts = synthetic.concept_images(n, size=size, textures=("solid",))
    return images, [f"{c.colour}_{c.shape}" for c in concepts]


def pixel_batch(n: int, size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    """``(n, 3, size, size)`` standard-normal pixels, the shape encoders take after preprocessing."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator)


VISION_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "clip_vision": clip_vision_model,
    "clip_vision_with_projection": clip_vision_model_with_projection,
    "clip": clip_model,
    "siglip_vision": siglip_vision_model,
    "aimv2_vision": aimv2_vision_model,
    "webssl_mae": webssl_mae_model,
    "webssl_dino": webssl_dino_model,
    "open_clip_vit": open_clip_vit_model,
    "open_clip_siglip": open_clip_siglip_model,
}
"""Every vision encoder build, by a short name used in test ids."""
