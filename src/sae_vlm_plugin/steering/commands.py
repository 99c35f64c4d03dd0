"""``sae-vlm steer`` and ``sae-vlm steerability``.

    sae-vlm steer --model llava-hf/llava-1.5-7b-hf --sae DIR --latent 123 --values 0,30,40,50 \\
        --prompt "Write me a short love poem" --image white

prints the answer without any SAE, then one answer per value (paper Figure 6); ``--multiples``
gives the values in units of the latent's largest activation on the tokens the language model
reads (from the census beside the SAE, or measured on ``--images``).

    sae-vlm steerability --model llava-hf/llava-1.5-7b-hf --sae DIR --images imagenet/val

clamps every latent (``--latents``) on neutral images and writes ``steerability.json`` beside
the SAE: what each latent makes the model say, against random-direction nulls
(``steering.census``). ``add_steer_commands(subparsers)`` wires both into ``sae-vlm``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from sae_vlm_plugin.command_line import (
    add_command,
    add_image_arguments,
    latent_ids,
    non_negative_int,
    opened_images,
    parse_latents,
    positive_int,
)
from sae_vlm_plugin.pretrained.sae_argument import add_sae_arguments


def _values(text: str) -> list[float]:
    """Comma-separated finite numbers, at least one; an empty item is refused, not dropped."""
    items = text.split(",")
    try:
        values = [float(item) for item in items]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, e.g. 0,30,40; got {text!r}"
        )
    return values


def _latent(text: str) -> int | str:
    """A latent index, or a concept word (text with a letter): never an empty or blank text,
    and never a number that is not an integer (``1.5``)."""
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    try:
        float(stripped)
        number = True
    except ValueError:
        number = False
    if number or not any(c.isalpha() for c in stripped):
        raise argparse.ArgumentTypeError(
            f"expected a latent index (an integer) or a concept word, got {text!r}"
        )
    return stripped


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``steer`` and ``steerability`` to ``commands`` (the ``sae-vlm`` subparsers)."""
    _add_steer(commands)
    _add_steerability(commands)


