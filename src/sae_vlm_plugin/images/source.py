"""``ImageSource``: an ordered, random-access collection of images with stable ids and labels.

Every form of input (``sae_vlm_plugin.images.open``) becomes one of these: stable string ids in
a fixed order (relative paths for folders, shard + key for webdataset tars, index for datasets),
and labels where the form has them. Ids and order are what later metrics use to align
activations with embeddings. ``to_rgb`` is how every decoded image becomes 8-bit RGB.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

BACKGROUND = (255, 255, 255)
"""The colour transparent pixels are composited onto (white, as a page shows them)."""

_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
"""PIL modes of single-channel images wider than 8 bits (16-bit PNG / TIFF, 32-bit int, float)."""


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """An 8-bit RGB image as a person would see ``image``.

    PIL's own ``convert("RGB")`` clips wide integer images at 255 (a 16-bit scan turns white)
    and drops alpha, keeping the colour hidden under transparent pixels. Here a wide
    single-channel image is scaled from the 16-bit range, ``v8 = round(clip(v, 0, 65535) / 257)``
    (an image whose values all fit in 8 bits is kept as is), and an image with alpha is composited
    onto ``background``: ``rgb = a * colour + (1 - a) * background``.
    """
    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        if values.size and values.max() > 255:
            values = np.clip(values, 0, 65535) / 257
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        layer = image.convert("RGBA")
        canvas = Image.new("RGBA", layer.size, (*background, 255))
        canvas.alpha_composite(layer)
        return canvas.convert("RGB")
    return image.convert("RGB")


class ImageReadError(ValueError):
    """An image that cannot be opened or decoded; ``image_id`` names it."""

    def __init__(self, image_id: str, cause: Exception) -> None:
        super().__init__(f"cannot read image {image_id}: {type(cause).__name__}: {cause}")
        self.image_id = image_id


@dataclass
class ImageSource:
    """An ordered collection of images with ids (and labels where known).

    Exactly one of ``pixels`` (an already preprocessed ``(n, 3, h, w)`` tensor) or ``loader``
    (``index -> PIL image``) is set.
    """

    ids: list[str]
    labels: list[str] | None
    description: str
    loader: Any = None
    pixels: torch.Tensor | None = None
    stamper: Any = None
    """``index -> str``: what tells an image's content apart from another under the same id (a
    file's size and modification time, a hash of a PIL image's pixels), or None for pixels."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_pixels(self) -> bool:
        return self.pixels is not None

    def content_stamp(self, index: int) -> str:
        """A short text that changes when image ``index``'s content does while its id stays:
        a file's size and modification time (not a hash of the file: stamping a folder must
        not read a million images), a hash of pixels held in memory."""
        if self.pixels is not None:
            return digest(self.pixels[index].detach().cpu().contiguous().numpy().tobytes())
        return str(self.stamper(index)) if self.stamper is not None else ""

    def fingerprint(self) -> str:
        """A hash of every image's id and content stamp, in order."""
        hasher = hashlib.sha256()
        for index, image_id in enumerate(self.ids):
            hasher.update(f"{image_id}\0{self.content_stamp(index)}\n".encode())
        return hasher.hexdigest()[:16]

    def load(self, index: int) -> Image.Image:
        """The RGB image at ``index`` (see ``to_rgb``); raises ``ImageReadError`` naming it if
        unreadable."""
        try:
            image = self.loader(index)
            image.load()
            return to_rgb(image)
        except Exception as error:  # PIL raises many types for corrupt files
            raise ImageReadError(self.ids[index], error) from error


def file_stamp(path: Path) -> str:
    """A file's size and modification time (ns), or "missing" (loading it will say more)."""
    try:
        status = path.stat()
    except OSError:
        return "missing"
    return f"{status.st_size}:{status.st_mtime_ns}"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
