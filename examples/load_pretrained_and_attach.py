"""Load a vision SAE by registry name, check it fits its model, and encode images with it.

    python examples/load_pretrained_and_attach.py --images /data/imagenet/val
    python examples/load_pretrained_and_attach.py --tiny   # offline; --out DIR keeps the SAE there

With real weights this loads the paper's Matryoshka SAE on CLIP ViT-L/14-336 block 22 from the
Hugging Face hub (``SAE.from_pretrained`` sees the plugin's releases once it is imported). ``--tiny``
saves a small random SAE for the toy CLIP in SAELens format, registers it as a release of your own (the same YAML
schema as ``pretrained_yaml/``) and loads it back by name, all offline.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import sae_vlm_plugin
from sae_vlm_plugin import VisionModel, extract_activations, load_sae

RELEASE, SAE_ID = "pach2025-clip-vit-l14-336-matryoshka", "blocks.22.hook_resid_post/x8"


def register_tiny_release(out: Path) -> tuple[str, str, VisionModel, list]:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    from sae_vlm_plugin.toy import world_images

    model = VisionModel("toy-clip")
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=128, d_sae=512))
    sae.save_model(out / "repo" / "layer2")
    sae_vlm_plugin.register_releases(
        {
            "my-tiny-clip-saes": {
                "repo_id": str(out / "repo"),
                "model": model.model_name,
                "conversion_func": "sae_vlm_sae_lens",
                "verified": True,
                "metadata": {
                    "family": "clip",
                    "tokens": "cls",
                    "training_architecture": "jumprelu",
                    "training_data": "none: random weights for the example",
                },
                "saes": [
                    {
                        "id": "blocks.2/x4",
                        "path": "layer2",
                        "metadata": {"hook_name": "blocks.2.hook_resid_post"},
                    }
                ],
            }
        }
    )
    images, _ = world_images(8)
    return "my-tiny-clip-saes", "blocks.2/x4", model, images


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", help="image folder")
    parser.add_argument(
        "--out", help="--tiny: where the SAE is saved (default: a temporary directory)"
    )
    parser.add_argument("--tiny", action="store_true", help="offline: a registered random SAE")
    args = parser.parse_args()
    if args.tiny:
        out = Path(args.out or tempfile.mkdtemp(prefix="sae-vlm-example-")).resolve()
        release, sae_id, model, images = register_tiny_release(out)
    else:
        if args.images is None:
            parser.error("--images is required without --tiny")
        release, sae_id, images = RELEASE, SAE_ID, args.images
        model = VisionModel("openai/clip-vit-large-patch14-336")
    loaded = load_sae(release, sae_id)
    point = loaded.check_attachable(model)  # hook exists, width == d_in, tokens apply
    print(
        f"{release}/{sae_id}: {loaded.metadata.training_architecture} on {point.name} "
        f"(d_in {loaded.sae.cfg.d_in}, d_sae {loaded.sae.cfg.d_sae}), verified={loaded.verified}"
    )
    activations = extract_activations(model, images, loaded.hook_name, tokens=loaded.tokens)
    codes = loaded.sae.encode(activations[loaded.hook_name])
    print(f"encoded {len(codes)} rows; mean L0 {(codes > 0).float().sum(-1).mean():.1f}")


if __name__ == "__main__":
    main()