def _add_steer(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "steer",
        _cmd_steer,
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
    values = parser.add_mutually_exclusive_group(required=True)
    values.add_argument("--values", type=_values, help="comma-separated values, e.g. 0,30,40,50")
    values.add_argument(
        "--multiples",
        type=_values,
        help="comma-separated multiples of the latent's largest activation on the tokens the "
        "language model reads, e.g. 0,2,8 (from the SAE folder's steerability.json, or --images)",
    )
    add_image_arguments(
        parser, help="images to measure the latent on (refuses latents the model never reads)"
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
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ...")


def _add_steerability(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands,
        "steerability",
        _cmd_steerability,
        help="clamp every SAE latent in LLaVA's vision tower and measure what the answers gain",
        description="A steerability census: each latent (and random directions of matched norm, "
        "the null) clamped on the tokens the language model reads, on neutral images, with "
        "appendix B's prompts and a one-word question; writes steerability.json beside the SAE.",
    )
    parser.add_argument("--model", required=True, help="LLaVA hub id or local folder")
    add_sae_arguments(parser)
    add_image_arguments(
        parser, required=True, help="images the SAE was made for: where latents fire"
    )
    parser.add_argument("--latents", type=parse_latents, help="e.g. 0-99,512 (default: all)")
    parser.add_argument(
        "--multiples", type=_values, default=[2.0, 8.0], help="clamp multiples (default: 2,8)"
    )
    parser.add_argument("--prompts", help="a file of prompts, one per line (default: census)")
    parser.add_argument(
        "--vocabulary",
        help="concept words to count: a file or shipped names (imagenet, attributes, toy) "
        "joined by '+' (default: every word that is not a function word)",
    )
    parser.add_argument(
        "--labels",
        help="concept labels (default: the SAE folder's): each latent's answers are scored "
        "against its label by the labels' text tower",
    )
    parser.add_argument(
        "--random-directions", type=non_negative_int, default=32, help="null units (default: 32)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=256, help="rows per generate (default: 256)"
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=16)
    parser.add_argument("--hook", help="hook to steer (default: the SAE's)")
    parser.add_argument("--out", help="where to write steerability.json (default: the SAE folder)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ...")


def load_llava(name: str, device: str | None = None) -> tuple[Any, Any]:
    """``(VisionModel, processor)`` of a LLaVA checkpoint (hub id or local folder)."""
    from transformers import AutoProcessor

    from sae_vlm_plugin.families.toy_models import resolve_model_name
    from sae_vlm_plugin.model import VisionModel

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
    values = args.values
    unit = _latent_unit(args, sae, model, probe.hook, latent)
    if args.multiples is not None:
        values = [m * unit for m in args.multiples]
        print(f"latent {latent}: 1x = {unit:.4g}, its largest activation on read tokens")
    answers = sweep(
        model,
        processor,
        args.prompt,
        image,
        make_steering,
        values,
        max_new_tokens=args.max_new_tokens,
    )
    print(format_sweep(answers, latent))
    return 0


def _latent_unit(args: argparse.Namespace, sae: Any, model: Any, hook: str, latent: int) -> float:
    """The latent's largest activation on the read tokens, measured on ``--images`` or read
    from the census beside the SAE; refuses a latent that does not fire there. NaN when
    neither is at hand (allowed with ``--values``)."""
    from sae_vlm_plugin.steering.activity import latent_activity
    from sae_vlm_plugin.steering.census import FILE_NAME, SteerabilityReport

    if args.images is not None:
        activity = latent_activity(sae, model, opened_images(args), hook)
        activity.check_steerable(latent)
        return float(activity.read_max[latent])
    census = Path(args.sae) / FILE_NAME
    unit = None
    if census.is_file():
        report = SteerabilityReport.load(census)
        unit = next((u for u in report.of_kind("latent") if u.name == str(latent)), None)
    if unit is not None:
        if unit.note:
            raise ValueError(
                f"latent {latent} cannot be used for steering: it is {unit.note} ({census})"
            )
        return unit.unit
    if args.multiples is not None:
        raise ValueError(
            "--multiples needs the latent's activation on the tokens the model reads: pass "
            f"--images, or run `sae-vlm steerability` on this SAE first ({census} does not "
            f"measure latent {latent})"
        )
    return math.nan


def _cmd_steerability(args: argparse.Namespace) -> int:
    import time

    from sae_vlm_plugin.naming.labels import LatentLabels, labels_beside
    from sae_vlm_plugin.naming.text_tower import load_text_tower
    from sae_vlm_plugin.naming.vocabulary import load_vocabulary
    from sae_vlm_plugin.pretrained.sae_argument import load_sae_argument
    from sae_vlm_plugin.steering.activity import latent_activity
    from sae_vlm_plugin.steering.census import CENSUS_PROMPTS, steerability

    if args.random_directions < 0 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise ValueError("--random-directions must be >= 0, --batch-size and --max-new-tokens >= 1")
    prompts = CENSUS_PROMPTS if args.prompts is None else _read_prompts(args.prompts)
    vocabulary = None if args.vocabulary is None else load_vocabulary(args.vocabulary)
    out = args.out or (args.sae if Path(args.sae).is_dir() else None)
    if out is None:
        raise ValueError(f"--sae {args.sae!r} is not a directory: pass --out for the census")
    sae = load_sae_argument(args.sae, args.device or "cpu", args.registry)
    latents = None if args.latents is None else latent_ids(args.latents, int(sae.cfg.d_sae))
    model, processor = load_llava(args.model, args.device)
    labels_path = args.labels or labels_beside(args.sae)
    labels = tower = None
    if labels_path is not None:
        labels = LatentLabels.load(labels_path)
        tower = load_text_tower(str(labels.meta["text_model"]), device=args.device)
    started = time.perf_counter()
    activity = latent_activity(sae, model, opened_images(args), args.hook, progress=True)
    report = steerability(
        model,
        processor,
        sae,
        activity,
        latents,
        prompts=prompts,
        multiples=args.multiples,
        vocabulary=vocabulary,
        n_random_directions=args.random_directions,
        labels=labels,
        text_tower=tower,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
    )
    path = report.save(out)
    print(format_census(report, time.perf_counter() - started))
    print(f"-> {path}")
    return 0


def _read_prompts(path: str) -> list[str]:
    try:
        prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as error:
        raise ValueError(f"cannot read --prompts {path}: {error.strerror}") from None
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt")
    return prompts


def format_census(report: Any, seconds: float, top: int = 20) -> str:
    """The census in a few lines: what was run, how many latents steer, the best ones."""
    latents = report.of_kind("latent")
    measured = report.measured_latents()
    steering = sorted((u for u in measured if u.steers), key=lambda u: -u.score)
    n_trials = len(report.prompts) * len(report.base_images)
    lines = [
        f"{len(measured)} of {len(latents)} latents fire on the tokens the language model reads "
        f"and were clamped at {', '.join(f'{m:g}x' for m in report.multiples)} on "
        f"{len(report.base_images)} neutral images x {len(report.prompts)} prompts "
        f"({n_trials} answers each), beside {len(report.of_kind('random_direction'))} random "
        f"directions, in {seconds:.0f} s",
        f"{len(steering)} steer: a concept gained in >= 50% of the answers (that do not "
        "degenerate), more often than the random directions add it (p <= 0.05)",
        f"  {'latent':>7}  {'concept':<14}{'gained':>7}{'at':>5}{'p':>7}{'other':>7}"
        f"{'repeats':>8}{'label':>14}{'+cos':>7}  one-word answer",
    ]
    for unit in steering[:top]:
        lines.append(
            f"  {unit.name:>7}  {unit.top_word:<14}{unit.score:>7.0%}{unit.best_multiple:>4}x"
            f"{unit.p_null:>7.3f}{unit.off_target:>7.0%}"
            f"{unit.degenerate[unit.best_multiple]:>8.0%}{unit.label or '-':>14}"
            f"{'' if unit.label_gain is None else f'{unit.label_gain:+.3f}':>7}"
            f"  {unit.explanation or ''}"
        )
    return "\n".join(lines)
