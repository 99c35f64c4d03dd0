"""Train the toy LLaVA: a transformers ``LlavaForConditionalGeneration`` that talks about the
toy world, on top of the toy CLIP's frozen vision tower.

Architecture, as llava-1.5: the toy CLIP's vision transformer (frozen), read at
``vision_feature_layer=-2`` (the output of block ``n-2``) with the ``default`` strategy (CLS
dropped), a two-layer GELU projector, and a small Llama over a word-level vocabulary. Only the
projector and the Llama are trained, with next-token cross-entropy on the answer tokens only.

Conversations use llava-1.5's format, ``"USER: <image>\\n{prompt} ASSISTANT: {answer}</s>"``,
with the answers templated from the image's ``WorldObject`` (``answer``):

- "Describe the image." and "What is this a picture of?" -> the full caption,
  "a small red striped circle .";
- "What colour is the shape?" (and shape, texture, size) -> the value, "red .";
- the one-word question of Table 3 -> the shape;
- each of the ten appendix-B insertion prompts -> a short reply of its own kind that names
  the object ("roses for my love , the small red striped circle .").

A sixteenth of the training images are blank white (the image the paper steers on), answered
as "a blank white image", so that an unsteered answer on it names no colour or shape and a
steered answer that does must have got it from the vision tower.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sae_vlm_plugin.steering.evaluation import DESCRIBE_PROMPT, INSERTION_PROMPTS, ONE_WORD_PROMPT
from sae_vlm_plugin.toy.world import IMAGE_SIZE, WorldObject, caption, world_images

IMAGE_TOKEN = "<image>"
BLANK = "a blank white image"
"""The description of a blank white image."""
PICTURE_PROMPT = "What is this a picture of?"
ATTRIBUTE_QUESTIONS: dict[str, str] = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "texture": "What texture does the shape have?",
    "size": "Is the shape small or large?",
}
OPEN_REPLIES: dict[str, str] = dict(
    zip(
        INSERTION_PROMPTS,
        (
            "roses for my love , {the} .",
            "a study of {the} .",
            "to do : find {the} , draw it , name it , keep it .",
            "yo , i see {the} , {the} is all i see .",
            "how many corners has {the} ?",
            "{the} is a shape in the world .",
            "the day of {the} .",
            "look at {the} . yes , {the} .",
            "news : {the} is here . today we saw {the} .",
            "do you like {the} ?",
        ),
        strict=True,
    )
)
"""The reply template of each appendix-B prompt; ``{the}`` becomes "the small red striped
circle" (or "the blank white image")."""
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""llava-1.5's conversation format (``USER: <image>\\n... ASSISTANT:``) as a chat template."""


def prompts() -> list[str]:
    """Every prompt the toy LLaVA is trained on, in a fixed order."""
    return [
        DESCRIBE_PROMPT,
        PICTURE_PROMPT,
        ONE_WORD_PROMPT,
        *ATTRIBUTE_QUESTIONS.values(),
        *INSERTION_PROMPTS,
    ]


def answer(prompt: str, obj: WorldObject | None) -> str:
    """The templated answer to ``prompt`` about ``obj`` (``None``: a blank white image)."""
    description = caption(obj) if obj is not None else BLANK
    the = "the " + description.removeprefix("a ")
    if prompt in (DESCRIBE_PROMPT, PICTURE_PROMPT):
        return description + " ."
    if prompt == ONE_WORD_PROMPT:
        return (obj.shape if obj is not None else "blank") + " ."
    for attribute, question in ATTRIBUTE_QUESTIONS.items():
        if prompt == question:
            if obj is None:
                return ("white" if attribute == "colour" else "none") + " ."
            return (
                dict(zip(("shape", "colour", "texture", "size"), obj.attributes, strict=True))[
                    attribute
                ]
                + " ."
            )
    if prompt in OPEN_REPLIES:
        return OPEN_REPLIES[prompt].format(the=the)
    raise ValueError(f"no answer template for {prompt!r}; known prompts: {prompts()}")


@dataclass(frozen=True)
class ToyLlavaTraining:
    """How the shipped toy LLaVA was trained (``python -m sae_vlm_plugin.toy.train``)."""

    n_train: int = 12_000
    train_seed: int = 2
    n_heldout: int = 300
    heldout_seed: int = 3
    blank_fraction: float = 1 / 16
    steps: int = 1_500
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    seed: int = 0


def llava_tokenizer() -> Any:
    """Word-level tokenizer over every word of the prompts, answers and chat format."""
    from tokenizers import pre_tokenizers

    from sae_vlm_plugin.toy.tokenizer import PUNCTUATION, word_level_tokenizer
    from sae_vlm_plugin.toy.world import all_objects

    split = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    texts = ["USER: ASSISTANT:", BLANK, *prompts()]
    texts += [answer(p, o) for p in prompts() for o in [None, *all_objects()[::8]]]
    texts += [caption(o) for o in all_objects()]
    words = sorted({w for t in texts for w, _ in split.pre_tokenize_str(t.lower())})
    words = [w for w in words if w not in PUNCTUATION]
    return word_level_tokenizer(words, extra_special=(IMAGE_TOKEN,), add_eos=False)


