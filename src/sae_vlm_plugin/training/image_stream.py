"""Training straight from images: extract on the fly and shuffle rows through a mixing buffer.

Each epoch visits the images in a seeded random order, ``batch_size_images`` per forward pass;
rows (selected tokens) accumulate in a buffer of ``buffer_batches * batch_size`` rows, which is
shuffled with a seeded generator, and the first half is served as training batches while the
rest waits to mix with the next images (SAELens' mixing-buffer scheme). The stream is a pure
function of its arguments, so replaying it reproduces the same batches.

Data-parallel: each rank runs the encoder on its contiguous share of every group of
``batch_size_images`` images, the ranks all-gather the rows (in rank order, which is image
order), so every rank holds the buffer one process would, and each rank yields its share of
every batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from sae_vlm_plugin.activations import iter_extracted_batches, resolve_hooks
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.images import open_image_source
from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.tokens import TokenSelection

if TYPE_CHECKING:
    from sae_vlm_plugin.images import ImageInput


def image_activation_batches(
    model: VisionModel,
    images: ImageInput,
    hook: str,
    tokens: TokenSelection,
    batch_size: int,
    *,
    batch_size_images: int = 64,
    buffer_batches: int = 16,
    seed: int = 0,
    parallel: DataParallel | None = None,
) -> Iterator[torch.Tensor]:
    """An endless stream of ``(batch_size, d_in)`` shuffled activation batches from ``images``
    (under ``parallel``: this rank's ``batch_size / N`` rows of each)."""
    parallel = parallel or DataParallel()
    parallel.check_batch_size(batch_size)
    source = open_image_source(images)
    (point,) = resolve_hooks(model, [hook], tokens)
    capacity = max(buffer_batches, 2) * batch_size
    share = batch_size // parallel.world_size
    first, last = parallel.rank * share, (parallel.rank + 1) * share
    buffer = torch.empty(0, point.d_model)
    generator = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed + epoch))
        for start in range(0, len(source), batch_size_images):
            group = order[start : start + batch_size_images].tolist()
            mine = math.ceil(len(group) / parallel.world_size)
            indices = group[parallel.rank * mine : (parallel.rank + 1) * mine]
            rows = [
                batch.hooks[hook].activations
                for batch in iter_extracted_batches(
                    model,
                    source,
                    [point],
                    tokens,
                    indices,
                    max(len(indices), 1),
                    skip_unreadable=True,
                )
                if batch.hooks
            ]
            local = torch.cat(rows) if rows else torch.empty(0, point.d_model)
            buffer = torch.cat([buffer, parallel.gather_rows(local).float().cpu()])
            if len(buffer) < capacity:
                continue
            buffer = buffer[torch.randperm(len(buffer), generator=generator)]
            n_serve = (len(buffer) // 2) // batch_size * batch_size
            for offset in range(0, n_serve, batch_size):
                yield buffer[offset + first : offset + last]
            buffer = buffer[n_serve:]
        epoch += 1
