"""``sae-vlm demo``: the plugin's pipeline end to end, offline.

Default: the trained toy world (``demo/world.py``): the shipped toy CLIP and toy LLaVA on
toy-world images, with the paper's findings measured against the world's ground truth.
``--random``: a small CLIP vision transformer with RANDOM weights, built from a config, and
synthetic concept images (3 shapes x 3 colours x 3 textures, ``tiny/images.py``) - the pipeline
without learned features, for speed checks. With ``--model`` and ``--images`` the same steps run
on a real checkpoint and an image folder (MS then uses the DINOv2 scoring encoder, as in the
paper).

Steps (random and real paths): extract the CLS tokens of a block into a resumable cache -> train the paper-faithful
Matryoshka-BatchTopK SAE through SAELens -> MS of the SAE latents and of the raw neurons of the
same block -> a ground-truth check.

On synthetic images MS is computed with label embeddings instead of an image encoder: each
image's embedding is the normalised concatenation of one-hot shape, colour and texture codes,
so ``cos(e_n, e_m)`` is the fraction of attributes two images share and MS measures how much
the images that activate a neuron share their concepts. The ground-truth check is the concept
purity of each neuron's top-16 images: the largest fraction of them sharing one value of an
attribute, averaged over neurons and attributes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from sae_vlm_plugin.demo.findings import concept_purity
from sae_vlm_plugin.demo.shared import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_N_IMAGES,
    TOP_IMAGES,
    DemoConfig,
    chance_purity,
    label_embeddings,
    mean_std,
    train_demo_sae,
)


def small_clip() -> torch.nn.Module:
    """A 4-block, 128-wide CLIP vision tower with projection, random weights (seed 0)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=DEFAULT_IMAGE_SIZE,
        patch_size=8,
        projection_dim=64,
    )
    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(config).eval()


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run every step of the demo; returns (and writes to ``summary.json``) what it measured."""
    if config.model is None and config.images is None and not config.random:
        from sae_vlm_plugin.demo.world import run_world_demo

        if config.scoring_encoder is not None:
            raise ValueError(
                "the trained-world demo scores MS with the toy CLIP's own embeddings and label "
                "embeddings; a scoring encoder applies with --model, --images or --random"
            )

        summary = run_world_demo(config)
    else:
        summary = _run_pipeline_demo(config)
    out = Path(config.out_dir)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_nan_to_none))
    return summary


def _run_pipeline_demo(config: DemoConfig) -> dict[str, Any]:
    """The random-weights path (``--random``) and the real-checkpoint path (``--model`` /
    ``--images``): extract, train, MS, purity on synthetic images, dashboard, steering."""
    from sae_vlm_plugin.dashboard import build_dashboard
    from sae_vlm_plugin.images import open_image_source
    from sae_vlm_plugin.metrics.embeddings import load_scoring_encoder
    from sae_vlm_plugin.metrics.evaluation import evaluate_sae
    from sae_vlm_plugin.metrics.top_activations import top_activations
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.tiny.images import concept_images

    started = time.perf_counter()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attributes: list[tuple[str, ...]] | None = None
    images: Any
    if config.images is None:
        n_images = config.n_images or DEFAULT_N_IMAGES
        images, concepts = concept_images(n_images, size=DEFAULT_IMAGE_SIZE)
        attributes = [(c.shape, c.colour, c.texture) for c in concepts]
        data_note = f"{len(images)} synthetic concept images (3 shapes x 3 colours x 3 textures)"
    else:  # opened now: an empty or unreadable folder is said before any model loads
        images, data_note = (
            open_image_source(config.images, **config.images_options),
            f"images from {config.images}",
        )
    if config.model is None:
        model = VisionModel(small_clip())
        model_note = "small CLIP ViT (4 blocks, width 128) with RANDOM weights, built from a config"
    else:
        model = VisionModel(config.model)
        model_note = config.model
    embeddings = scorer = None
    if config.scoring_encoder is None and attributes is not None:
        embeddings = label_embeddings(attributes)
    else:  # loaded before training, so that one that cannot load fails first
        scorer = load_scoring_encoder(config.scoring_encoder or "dinov2")
    layer = config.layer if config.layer is not None else model.n_layers - 2
    hook = f"blocks.{layer}.hook_resid_post"
    sae, run_config = train_demo_sae(model, images, hook, out, config, tokens="cls")

    report = evaluate_sae(
        sae,
        model,
        images,
        scoring_encoder=scorer,
        embeddings=embeddings,
        min_support=TOP_IMAGES,
        out_dir=out / "evaluation",
        progress=config.progress,
    )
    summary: dict[str, Any] = {
        "model": model_note,
        "family": model.family.name,
        "data": data_note,
        "hook": hook,
        "sae": f"{run_config.architecture}, d_sae {sae.cfg.d_sae}, k {run_config.k}",
        "scoring": "label embeddings (shared attributes)"
        if scorer is None
        else f"{scorer.model.model_name} ({scorer.hook})",
        "ms_sae": report.sae,
        "ms_raw": report.raw_neurons,
        "reconstruction": report.reconstruction,
        "outputs": {"sae": str(out / "run" / "final"), "evaluation": str(out / "evaluation")},
    }
    if attributes is not None:
        sae_top = top_activations(report.image_codes, k=TOP_IMAGES)
        raw_top = top_activations(report.image_raw, k=TOP_IMAGES, positive_only=False)
        order = [int(i) for i in report.image_ids]
        ordered = [attributes[i] for i in order]
        summary["purity_sae"] = concept_purity(sae_top.indices, ordered)
        summary["purity_raw"] = concept_purity(raw_top.indices, ordered)
        summary["purity_chance"] = chance_purity(ordered)
    dashboard = build_dashboard(
        sae,
        model,
        images,
        out / "dashboard",
        report=report,
        embeddings=embeddings,
        labels=[" ".join(a) for a in attributes] if attributes is not None else None,
    )
    summary["outputs"]["dashboard"] = str(dashboard)
    if config.model is None:
        summary["steering"] = steering_demo(model, sae, report, hook, out / "steering.json")
        summary["outputs"]["steering"] = str(out / "steering.json")
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


STEERING_VALUES = (0.0, 10.0, 30.0)
STEERING_PROMPT = "write a poem about love ."


def steering_demo(model: Any, sae: Any, report: Any, hook: str, path: Path) -> dict[str, Any]:
    """Clamp the SAE's highest-MS latent on every image token of a tiny LLaVA whose vision
    tower is ``model``'s encoder; write the Figure-6-style sweep on a white image to ``path``."""
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.steering.edits import steer
    from sae_vlm_plugin.steering.evaluation import sweep, white_image
    from sae_vlm_plugin.tiny.llava import tiny_llava

    module, processor = tiny_llava(model.source_module)
    llava = VisionModel(module)
    scores = report.sae_scores.scores
    latent = int(torch.nan_to_num(scores, nan=-1.0).argmax())
    answers = sweep(
        llava,
        processor,
        STEERING_PROMPT,
        white_image(DEFAULT_IMAGE_SIZE),
        lambda value: steer(llava, sae, {latent: value}, hook=f"vision.{hook}"),
        STEERING_VALUES,
        max_new_tokens=12,
    )
    result = {
        "latent": latent,
        "latent_ms": float(scores[latent]),
        "prompt": STEERING_PROMPT,
        "answers": answers,
        "changed": any(
            text != answers["no steer"] for key, text in answers.items() if key != "no steer"
        ),
        "note": "tiny LLaVA with a RANDOM language model: the words are noise; what matters is "
        "that clamping one latent in the vision tower changes the generation",
    }
    path.write_text(json.dumps(result, indent=2))
    return result


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def format_summary(summary: dict[str, Any]) -> str:
    """What ``sae-vlm demo`` prints: the measures, the verdict or findings, the outputs."""
    if "findings" in summary:
        from sae_vlm_plugin.demo.world import format_world_summary

        return format_world_summary(summary)
    sae, raw, rec = summary["ms_sae"], summary["ms_raw"], summary["reconstruction"]
    lines = [
        f"model    {summary['model']} ({summary['family']} family)",
        f"data     {summary['data']}",
        f"SAE      {summary['sae']} on {summary['hook']} (CLS tokens)",
        f"MS via   {summary['scoring']}",
        "",
        f"{'':<22}{'SAE latents':>14}{'raw neurons':>14}",
        f"{'MS mean +- std':<22}{mean_std(sae):>14}{mean_std(raw):>14}",
        f"{'MS best':<22}{sae['best']:>14.3f}{raw['best']:>14.3f}",
        f"{'neurons scored':<22}{int(sae['n_scored']):>14}{int(raw['n_scored']):>14}",
    ]
    if "purity_sae" in summary:
        lines.append(
            f"{'top-16 concept purity':<22}{summary['purity_sae']:>14.3f}{summary['purity_raw']:>14.3f}"
            f"   (chance {summary['purity_chance']:.3f})"
        )
    lines += [
        "",
        f"SAE reconstruction: R^2 {rec['explained_variance']:.3f}, L0 {rec['l0']:.1f}, "
        f"dead latents {rec['dead_fraction']:.1%}",
    ]
    lines.append("Verdict: " + verdict(summary))
    if "RANDOM" in summary["model"]:
        lines.append(
            "Note: the encoder has random weights, so this shows the pipeline, not CLIP's features."
        )
    if "steering" in summary:
        steering = summary["steering"]
        lines += [
            "",
            f"Steering a tiny LLaVA (random LM) by clamping latent {steering['latent']} "
            f"(MS {steering['latent_ms']:.2f}), prompt {steering['prompt']!r}, white image:",
        ]
        for key, text in steering["answers"].items():
            label = key if key == "no steer" else f"clamp {key}"
            lines.append(f"  {label:>10}: {text}")
        lines.append(f"  generation changed: {'yes' if steering['changed'] else 'NO'}")
    outputs = summary["outputs"]
    lines.append(f"Outputs: {outputs['sae']} (SAELens format), {outputs['evaluation']}")
    lines.append(f"         {outputs['dashboard']} (open in a browser)")
    lines.append(f"Time: {summary['seconds']} s")
    return "\n".join(lines)


def verdict(summary: dict[str, Any]) -> str:
    """Whether the SAE latents beat the raw neurons, on each measure the summary has."""
    comparisons = [("mean MS", summary["ms_sae"]["mean"], summary["ms_raw"]["mean"])]
    if "purity_sae" in summary:
        comparisons.append(("top-16 concept purity", summary["purity_sae"], summary["purity_raw"]))
    won = [f"{name} ({a:.3f} vs {b:.3f})" for name, a, b in comparisons if a > b]
    lost = [f"{name} ({a:.3f} vs {b:.3f})" for name, a, b in comparisons if not a > b]
    if not lost:
        return "the SAE latents beat the raw neurons on " + " and ".join(won) + "."
    if not won:
        return "the SAE latents do NOT beat the raw neurons: " + " and ".join(lost) + "."
    return f"the SAE latents beat the raw neurons on {' and '.join(won)}, but NOT on {' and '.join(lost)}."
