"""Train the toy CLIP: a transformers ``CLIPModel`` learned contrastively on the toy world.

Data: ``world_images(n_train, seed)`` with a fresh random caption per image and epoch (each
attribute mentioned with probability 1/2, at least one; the full caption a third of the time).

Loss: CLIP's symmetric InfoNCE, with the positives of a row being *every* caption in the batch
that is true of its image (a caption names a subset of attributes, so "a red shape" is true of
every red image). With logits ``z_ij = s * <u_i, v_j>`` (unit image / text embeddings, learned
temperature ``s``) and ``P_ij = 1[caption j is true of image i]``::

    L = 1/2 * ( mean_i CE(z_i., P_i. / sum_j P_ij) + mean_j CE(z_.j, P_.j / sum_i P_ij) )

Plain CLIP (``P = I``) would push apart true pairs that merely sit in different rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sae_vlm_plugin.toy.tokenizer import word_level_tokenizer
from sae_vlm_plugin.toy.world import (
    ATTRIBUTE_VALUES,
    ATTRIBUTES,
    IMAGE_SIZE,
    WorldObject,
    attribute_prompt,
    caption,
    caption_vocabulary,
    world_images,
)


@dataclass(frozen=True)
class ToyClipTraining:
    """How the shipped toy CLIP was trained (``python -m sae_vlm_plugin.toy.train``)."""

    n_train: int = 24_000
    n_heldout: int = 2_000
    train_seed: int = 0
    heldout_seed: int = 1
    steps: int = 1_300
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    width: int = 128
    vision_layers: int = 4
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    patch_size: int = 8
    seed: int = 0


def clip_tokenizer() -> Any:
    return word_level_tokenizer(caption_vocabulary())


def clip_config(training: ToyClipTraining, tokenizer: Any) -> Any:
    from transformers import CLIPConfig

    # The towers carry the projection width too, as hub CLIP configs do: a vision class
    # loaded from this checkpoint (CLIPVisionModelWithProjection) reads it from vision_config.
    shared = {
        "hidden_size": training.width,
        "intermediate_size": 4 * training.width,
        "num_attention_heads": training.heads,
        "projection_dim": training.projection_dim,
    }
    return CLIPConfig(
        text_config={
            **shared,
            "num_hidden_layers": training.text_layers,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            **shared,
            "num_hidden_layers": training.vision_layers,
            "image_size": IMAGE_SIZE,
            "patch_size": training.patch_size,
        },
        projection_dim=training.projection_dim,
    )


def image_processor() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def random_mention(rng: np.random.Generator) -> tuple[str, ...]:
    """Which attributes a training caption names: all of them a third of the time, else each
    with probability 1/2 (at least one)."""
    if rng.random() < 1 / 3:
        return ATTRIBUTES
    while True:
        mention = tuple(a for a in ATTRIBUTES if rng.random() < 0.5)
        if mention:
            return mention


def caption_truth(
    objects: Sequence[WorldObject], mentions: Sequence[tuple[str, ...]]
) -> torch.Tensor:
    """``P[i, j]``: caption ``j`` (naming ``mentions[j]`` of ``objects[j]``) is true of image ``i``."""
    values = np.array([o.attributes for o in objects])
    truth = np.ones((len(objects), len(objects)), dtype=bool)
    for a, name in enumerate(ATTRIBUTES):
        named = np.array([name in m for m in mentions])
        same = values[:, None, a] == values[None, :, a]
        truth &= same | ~named[None, :]
    return torch.from_numpy(truth)


def multi_positive_clip_loss(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The module docstring's ``L`` from ``(n, n)`` image-by-caption logits and ``P``."""
    p = truth.to(logits.dtype)
    image_to_text = -(torch.log_softmax(logits, dim=1) * (p / p.sum(1, keepdim=True))).sum(1)
    text_to_image = -(torch.log_softmax(logits, dim=0) * (p / p.sum(0, keepdim=True))).sum(0)
    return (image_to_text.mean() + text_to_image.mean()) / 2