def llava_config(training: ToyLlavaTraining, clip_config: Any, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=training.text_width,
        intermediate_size=3 * training.text_width,
        num_hidden_layers=training.text_layers,
        num_attention_heads=training.text_heads,
        num_key_value_heads=training.text_heads,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlavaConfig(
        vision_config=clip_config.vision_config.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def llava_processor(tokenizer: Any, clip_config: Any) -> Any:
    from transformers import LlavaProcessor

    from sae_vlm_plugin.toy.clip_training import image_processor

    return LlavaProcessor(
        image_processor=image_processor(),
        tokenizer=tokenizer,
        patch_size=clip_config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def conversation(processor: Any, prompt: str, reply: str | None = None) -> str:
    """The chat-template text of one turn; with ``reply``, the full training conversation."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
    ]
    if reply is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    return str(processor.apply_chat_template(messages, add_generation_prompt=reply is None))


def _batch(
    processor: Any,
    pixels: torch.Tensor,
    objects: Sequence[WorldObject | None],
    asked: Sequence[str],
    head_lengths: dict[str, int],
) -> dict[str, torch.Tensor]:
    """Model inputs and labels for one batch: the labels are the answer tokens (and their
    ``</s>``), everything else ``-100``. ``head_lengths[prompt]``: tokens before the answer."""
    texts = [
        _expand(processor, conversation(processor, p, answer(p, o)))
        for p, o in zip(asked, objects, strict=True)
    ]
    encoded = processor.tokenizer(texts, return_tensors="pt", padding=True)
    labels = encoded["input_ids"].clone()
    for row, prompt in enumerate(asked):
        labels[row, : head_lengths[prompt]] = -100
    labels[encoded["attention_mask"] == 0] = -100
    return {**encoded, "pixel_values": pixels, "labels": labels}


def _head_lengths(processor: Any) -> dict[str, int]:
    """Token count of each prompt's conversation up to and including ``ASSISTANT:``."""
    return {
        p: len(processor.tokenizer(_expand(processor, conversation(processor, p)))["input_ids"])
        for p in prompts()
    }


def _expand(processor: Any, text: str) -> str:
    """``text`` with its ``<image>`` expanded to the image's token count, as the processor does."""
    n = (IMAGE_SIZE // processor.patch_size) ** 2
    return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n)


@torch.no_grad()
def describe_accuracy(
    model: Any, processor: Any, images: Sequence[Any], objects: Sequence[WorldObject]
) -> dict[str, float]:
    """Fraction of images whose greedy description names the right colour, the right shape,
    and both (the quality bar); one batched ``generate``."""
    text = conversation(processor, DESCRIBE_PROMPT)
    inputs = processor(images=list(images), text=[text] * len(images), return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    outputs = processor.batch_decode(
        ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    words = [set(o.split()) for o in outputs]
    colour = [o.colour in w for o, w in zip(objects, words, strict=True)]
    shape = [o.shape in w for o, w in zip(objects, words, strict=True)]
    return {
        "colour": float(np.mean(colour)),
        "shape": float(np.mean(shape)),
        "colour_and_shape": float(np.mean([c and s for c, s in zip(colour, shape, strict=True)])),
    }


def train_toy_llava(
    clip: Any, training: ToyLlavaTraining = ToyLlavaTraining(), progress: bool = True
) -> tuple[Any, Any, dict[str, Any]]:
    """``(LlavaForConditionalGeneration, LlavaProcessor, report)`` on top of ``clip`` (the toy
    ``CLIPModel``, whose vision weights are copied in and frozen)."""
    from transformers import LlavaForConditionalGeneration

    from sae_vlm_plugin.steering.evaluation import white_image
    from sae_vlm_plugin.toy.clip_training import pixel_tensor, warmup_cosine

    started = time.perf_counter()
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    tokenizer = llava_tokenizer()
    processor = llava_processor(tokenizer, clip.config)
    model = LlavaForConditionalGeneration(llava_config(training, clip.config, tokenizer))
    model.model.vision_tower.vision_model.load_state_dict(clip.vision_model.state_dict())
    model.model.vision_tower.requires_grad_(False)
    images, objects = world_images(training.n_train, seed=training.train_seed)
    n_blank = round(training.n_train * training.blank_fraction)
    pixels = pixel_tensor([*images, *[white_image(IMAGE_SIZE)] * n_blank])
    all_objects: list[WorldObject | None] = [*objects, *[None] * n_blank]
    del images
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=training.lr, weight_decay=training.weight_decay)

    scheduler = warmup_cosine(optimizer, training.warmup_steps, training.steps)
    every_prompt = prompts()
    head_lengths = _head_lengths(processor)
    model.train()
    model.model.vision_tower.eval()
    losses = []
    for step in range(training.steps):
        rows = rng.integers(0, len(all_objects), size=training.batch_size)
        asked = [every_prompt[int(i)] for i in rng.integers(0, len(every_prompt), size=len(rows))]
        batch = _batch(
            processor,
            pixels[torch.from_numpy(rows)],
            [all_objects[i] for i in rows],
            asked,
            head_lengths,
        )
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress and (step % 100 == 0 or step == training.steps - 1):
            print(
                f"toy LLaVA step {step:5d}  loss {np.mean(losses[-100:]):.4f}  "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    model.eval()
    heldout, heldout_objects = world_images(training.n_heldout, seed=training.heldout_seed)
    report = {
        "describe_accuracy": describe_accuracy(model, processor, heldout, heldout_objects),
        "final_loss": float(np.mean(losses[-100:])),
        "train_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }
    return model, processor, report
