"""Steer LLaVA's text by clamping one SAE latent in its vision tower (paper Figure 6).

    python examples/steer_llava.py --latent 1234 --values 0,30,40,50 --out /tmp/steer
    python examples/steer_llava.py --tiny --out /tmp/steer-tiny   # offline, random LLaVA

With real weights: llava-1.5-7b and the paper's steering SAE (CLIP block 22, Matryoshka x64),
on a white image with the love-poem prompt. ``--tiny`` builds a tiny LLaVA around the demo's
random CLIP and a random SAE: its words are noise, but the sweep shows the mechanism.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_vlm_plugin import VisionModel, load_sae, steer
from sae_vlm_plugin.steering_eval import sweep, white_image

PROMPT = "Write a love poem."


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latent", type=int, default=0)
    parser.add_argument("--values", default="0,30,40,50")
    parser.add_argument("--out", required=True)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    values = [float(v) for v in args.values.split(",")]
    if args.tiny:
        from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

        from sae_vlm_plugin.demo import small_clip
        from sae_vlm_plugin.demo_llava import tiny_llava

        module, processor = tiny_llava(small_clip())
        llava = VisionModel(module)
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=128, d_sae=512))
        hook, prompt, size = "vision.blocks.2.hook_resid_post", "write a poem about love .", 32
    else:
        from transformers import AutoProcessor

        llava = VisionModel("llava-hf/llava-1.5-7b-hf")
        processor = AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf")
        sae = load_sae("pach2025-clip-vit-l14-336-steering", "blocks.22.hook_resid_post/x64").sae
        hook, prompt, size = None, PROMPT, 336
    answers = sweep(
        llava,
        processor,
        prompt,
        white_image(size),
        lambda value: steer(llava, sae, {args.latent: value}, hook=hook),
        values,
        max_new_tokens=24,
    )
    for key, text in answers.items():
        print(f"{key:>9}: {text}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "steering.json").write_text(
        json.dumps({"latent": args.latent, "answers": answers}, indent=2)
    )


if __name__ == "__main__":
    main()
