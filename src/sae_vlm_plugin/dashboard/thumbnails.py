"""Thumbnails of images, written once per image (its id and content stamp) and size, and reused by
later builds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image

from sae_vlm_plugin.images import ImageSource


def thumbnail_name(image_id: str, size: int, stamp: str = "") -> str:
    """Relative path of an image's thumbnail: stable across builds of the same image, new when
    its content ``stamp`` (``ImageSource.content_stamp``) changes, safe for any id."""
    digest = hashlib.sha1(f"{image_id}\0{stamp}".encode()).hexdigest()[:20]
    return f"thumbs/{size}/{digest}.jpg"


def write_thumbnails(
    source: ImageSource, indices: Iterable[int], out_dir: Path, *, size: int = 112
) -> dict[int, str]:
    """Write the thumbnails of ``source`` images ``indices`` under ``out_dir`` (skipping files
    that exist); returns ``index -> relative path``."""
    paths: dict[int, str] = {}
    for index in sorted(set(indices)):
        relative = thumbnail_name(source.ids[index], size, source.content_stamp(index))
        target = out_dir / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            image = _pixels_image(source, index) if source.is_pixels else source.load(index)
            image.thumbnail((size, size))
            partial = target.with_suffix(".tmp")
            image.save(partial, format="JPEG", quality=85)
            partial.replace(target)
        paths[index] = relative
    return paths


def _pixels_image(source: ImageSource, index: int) -> Image.Image:
    """A preprocessed ``(3, h, w)`` tensor shown with min-max scaling (its normalisation is
    unknown here)."""
    assert source.pixels is not None
    pixels = source.pixels[index].float()
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min()).clamp(min=1e-12)
    array = (pixels.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array, mode="RGB")
