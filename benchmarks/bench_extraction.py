"""Extraction: nnsight overhead, early-stop gain, and cache read throughput vs training needs.

- overhead: ``VisionModel.capture`` of ``blocks.{l}.hook_resid_post`` (an nnsight trace that
  stops after block l) against a bare forward of the same CLIPVisionModel truncated by hand at
  block l (embeddings, pre-norm, blocks 0..l). ViT-B/16 at 224 px, random weights.
- early stop: capture at block l against capture at the last block; ideal (l + 1) / L.
- cache read: rows/s that ``ActivationCache.batches`` yields (fp16 shards, shuffled) against
  rows/s that one SAELens BatchTopK training step consumes (d_in 768, x8 width, batch 4096).

With ``--device cuda`` the model runs in bfloat16 and the training step on the GPU.

    python benchmarks/run.py --only extraction [--quick] [--device cuda]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from harness import Figure, time_side_by_side

from sae_vlm_plugin import ActivationCache, VisionModel
from sae_vlm_plugin.activations import HookBatch
from sae_vlm_plugin.cache.format import CACHE_FORMAT, CACHE_VERSION, CacheSettings
from sae_vlm_plugin.cache.shards import write_shard

DEVICES = ("cpu", "cuda")


def _clip(quick: bool, device: str = "cpu") -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if quick:
        config = CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
        )
    else:  # ViT-B/16
        config = CLIPVisionConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
        )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return CLIPVisionModel(config).eval().to(device=device, dtype=dtype)


def _truncated_forward(module: torch.nn.Module, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    vision = module.vision_model
    with torch.no_grad():
        hidden = vision.pre_layrnorm(vision.embeddings(pixels))
        for block in vision.encoder.layers[: layer + 1]:
            hidden = block(hidden, None, None)[0]
    return hidden


def _training_step_seconds(d_in: int, quick: bool, device: str) -> tuple[float, int]:
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    batch = 256 if quick else 4096
    sae = BatchTopKTrainingSAE(
        BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=8 * d_in, k=20, device=device)
    )
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, d_in, device=device)

    def step() -> None:
        optimizer.zero_grad()
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={},
                dead_neuron_mask=None,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        out.loss.backward()
        optimizer.step()

    return time_side_by_side({"step": step}, repeats=3, device=device)["step"], batch


def run(quick: bool, device: str = "cpu") -> list[Figure]:
    module = _clip(quick, device)
    model = VisionModel(module)
    n_layers = model.n_layers
    layer = n_layers // 2 - 1
    size = module.config.image_size
    pixels = torch.randn(2 if quick else 8, 3, size, size).to(device=device, dtype=module.dtype)
    hook = f"blocks.{layer}.hook_resid_post"
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    torch.testing.assert_close(
        model.capture(pixels, [hook])[hook], _truncated_forward(module, pixels, layer)
    )
    times = time_side_by_side(
        {
            "bare": lambda: _truncated_forward(module, pixels, layer),
            "plugin": lambda: model.capture(pixels, [hook]),
            "plugin_last": lambda: model.capture(pixels, [last]),
        },
        repeats=3 if quick else 7,
        device=device,
    )
    shape = "tiny CLIP" if quick else f"CLIP ViT-B/16 224px, batch {len(pixels)}"
    shape += f", {str(module.dtype).removeprefix('torch.')} on {device}"
    figures = [
        Figure(
            "extraction",
            f"overhead at block {layer} of {n_layers}",
            times["plugin"] / times["bare"],
            "bare truncated forward",
            goal_max=1.05,
            detail=shape,
        ),
        Figure(
            "extraction",
            f"early stop: block {layer} vs block {n_layers - 1}",
            times["plugin"] / times["plugin_last"],
            "capture at the last block",
            goal_max=(layer + 1) / n_layers * 1.1,
            detail=f"ideal {(layer + 1) / n_layers:.2f}",
        ),
    ]

    d_in = 64 if quick else 768
    n_rows = 20_000 if quick else 400_000
    with tempfile.TemporaryDirectory() as tmp:
        cache = _synthetic_cache(tmp, n_rows, d_in)
        batch = 256 if quick else 4096
        n_batches = n_rows // batch
        iterator = cache.batches(batch_size=batch, loop=True)

        def read_epoch() -> None:
            for _ in range(n_batches):
                next(iterator)

        read_seconds = time_side_by_side({"read": read_epoch}, repeats=3)["read"]
    step_seconds, step_batch = _training_step_seconds(d_in, quick, device)
    read_rate = n_batches * batch / read_seconds
    train_rate = step_batch / step_seconds
    figures.append(
        Figure(
            "extraction",
            "cache read rows/s vs training step consumption",
            read_rate / train_rate,
            "SAELens BatchTopK step, x8 width",
            goal_min=10.0,
            detail=f"{read_rate:,.0f} rows/s read, {train_rate:,.0f} rows/s trained (d_in {d_in}, fp16)",
            unit="x",
        )
    )
    return figures


def _synthetic_cache(directory: str, n_rows: int, d_in: int) -> ActivationCache:
    """A cache of ``n_rows`` random fp16 rows in the real shard format (extracting that many
    rows from a model would take far longer than the read being measured)."""

    root = Path(directory)
    hook = "blocks.0.hook_resid_post"
    (root / hook).mkdir(parents=True)
    per_shard = 16_384
    settings = {
        "model": "synthetic",
        "family": "none",
        "hooks": [hook],
        "tokens": "cls",
        "dtype": "float16",
        "images_per_shard": per_shard,
        "n_images": n_rows,
        "image_ids_sha256": "",
    }
    cache_id = CacheSettings.from_manifest({"settings": settings}).digest()
    for shard, start in enumerate(range(0, n_rows, per_shard)):
        count = min(per_shard, n_rows - start)
        part = HookBatch(
            torch.randn(count, d_in),
            torch.arange(start, start + count),
            torch.zeros(count, dtype=torch.long),
        )
        path = root / hook / f"shard_{shard:06d}.safetensors"
        write_shard(path, [part], d_in, "float16", [], cache_id)
    (root / "cache.json").write_text(
        json.dumps(
            {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "settings": settings,
                "hooks": {hook: {"d_in": d_in}},
                "complete": True,
            }
        )
    )
    return ActivationCache(root)
