"""Train the paper's Matryoshka-BatchTopK SAE on CLS tokens of CLIP ViT-L/14-336 block 22.

    python examples/train_clip_layer22_sae.py --images /data/imagenet/train --out runs/clip-l22
    python examples/train_clip_layer22_sae.py --tiny   # offline, ~1 min, into a temporary directory

Step 1 streams the activations into a resumable cache (re-running resumes it); step 2 trains
through SAELens' SAETrainer with the paper's settings (``preset clip-l14-336-l22-cls-matryoshka-x8``)
and exports a SAELens inference SAE to ``OUT/run/final``. ``--tiny`` swaps in the shipped toy
CLIP and toy-world images, and shrinks the schedule, so the script runs anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sae_vlm_plugin import VisionModel, extract_to_cache
from sae_vlm_plugin.training.presets import preset_config
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner

PRESET = "clip-l14-336-l22-cls-matryoshka-x8"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", help="ImageNet-style image folder")
    parser.add_argument(
        "--out", help="output directory (default with --tiny: a new temporary directory)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="the toy CLIP on toy-world images")
    args = parser.parse_args()
    if args.out is None and not args.tiny:
        parser.error("--out is required without --tiny")
    out = Path(args.out or tempfile.mkdtemp(prefix="sae-vlm-example-")).resolve()

    if args.tiny:
        from sae_vlm_plugin.toy import world_images

        model = VisionModel("toy-clip")
        images, _ = world_images(540)
        hook = "blocks.2.hook_resid_post"  # the toy CLIP has 4 blocks
        overrides = {
            "train_batch_size_tokens": 256,
            "training_tokens": 256 * 300,
            "lr_warm_up_steps": 30,
            "threshold_start_step": 50,
            "dead_after_inputs": 256 * 100,
            "n_batches_for_norm_estimate": 2,
            "logger": {"wandb_log_frequency": 50},
            "checkpoint_every_steps": 100,
        }
    else:
        if args.images is None:
            parser.error("--images is required without --tiny")
        model = VisionModel("openai/clip-vit-large-patch14-336", device=args.device)
        images, hook, overrides = args.images, "blocks.22.hook_resid_post", {}

    cache = extract_to_cache(model, images, hook, out / "cache", tokens="cls", dtype="float16")
    config = preset_config(
        PRESET,
        cached_activations_path=str(cache.path),
        hook_name=hook,
        checkpoint_path=str(out / "run"),
        device=args.device,
        **overrides,
    )
    sae = VisionSAETrainingRunner(config).run()
    print(
        f"exported {config.architecture} SAE (d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}) to {out / 'run' / 'final'}"
    )


if __name__ == "__main__":
    main()
