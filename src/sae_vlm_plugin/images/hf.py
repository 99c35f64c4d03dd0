"""Hugging Face ``datasets`` forms: a ``Dataset`` (in memory, saved with ``save_to_disk``, or
loaded by hub name), a ``DatasetDict`` with a split chosen, and streams (``streaming=True`` /
``IterableDataset``) as an ``ImageStream``.

Ids are the row index (``dataset + index``: the manifest records which dataset); a stream's
are ``<shard>/<index in shard>``, its shards being the dataset's own (``n_shards``: its data
files). The image column is the one of ``datasets.Image`` type (or named); labels come from a
``ClassLabel`` (as names) or plain label column (see ``columns``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sae_vlm_plugin.images.columns import choose_image_column, choose_label_column
from sae_vlm_plugin.images.source import ImageSource
from sae_vlm_plugin.images.stream import ImageStream, StreamItem

HUB_PREFIX = "hf:"


def is_hf_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a ``datasets`` object: ``Dataset``, ``IterableDataset`` or a dict of
    them (checked by module, so that ``datasets`` is imported only when one is passed)."""
    return type(obj).__module__.startswith("datasets.")


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def choose_split(dataset: Any, split: str | None, where: str) -> Any:
    """``dataset`` itself, or its split ``split`` when it is a ``DatasetDict`` /
    ``IterableDatasetDict``: ValueError naming the splits when none or a bad one is named."""
    if not isinstance(dataset, dict):
        actual = getattr(dataset, "split", None)  # the split it was loaded as, if any
        if split is not None and actual is not None and str(actual) != split:
            raise ValueError(f"{where} is the split {actual}, not {split!r}; drop --split")
        return dataset
    names = sorted(dataset)
    if split is None:
        raise ValueError(f"{where} holds the splits {', '.join(names)}; name one with --split")
    if split not in dataset:
        raise ValueError(f"{where} has no split {split!r}; its splits: {', '.join(names)}")
    return dataset[split]


def _features(dataset: Any, where: str) -> dict[str, Any]:
    if dataset.features is None:  # a stream that declares none: datasets reads the first row
        dataset = dataset._resolve_features()
    return dict(dataset.features)


def _columns(
    dataset: Any, image_column: str | None, label_column: str | None, where: str
) -> tuple[str, str | None, Any]:
    """The image column, the label column (or None) and the label feature."""
    from datasets import Image as ImageFeature

    features = _features(dataset, where)
    candidates = [name for name, f in features.items() if isinstance(f, ImageFeature)]
    image = choose_image_column(candidates, list(features), image_column, where)
    label = choose_label_column([c for c in features if c != image], label_column, where)
    return image, label, features.get(label) if label else None


def _label_text(feature: Any, value: Any) -> str:
    from datasets import ClassLabel

    if isinstance(feature, ClassLabel) and isinstance(value, int) and value >= 0:
        return str(feature.int2str(value))
    return str(value)


def dataset_source(
    dataset: Any,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    name: str | None = None,
) -> ImageSource:
    """An ``ImageSource`` over a ``datasets.Dataset`` (or a split of a ``DatasetDict``)."""
    where = name or f"the {type(dataset).__name__}"
    dataset = choose_split(dataset, split, where)
    image, label, feature = _columns(dataset, image_column, label_column, where)
    labels = [_label_text(feature, v) for v in dataset.with_format(None)[label]] if label else None
    plain = dataset.with_format(None)
    return ImageSource(
        ids=[str(i) for i in range(len(dataset))],
        labels=labels,
        description=f"{name or 'datasets.Dataset'} ({len(dataset)} rows, column {image!r})",
        loader=lambda i: _decoded(plain[i][image]),
        stamper=lambda i: f"{getattr(dataset, '_fingerprint', '')}:{i}",  # datasets' own hash
    )


def _decoded(value: Any) -> Any:
    """A PIL image from an image column's value (decoded by ``datasets``, or its raw
    ``{"bytes", "path"}`` form when the column was cast with ``decode=False``)."""
    from sae_vlm_plugin.images.stream import decode

    return decode(value)


def stream_source(
    dataset: Any,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    name: str | None = None,
) -> ImageStream:
    """An ``ImageStream`` over a ``datasets.IterableDataset`` (or a split of an
    ``IterableDatasetDict``). Images are passed on undecoded (the column is cast to
    ``Image(decode=False)``), so skipping rows to a resume position never decodes them."""
    from datasets import Image as ImageFeature

    where = name or "the IterableDataset"
    dataset = choose_split(dataset, split, where)
    image, label, feature = _columns(dataset, image_column, label_column, where)
    raw = dataset.cast_column(image, ImageFeature(decode=False))
    n_shards = raw.n_shards
    names = [f"shard{j:05d}" for j in range(n_shards)]

    def read(shard: int, start: int) -> Iterator[StreamItem]:
        part = raw.shard(num_shards=n_shards, index=shard, contiguous=True)
        if start:
            part = part.skip(start)
        for position, row in enumerate(part, start):
            yield StreamItem(
                f"{names[shard]}/{position}",
                _label_text(feature, row[label]) if label else None,
                row[image],
            )

    return ImageStream(
        description=f"{name or 'datasets.IterableDataset'} ({n_shards} shard(s), column {image!r})",
        shard_names=names,
        reader=read,
        resume="skip by count",
        has_labels=label is not None,
    )


def load_saved(folder: Path) -> Any:
    """The ``Dataset`` or ``DatasetDict`` saved in ``folder``."""
    from datasets import load_from_disk

    return load_from_disk(str(folder))


def load_hub(name: str, split: str | None, streaming: bool) -> Any:
    """``datasets.load_dataset(name, split=split, streaming=streaming)``, as the user's
    ``datasets`` cache and network allow; without a split, ValueError naming the splits
    (listing them does not download the data)."""
    from datasets import get_dataset_split_names, load_dataset

    if split is None:
        splits = get_dataset_split_names(name)
        if len(splits) != 1:
            raise ValueError(f"hf:{name} has the splits {', '.join(splits)}; name one with --split")
        split = splits[0]
    return load_dataset(name, split=split, streaming=streaming)
