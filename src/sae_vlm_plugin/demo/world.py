"""``sae-vlm demo`` on the trained toy world: the paper's findings, measured end to end.

The encoder is the shipped toy CLIP (``VisionModel("toy-clip")``), the images come from the
toy world (``sae_vlm_plugin.toy``), whose attributes and taxonomy are the ground truth:

1. CLS tokens of block ``n-2`` -> resumable cache -> paper-faithful Matryoshka-BatchTopK SAE
   trained through SAELens;
2. MS of the SAE latents vs the raw neurons of the same block (Figure 5 / Table A2), scored by
   the toy CLIP's own image embeddings and by label embeddings (cosine = fraction of shared
   attributes);
3. top-16 concept purity of latents vs neurons;
4. the Matryoshka hierarchy: mean taxonomy LCA depth of each group's top images (Table A8);
5. MS-vs-ground-truth alignment over pairs of latents, "preferred" = the purer (Table A1);
6. naming the latents with the toy CLIP's text tower, checked against the world
   (``demo/naming.py``);
7. steering the toy LLaVA (``demo/steering.py``);
8. the SAE's dashboard, with the concept labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from sae_vlm_plugin.demo.findings import (
    alignment_finding,
    alignment_with_purity,
    concept_purity,
    hierarchy_finding,
    neuron_purity,
    seed_findings,
    single_concept_purity,
)
from sae_vlm_plugin.demo.shared import (
    DEFAULT_WORLD_IMAGES,
    TOP_IMAGES,
    WORLD_STEPS,
    chance_purity,
    demo_sae_config,
    label_embeddings,
    mean_std,
    train_side_by_side,
)

if TYPE_CHECKING:
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

EVAL_IMAGES = 2000


def run_world_demo(config: Any) -> dict[str, Any]:
    """Every step above: the SAEs train on ``config.n_images`` world images of ``config.seed``
    and are measured on ``EVAL_IMAGES`` others (seed ``config.seed + 1``), as the paper trains
    on ImageNet's train split and measures on val, once per SAE seed ``0 .. config.seeds - 1``;
    returns the summary (``run_demo`` writes it to ``summary.json``): seed 0's measures in
    full, every seed's figures under ``"seeds"``, and each finding held in how many seeds."""
    from sae_vlm_plugin.dashboard import build_dashboard
    from sae_vlm_plugin.demo.steering import steering_findings, steering_sae_config
    from sae_vlm_plugin.metrics.embeddings import image_embeddings
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.toy import ATTRIBUTES, world_images

    if config.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {config.seeds}")
    started = time.perf_counter()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = VisionModel("toy-clip")
    train_images, _ = world_images(config.n_images or DEFAULT_WORLD_IMAGES, seed=config.seed)
    images, objects = world_images(EVAL_IMAGES, seed=config.seed + 1)
    layer = config.layer if config.layer is not None else model.n_layers - 2
    hook = f"blocks.{layer}.hook_resid_post"
    clip_scoring = image_embeddings(
        images, model, hook="hook_image_embeds", progress=False
    ).embeddings
    world = _World(model, train_images, images, objects, hook, clip_scoring, out, config)
    if config.seeds > 1:  # each seed's two SAEs, side by side first, then measured in turn
        train_side_by_side(
            [_sae_config(world, seed) for seed in range(config.seeds)]
            + [
                steering_sae_config(model, train_images, out / "steering", config, seed)
                for seed in range(config.seeds)
            ],
            config.progress,
        )
    runs = [_measure_seed(world, seed) for seed in range(config.seeds)]
    first = runs[0]
    report, attributes = first.pop("_report"), first.pop("_attributes")
    sae, concept_labels = first.pop("_sae"), first.pop("_labels")
    for run in runs[1:]:
        for key in ("_report", "_attributes", "_sae", "_labels"):
            run.pop(key)
    findings = seed_findings(runs)
    summary: dict[str, Any] = {
        "model": "toy CLIP (trained on the toy world; sae_vlm_plugin.toy)",
        "family": model.family.name,
        "data": f"{len(train_images)} toy-world images to train (seed {config.seed}), "
        f"{len(images)} to measure (seed {config.seed + 1}); attributes {', '.join(ATTRIBUTES)}",
        "hook": hook,
        "sae": first["sae"],
        "scoring": "toy CLIP image embeddings (hook_image_embeds); label embeddings",
        **{key: first[key] for key in SEED_MEASURES},
        "purity_chance": chance_purity(attributes),
        "single_concept_purity_chance": chance_purity(attributes, single_concept_purity),
        "seeds": runs,
        "outputs": {"sae": str(out / "run" / "final"), "evaluation": str(out / "evaluation")},
    }
    summary["outputs"]["labels"] = str(out / "run" / "final")
    steering, steering_finding_list = steering_findings(
        model, train_images, images, objects, out / "steering", config, tuple(range(config.seeds))
    )
    summary["steering"] = steering
    findings += steering_finding_list
    dashboard = build_dashboard(
        sae,
        model,
        images,
        out / "dashboard",
        report=report,
        embeddings=label_embeddings(attributes),
        labels=[" ".join(a) for a in attributes],
        concept_labels=concept_labels,
    )
    summary["outputs"]["dashboard"] = str(dashboard)
    summary["outputs"]["steering"] = str(out / "steering")
    summary["outputs"]["steering_dashboard"] = str(out / "steering" / "dashboard" / "index.html")
    summary["findings"] = [f.to_dict() for f in findings]
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


