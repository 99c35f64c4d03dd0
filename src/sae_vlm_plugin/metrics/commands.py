"""``sae-vlm evaluate`` and ``sae-vlm alignment``: the paper's evaluations from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_vlm_plugin.command_line import (
    add_command,
    add_image_arguments,
    non_negative_int,
    opened_images,
)
from sae_vlm_plugin.ownership import owned_directory
from sae_vlm_plugin.pretrained.sae_argument import add_sae_arguments


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``evaluate`` and ``alignment`` to the ``sae-vlm`` subcommands."""
    evaluate = add_command(
        commands,
        "evaluate",
        _cmd_evaluate,
        help="MS, R^2, L0, dead latents, uniqueness of an SAE vs the raw neurons of its hook",
        description="The paper's evaluation of an SAE on an image folder: MonoSemanticity Score "
        "of its latents and of the raw neurons of the same hook, per Matryoshka group; "
        "reconstruction R^2, L0 and dead fraction; uniqueness of the top-16 sets; with "
        "--taxonomy, the Matryoshka hierarchy. Writes evaluation.json and ms_sorted.png.",
    )
    add_sae_arguments(evaluate)
    add_image_arguments(evaluate, required=True)
    evaluate.add_argument("--model", help="model to run (default: the SAE's metadata)")
    evaluate.add_argument("--scoring-encoder", default="dinov2", help="dinov2 | clip | a hub id")
    evaluate.add_argument(
        "--min-support",
        type=non_negative_int,
        default=16,
        help="latents firing on fewer images get no MS (default: 16, evaluate_sae's)",
    )
    evaluate.add_argument(
        "--skip-unreadable", action="store_true", help="leave out corrupt images (counted)"
    )
    evaluate.add_argument(
        "--taxonomy",
        help="'inat' (class folders named like iNaturalist's) or a taxonomy file: adds the "
        "Matryoshka hierarchy (mean LCA depth of each level's top images)",
    )
    evaluate.add_argument("--out", default="evaluation", help="output directory")
    evaluate.add_argument("--device")

    alignment = add_command(
        commands,
        "alignment",
        _cmd_alignment,
        help="agreement of MS with the paper's user study (Table A1), from its pairs.csv",
    )
    alignment.add_argument("--pairs", required=True, help="the released benchmark's pairs.csv")
    alignment.add_argument(
        "--metric",
        action="append",
        help="an MS column, e.g. dino or clip (repeatable; default: every MS column of the file)",
    )
    alignment.add_argument("--bin-by", help="bin by this MS column's distance (Table A1(a): dino)")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    with owned_directory(args.out, "evaluation"):  # one evaluation at a time writes --out
        report = _evaluate(args)
    for name, stats in (("SAE latents", report.sae), ("raw neurons", report.raw_neurons)):
        print(
            f"{name:<12} MS {stats['mean']:.3f} +- {stats['std']:.3f} (best {stats['best']:.3f}, "
            f"{int(stats['n_scored'])} of {int(stats['n_neurons'])} scored)"
        )
    rec = report.reconstruction
    print(
        f"R^2 {rec['explained_variance']:.3f}  L0 {rec['l0']:.1f}  dead {rec['dead_fraction']:.1%}"
    )
    unique = report.uniqueness
    print(
        f"uniqueness of top-16 sets: {unique['fraction_unique']:.1%} unique, mean Jaccard "
        f"{unique['mean_jaccard']:.3f}, {int(unique['n_pairs_above_0.5'])} pairs above 0.5"
    )
    for row in report.hierarchy:
        print(
            f"Matryoshka level {row['level']} [{row['start']},{row['stop']}): LCA depth "
            f"{row['mean_depth']:.2f} (majority {row['majority_depth']:.2f}, unrounded "
            f"{row['unrounded_mean_depth']:.2f}), MS {row['ms_mean']:.3f}"
        )
    if report.setup["n_unreadable"]:
        print(f"skipped {report.setup['n_unreadable']} unreadable image(s)")
    print(f"-> {Path(args.out) / 'evaluation.json'}, {Path(args.out) / 'ms_sorted.png'}")
    return 0


def _evaluate(args: argparse.Namespace) -> Any:
    """The evaluation ``args`` ask for, written to ``args.out``."""
    from sae_vlm_plugin.metrics.evaluation import evaluate_sae
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.pretrained.sae_argument import load_sae_argument, model_name_argument

    sae = load_sae_argument(args.sae, args.device or "cpu", args.registry)
    model_name = model_name_argument(args.model, sae)
    model = VisionModel(model_name, device=args.device)
    images = opened_images(args)  # after the model, whose errors come first
    return evaluate_sae(
        sae,
        model,
        images,
        scoring_encoder=args.scoring_encoder,
        min_support=args.min_support,
        taxonomy=taxonomy_argument(args.taxonomy, images),
        out_dir=args.out,
        force=args.force,
        skip_unreadable=args.skip_unreadable,
    )


def _cmd_alignment(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.metrics.alignment import load_benchmark_pairs, score_benchmark

    pairs = load_benchmark_pairs(args.pairs)
    metrics = args.metric or list(pairs.ms_x)
    if not metrics:
        raise ValueError(f"{args.pairs} has no MS_x_<name> / MS_y_<name> columns to score")
    results = {m: score_benchmark(pairs, m, bin_by=args.bin_by) for m in metrics}  # all or none
    for metric, result in results.items():
        skipped = f" ({result.n_skipped} without a score skipped)" if result.n_skipped else ""
        print(f"MS ({metric}): alignment {result.score:.3f} over {result.n_pairs} pairs{skipped}")
        for b in result.bins:
            print(f"  |dMS| in [{b.low:.1f}, {b.high:.1f}): {b.score:.3f} ({b.n_pairs} pairs)")
    return 0


def taxonomy_argument(spec: str | None, images: Any) -> Any:
    """None, ``inat`` (the image folder's iNaturalist-style class folders) or a taxonomy file."""
    from sae_vlm_plugin.metrics.hierarchy import Taxonomy

    if spec is None:
        return None
    if spec == "inat":
        from sae_vlm_plugin.images import open_image_source

        labels = open_image_source(images).labels
        if labels is None:
            raise ValueError("--taxonomy inat needs class folders (root/<class>/<image>)")
        return Taxonomy.from_folder_names(sorted(set(labels)))
    return Taxonomy.from_file(spec)
