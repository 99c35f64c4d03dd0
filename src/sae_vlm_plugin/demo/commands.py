"""``sae-vlm demo``: the shell command of the demo package."""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.command_line import (
    add_command,
    add_image_arguments,
    image_options,
    non_negative_int,
    positive_int,
)


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    demo = add_command(
        commands,
        "demo",
        _cmd_demo,
        help="the paper's findings end to end, offline, on the trained toy world",
        description="Run the plugin's pipeline on the shipped toy CLIP and toy LLaVA and "
        "measure the paper's findings; --random uses random weights, --model/--images a real "
        "checkpoint and image folder.",
    )
    demo.add_argument(
        "--out", default="sae-vlm-demo", help="output directory (default: sae-vlm-demo)"
    )
    demo.add_argument("--model", help="a real checkpoint instead of the toy CLIP")
    add_image_arguments(demo, help="images instead of generated ones; any form extract takes")
    demo.add_argument(
        "--random",
        action="store_true",
        help="random weights and synthetic concept images (the pipeline without learned features)",
    )
    demo.add_argument(
        "--n-images",
        type=positive_int,
        help="generated training images (default: 10000 world / 810 synthetic)",
    )
    demo.add_argument("--seed", type=int, default=10, help="seed of the world images (default: 10)")
    demo.add_argument(
        "--steps",
        type=positive_int,
        help="SAE training steps (default: 5000 world / 600 otherwise)",
    )
    demo.add_argument(
        "--layer", type=non_negative_int, help="block to read (default: second to last)"
    )
    demo.add_argument(
        "--seeds",
        type=positive_int,
        default=5,
        help="SAE seeds every trained-world finding is measured over (default: 5)",
    )
    demo.add_argument(
        "--scoring-encoder",
        help="image encoder MS scores with, with --model/--images/--random: dinov2 | clip | a hub "
        "id | a local model (default: dinov2 for --images, label embeddings for generated images)",
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.demo.run import format_summary, run_demo
    from sae_vlm_plugin.demo.shared import DemoConfig

    summary = run_demo(
        DemoConfig(
            out_dir=args.out,
            model=args.model,
            images=args.images,
            images_options=image_options(args),
            random=args.random,
            n_images=args.n_images,
            seed=args.seed,
            layer=args.layer,
            training_steps=args.steps,
            seeds=args.seeds,
            scoring_encoder=args.scoring_encoder,
        )
    )
    print(format_summary(summary))
    return 0
