"""Image sources: one interface over PIL images, paths, folders, HF datasets and pixel tensors.

Every source has stable string ids (relative paths for folders, indices otherwise) in a fixed
order, and labels where it has them (an ImageNet-style tree's class folder names, an HF dataset's
``label`` column). Ids and order are what later metrics use to align activations with embeddings.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, Union

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from datasets import Dataset

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
            return _digest(self.pixels[index].detach().cpu().contiguous().numpy().tobytes())
        return str(self.stamper(index)) if self.stamper is not None else ""

    def fingerprint(self) -> str:
        """A hash of every image's id and content stamp, in order."""
        digest = hashlib.sha256()
        for index, image_id in enumerate(self.ids):
            digest.update(f"{image_id}\0{self.content_stamp(index)}\n".encode())
        return digest.hexdigest()[:16]

    def load(self, index: int) -> Image.Image:
        """The RGB image at ``index`` (see ``to_rgb``); raises ``ImageReadError`` naming it if
        unreadable."""
        try:
            image = self.loader(index)
            image.load()
            return to_rgb(image)
        except Exception as error:  # PIL raises many types for corrupt files
            raise ImageReadError(self.ids[index], error) from error


ImageInput: TypeAlias = Union[
    "ImageSource",
    str,
    os.PathLike[str],
    Sequence[str | os.PathLike[str] | Image.Image],
    torch.Tensor,
    "Dataset",
]
"""What every API that takes images accepts (``open_image_source`` turns it into an
``ImageSource``): a source, a folder, image paths, PIL images, a pixel tensor, an HF dataset."""


def open_image_source(images: ImageInput, *, description: str | None = None) -> ImageSource:
    """An ``ImageSource`` from any supported input.

    Accepts: an ``ImageSource`` (returned as is), a folder path (an ImageNet-style tree ``root/<class>/<image>`` or a flat folder),
    a list of image paths, a list of PIL images, an HF ``datasets.Dataset`` with an image column,
    or a ``(n, 3, h, w)`` pixel tensor (already preprocessed).
    """
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"a pixel tensor must be (n, 3, h, w), got {tuple(images.shape)}")
        source = ImageSource(
            ids=[str(i) for i in range(len(images))],
            labels=None,
            description="pixel tensor",
            pixels=images,
        )
    elif isinstance(images, str | os.PathLike):
        source = _folder_source(Path(images))
    elif _is_hf_dataset(images):
        source = _dataset_source(images)
    elif isinstance(images, Sequence) and not isinstance(images, str | bytes):
        source = _sequence_source(images)
    else:
        raise TypeError(
            f"unsupported image source {type(images).__name__}; pass a folder, a list of paths, "
            "a list of PIL images, a datasets.Dataset or a (n, 3, h, w) tensor"
        )
    if len(source) == 0:
        raise ValueError(f"the image source is empty: {source.description}")
    if description is not None:
        source.description = description
    return source


def _folder_source(root: Path) -> ImageSource:
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if root.is_file():
        return _sequence_source([root])
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}")
    ids = [p.relative_to(root).as_posix() for p in files]
    nested = all("/" in i for i in ids)
    labels = [i.split("/", 1)[0] for i in ids] if nested else None
    return ImageSource(
        ids=ids,
        labels=labels,
        description=f"folder {root}",
        loader=lambda i: Image.open(files[i]),
        stamper=lambda i: _file_stamp(files[i]),
    )


def _sequence_source(items: Sequence[Any]) -> ImageSource:
    if all(isinstance(item, Image.Image) for item in items):
        return ImageSource(
            ids=[str(i) for i in range(len(items))],
            labels=None,
            description=f"{len(items)} PIL images",
            loader=lambda i: items[i],
            stamper=lambda i: _digest(
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
            stamper=lambda i: _file_stamp(paths[i]),
        )
    kinds = sorted({type(item).__name__ for item in items})
    raise TypeError(f"a list of images must hold only PIL images or only paths, got {kinds}")


def _is_hf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "features")


def _dataset_source(dataset: Any) -> ImageSource:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    image_columns = [n for n, f in dataset.features.items() if isinstance(f, ImageFeature)]
    if not image_columns:
        raise ValueError(f"the dataset has no image column; its columns: {list(dataset.features)}")
    column = image_columns[0]
    labels = None
    for name in ("label", "labels", "class"):
        feature = dataset.features.get(name)
        if feature is not None:
            values = dataset[name]
            labels = (
                [feature.int2str(v) for v in values]
                if isinstance(feature, ClassLabel)
                else [str(v) for v in values]
            )
            break
    plain = dataset.with_format(None)
    return ImageSource(
        ids=[str(i) for i in range(len(dataset))],
        labels=labels,
        description=f"datasets.Dataset ({len(dataset)} rows, column {column!r})",
        loader=lambda i: plain[i][column],
        stamper=lambda i: f"{getattr(dataset, '_fingerprint', '')}:{i}",  # datasets' own hash
    )


def _file_stamp(path: Path) -> str:
    """A file's size and modification time (ns), or "missing" (loading it will say more)."""
    try:
        status = path.stat()
    except OSError:
        return "missing"
    return f"{status.st_size}:{status.st_mtime_ns}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
