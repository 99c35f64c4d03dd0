"""``ImageStream``: images that can only be read in order, shard by shard (a streamed Hugging
Face ``IterableDataset``), with the positions an exact resume needs.

A stream is a list of shards; each is read from a position: the count of its images already
taken. Whether reaching that position re-reads the skipped rows (``resume="skip by count"``:
the rows are read and dropped, never decoded) is recorded in a cache's manifest. Items carry
their encoded bytes so that decoding happens where the extraction's ``DataLoader`` workers are.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from sae_vlm_plugin.images.source import ImageSource


@dataclass(frozen=True)
class StreamItem:
    """One image of a stream: its stable id, label and undecoded content (bytes, a path, or a
    PIL image when the stream gives nothing else)."""

    image_id: str
    label: str | None
    content: Any


def decode(content: Any) -> Image.Image:
    """A PIL image from a ``StreamItem``'s content: bytes, ``{"bytes": ..., "path": ...}`` (how
    ``datasets`` stores an undecoded image), a path, or a PIL image."""
    if isinstance(content, Image.Image):
        return content
    if isinstance(content, dict):
        content = content.get("bytes") or content.get("path")
    if isinstance(content, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(bytes(content)))
    if isinstance(content, str):
        return Image.open(content)
    raise TypeError(f"cannot decode an image from {type(content).__name__}")


@dataclass
class ImageStream:
    """Images read in order, shard by shard. ``read(shard, start)`` yields the items of one
    shard from its ``start``-th image on; the same arguments give the same items."""

    description: str
    shard_names: list[str]
    reader: Callable[[int, int], Iterator[StreamItem]]
    resume: Literal["skip by count"] = "skip by count"
    """How a rerun reaches a position: the rows before it are read and dropped (undecoded);
    a stream that could seek would say so here."""
    has_labels: bool = False

    @property
    def n_shards(self) -> int:
        return len(self.shard_names)

    def read(self, shard: int, start: int = 0) -> Iterator[StreamItem]:
        if not 0 <= shard < self.n_shards:
            raise ValueError(f"shard {shard} is out of range; valid shards 0..{self.n_shards - 1}")
        return self.reader(shard, start)


def items_source(items: list[StreamItem], description: str) -> ImageSource:
    """An ``ImageSource`` over items already read from a stream (decoded on ``load``)."""
    return ImageSource(
        ids=[item.image_id for item in items],
        labels=[str(item.label) for item in items]
        if items and all(item.label is not None for item in items)
        else None,
        description=description,
        loader=lambda i: decode(items[i].content),
        stamper=lambda i: "",
    )
