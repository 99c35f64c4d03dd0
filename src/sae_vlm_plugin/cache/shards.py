"""One shard file of the cache: a safetensors file of ``activations`` (rows, d_in),
``image_index`` and ``token_index``, stamped with its cache id and shard number.

Shards are written atomically (a temporary file, then rename). Reading checks the header
against the file's size first, so a truncated file or another format renamed ``.safetensors``
raises a ``ShardError`` naming the file; ``shard_problems`` lists everything wrong with one
shard from its header alone.
"""

from __future__ import annotations

import json
import os
from math import prod
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae_vlm_plugin.cache.format import STORAGE_DTYPES, shard_label


class ShardError(ValueError):
    """A shard file that cannot be this cache's: truncated, corrupt, not safetensors, foreign."""


SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
"""Storage dtype -> its code in a safetensors header."""
_ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
"""Bytes per element of the safetensors dtypes a shard may name."""
MAX_HEADER_BYTES = 100_000_000
"""The largest header safetensors itself accepts."""


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    """A shard's tensors; its header is checked first, so a bad file raises a ``ShardError``
    naming it instead of whatever the safetensors reader makes of it."""
    read_header(path)
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError for bad data
        raise ShardError(f"{path}: unreadable safetensors file ({error})") from None


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (an 8-byte little-endian length, then JSON).

    The length is checked against the file's size before anything is read, so a truncated
    file or another format renamed ``.safetensors`` (a pickle's first 8 bytes make a length of
    petabytes) raises a ``ShardError`` naming the file instead of a ``JSONDecodeError`` or a
    ``MemoryError``; the tensors' byte ranges must then exactly fill the rest of the file.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        length = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or length > min(size - 8, MAX_HEADER_BYTES):
            raise ShardError(
                f"{path}: not a safetensors file or truncated (its {size} bytes cannot hold "
                + (f"the {length}-byte header it announces)" if len(prefix) == 8 else "a header)")
            )
        raw = file.read(length)
    try:
        header = json.loads(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ShardError(f"{path}: unreadable safetensors header ({error})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ShardError(f"{path}: its safetensors header is not a JSON object of entries")
    _check_data_extent(path, header, size - 8 - length)
    return header


def _check_data_extent(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    """Each tensor's byte range fits its dtype and shape, and together they end where the
    file does (a truncated file ends early)."""
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            n_bytes = _ITEM_SIZES[entry["dtype"]] * prod(entry["shape"])
        except (KeyError, TypeError, ValueError):
            raise ShardError(f"{path}: malformed safetensors entry for {name!r}") from None
        if stop - begin != n_bytes:
            raise ShardError(f"{path}: tensor {name!r} has {stop - begin} bytes, needs {n_bytes}")
        end = max(end, stop)
    if end != data_bytes:
        raise ShardError(
            f"{path}: its tensors need {end} bytes of data, the file holds {data_bytes} "
            "(truncated or corrupt)"
        )


def shard_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file, from its header."""
    return dict(read_header(path).get("__metadata__", {}))


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without reading the data."""
    header = read_header(path)
    return {name: entry["shape"] for name, entry in header.items() if name != "__metadata__"}


def header_rows(path: Path) -> int:
    """The rows of activations a shard's header announces (0 if it cannot be read)."""
    try:
        shape = tensor_shapes(path).get("activations") or [0]
    except ShardError:
        return 0
    return int(shape[0])


def shard_problems(
    path: Path, d_in: int, dtype: str, cache_id: str, rows: int | None = None
) -> list[str]:
    """What is wrong with one shard file, from its header alone: unreadable, written for
    another cache (``cache_id``) or as another shard of this one, or not ``rows`` (if known) rows of ``d_in`` ``dtype`` values
    with their image and token indices. Empty when it is sound."""
    try:
        header = read_header(path)
    except ShardError as error:
        return [str(error)]
    metadata = header.get("__metadata__", {})
    if metadata.get("cache", cache_id) != cache_id:  # shards written before cache ids: none
        return [f"{path}: a shard of another cache (cache id {metadata['cache']}, not {cache_id})"]
    if metadata.get("shard", shard_label(path)) != shard_label(path):
        return [f"{path}: a copy of shard {metadata['shard']}"]
    expected = {
        "activations": (SAFETENSORS_DTYPES[dtype], 2),
        "image_index": ("I64", 1),
        "token_index": ("I64", 1),
    }
    if set(header) - {"__metadata__"} != set(expected):
        return [
            f"{path}: holds tensors {sorted(set(header) - {'__metadata__'})}, not {sorted(expected)}"
        ]
    problems = [
        f"{path}: {name} is {header[name]['dtype']} of shape {header[name]['shape']}, "
        f"expected {code} with {n_dims} dimension(s)"
        for name, (code, n_dims) in expected.items()
        if header[name]["dtype"] != code or len(header[name]["shape"]) != n_dims
    ]
    if problems:
        return problems
    n_rows, width = header["activations"]["shape"]
    if width != d_in:
        problems.append(f"{path}: activations are {width} wide, the manifest says d_in={d_in}")
    if header["image_index"]["shape"] != [n_rows] or header["token_index"]["shape"] != [n_rows]:
        problems.append(f"{path}: its index tensors do not have one entry per row ({n_rows})")
    if rows is not None and n_rows != rows:
        problems.append(f"{path}: {n_rows} rows, the manifest records {rows}")
    return problems


def write_shard(
    path: Path,
    parts: list[Any],
    d_in: int,
    dtype: str,
    skipped: list[str],
    cache_id: str,
    extra: dict[str, str] | None = None,
) -> None:
    """Write one shard atomically; ``extra`` adds string metadata (a stream chunk's image ids,
    labels and whether its source shard ends there)."""
    if parts:
        activations = torch.cat([p.activations for p in parts])
        image_index = torch.cat([p.image_index for p in parts])
        token_index = torch.cat([p.token_index for p in parts])
    else:
        activations = torch.empty(0, d_in)
        image_index = token_index = torch.empty(0, dtype=torch.long)
    tensors = {
        "activations": activations.to(STORAGE_DTYPES[dtype]).contiguous().cpu(),
        "image_index": image_index.contiguous().cpu(),
        "token_index": token_index.contiguous().cpu(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    metadata = {
        **(extra or {}),
        "skipped": json.dumps(skipped),
        "cache": cache_id,
        "shard": shard_label(path),
    }
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
