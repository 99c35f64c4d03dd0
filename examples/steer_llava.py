"""Steer LLaVA's text by clamping one SAE latent in its vision tower (paper Figure 6).

    python examples/steer_llava.py --latent 1234 --values 0,30,40,50 --out /tmp/steer
    python examples/steer_llava.py --tiny   # offline, toy LLaVA, into a temporary directory

With real weights: llava-1.5-7b and the paper's steering SAE (CLIP block 22, Matryoshka x64),
on a white image with the love-poem prompt. ``--tiny`` steers the shipped toy LLaVA (trained on
the toy world) with a randomly initialised SAE: the sweep shows the mechanism; ``sae-vlm demo``
finds a real concept latent and measures insertion and suppression.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sae_vlm_plugin import VisionModel, load_sae, steer
from sae_vlm_plugin.steering.evaluation import sweep, white_image

PROMPT = "Write a love poem."


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latent", type=int, default=0)
    parser.add_argument("--values", default="0,30,40,50")
    parser.add_argument(
        "--out", help="output directory (default with --tiny: a new temporary directory)"
    )
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.out is None and not args.tiny:
        parser.error("--out is required without --tiny")
    out = Path(args.out or tempfile.mkdtemp(prefix="sae-vlm-example-")).resolve()
    values = [float(v) for v in args.values.split(",")]
    if args.tiny:
        from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

        from sae_vlm_plugin.steering.evaluation import INSERTION_PROMPTS
        from sae_vlm_plugin.toy import IMAGE_SIZE, load_toy_llava

        module, processor = load_toy_llava()
        llava = VisionModel(module)
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=128, d_sae=512))
        hook, prompt, size = "vision.blocks.2.hook_resid_post", INSERTION_PROMPTS[0], IMAGE_SIZE
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "steering.json").write_text(
        json.dumps({"latent": args.latent, "answers": answers}, indent=2)
    )
    print(f"wrote {out / 'steering.json'}")


if __name__ == "__main__":
    main()
