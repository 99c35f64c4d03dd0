"""Image input throughput: webdataset shards and parquet against the same images in a folder,
and the decode pipeline against the model's forward.

The images are JPEGs of ImageNet's typical size (500 x 375, quality 90, smooth colour fields
with grain, so that decoding costs what a photograph's does), written three ways: a folder,
webdataset ``.tar`` shards, parquet shards (as ``datasets`` writes them); plus the parquet
shards streamed by ``datasets``. "Decode pipeline" is what extraction runs before the model:
``open_images``, then read, decode, ``to_rgb`` and the CLIP ViT-B/16 preprocessing at 224 px
in a ``DataLoader`` (``num_workers`` 0, then 2 worker processes), every image once.

- form / folder: seconds to decode every image from the form against from the folder (ratio
  of times; <= 1.1 means the form costs at most 10 % more than loose files);
- decode / forward: seconds per image of the decode pipeline against one image's share of a
  CLIP ViT-B/16 forward (batch 16, 224 px): below 1, the model is the bottleneck.

    python benchmarks/run.py --only image_data [--quick] [--device cuda]
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import Figure, time_side_by_side
from PIL import Image

from sae_vlm_plugin import VisionModel
from sae_vlm_plugin.activations import _collate, _PreprocessedImages
from sae_vlm_plugin.images import ImageStream, open_images
from sae_vlm_plugin.images.stream import items_source

DEVICES = ("cpu", "cuda")


def _jpeg(seed: int) -> bytes:
    """A 500 x 375 JPEG: a smooth random colour field with grain."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        (500, 375), Image.BICUBIC
    )
    grain = rng.normal(0, 12, (375, 500, 3))
    pixels = np.clip(np.asarray(field, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write_forms(root: Path, n: int, n_shards: int) -> dict[str, str]:
    import datasets
    import webdataset as wds

    data = [_jpeg(i) for i in range(n)]
    per_shard = -(-n // n_shards)
    folder = root / "folder"
    folder.mkdir()
    for i, jpeg in enumerate(data):
        (folder / f"{i:06d}.jpg").write_bytes(jpeg)
    (root / "tar").mkdir()
    for s in range(n_shards):
        with wds.TarWriter(str(root / "tar" / f"{s:05d}.tar")) as sink:
            for i in range(s * per_shard, min((s + 1) * per_shard, n)):
                sink.write({"__key__": f"{i:06d}", "jpg": data[i]})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": jpeg, "path": None} for jpeg in data]},
        features=datasets.Features({"image": datasets.Image()}),
    )
    (root / "parquet").mkdir()
    for s in range(n_shards):
        part = table.select(range(s * per_shard, min((s + 1) * per_shard, n)))
        part.to_parquet(str(root / "parquet" / f"{s:05d}.parquet"))
    return {
        "folder": str(folder),
        "webdataset": str(root / "tar"),
        "parquet": str(root / "parquet"),
        "parquet streamed": "stream:" + str(root / "parquet"),
    }


def _decode_all(spec: str, preprocess: Any, workers: int) -> int:
    """Open ``spec`` and decode + preprocess every image once, as extraction does."""
    stream = spec.startswith("stream:")
    opened = open_images(spec.removeprefix("stream:"), stream=stream)
    if isinstance(opened, ImageStream):
        items = [item for shard in range(opened.n_shards) for item in opened.read(shard)]
        opened = items_source(items, opened.description)
    loader = torch.utils.data.DataLoader(
        _PreprocessedImages(opened, range(len(opened)), preprocess, False),
        batch_size=32,
        num_workers=workers,
        collate_fn=_collate,
    )
    return sum(len(indices) for indices, _, _ in loader)


def run(quick: bool, device: str = "cpu") -> list[Figure]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    n, n_shards = (48, 2) if quick else (512, 4)
    side = 224
    config = CLIPVisionConfig(
        **(
            {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
            if quick
            else {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}
        ),
        num_attention_heads=4 if quick else 12,
        image_size=side,
        patch_size=16,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    module = CLIPVisionModel(config).eval().to(device=device, dtype=dtype)
    model = VisionModel(module, device=device)
    last = f"blocks.{config.num_hidden_layers - 1}.hook_resid_post"
    batch = 16
    pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
    forward = time_side_by_side(
        {"forward": lambda: model.capture(pixels, [last])}, repeats=2 if quick else 3, device=device
    )["forward"]
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        forms = _write_forms(Path(tmp), n, n_shards)
        for workers in (0, 2):
            times = time_side_by_side(
                {
                    name: (lambda s=spec, w=workers: _decode_all(s, model.preprocess, w))
                    for name, spec in forms.items()
                },
                repeats=2 if quick else 3,
            )
            rate = n / times["folder"]
            for name in ("webdataset", "parquet", "parquet streamed"):
                figures.append(
                    Figure(
                        "image data",
                        f"{name} / folder, decode {n} JPEGs, {workers} workers",
                        times[name] / times["folder"],
                        "the same JPEGs as files in a folder",
                        goal_max=1.1,
                        detail=f"{n / times[name]:,.0f} img/s vs {rate:,.0f} img/s",
                    )
                )
            figures.append(
                Figure(
                    "image data",
                    f"decode pipeline / model forward per image, {workers} workers",
                    (times["folder"] / n) / (forward / batch),
                    f"CLIP ViT ({config.hidden_size} wide, {config.num_hidden_layers} blocks, "
                    f"/16) forward at {side} px, batch {batch}, on {device}",
                    goal_max=1.0,
                    detail=f"decode {n / times['folder']:,.0f} img/s, forward "
                    f"{batch / forward:,.1f} img/s",
                )
            )
    return figures
