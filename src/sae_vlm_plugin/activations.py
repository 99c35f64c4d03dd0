"""Activation extraction: images -> one forward pass per batch -> selected tokens of each hook.

``extract_activations`` returns them in memory; ``cache.extract_to_cache`` streams the same
batches to disk. Several hooks come from one pass, which stops after the deepest hook.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from sae_vlm_plugin.families.base import Preprocessor
from sae_vlm_plugin.hooks import HookPoint
from sae_vlm_plugin.images import ImageReadError, ImageSource, open_image_source
from sae_vlm_plugin.model import ModelLike, VisionModel, as_vision_model
from sae_vlm_plugin.threads import ThreadGovernor
from sae_vlm_plugin.tokens import TokenSelection

if TYPE_CHECKING:
    from sae_vlm_plugin.images import ImageInput

logger = logging.getLogger(__name__)


@dataclass
class HookBatch:
    """Selected rows of one hook for one batch of images."""

    activations: torch.Tensor
    """``(rows, d)``"""
    image_index: torch.Tensor
    """``(rows,)`` position of each row's image in the source"""
    token_index: torch.Tensor
    """``(rows,)`` token position of each row (-1 for ``mean`` and token-less hooks)"""


@dataclass
class ExtractedBatch:
    image_indices: list[int]
    """Source positions of the images that were read, in order."""
    skipped: list[str]
    """Ids of unreadable images skipped in this batch."""
    hooks: dict[str, HookBatch]


def resolve_hooks(
    model: VisionModel, hooks: str | Sequence[str], tokens: TokenSelection
) -> list[HookPoint]:
    """The hook points for ``hooks``, checked against the token selection."""
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise ValueError(
            f"no hooks requested; {model.model_name} offers: {', '.join(model.hook_points)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"hooks requested more than once: {names}")
    points = [model.hook_point(name) for name in names]
    for point in points:
        if point.has_tokens:
            if tokens.kind == "cls" and not point.has_cls:
                where = (
                    f"the {model.family.name} family"
                    if point.name.startswith(("blocks", "vision"))
                    else point.name
                )
                raise ValueError(
                    f"tokens='cls' needs a CLS token, and {where} has none ({point.name}); use "
                    "'mean', 'patches', 'all' or 'random_k' (the paper takes two random tokens "
                    "per image from encoders without CLS)"
                )
        elif tokens.kind in ("patches", "random_k"):
            raise ValueError(
                f"{point.name} is one vector per image, so tokens={tokens.kind!r} does not apply; "
                "use 'cls', 'mean' or 'all' (they all give that vector)"
            )
    return points


def select_rows(
    point: HookPoint,
    value: torch.Tensor,
    tokens: TokenSelection,
    image_ids: Sequence[str],
    image_indices: Sequence[int],
) -> HookBatch:
    """Apply the token selection to one hook's value for a batch."""
    if point.has_tokens:
        rows, token_index = tokens.select(value, image_ids, point.n_prefix_tokens)
        per_image = rows.shape[0] // len(image_ids)
    else:
        rows, token_index, per_image = value, torch.full((value.shape[0],), -1), 1
    image_index = torch.tensor(image_indices, dtype=torch.long).repeat_interleave(per_image)
    return HookBatch(rows, image_index, token_index.to(torch.long))


class _PreprocessedImages(Dataset):
    """Source images at given positions, preprocessed one by one (runs in DataLoader workers)."""

    def __init__(
        self,
        source: ImageSource,
        indices: Sequence[int],
        preprocess: Preprocessor,
        skip_unreadable: bool,
    ) -> None:
        self.source, self.indices, self.preprocess = source, list(indices), preprocess
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None]:
        index = self.indices[position]
        if self.source.pixels is not None:
            return index, self.source.pixels[index]
        try:
            image = self.source.load(index)
            try:
                return index, self.preprocess([image])[0]
            except Exception as error:  # any image its preprocessor cannot take is named
                raise ImageReadError(self.source.ids[index], error) from error
        except ImageReadError:
            if self.skip_unreadable:
                return index, None
            raise


def _collate(
    items: list[tuple[int, torch.Tensor | None]],
) -> tuple[list[int], list[int], torch.Tensor | None]:
    read = [(i, pixels) for i, pixels in items if pixels is not None]
    skipped = [i for i, pixels in items if pixels is None]
    pixels = torch.stack([p for _, p in read]) if read else None
    return [i for i, _ in read], skipped, pixels


