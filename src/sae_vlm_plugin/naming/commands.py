"""``sae-vlm name`` and ``sae-vlm find``: concept labels of an SAE's latents, and the latents for
a text query.

    sae-vlm name --sae DIR --images imagenet/val [--vocabulary FILE] [--text-model MODEL]
    sae-vlm find --sae DIR "pencil"

``name`` writes ``latent_labels.json`` / ``.csv`` / ``.safetensors`` into the SAE folder (or
``--out``); ``find`` reads them from there (or ``--labels``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_vlm_plugin.command_line import (
    add_command,
    add_image_arguments,
    opened_images,
    positive_int,
)
from sae_vlm_plugin.pretrained.sae_argument import add_sae_arguments


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``name`` and ``find`` to the ``sae-vlm`` subcommands."""
    name = add_command(
        commands,
        "name",
        _cmd_name,
        help="label every SAE latent with concept words through a CLIP text tower",
        description="Score concept words against each latent (the centred mean CLIP embedding "
        "of its top images, or its decoder direction for SAEs on image_embeds) and write the "
        "labels next to the SAE: latent_labels.json, .csv and .safetensors.",
    )
    add_sae_arguments(name)
    add_image_arguments(
        name, help="images (needed by the top_images scorer); any form extract takes"
    )
    name.add_argument("--model", help="model the SAE reads (default: the SAE's metadata)")
    name.add_argument(
        "--text-model",
        help="CLIP-family model whose text tower names (default: the SAE's model, when it is "
        "CLIP / SigLIP / open_clip), e.g. openai/clip-vit-base-patch32",
    )
    name.add_argument(
        "--vocabulary",
        help="concept words: a file (one per line), or shipped names imagenet, attributes, toy "
        "joined by '+' (default: imagenet+attributes)",
    )
    name.add_argument("--scorer", default="top_images", choices=["top_images", "decoder"])
    name.add_argument(
        "--template",
        action="append",
        help="prompt template with {} (repeat to ensemble; default: the bare word)",
    )
    name.add_argument("--k", type=positive_int, default=16, help="top images per latent")
    name.add_argument("--labels-per-latent", type=positive_int, default=5)
    name.add_argument(
        "--no-centre", action="store_true", help="uncentred cosine (the paper's steering score)"
    )
    name.add_argument("--tokens", help="token selection (default: the SAE's metadata)")
    name.add_argument("--out", help="where to write the labels (default: the SAE directory)")
    name.add_argument("--device")

    find = add_command(
        commands, "find", _cmd_find, help="the latents whose concept labels best match a text query"
    )
    find.add_argument("query", help="text, e.g. pencil")
    find.add_argument("--sae", help="SAE directory whose labels to search")
    find.add_argument("--labels", help="labels directory or latent_labels.json (default: --sae)")
    find.add_argument(
        "--text-model", help="embeds a query outside the vocabulary (default: the labels')"
    )
    find.add_argument("--top", type=positive_int, default=10)


def _cmd_name(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.naming.name import name_latents
    from sae_vlm_plugin.pretrained.sae_argument import load_sae_argument, model_name_argument

    sae = load_sae_argument(args.sae, args.device or "cpu", args.registry)
    out = args.out or (args.sae if Path(args.sae).is_dir() else None)
    if out is None:
        raise ValueError(f"--sae {args.sae!r} is not a directory: pass --out for the labels")
    labels = name_latents(
        sae,
        VisionModel(model_name_argument(args.model, sae), device=args.device),
        opened_images(args),
        args.vocabulary,
        text_model=args.text_model,
        scorer=args.scorer,
        templates=args.template,
        k=args.k,
        n_labels=args.labels_per_latent,
        centre=not args.no_centre,
        tokens=args.tokens,
        force=args.force,
    )
    path = labels.save(out)
    named = int(labels.named.sum())
    print(f"{named} of {labels.d_sae} latents named with {len(labels.vocabulary)} words -> {path}")
    scores = labels.top()[0][:, 0]
    best = scores.nan_to_num(-2.0).argsort(descending=True)[: min(10, named)]
    for latent in best.tolist():
        words = ", ".join(f"{w} {s:.3f}" for w, s in labels.labels(latent, 3))
        print(f"  latent {latent:>6}: {words}")
    return 0


def _cmd_find(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.naming.labels import LatentLabels
    from sae_vlm_plugin.naming.name import find_latents

    where = args.labels or args.sae
    if where is None:
        raise ValueError("pass --sae (a directory with labels) or --labels")
    labels = LatentLabels.load(where)
    for match in find_latents(
        None, args.query, labels=labels, text_model=args.text_model, top=args.top
    ):
        words = ", ".join(f"{w} {s:.3f}" for w, s in match.labels[:3])
        print(f"latent {match.latent:>6}  score {match.score:.3f}  ({words})")
    return 0
