"""``sae-vlm steer``: LLaVA's answers to one prompt and image while sweeping one SAE latent.

    sae-vlm steer --model llava-hf/llava-1.5-7b-hf --sae DIR --latent 123 --values 0,30,40,50 \\
        --prompt "Write me a short love poem" --image white

prints the answer without any SAE, then one answer per value (paper Figure 6). Wire it into the
``sae-vlm`` parser with ``add_steer_command(subparsers)``; it sets ``handler`` like the other
subcommands.
"""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.pretrained.sae_argument import add_sae_arguments


def _values(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--values expects comma-separated numbers, got {text!r}"
        ) from error


def _latent(text: str) -> int | str:
    return int(text) if text.strip().lstrip("-").isdigit() else text


def add_steer_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``steer`` to ``commands`` (the ``sae-vlm`` subparsers); returns its parser."""
    parser = commands.add_parser(
        "steer",
        help="sweep one SAE latent on LLaVA and print the generations side by side",
        description="Generate LLaVA's answer to a prompt about an image without any SAE and "
        "with the SAE spliced in at its hook and one latent set to each value (paper Fig. 6).",
    )
    parser.add_argument("--model", required=True, help="LLaVA hub id or local folder")
    add_sae_arguments(parser)
    parser.add_argument(
        "--latent",
        required=True,
        type=_latent,
        help="latent index to steer, or a concept word resolved by the SAE's labels "
        "(`sae-vlm name`)",
    )
    parser.add_argument(
        "--labels", help="concept labels for a word --latent (default: the SAE folder's)"
    )
    parser.add_argument(
        "--values", required=True, type=_values, help="comma-separated values, e.g. 0,30,40,50"
    )
    parser.add_argument("--prompt", required=True, help="the text prompt")
    parser.add_argument(
        "--image", default="white", help="image file, or 'white' (the paper's blank image)"
    )
    parser.add_argument("--mode", default="clamp", choices=["clamp", "add", "scale"])
    parser.add_argument(
        "--keep-error", action="store_true", help="add the SAE error back (paper: off)"
    )
    parser.add_argument(
        "--tokens", default="all", choices=["all", "image", "patches", "cls"], help="tokens edited"
    )
    parser.add_argument("--hook", help="hook to steer (default: the SAE's, else LLaVA's layer)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    parser.set_defaults(handler=_cmd_steer)
    return parser


def load_llava(name: str, device: str | None = None) -> tuple[Any, Any]:
    """``(VisionModel, processor)`` of a LLaVA checkpoint (hub id or local folder)."""
    from transformers import AutoProcessor

    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.toy.models import resolve_model_name

    model = VisionModel(name, family="llava", device=device)
    return model, AutoProcessor.from_pretrained(resolve_model_name(name))


def format_sweep(answers: dict[str, str], latent: int) -> str:
    """One block per setting, in sweep order."""
    width = max(len(key) for key in answers)
    lines = []
    for key, text in answers.items():
        label = key if key == "no steer" else f"latent {latent} = {key}"
        lines.append(f"[{label:<{width + 10}}] {text}")
    return "\n".join(lines)


def _cmd_steer(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.images import open_image_source
    from sae_vlm_plugin.naming.labels import LatentLabels, labels_beside
    from sae_vlm_plugin.pretrained.sae_argument import load_sae_argument
    from sae_vlm_plugin.steering.edits import steer
    from sae_vlm_plugin.steering.evaluation import sweep, white_image

    sae = load_sae_argument(args.sae, args.device or "cpu", args.registry)  # before the model
    model, processor = load_llava(args.model, args.device)
    if args.image == "white":
        size = int(model.source_module.config.vision_config.image_size)
        image = white_image(size)
    else:
        image = open_image_source(args.image).load(0)

    labels_path = args.labels or labels_beside(args.sae)
    labels = LatentLabels.load(labels_path) if labels_path is not None else None

    def make_steering(value: float) -> Any:
        return steer(
            model,
            sae,
            {args.latent: value},
            mode=args.mode,
            keep_error=args.keep_error,
            tokens=args.tokens,
            hook=args.hook,
            labels=labels,
            force=args.force,
        )

    probe = make_steering(0.0)  # bad latent / word / hook / width: fail before generating
    probe.remove()
    latent = probe.concepts.get(args.latent, args.latent)
    if probe.concepts and labels is not None:
        print(f"{args.latent!r} -> latent {latent} (labels: {labels.labels(latent)})")
    answers = sweep(
        model,
        processor,
        args.prompt,
        image,
        make_steering,
        args.values,
        max_new_tokens=args.max_new_tokens,
    )
    print(format_sweep(answers, latent))
    return 0
