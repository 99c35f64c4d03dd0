"""``sae-vlm dashboard``: build the static dashboard (and exports) of an SAE from the command line,
optionally serving it on localhost.

``add_commands(subparsers)`` adds the command to the ``sae-vlm`` parser, as every package's
``commands.py`` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sae_vlm_plugin.command_line import (
    add_command,
    add_image_arguments,
    latent_ids,
    non_negative_float,
    non_negative_int,
    opened_images,
    parse_latents,
    port_number,
    positive_int,
)
from sae_vlm_plugin.dashboard.serve import bind_server, check_dashboard_folder, serve_dashboard
from sae_vlm_plugin.ownership import owned_directory
from sae_vlm_plugin.pretrained.sae_argument import add_sae_arguments


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``dashboard`` to ``commands``."""
    parser = add_command(
        commands,
        "dashboard",
        _cmd_dashboard,
        help="write a static offline HTML dashboard of an SAE's latents on images",
        description="Evaluate an SAE on images (MS, top images, density, patch heatmaps) and "
        "write a self-contained dashboard folder (open index.html, no network needed); "
        "optionally also Neuronpedia batch JSON and SAEDashboard data.",
    )
    add_sae_arguments(parser)
    add_image_arguments(parser, required=True)
    parser.add_argument("--out", required=True, help="output folder (thumbnails are reused)")
    parser.add_argument("--model", help="vision model (default: the SAE metadata's model_name)")
    parser.add_argument("--family", help="force a model family (see `sae-vlm families`)")
    parser.add_argument("--hook", help="hook name (default: the SAE metadata's hook_name)")
    parser.add_argument("--tokens", help="token selection (default: the SAE metadata's tokens)")
    parser.add_argument(
        "--scoring-encoder", default="dinov2", help="image encoder for MS (default: dinov2)"
    )
    parser.add_argument("--n-top", type=positive_int, default=16, help="top images per latent")
    parser.add_argument(
        "--min-support",
        type=non_negative_int,
        default=16,
        help="latents firing on fewer images get no MS (default: 16, as `evaluate`)",
    )
    parser.add_argument(
        "--skip-unreadable", action="store_true", help="leave out corrupt images (counted)"
    )
    parser.add_argument("--title", help="page title (default: the model and hook)")
    parser.add_argument(
        "--latents", help="latents to show, e.g. 0-99,512 (default: all)", type=parse_latents
    )
    parser.add_argument(
        "--heatmaps",
        choices=["auto", "on", "off"],
        default="auto",
        help="patch heatmaps (auto: for SAEs on patch tokens)",
    )
    parser.add_argument(
        "--labels",
        help="concept labels (`sae-vlm name`; default: the SAE folder's latent_labels.json)",
    )
    parser.add_argument(
        "--steerability",
        help="a steerability census (`sae-vlm steerability`; default: the SAE folder's "
        "steerability.json): a 'steers' column and each latent's steered answers",
    )
    parser.add_argument("--neuronpedia", action="store_true", help="also write OUT/neuronpedia/")
    parser.add_argument(
        "--source-set",
        help="Neuronpedia source set name (default: TOKENS-sae-vlm-D_SAE); the source is LAYER-SET",
    )
    parser.add_argument(
        "--layer",
        type=int,
        help="Neuronpedia layer (default: the hook's block; needed for hooks outside the blocks)",
    )
    parser.add_argument(
        "--embed-images",
        action="store_true",
        help="put the Neuronpedia images in the batches as data URLs (default: OUT/neuronpedia/thumbs/)",
    )
    parser.add_argument("--saedashboard", action="store_true", help="also write OUT/saedashboard/")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", help="e.g. cuda, cpu")
    parser.add_argument(
        "--serve", action="store_true", help="serve OUT on http://127.0.0.1:PORT afterwards"
    )
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument(
        "--serve-seconds",
        type=non_negative_float,
        help="stop serving after this many seconds (default: Ctrl-C)",
    )


def _census_beside(sae: str) -> Path | None:
    """The steerability census in an SAE folder (``sae-vlm steerability`` writes it), or None."""
    from sae_vlm_plugin.steering.census import FILE_NAME

    path = Path(sae) / FILE_NAME
    return path if path.is_file() else None


def _cmd_dashboard(args: argparse.Namespace) -> int:
    # A foreign --out or a busy --port fails now, not after the (long) build; serving starts
    # once it is done.
    check_dashboard_folder(args.out)
    with owned_directory(args.out, "dashboard build"):  # held while it builds and serves
        server = bind_server(args.out, port=args.port) if args.serve else None
        try:
            _build(args)
        except BaseException:
            if server is not None:
                server.server_close()
            raise
        if server is not None:
            serve_dashboard(server, seconds=args.serve_seconds)
    return 0


def _build(args: argparse.Namespace) -> None:
    """The dashboard and the exports ``args`` ask for."""
    from sae_vlm_plugin.dashboard.build import collect_dashboard, default_title, write_from_data
    from sae_vlm_plugin.dashboard.exports import export_saedashboard
    from sae_vlm_plugin.dashboard.neuronpedia import (
        default_source_set,
        export_neuronpedia,
        neuronpedia_source,
    )
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.naming.labels import labels_beside
    from sae_vlm_plugin.pretrained.sae_argument import load_sae_argument, model_name_argument

    sae = load_sae_argument(args.sae, args.device or "cpu", args.registry)
    if args.neuronpedia:  # a bad set name or a hook without a layer fails now, not after the build
        neuronpedia_source(
            args.hook or sae.cfg.metadata.hook_name, args.source_set or "x", args.layer
        )
    model_name = model_name_argument(args.model, sae)
    model = VisionModel(model_name, family=args.family, device=args.device)
    labels = args.labels or labels_beside(args.sae)
    census = args.steerability or _census_beside(args.sae)
    found = collect_dashboard(
        sae,
        model,
        opened_images(args),
        scoring_encoder=args.scoring_encoder,
        hook=args.hook,
        tokens=args.tokens,
        n_top=args.n_top,
        latents=latent_ids(args.latents, sae.cfg.d_sae) if args.latents else None,
        heatmaps={"auto": None, "on": True, "off": False}[args.heatmaps],
        concept_labels=labels,
        steerability=census,
        batch_size=args.batch_size,
        progress=True,
        force=args.force,
        min_support=args.min_support,
        skip_unreadable=args.skip_unreadable,
    )
    out = Path(args.out)
    index = write_from_data(
        found.data,
        found.source,
        out,
        positions=found.positions,
        title=args.title or default_title(found.data),
    )
    print(f"dashboard: {index}")
    if found.data.meta["n_unreadable"]:
        print(f"skipped {found.data.meta['n_unreadable']} unreadable image(s)")
    hook = found.data.meta["hook"]
    if args.neuronpedia:
        paths = export_neuronpedia(
            found.data,
            found.source,
            out / "neuronpedia",
            model_id=str(model_name),
            source_set=args.source_set or default_source_set(found.data.meta),
            layer=args.layer,
            positions=found.positions,
            embed_images=args.embed_images,
        )
        print(f"neuronpedia: {len(paths)} batch files in {out / 'neuronpedia'}")
    if args.saedashboard:
        written = export_saedashboard(
            found.data,
            found.source,
            out / "saedashboard",
            hook_point=hook,
            positions=found.positions,
        )
        print(f"saedashboard: {written['json']}")
