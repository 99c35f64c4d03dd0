"""Steering: latency of a steered LLaVA ``generate`` against an unsteered one.

Same prompt, same image, same number of new tokens (``min_new_tokens = max_new_tokens``,
greedy). Three ways to generate, timed round-robin:

- ``plain``: ``LlavaForConditionalGeneration.generate`` on the bare module (no nnsight);
- ``unsteered``: ``sae_vlm_plugin.steering.generate`` with no edit (nnsight, nothing stored);
- ``steered``: the same with ``steer(model, sae, {k: 50})`` active (paper setting: clamp on all
  tokens at the block the projector reads, SAE width 8 x d_vision).

Timed on one thread (see ``run``), but for the census. Models (random weights, CPU): the tests' tiny LLaVA (CLIP 3
blocks x 32, Llama 2 x 32) and a small LLaVA built by ``demo.tiny_llava`` (CLIP 6 blocks x
256 at 112 px / 14 px patches = 64 image tokens, Llama 4 x 512).

The steerability census: its cost per latent (one census over ``n`` latents, divided by ``n``)
against what the same answers cost as unbatched steered ``generate`` calls (one call's median
time, times the answers a latent gets: multiples x prompts x base images), on the shipped toy
LLaVA with a 512-latent SAE (random weights) at the block its projector reads.
"""

from __future__ import annotations

from typing import Any

import torch
from harness import Figure, time_side_by_side

BENCHMARK = "steering"


def _small_llava() -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from sae_vlm_plugin.tiny.llava import tiny_llava

    vision = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=8,
        image_size=112,
        patch_size=14,
    )
    torch.manual_seed(0)
    module, processor = tiny_llava(
        CLIPVisionModel(vision), text_width=512, text_layers=4, text_heads=8
    )
    return module, processor.tokenizer, vision


def _inputs(tokenizer: Any, vision: Any, image_token: int, words: str) -> dict[str, torch.Tensor]:
    n_image = (vision.image_size // vision.patch_size) ** 2
    text = tokenizer([words], return_tensors="pt")["input_ids"]
    ids = torch.cat([torch.full((1, n_image), image_token), text], dim=1)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, vision.image_size, vision.image_size, generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def _figures(label: str, module: Any, tokenizer: Any, vision: Any, n_new: int, repeats: int):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.steering import generate, steer

    model = VisionModel(module)
    d_vision = int(vision.hidden_size)
    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_vision, d_sae=8 * d_vision)).eval()
    inputs = _inputs(
        tokenizer, vision, int(module.config.image_token_index), "write a poem about love"
    )
    gen = {"max_new_tokens": n_new, "min_new_tokens": n_new, "do_sample": False}

    def plain() -> None:
        with torch.no_grad():
            module.generate(**inputs, **gen)

    handle = steer(model, sae, {0: 50.0})
    try:

        def steered() -> None:
            generate(model, **inputs, **gen)

        # edits are per model: time the unsteered nnsight path on a second wrapper
        clean_model = VisionModel(module)

        def unsteered_clean() -> None:
            generate(clean_model, **inputs, **gen)

        times = time_side_by_side(
            {"plain": plain, "unsteered": unsteered_clean, "steered": steered},
            repeats=repeats,
            warmup=1,
        )
    finally:
        handle.remove()
    ms = {name: f"{seconds * 1e3:.0f} ms" for name, seconds in times.items()}
    shape = f"{label}, {inputs['input_ids'].shape[1]} prompt tokens, {n_new} new"
    return [
        Figure(
            BENCHMARK,
            f"steered generate / unsteered ({label})",
            times["steered"] / times["unsteered"],
            "steering.generate, no edit",
            goal_max=1.10,
            detail=f"{shape}: {ms['steered']} vs {ms['unsteered']}",
        ),
        Figure(
            BENCHMARK,
            f"steered generate / plain HF generate ({label})",
            times["steered"] / times["plain"],
            "LlavaForConditionalGeneration.generate",
            goal_max=1.10,
            detail=f"{ms['steered']} vs {ms['plain']}",
        ),
        Figure(
            BENCHMARK,
            f"unsteered nnsight generate / plain ({label})",
            times["unsteered"] / times["plain"],
            "LlavaForConditionalGeneration.generate",
            detail=f"{ms['unsteered']} vs {ms['plain']}",
        ),
    ]


