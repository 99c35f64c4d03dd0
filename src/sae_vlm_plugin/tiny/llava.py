"""A tiny LLaVA for the offline demo: the demo's vision tower under a small random Llama.

The vision tower is the demo's own CLIP (same weights), so an SAE trained on its block ``l``
can steer what the projector reads. The language model has random weights and a word-level
vocabulary built offline, so its text is noise: the demo shows that clamping a latent changes
the generation, not what a trained LLaVA would say (that needs ``llava-hf/llava-1.5-7b-hf``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

IMAGE_TOKEN = "<image>"
WORDS = [
    "a",
    "the",
    "of",
    "and",
    "is",
    "in",
    "on",
    "with",
    "what",
    "shown",
    "image",
    "picture",
    "describe",
    "write",
    "poem",
    "about",
    "love",
    "white",
    "red",
    "green",
    "blue",
    "square",
    "circle",
    "triangle",
    "stripes",
    "dots",
    "solid",
    "shape",
    "colour",
    "one",
    "word",
    "use",
    "exactly",
]


def word_tokenizer(words: Sequence[str] = WORDS) -> Any:
    """A word-level fast tokenizer over ``words`` with Llama-style special tokens and ``<image>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
    vocab = {token: i for i, token in enumerate([*specials, *words, "?", ".", ":", ","])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=[IMAGE_TOKEN],
        model_input_names=["input_ids", "attention_mask"],
    )


def tiny_llava(
    vision: Any,
    vision_feature_layer: int = -2,
    *,
    text_width: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
) -> tuple[Any, Any]:
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` around ``vision`` (a transformers
    CLIP vision model, whose weights are copied into the tower), with a random Llama of
    ``text_layers`` blocks of width ``text_width``."""
    from transformers import (
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = word_tokenizer()
    vision_config = vision.config
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_width,
        intermediate_size=2 * text_width,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.vision_model.load_state_dict(vision.vision_model.state_dict())
    size = vision_config.image_size
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    return model, processor
