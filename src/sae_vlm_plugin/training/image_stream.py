"""Training straight from images: extract on the fly and shuffle rows through a mixing buffer.

Each epoch visits the images in a seeded random order, ``batch_size_images`` per forward pass;
rows (selected tokens) accumulate in a buffer of ``buffer_batches * batch_size`` rows, which is
shuffled with a seeded generator, and the first half is served as training batches while the
rest waits to mix with the next images (SAELens' mixing-buffer scheme). The stream is a pure
function of its arguments, so replaying it reproduces the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from sae_vlm_plugin.activations import iter_extracted_batches, resolve_hooks
from sae_vlm_plugin.images import open_image_source
from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.tokens import TokenSelection


def image_activation_batches(
    model: VisionModel,
    images: Any,
    hook: str,
    tokens: TokenSelection,
    batch_size: int,
    *,
    batch_size_images: int = 64,
    buffer_batches: int = 16,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """An endless stream of ``(batch_size, d_in)`` shuffled activation batches from ``images``."""
    source = open_image_source(images)
    (point,) = resolve_hooks(model, [hook], tokens)
    capacity = max(buffer_batches, 2) * batch_size
    buffer = torch.empty(0, point.d_model)
    generator = torch.Generator().manual_seed(seed)
    epoch = 0
    while True:
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed + epoch))
        for batch in iter_extracted_batches(
            model, source, [point], tokens, order.tolist(), batch_size_images, skip_unreadable=True
        ):
            if not batch.hooks:
                continue
            buffer = torch.cat([buffer, batch.hooks[hook].activations.float().cpu()])
            if len(buffer) < capacity:
                continue
            buffer = buffer[torch.randperm(len(buffer), generator=generator)]
            n_serve = (len(buffer) // 2) // batch_size * batch_size
            for start in range(0, n_serve, batch_size):
                yield buffer[start : start + batch_size]
            buffer = buffer[n_serve:]
        epoch += 1
