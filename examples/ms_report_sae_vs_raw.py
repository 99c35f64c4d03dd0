"""MonoSemanticity of an SAE's latents against the raw neurons of the layer it reads (paper
Figure 5 and Tables A2-A7): ``evaluation.json`` and ``ms_sorted.png``.

    python examples/ms_report_sae_vs_raw.py --sae runs/clip-l22/run/final --images /data/imagenet/val --out eval
    python examples/ms_report_sae_vs_raw.py --tiny   # offline, ~30 s, into a temporary directory

With real weights the model comes from the SAE's metadata and MS uses DINOv2 ViT-B, as in the
paper. ``--tiny`` trains a small SAE on the shipped toy CLIP over toy-world images and scores
with label embeddings (similarity = fraction of shared shape / colour / texture / size).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sae_vlm_plugin import VisionModel, evaluate_sae


def tiny_setup(out: Path):
    from sae_vlm_plugin import VisionSAERunnerConfig, VisionSAETrainingRunner, extract_to_cache
    from sae_vlm_plugin.demo import label_embeddings
    from sae_vlm_plugin.toy import world_images

    model = VisionModel("toy-clip")
    images, objects = world_images(540)
    hook = "blocks.2.hook_resid_post"
    cache = extract_to_cache(model, images, hook, out / "cache", tokens="cls")
    config = VisionSAERunnerConfig(
        cached_activations_path=str(cache.path),
        hook_name=hook,
        expansion_factor=4,
        k=8,
        train_batch_size_tokens=128,
        training_tokens=128 * 300,
        lr_warm_up_steps=30,
        threshold_start_step=60,
        n_batches_for_norm_estimate=2,
        checkpoint_every_steps=0,
        checkpoint_path=str(out / "run"),
    )
    sae = VisionSAETrainingRunner(config).run()
    embeddings = label_embeddings([o.attributes for o in objects])
    return sae, model, images, {"embeddings": embeddings}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sae", help="SAE directory (SAELens format)")
    parser.add_argument("--images", help="image folder")
    parser.add_argument(
        "--out", help="output directory (default with --tiny: a new temporary directory)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="offline: the toy CLIP on toy-world images"
    )
    args = parser.parse_args()
    if args.out is None and not args.tiny:
        parser.error("--out is required without --tiny")
    out = Path(args.out or tempfile.mkdtemp(prefix="sae-vlm-example-")).resolve()
    if args.tiny:
        sae, model, images, scoring = tiny_setup(out)
    else:
        if args.sae is None or args.images is None:
            parser.error("--sae and --images are required without --tiny")
        from sae_lens import SAE

        sae = SAE.load_from_disk(args.sae)
        model, images, scoring = (
            VisionModel(sae.cfg.metadata.model_name),
            args.images,
            {"scoring_encoder": "dinov2"},
        )
    report = evaluate_sae(sae, model, images, min_support=16, out_dir=out / "evaluation", **scoring)
    for name, stats in (("SAE latents", report.sae), ("raw neurons", report.raw_neurons)):
        print(f"{name}: MS {stats['mean']:.3f} +- {stats['std']:.3f}, best {stats['best']:.3f}")
    print(f"wrote {out / 'evaluation' / 'evaluation.json'} and ms_sorted.png")


if __name__ == "__main__":
    main()
