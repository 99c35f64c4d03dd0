"""``open_images``: any supported input -> an ``ImageSource`` (random access) or an
``ImageStream`` (read in order); ``open_image_source`` for the APIs that need random access.

What a path or text names is decided from what is there, in this order:

- a webdataset URL (``pipe:``, ``http(s)://``, ``s3://``, ``gs://``, ``file:``): a stream;
- ``hf:NAME``: a dataset by hub name (or any path ``datasets.load_dataset`` takes), with a split;
- a folder written by ``save_to_disk`` (a ``DatasetDict`` needs a split);
- a root holding split folders (``train/`` + ``val/`` ...): refused unless a split is named,
  which then selects ``root/<split>`` and the rules go on from there;
- ``.tar`` shards: a ``.tar`` file, a brace pattern, a folder holding ``.tar`` files (webdataset);
- parquet: a ``.parquet`` file, a folder holding ``.parquet`` files and no image, or a glob: images if
  the table has an image column, else a path list;
- a ``.csv`` / ``.tsv`` / ``.txt`` path list;
- an image file; an image folder (ImageNet-style tree or flat).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, Union

import torch
from PIL import Image

from sae_vlm_plugin.images import folders, hf, parquet, path_lists, tar_shards
from sae_vlm_plugin.images.sequences import pixel_source, sequence_source
from sae_vlm_plugin.images.source import ImageSource
from sae_vlm_plugin.images.stream import ImageStream

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset

ImageInput: TypeAlias = Union[
    "ImageSource",
    "ImageStream",
    str,
    os.PathLike[str],
    Sequence[str | os.PathLike[str] | Image.Image],
    torch.Tensor,
    "Dataset",
    "DatasetDict",
    "IterableDataset",
]
"""What every API that takes images accepts (``open_images`` turns it into a source or a
stream): a source, a folder, tar shards, a saved or named HF dataset, parquet shards, a path
list, image paths, PIL images, a pixel tensor, an HF dataset object."""

FORMS = (
    "an image folder (tree or flat)",
    "webdataset .tar shards (file, brace pattern or folder)",
    "hf:NAME (with --split)",
    "a save_to_disk folder",
    "parquet shards",
    "a .csv / .tsv / .txt / .parquet path list",
)


def open_images(
    images: ImageInput,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    stream: bool = False,
    description: str | None = None,
) -> ImageSource | ImageStream:
    """An ``ImageSource`` or, for streams, an ``ImageStream`` from any supported input (see
    the module docstring). ``split`` picks a split (required where the input holds several);
    ``image_column`` / ``label_column`` name the columns of tabular forms (image key / label
    member or JSON field of webdataset shards); ``stream`` reads an HF dataset as a stream
    (``streaming=True``) instead of loading it."""
    options = {"image_column": image_column, "label_column": label_column}
    result: ImageSource | ImageStream
    in_memory = isinstance(images, ImageSource | ImageStream | torch.Tensor) or (
        isinstance(images, Sequence) and not isinstance(images, str | bytes)
    )
    if in_memory and (split or image_column or label_column or stream):
        raise ValueError(
            f"split, image_column, label_column and stream say how to open images; "
            f"the {type(images).__name__} passed is already open: pass them without it"
        )
    if isinstance(images, ImageSource | ImageStream):
        result = images
    elif isinstance(images, torch.Tensor):
        result = pixel_source(images)
    elif isinstance(images, str) and images.startswith(hf.HUB_PREFIX):
        name = images.removeprefix(hf.HUB_PREFIX)
        result = _from_dataset(
            hf.load_hub(name, split, stream), None, options, images, stream=stream
        )
    elif isinstance(images, str) and tar_shards.is_tar_url(images):
        result = tar_shards.webdataset_stream(
            images, image_key=image_column, label_key=label_column
        )
    elif isinstance(images, str | os.PathLike):
        result = _from_path(str(images), split, options, stream)
    elif hf.is_hf_dataset(images):
        result = _from_dataset(images, split, options, None, stream=stream)
    elif isinstance(images, Sequence) and not isinstance(images, bytes):
        result = sequence_source(images)
    else:
        raise TypeError(
            f"unsupported image source {type(images).__name__}; pass one of: "
            + "; ".join(FORMS)
            + "; a list of paths or PIL images, a datasets object or a (n, 3, h, w) tensor"
        )
    if isinstance(result, ImageSource) and len(result) == 0:
        raise ValueError(f"the image source is empty: {result.description}")
    if description is not None:
        result.description = description
    return result


def open_image_source(
    images: ImageInput,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    description: str | None = None,
) -> ImageSource:
    """An ``ImageSource`` (random access) from any supported input but a stream; a stream is
    refused with a TypeError (read it with ``extract_to_cache``, or load it instead)."""
    result = open_images(
        images,
        split=split,
        image_column=image_column,
        label_column=label_column,
        description=description,
    )
    if isinstance(result, ImageStream):
        raise TypeError(
            f"{result.description} is a stream, read in order, and this needs random access to "
            "the images: load the dataset instead of streaming it (no --stream), or extract "
            "it to a cache first (sae-vlm extract)"
        )
    return result


def _from_dataset(
    dataset: Any,
    split: str | None,
    options: dict[str, Any],
    name: str | None,
    *,
    stream: bool,
) -> ImageSource | ImageStream:
    from datasets import Dataset, DatasetDict

    dataset = hf.choose_split(dataset, split, name or f"the {type(dataset).__name__}")
    if stream and isinstance(dataset, Dataset):
        dataset = dataset.to_iterable_dataset()
    if isinstance(dataset, Dataset | DatasetDict):
        return hf.dataset_source(dataset, name=name, **options)
    return hf.stream_source(dataset, name=name, **options)


def _from_path(
    spec: str, split: str | None, options: dict[str, Any], stream: bool
) -> ImageSource | ImageStream:
    path = Path(spec).expanduser()
    if path.is_dir():
        if hf.is_saved_dataset(path):
            return _from_dataset(hf.load_saved(path), split, options, spec, stream=stream)
        path = folders.resolve_split(path, split, "dataset root")
        if hf.is_saved_dataset(path):
            return _from_dataset(hf.load_saved(path), None, options, str(path), stream=stream)
        split = None
    if split is not None:
        raise ValueError(
            f"--split {split} applies to a folder with split folders, a saved DatasetDict or "
            f"hf:NAME; {spec} is none of these"
        )
    if tar_shards.is_tar_spec(str(path)) or (path.is_dir() and tar_shards.holds_tar_shards(path)):
        _refuse_stream(stream, spec)
        return tar_shards.webdataset_source(
            path if path.is_dir() else str(path),
            image_key=options["image_column"],
            label_key=options["label_column"],
        )
    if _is_parquet(path):
        return _from_parquet(path, options, stream)
    if not path.exists():
        raise FileNotFoundError(f"image folder or file {spec} does not exist")
    if path.is_file() and path.suffix.lower() in path_lists.LIST_SUFFIXES:
        _refuse_stream(stream, spec)
        return path_lists.path_list_source(path, **options)
    _refuse_stream(stream, spec)
    if path.is_file():
        return sequence_source([path])
    return folders.folder_source(path)


def _is_parquet(path: Path) -> bool:
    text = str(path)
    if path.is_dir():  # parquet files beside no image (a README or a license may be there)
        suffixes = {p.suffix.lower() for p in path.iterdir() if p.is_file()}
        return ".parquet" in suffixes and not suffixes & folders.IMAGE_EXTENSIONS
    return text.endswith(".parquet") and (path.is_file() or any(c in text for c in "*?["))


def _from_parquet(path: Path, options: dict[str, Any], stream: bool) -> ImageSource | ImageStream:
    """Parquet shards of images, or a parquet path list: a file whose image column (named, or
    found by type) holds text rather than images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = parquet.parquet_paths(path)
    schema = pq.read_schema(files[0])
    named = options["image_column"]
    holds_paths = (
        named in schema.names and pa.types.is_string(schema.field(named).type)
        if named
        else not parquet.image_columns(schema)
    )
    if holds_paths:
        if not path.is_file():
            raise ValueError(
                f"{path} holds no image column (columns: {', '.join(schema.names)}); a parquet "
                "path list is one file, and parquet shards need an image column (--image-column)"
            )
        _refuse_stream(stream, str(path))
        return path_lists.path_list_source(path, **options)
    if stream:
        from datasets import load_dataset

        dataset = load_dataset(
            "parquet", data_files=[str(f) for f in files], split="train", streaming=True
        )
        return hf.stream_source(dataset, name=f"parquet {path} (streamed)", **options)
    return parquet.parquet_source(path, **options)


def _refuse_stream(stream: bool, spec: str) -> None:
    if stream:
        raise ValueError(
            f"--stream reads Hugging Face datasets (hf:NAME, parquet, save_to_disk) in order; "
            f"{spec} is read with random access, which resumes exactly without it: drop --stream"
        )
