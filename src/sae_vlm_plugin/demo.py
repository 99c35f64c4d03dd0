"""``sae-vlm demo``: the plugin's pipeline end to end, offline, on an embedded default.

Default: a small CLIP vision transformer with random weights, built from a config (nothing is
downloaded), and synthetic concept images (shapes x colours x textures, ``synthetic.py``) whose
labels are known. With ``--model`` and ``--images`` the same steps run on a real checkpoint and
an image folder.

Steps so far: extract activations of a block (CLS tokens, and 2 random tokens per image as the
paper's steering SAE uses) into resumable caches, and report what was extracted. Training, MS,
dashboards and steering join as they land.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DEFAULT_N_IMAGES = 270
DEFAULT_IMAGE_SIZE = 32


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


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on and where it writes."""

    out_dir: Path
    """Output directory (caches and ``summary.json``)."""
    model: str | None = None
    """Hub id / path / ``open_clip:...``; None builds the small random CLIP."""
    images: str | None = None
    """Image folder; None generates synthetic concept images."""
    n_images: int = DEFAULT_N_IMAGES
    """Synthetic images to generate (ignored with ``images``)."""
    layer: int | None = None
    """Block to read; None takes the second-to-last (LLaVA's choice)."""
    batch_size: int = 32
    progress: bool = True


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run every step of the demo; returns (and writes to ``summary.json``) what it measured."""
    from sae_vlm_plugin.cache import extract_to_cache
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.synthetic import concept_images

    started = time.perf_counter()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.model is None:
        model = VisionModel(small_clip())
        model_note = "small CLIP ViT (4 blocks, width 128) with RANDOM weights, built from a config"
    else:
        model = VisionModel(config.model)
        model_note = config.model
    if config.images is None:
        images: Any
        images, concepts = concept_images(config.n_images, size=DEFAULT_IMAGE_SIZE)
        labels = [c.label for c in concepts]
        data_note = f"{len(images)} synthetic concept images (3 shapes x 3 colours x 3 textures)"
    else:
        images, labels = config.images, None
        data_note = f"images from {config.images}"
    layer = config.layer if config.layer is not None else model.n_layers - 2
    hook = f"blocks.{layer}.hook_resid_post"

    caches = {}
    for tokens in ("cls", "random_k"):
        cache_dir = out / f"cache_{tokens}"
        caches[tokens] = extract_to_cache(
            model,
            images,
            hook,
            cache_dir,
            tokens=tokens,
            k=2,
            batch_size=config.batch_size,
            progress=config.progress,
        )
    summary = {
        "model": model_note,
        "family": model.family.name,
        "data": data_note,
        "hook": hook,
        "caches": {
            tokens: {"path": str(cache.path), "rows": cache.n_rows(), "d_in": cache.d_in()}
            for tokens, cache in caches.items()
        },
        "concepts": len(set(labels)) if labels else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"model   {summary['model']} ({summary['family']} family)",
        f"data    {summary['data']}",
        f"hook    {summary['hook']}",
    ]
    for tokens, cache in summary["caches"].items():
        lines.append(
            f"cache   {tokens:<9} {cache['rows']:>6} rows x {cache['d_in']}  -> {cache['path']}"
        )
    lines.append(f"time    {summary['seconds']} s")
    return "\n".join(lines)
