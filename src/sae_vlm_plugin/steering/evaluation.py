"""The paper's steering evaluation (sec. 4.3, appendix B), offline: prompts, sweeps, scores.

- ``INSERTION_PROMPTS``: the ten concept-insertion prompts of appendix B, verbatim (list
  punctuation stripped). ``ONE_WORD_PROMPT``: the Table 3 sanity-check question.
- ``generate_text`` / ``sweep``: LLaVA answers to one prompt and image with and without steering
  (Figure 6: a white image, "Write me a short love poem", one latent at 0, 30, 40, 50).
- ``run_insertion`` / ``run_suppression``: the Table 2 protocol's generations, each output passed
  to a pluggable judge ``(prompt, output) -> verdict``. The paper's judge is GPT-4.1-mini with
  prompts it does not print; none is shipped here (no network by default).
- ``steering_score``: CLIP cosine between the one-word answer and the mean embedding of the
  latent's top-16 images (Table 3, as ``steering_score.py``); ``reference_bounds``: the paper's lower / upper reference similarities
  (random image-class pairs / each image with its own class name), computed from the caller's
  embeddings; ``relative_gain``: the steering gain as a fraction of that range. The paper's
  bound values are not in the reference text we hold (its math was lost in extraction), so they
  are not hard-coded; ``PAPER_TABLE3`` keeps the scores that are.

Steering is passed as a factory ``() -> Steering`` (e.g. ``lambda: steer(model, sae, {k: 50})``
or ``lambda: steer_direction(model, v, hook, alpha)`` for DiffMean), applied for each steered
generation and removed right after, so unsteered generations are the model without any SAE.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from sae_vlm_plugin.steering.edits import Steering, generate

if TYPE_CHECKING:
    from PIL import Image

    from sae_vlm_plugin.model import VisionModel

ONE_WORD_PROMPT = "What is shown on the image? Use exactly one word."
"""Table 3's question; the answer is compared with the latent's top-16 images in CLIP space."""

INSERTION_PROMPTS: tuple[str, ...] = (
    "Write me a short love poem",
    "Generate a scientific article title",
    "Give me a four-item to-do list",
    "Write me a two-verse rap song",
    "Propose a math word problem",
    "Write a paragraph from a Wikipedia page",
    "Invent a new holiday",
    "Write a dialogue",
    "Write a newspaper headline and first paragraph",
    "Give a conversation starter for a party",
)
"""Appendix B's concept-insertion prompts (asked with a white image in Figure 6)."""

DESCRIBE_PROMPT = "Describe the image."
"""Suppression asks LLaVA to describe the images; the paper does not print its exact wording."""

PAPER_TABLE3: dict[str, dict[str, tuple[float, float]]] = {
    "white_image": {"steered": (0.259, 0.036), "unsteered": (0.212, 0.021)},
    "imagenet": {"steered": (0.263, 0.037), "unsteered": (0.211, 0.028)},
}
"""Table 3 CLIP similarity (mean, std) between answers and top-16 images, with / without steering."""

Judge = Callable[[str, str], Any]
"""``(prompt, output) -> verdict``: any callable, e.g. a wrapper around an LLM judge."""
SteeringFactory = Callable[[], Steering]


def white_image(size: int = 336) -> Image.Image:
    """The all-white image the paper steers on (Figure 6, Table 3 first setup)."""
    from PIL import Image

    return Image.new("RGB", (size, size), "white")


def format_prompt(processor: Any, prompt: str) -> str:
    """The LLaVA conversation text for one image and ``prompt``: the processor's chat template
    where it has one, else llava-1.5's ``"USER: <image>\\n{prompt} ASSISTANT:"``."""
    if getattr(processor, "chat_template", None):
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return str(processor.apply_chat_template(conversation, add_generation_prompt=True))
    image_token = getattr(processor, "image_token", "<image>")
    return f"USER: {image_token}\n{prompt} ASSISTANT:"


def generate_text(
    model: VisionModel,
    processor: Any,
    prompt: str,
    image: Image.Image,
    steering: SteeringFactory | None = None,
    max_new_tokens: int = 64,
    prompt_format: Callable[[Any, str], str] = format_prompt,
    **generate_kwargs: Any,
) -> str:
    """LLaVA's greedy answer to ``prompt`` about ``image`` (steered while ``steering()`` is
    applied, when given); only the new tokens, decoded without special tokens."""
    inputs = processor(images=[image], text=[prompt_format(processor, prompt)], return_tensors="pt")
    pixels = inputs["pixel_values"].to(next(model.source_module.parameters()).dtype)
    kwargs = {**dict(inputs), "pixel_values": pixels}
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, **generate_kwargs}
    if steering is None:
        ids = generate(model, **kwargs, **options)
    else:
        with steering():
            ids = generate(model, **kwargs, **options)
    new = ids[:, inputs["input_ids"].shape[1] :]
    return str(processor.batch_decode(new, skip_special_tokens=True)[0]).strip()


def sweep(
    model: VisionModel,
    processor: Any,
    prompt: str,
    image: Image.Image,
    make_steering: Callable[[float], Steering],
    values: Sequence[float],
    **generate_kwargs: Any,
) -> dict[str, str]:
    """Figure 6: the answer without any SAE (key ``"no steer"``), then one per value
    (keys ``f"{value:g}"``), each steered by ``make_steering(value)``."""
    answers = {"no steer": generate_text(model, processor, prompt, image, **generate_kwargs)}
    for value in values:
        answers[f"{value:g}"] = generate_text(
            model,
            processor,
            prompt,
            image,
            steering=functools.partial(make_steering, value),
            **generate_kwargs,
        )
    return answers


