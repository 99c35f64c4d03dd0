"""The paper's architectures at their published shapes, with random weights, built offline.

Each builder makes an encoder from its checkpoint's published configuration (the ``config.json``
on the model card, or open_clip's shipped model config), seeded, in eval mode: what the
real-shape tests (``tests/families/test_real_shapes.py``) check and the real-size benchmark
(``benchmarks/bench_real_size.py``) times. LLaVA-1.5 is its real vision tower and projector with a
reduced language model (``llava_15_reduced``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sae_vlm_plugin.tiny import models as tm

SEED = 0


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return build().eval()


def clip_vit_l14_336():
    """openai/clip-vit-large-patch14-336, the image side (``CLIPVisionModelWithProjection``)."""
    from transformers import CLIPVisionModelWithProjection

    return _seeded(lambda: CLIPVisionModelWithProjection(clip_vit_l14_336_config()))


def clip_vit_l14_336_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def siglip_so400m_384():
    """google/siglip-so400m-patch14-384, the vision tower (attention-pool head included)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    return _seeded(lambda: SiglipVisionModel(config))


def aimv2_large_224():
    """apple/aimv2-large-patch14-224 (``Aimv2VisionModel``; the checkpoint has no pooling head,
    ``use_head=False``)."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    config = Aimv2VisionConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=24,
        num_attention_heads=8,
        image_size=224,
        patch_size=14,
        rms_norm_eps=1e-5,
        qkv_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        use_head=False,
    )
    return _seeded(lambda: Aimv2VisionModel(config))


def webssl_mae300m_224():
    """facebook/webssl-mae300m-full2b-224: ViT-L/14 at 224, a plain ``ViTModel`` (with its
    pooler, as ``ViTModel.from_pretrained`` builds it; 304M parameters)."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        layer_norm_eps=1e-6,
    )
    return _seeded(lambda: ViTModel(config))


def webssl_dino300m_224():
    """facebook/webssl-dino300m-full2b-224: ViT-L/14 at 224 as ``Dinov2Model`` (no registers)."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=1024,
        mlp_ratio=4,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        layer_norm_eps=1e-6,
    )
    return _seeded(lambda: Dinov2Model(config))


def open_clip_model(name: str) -> Callable[[], torch.nn.Module]:
    """A builder of the open_clip architecture ``name`` (its shipped model config), randomly
    initialised: ``open_clip.create_model(name, pretrained=None)``, text tower included."""

    def build() -> torch.nn.Module:
        import open_clip

        return _seeded(lambda: open_clip.create_model(name, pretrained=None))

    return build


LLAVA_LM_LAYERS = 1
LLAVA_LM_INTERMEDIATE = 1024


def llava_15_reduced() -> tm.TinyLlava:
    """llava-hf/llava-1.5-7b-hf at its real vision side and a reduced language model.

    Real: the CLIP ViT-L/14-336 tower, ``vision_feature_layer=-2``, the "default" strategy (CLS
    dropped) and the mlp2x_gelu projector 1024 -> 4096 -> 4096, whose output width is the
    language model's hidden size, so the LM keeps hidden 4096 and 32 heads of 128. Reduced: the
    LM has ``LLAVA_LM_LAYERS`` decoder layer (7B: 32), MLP width ``LLAVA_LM_INTERMEDIATE`` (7B:
    11008) and the tiny word-level vocabulary of ``sae_vlm_plugin.tiny.models`` (7B: 32064 tokens).
    """
    from transformers import (
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = tm.llava_tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=4096,
        intermediate_size=LLAVA_LM_INTERMEDIATE,
        num_hidden_layers=LLAVA_LM_LAYERS,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=clip_vit_l14_336_config().to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(tm.IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = _seeded(lambda: LlavaForConditionalGeneration(config))
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token=tm.IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    return tm.TinyLlava(model=model, processor=processor)