SEED_MEASURES = (
    "ms_sae",
    "ms_raw",
    "ms_labels_sae",
    "ms_labels_raw",
    "purity_sae",
    "purity_raw",
    "single_concept_purity_sae",
    "single_concept_purity_raw",
    "hierarchy",
    "alignment",
    "naming",
    "reconstruction",
)
"""What each SAE seed measures (seed 0's are the summary's top-level entries)."""


@dataclass(frozen=True)
class _World:
    """What every seed is measured on."""

    model: Any
    train_images: list[Any]
    images: list[Any]
    objects: list[Any]
    hook: str
    clip_scoring: Tensor
    out: Path
    config: Any


def _sae_config(world: _World, seed: int) -> VisionSAERunnerConfig:
    """The CLS SAE of ``seed``: seed 0 in ``out/run``, others in ``out/run-seed{n}``."""
    return demo_sae_config(
        world.model,
        world.train_images,
        world.hook,
        world.out,
        world.config,
        tokens="cls",
        default_steps=WORLD_STEPS,
        seed=seed,
        run_name="run" if seed == 0 else f"run-seed{seed}",
    )


def _measure_seed(world: _World, seed: int) -> dict[str, Any]:
    """Train the CLS SAE of ``seed`` (or load it, trained side by side) and measure every
    finding's figure on it."""
    from sae_vlm_plugin.demo.naming import naming_finding
    from sae_vlm_plugin.metrics.evaluation import evaluate_sae, ms_statistics
    from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score
    from sae_vlm_plugin.metrics.top_activations import top_activations
    from sae_vlm_plugin.toy import taxonomy
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner

    run_config = _sae_config(world, seed)
    sae = VisionSAETrainingRunner(run_config, progress=world.config.progress).run()
    report = evaluate_sae(
        sae,
        world.model,
        world.images,
        embeddings=world.clip_scoring,
        min_support=TOP_IMAGES,
        out_dir=world.out / ("evaluation" if seed == 0 else f"evaluation-seed{seed}"),
        progress=world.config.progress,
    )
    order = [int(i) for i in report.image_ids]
    attributes = [world.objects[i].attributes for i in order]
    labels = label_embeddings(attributes)
    ms_labels_sae = monosemanticity_score(report.image_codes, labels, min_support=TOP_IMAGES)
    ms_labels_raw = monosemanticity_score(report.image_raw, labels, min_support=TOP_IMAGES)
    sae_top = top_activations(report.image_codes, k=TOP_IMAGES)
    raw_top = top_activations(report.image_raw, k=TOP_IMAGES, positive_only=False)
    tree = taxonomy()
    classes = tree.class_indices([world.objects[i].label for i in order])
    widths = [group["latents"][1] for group in report.groups]
    hierarchy, hierarchy_rows = hierarchy_finding(
        sae_top.indices, classes, tree, widths, report.sae_scores.scores
    )
    alignment = alignment_with_purity(
        report.sae_scores.scores, neuron_purity(sae_top.indices, attributes)
    )
    concept_labels, naming, naming_check = naming_finding(
        sae, world.model, world.images, world.objects, report.image_codes, order,
        Path(run_config.checkpoint_path) / "final",
    )  # fmt: skip
    return {
        "seed": seed,
        "sae": f"{run_config.architecture}, d_sae {sae.cfg.d_sae}, k {run_config.k}",
        "ms_sae": report.sae,
        "ms_raw": report.raw_neurons,
        "ms_labels_sae": ms_statistics(ms_labels_sae),
        "ms_labels_raw": ms_statistics(ms_labels_raw),
        "purity_sae": concept_purity(sae_top.indices, attributes),
        "purity_raw": concept_purity(raw_top.indices, attributes),
        "single_concept_purity_sae": single_concept_purity(sae_top.indices, attributes),
        "single_concept_purity_raw": single_concept_purity(raw_top.indices, attributes),
        "hierarchy": hierarchy_rows,
        "hierarchy_held": hierarchy.held,
        "alignment": None if alignment is None else _alignment_dict(alignment),
        "alignment_held": alignment_finding(alignment).held,
        "naming": naming,
        "naming_held": naming_check.held,
        "naming_figure": naming_check.figure,
        "reconstruction": report.reconstruction,
        "_report": report,
        "_attributes": attributes,
        "_sae": sae,
        "_labels": concept_labels,
    }