@dataclass(frozen=True)
class SteeringRecord:
    """One prompt / image: the answers without and with steering, and the judge's verdicts."""

    prompt: str
    image_index: int
    unsteered: str
    steered: str
    verdict_unsteered: Any = None
    verdict_steered: Any = None


def _judged(records: list[tuple[str, int, str, str]], judge: Judge | None) -> list[SteeringRecord]:
    out = []
    for prompt, index, clean, steered in records:
        out.append(
            SteeringRecord(
                prompt,
                index,
                clean,
                steered,
                judge(prompt, clean) if judge is not None else None,
                judge(prompt, steered) if judge is not None else None,
            )
        )
    return out


def run_insertion(
    model: VisionModel,
    processor: Any,
    steering: SteeringFactory,
    prompts: Sequence[str] = INSERTION_PROMPTS,
    image: Image.Image | None = None,
    judge: Judge | None = None,
    **generate_kwargs: Any,
) -> list[SteeringRecord]:
    """Concept insertion (Table 2): every prompt on ``image`` (default: white), unsteered and
    steered (a positive intervention), each answer judged by ``judge`` when given (the paper
    asks whether the concept appears and the answer still follows the prompt)."""
    image = image if image is not None else white_image()
    rows = [
        (
            prompt,
            0,
            generate_text(model, processor, prompt, image, **generate_kwargs),
            generate_text(model, processor, prompt, image, steering, **generate_kwargs),
        )
        for prompt in prompts
    ]
    return _judged(rows, judge)


def run_suppression(
    model: VisionModel,
    processor: Any,
    steering: SteeringFactory,
    images: Sequence[Image.Image],
    prompt: str = DESCRIBE_PROMPT,
    judge: Judge | None = None,
    **generate_kwargs: Any,
) -> list[SteeringRecord]:
    """Concept suppression (Table 2): describe each image unsteered and steered (a negative
    intervention, e.g. ``steer(model, sae, {k: -50}, mode="clamp")`` or a DiffMean vector with
    negative alpha); pass the concept images and unrelated images, and judge whether the concept
    is removed from the first and the others are still described correctly."""
    rows = [
        (
            prompt,
            i,
            generate_text(model, processor, prompt, image, **generate_kwargs),
            generate_text(model, processor, prompt, image, steering, **generate_kwargs),
        )
        for i, image in enumerate(images)
    ]
    return _judged(rows, judge)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def steering_score(
    answer: str,
    top_image_embeds: torch.Tensor,
    embed_text: Callable[[list[str]], torch.Tensor],
    *,
    average: Literal["embeddings", "cosines"] = "embeddings",
) -> float:
    """Table 3 score of one answer: how close its text embedding is to the latent's top images'
    embeddings ``(n_images, d)`` (the paper: CLIP ``image_embeds``, top-16).

    ``average="embeddings"`` is ``steering_score.py``'s rule,
    ``cos(mean_i e_i, t)`` with the raw (unnormalised) image embeddings ``e_i`` averaged first;
    ``"cosines"`` is ``mean_i cos(e_i, t)``, which weighs every image alike.
    """
    text = _unit(embed_text([answer]).reshape(1, -1))
    if average == "embeddings":
        return float(_unit(top_image_embeds.float().mean(dim=0, keepdim=True)) @ text.T)
    if average == "cosines":
        return float((_unit(top_image_embeds) @ text.T).mean())
    raise ValueError(f"average must be 'embeddings' or 'cosines', got {average!r}")


def reference_bounds(
    image_embeds: torch.Tensor, labels: torch.Tensor, class_text_embeds: torch.Tensor
) -> tuple[float, float]:
    """``(lower, upper)`` reference similarities: upper = mean cosine of each image with its
    own class name's embedding; lower = mean cosine of each image with the other classes'
    names (the expectation over random image-class pairs, computed exactly)."""
    sims = _unit(image_embeds) @ _unit(class_text_embeds).T
    own = sims.gather(1, labels.long().view(-1, 1)).squeeze(1)
    n_classes = sims.shape[1]
    if n_classes < 2:
        raise ValueError("reference_bounds needs at least two classes")
    others = (sims.sum(1) - own) / (n_classes - 1)
    return float(others.mean()), float(own.mean())


def relative_gain(steered: float, unsteered: float, lower: float, upper: float) -> float:
    """``(steered - unsteered) / (upper - lower)``: the gain as a fraction of the reference range."""
    if upper <= lower:
        raise ValueError(f"upper bound {upper} must exceed lower bound {lower}")
    return (steered - unsteered) / (upper - lower)


__all__ = [
    "DESCRIBE_PROMPT",
    "INSERTION_PROMPTS",
    "ONE_WORD_PROMPT",
    "PAPER_TABLE3",
    "Judge",
    "SteeringRecord",
    "format_prompt",
    "generate_text",
    "reference_bounds",
    "relative_gain",
    "run_insertion",
    "run_suppression",
    "steering_score",
    "sweep",
    "white_image",
]