def warmup_cosine(optimizer: Any, warmup_steps: int, steps: int) -> Any:
    """The toy models' learning-rate schedule: ``lr * (step + 1) / warmup_steps`` during the
    warm-up, then ``lr * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 to 1 over the rest."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        done = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pixel_tensor(images: Sequence[Any], batch: int = 1024) -> torch.Tensor:
    processor = image_processor()
    return torch.cat(
        [
            processor(images=list(images[i : i + batch]), return_tensors="pt")["pixel_values"]
            for i in range(0, len(images), batch)
        ]
    )


@torch.no_grad()
def text_embeddings(model: Any, tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Unit text embeddings (``CLIPModel.get_text_features``) of ``texts``."""
    encoded = tokenizer(list(texts), padding=True, return_tensors="pt")
    features = model.get_text_features(**encoded)
    return torch.nn.functional.normalize(features, dim=-1)


@torch.no_grad()
def image_embeddings(model: Any, pixels: torch.Tensor, batch: int = 512) -> torch.Tensor:
    features = torch.cat(
        [
            model.get_image_features(pixel_values=pixels[i : i + batch])
            for i in range(0, len(pixels), batch)
        ]
    )
    return torch.nn.functional.normalize(features, dim=-1)


def zero_shot_accuracy(
    model: Any, tokenizer: Any, pixels: torch.Tensor, objects: Sequence[WorldObject]
) -> dict[str, float]:
    """Per attribute, the fraction of images whose most similar one-attribute prompt
    (``attribute_prompt``, e.g. "a red shape") names the right value."""
    images = image_embeddings(model, pixels)
    accuracy = {}
    for a, name in enumerate(ATTRIBUTES):
        values = ATTRIBUTE_VALUES[name]
        texts = text_embeddings(model, tokenizer, [attribute_prompt(name, v) for v in values])
        predicted = (images @ texts.T).argmax(1)
        truth = torch.tensor([values.index(o.attributes[a]) for o in objects])
        accuracy[name] = float((predicted == truth).float().mean())
    return accuracy


def train_toy_clip(
    training: ToyClipTraining = ToyClipTraining(), progress: bool = True
) -> tuple[Any, Any, dict[str, Any]]:
    """``(CLIPModel, tokenizer, report)`` trained as ``training`` says; the report holds the
    held-out zero-shot accuracy per attribute and the training time."""
    from transformers import CLIPModel

    started = time.perf_counter()
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    tokenizer = clip_tokenizer()
    model = CLIPModel(clip_config(training, tokenizer))
    images, objects = world_images(training.n_train, seed=training.train_seed)
    pixels = pixel_tensor(images)
    del images
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": training.weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=training.lr,
    )

    scheduler = warmup_cosine(optimizer, training.warmup_steps, training.steps)
    model.train()
    order = rng.permutation(training.n_train)
    cursor = 0
    losses = []
    for step in range(training.steps):
        if cursor + training.batch_size > len(order):
            order, cursor = rng.permutation(training.n_train), 0
        rows = order[cursor : cursor + training.batch_size]
        cursor += training.batch_size
        batch_objects = [objects[i] for i in rows]
        mentions = [random_mention(rng) for _ in rows]
        texts = [caption(o, m) for o, m in zip(batch_objects, mentions, strict=True)]
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        out = model(pixel_values=pixels[torch.from_numpy(rows)], **encoded)
        loss = multi_positive_clip_loss(
            out.logits_per_image, caption_truth(batch_objects, mentions)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if progress and (step % 100 == 0 or step == training.steps - 1):
            print(
                f"toy CLIP step {step:5d}  loss {np.mean(losses[-100:]):.4f}  {time.perf_counter() - started:.0f} s",
                flush=True,
            )
    model.eval()
    heldout_images, heldout_objects = world_images(training.n_heldout, seed=training.heldout_seed)
    accuracy = zero_shot_accuracy(model, tokenizer, pixel_tensor(heldout_images), heldout_objects)
    report = {
        "zero_shot_accuracy": accuracy,
        "final_loss": float(np.mean(losses[-100:])),
        "train_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
    }
    return model, tokenizer, report
