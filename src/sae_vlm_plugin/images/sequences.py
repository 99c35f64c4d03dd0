"""In-memory inputs: a list of PIL images, a list of image paths, a pixel tensor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sae_vlm_plugin.images.source import ImageSource, digest, file_stamp


def pixel_source(pixels: torch.Tensor) -> ImageSource:
    """An already preprocessed ``(n, 3, h, w)`` tensor; ids are the indices."""
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"a pixel tensor must be (n, 3, h, w), got {tuple(pixels.shape)}")
    return ImageSource(
        ids=[str(i) for i in range(len(pixels))],
        labels=None,
        description="pixel tensor",
        pixels=pixels,
    )


def sequence_source(items: Sequence[Any]) -> ImageSource:
    """PIL images (ids: indices) or paths (ids: the paths as given); not a mix."""
    if all(isinstance(item, Image.Image) for item in items):
        return ImageSource(
            ids=[str(i) for i in range(len(items))],
            labels=None,
            description=f"{len(items)} PIL images",
            loader=lambda i: items[i],
            stamper=lambda i: digest(
                f"{items[i].mode}{items[i].size}".encode() + items[i].tobytes()
            ),
        )
    if all(isinstance(item, str | os.PathLike) for item in items):
        paths = [Path(item) for item in items]
        return ImageSource(
            ids=[p.as_posix() for p in paths],
            labels=None,
            description=f"{len(paths)} image paths",
            loader=lambda i: Image.open(paths[i]),
            stamper=lambda i: file_stamp(paths[i]),
        )
    kinds = sorted({type(item).__name__ for item in items})
    raise TypeError(f"a list of images must hold only PIL images or only paths, got {kinds}")