_GOVERNOR = ThreadGovernor()
"""Fewer CPU threads for the forwards while other processes share the cores; one for the
process, so that what it learnt of the load carries over from one extraction to the next."""


def iter_extracted_batches(
    model: VisionModel,
    source: ImageSource,
    points: Sequence[HookPoint],
    tokens: TokenSelection,
    indices: Sequence[int],
    batch_size: int,
    *,
    skip_unreadable: bool = False,
    num_workers: int = 0,
) -> Iterator[ExtractedBatch]:
    """Extract ``points`` for the images at ``indices``, ``batch_size`` images at a time. On
    the CPU the forwards run on the cores other processes leave free (``ThreadGovernor``;
    ``SAE_VLM_ADAPTIVE_THREADS=0``: always on the caller's threads, bit for bit whatever the
    load)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = _PreprocessedImages(source, indices, model.preprocess, skip_unreadable)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    names = [p.name for p in points]
    governor = _GOVERNOR
    on_cpu = model.device is None or torch.device(model.device).type == "cpu"
    with governor.loop(on_cpu=on_cpu):
        for image_indices, skipped_indices, pixels in loader:
            skipped = [source.ids[i] for i in skipped_indices]
            if pixels is None:
                yield ExtractedBatch([], skipped, {})
                continue
            with governor.unit(on_cpu=on_cpu):
                values = model.capture(pixels, names)
            image_ids = [source.ids[i] for i in image_indices]
            yield ExtractedBatch(
                image_indices,
                skipped,
                {
                    p.name: select_rows(p, values[p.name], tokens, image_ids, image_indices)
                    for p in points
                },
            )


def extract_activations(
    model: ModelLike,
    images: ImageInput,
    hooks: str | Sequence[str],
    tokens: str | TokenSelection = "cls",
    batch_size: int = 32,
    *,
    k: int = 2,
    seed: int = 0,
    skip_unreadable: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Activations of ``hooks`` on ``images``, in memory: ``{hook_name: (rows, d) tensor}``.

    ``images``: PIL images, paths, a folder, an HF dataset or a ``(n, 3, h, w)`` pixel tensor.
    ``tokens``: ``cls``, ``patches``, ``all``, ``mean`` or ``random_k`` (``k`` tokens per image,
    seeded by ``seed`` and the image id). Rows are grouped by image in source order. Each batch
    is one forward pass that stops after the deepest requested hook.
    """
    vision_model = as_vision_model(model)
    selection = TokenSelection.parse(tokens, k=k, seed=seed)
    source = open_image_source(images)
    points = resolve_hooks(vision_model, hooks, selection)
    collected: dict[str, list[torch.Tensor]] = {p.name: [] for p in points}
    n_skipped = 0
    for batch in iter_source_batches(
        vision_model,
        source,
        points,
        selection,
        batch_size,
        skip_unreadable=skip_unreadable,
        num_workers=num_workers,
        progress=progress,
    ):
        n_skipped += len(batch.skipped)
        for name, rows in batch.hooks.items():
            collected[name].append(rows.activations.float().cpu())
    if n_skipped:
        logger.warning("skipped %d unreadable image(s) of %d", n_skipped, len(source))
    return {name: torch.cat(parts) for name, parts in collected.items()}


def iter_source_batches(
    model: VisionModel,
    source: ImageSource,
    points: Sequence[HookPoint],
    tokens: TokenSelection,
    batch_size: int,
    *,
    skip_unreadable: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    description: str = "extract",
) -> Iterator[ExtractedBatch]:
    """Every image of ``source`` once, in order (``iter_extracted_batches`` over all of it), under
    a progress bar; ValueError at the end if no image was readable. Batches whose images were
    all skipped are yielded too (``hooks`` empty), so a caller can count ``skipped``."""
    from tqdm.auto import tqdm

    any_readable = False
    with tqdm(total=len(source), desc=description, unit="img", disable=not progress) as bar:
        for batch in iter_extracted_batches(
            model,
            source,
            points,
            tokens,
            range(len(source)),
            batch_size,
            skip_unreadable=skip_unreadable,
            num_workers=num_workers,
        ):
            bar.update(len(batch.image_indices) + len(batch.skipped))
            any_readable = any_readable or bool(batch.hooks)
            yield batch
    if not any_readable:
        raise ValueError(f"no readable images in {source.description}")