def _alignment_dict(result: Any) -> dict[str, Any]:
    return {
        "score": result.score,
        "n_pairs": result.n_pairs,
        "bins": [vars(b) for b in result.bins],
    }


def _steering_lines(steering: dict[str, Any], outputs: dict[str, str]) -> list[str]:
    """Per seed: the two chosen latents' insertion rates beside the nulls and the control, and
    one example answer."""
    lines = [
        f"Steering the toy LLaVA at {steering['hook']} ({steering['concept']}), read tokens only; "
        "'red' inserted (best of "
        + ", ".join(f"{m:g}x" for m in steering["protocol"]["multiples"])
        + ", held-out grey and black images, 10 prompts):",
        f"  {'seed':<5}{'paper rule':>18}{'census':>14}{'DiffMean':>10}{'null dir.':>11}"
        f"{'rand. latents':>15}",
    ]
    for run in steering["seeds"]:
        paper, census = run["paper_rule"], run["census"]
        n_random = len(run["random_latents"])
        inserting = sum(s >= 0.5 for s in run["random_latents"])
        lines.append(
            f"  {run['seed']:<5}{paper['latent']:>6} ({paper['r_precision']:.0%}) "
            f"{paper['score']:>4.0%}{census['latent']:>8} {census['score']:>5.0%}"
            f"{run['diffmean']['score']:>10.0%}{max(run['random_directions'], default=0.0):>11.0%}"
            f"{inserting:>10} of {n_random}"
        )
    first = steering["seeds"][0]
    sources = [run["label_sources"] for run in steering["seeds"]]
    lines += [
        f"  e.g. seed {first['seed']}, no steer: {first['unsteered'][0]!r}; census latent "
        f"{first['census']['latent']}: {first['census']['example']!r}",
        "  label sources naming a concept's steering latent, per seed (of concepts with one): "
        "text tower "
        + ", ".join(f"{s['text_tower']}/{s['n_concepts']}" for s in sources)
        + "; most-gained word "
        + ", ".join(f"{s['steering_word']}/{s['n_concepts']}" for s in sources)
        + "; one-word answer "
        + ", ".join(f"{s['one_word_answer']}/{s['n_concepts']}" for s in sources),
        f"  steering SAE dashboard (seed {first['seed']}, with its census): "
        f"{outputs['steering_dashboard']}",
    ]
    return lines


def format_world_summary(summary: dict[str, Any]) -> str:
    """The trained-world demo's report: the measures side by side, then every finding."""

    rec = summary["reconstruction"]
    lines = [
        f"model    {summary['model']} ({summary['family']} family)",
        f"data     {summary['data']}",
        f"SAE      {summary['sae']} on {summary['hook']} (CLS tokens)",
        "",
        f"{'SAE seed 0':<28}{'SAE latents':>14}{'raw neurons':>14}",
        f"{'MS, toy CLIP embeddings':<28}{mean_std(summary['ms_sae']):>14}{mean_std(summary['ms_raw']):>14}",
        f"{'MS, label embeddings':<28}{mean_std(summary['ms_labels_sae']):>14}"
        f"{mean_std(summary['ms_labels_raw']):>14}",
        f"{'top-16 single-concept purity':<28}{summary['single_concept_purity_sae']:>14.3f}"
        f"{summary['single_concept_purity_raw']:>14.3f}"
        f"   (chance {summary['single_concept_purity_chance']:.3f})",
        f"{'top-16 attribute purity':<28}{summary['purity_sae']:>14.3f}{summary['purity_raw']:>14.3f}"
        f"   (chance {summary['purity_chance']:.3f})",
        "",
        "Matryoshka groups, mean taxonomy depth of top-16 images (0 family .. 4 same class):",
        "  "
        + "   ".join(
            f"[{row['start']},{row['stop']}) {row['mean_depth']:.2f}"
            for row in summary["hierarchy"]
        ),
    ]
    lines += ["", *_steering_lines(summary["steering"], summary["outputs"]), ""]
    lines.append(
        f"Findings (the paper's claims, measured on this world over {len(summary['seeds'])} "
        "SAE seeds):"
    )
    for finding in summary["findings"]:
        mark = "held" if finding["held"] else "NOT held"
        lines.append(f"  [{mark:>8}] {finding['claim']}")
        lines.append(f"             {finding['figure']}")
    lines += [
        "",
        f"SAE reconstruction: R^2 {rec['explained_variance']:.3f}, L0 {rec['l0']:.1f}, "
        f"dead latents {rec['dead_fraction']:.1%}",
    ]
    outputs = summary["outputs"]
    lines.append(f"Outputs: {outputs['sae']} (SAELens format), {outputs['evaluation']}")
    lines.append(f"         {outputs['dashboard']} (open in a browser), {outputs['steering']}")
    lines.append(f"Time: {summary['seconds']} s")
    return "\n".join(lines)