def _census_figure(quick: bool) -> Figure:
    import time

    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.steering import steer
    from sae_vlm_plugin.steering.activity import latent_activity
    from sae_vlm_plugin.steering.census import (
        CENSUS_MULTIPLES,
        CENSUS_PROMPTS,
        neutral_images,
        steerability,
    )
    from sae_vlm_plugin.steering.evaluation import generate_text
    from sae_vlm_plugin.toy import load_toy_llava, world_images

    hook = "vision.blocks.2.hook_resid_post"
    module, processor = load_toy_llava()
    llava = VisionModel(module)
    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=128, d_sae=512)).eval()
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.2)
        sae.W_dec.normal_(0, 0.2)
    activity = latent_activity(sae, llava, world_images(200, seed=11)[0], hook)
    n_latents = 32 if quick else 256
    latents = torch.nonzero(activity.steerable).flatten()[:n_latents].tolist()
    prompts = CENSUS_PROMPTS[:2] if quick else CENSUS_PROMPTS
    images = neutral_images(48)[: 1 if quick else 3]
    per_latent = len(CENSUS_MULTIPLES) * len(prompts) * len(images)
    latent = latents[0]
    value = CENSUS_MULTIPLES[-1] * float(activity.read_max[latent])

    def one() -> None:
        generate_text(
            llava,
            processor,
            prompts[0],
            images[0],
            lambda: steer(llava, sae, {latent: value}, tokens="image", hook=hook),
            max_new_tokens=16,
        )

    def census() -> None:
        steerability(
            llava, processor, sae, activity, latents, base_images=images, prompts=prompts,
            n_random_directions=0, batch_size=1024, progress=False,
        )  # fmt: skip

    before = time_side_by_side({"one": one}, repeats=5, warmup=1)["one"]
    started = time.perf_counter()
    census()
    census_seconds = time.perf_counter() - started
    after = time_side_by_side({"one": one}, repeats=5, warmup=0)["one"]
    one_seconds = (before + after) / 2
    batched = census_seconds / len(latents)
    unbatched = one_seconds * per_latent
    return Figure(
        BENCHMARK,
        "steerability census, cost per latent / unbatched generate",
        batched / unbatched,
        f"{per_latent} unbatched steered generate calls a latent",
        goal_max=0.1,
        detail=f"{len(latents)} latents x {per_latent} answers in {census_seconds:.1f} s: "
        f"{batched * 1e3:.0f} ms a latent vs {unbatched * 1e3:.0f} ms "
        f"({one_seconds * 1e3:.1f} ms a generate)",
    )


def run(quick: bool) -> list[Figure]:
    # One thread for the latency figures: on a shared 2-core machine, two threads per matmul
    # made the medians swing by 2x between neighbouring runs. The census is a throughput job a
    # user runs on every core, so it is measured (both sides) with the default threads.
    census = _census_figure(quick)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [*_run(quick), census]
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> list[Figure]:
    from sae_vlm_plugin.tiny import models as tiny_models

    tiny = tiny_models.llava_model()
    tokenizer = tiny_models.llava_tokenizer()
    figures = _figures(
        "tiny LLaVA",
        tiny.model,
        tokenizer,
        tiny.model.config.vision_config,
        n_new=8 if quick else 32,
        repeats=5 if quick else 21,
    )
    if quick:
        return figures
    module, tokenizer, vision = _small_llava()
    return [*figures, *_figures("small LLaVA", module, tokenizer, vision, n_new=32, repeats=11)]
