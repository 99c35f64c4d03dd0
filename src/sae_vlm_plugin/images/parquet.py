"""Parquet shards holding the images themselves (as ``datasets`` writes them: a struct of
``bytes`` and ``path``, or a plain binary column), read with ``pyarrow`` by row group.

A ``.parquet`` file, a folder of them or a glob; ids are ``<file>/<row>``, the file named
relative to the folder the shards share. Labels come from the label column, as names when the
file's ``huggingface`` schema metadata declares a ``ClassLabel``. Row counts come from the
files' footers, so opening a million-row table reads no image; an image is read with its row
group (the last row group read is kept, so reading in order reads each group once).
"""

from __future__ import annotations

import glob
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from sae_vlm_plugin.images.columns import choose_image_column, choose_label_column
from sae_vlm_plugin.images.source import ImageSource, file_stamp
from sae_vlm_plugin.images.stream import decode


def parquet_paths(spec: str | Path) -> list[Path]:
    """The ``.parquet`` files of a file, a folder (sorted) or a glob (sorted)."""
    text = str(spec)
    if Path(text).is_dir():
        paths = sorted(p for p in Path(text).iterdir() if p.suffix == ".parquet" and p.is_file())
    elif any(c in text for c in "*?["):
        paths = sorted(Path(p) for p in glob.glob(text))
    else:
        paths = [Path(text)]
    if not paths:
        raise ValueError(f"no .parquet files in {text}")
    return paths


def _hf_features(schema: Any) -> dict[str, Any]:
    """The ``datasets`` features a file's schema metadata declares ({} if none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    info = json.loads(raw).get("info", {})
    return dict(info.get("features") or {})


def image_columns(schema: Any) -> list[str]:
    """The columns of an arrow ``schema`` that hold images: declared ``Image`` in the
    ``huggingface`` metadata, else a struct with a ``bytes`` field, else a binary column."""
    import pyarrow as pa

    declared = [n for n, f in _hf_features(schema).items() if f.get("_type") == "Image"]
    if declared:
        return declared
    structs = [
        f.name
        for f in schema
        if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0
    ]
    return structs or [
        f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    ]


def parquet_source(
    spec: str | Path, *, image_column: str | None = None, label_column: str | None = None
) -> ImageSource:
    """An ``ImageSource`` over parquet shards of images (see the module docstring)."""
    import pyarrow.parquet as pq

    paths = parquet_paths(spec)
    files = [pq.ParquetFile(p) for p in paths]
    schema = files[0].schema_arrow
    where = f"the parquet table {spec}"
    image = choose_image_column(image_columns(schema), schema.names, image_column, where)
    label = choose_label_column([n for n in schema.names if n != image], label_column, where)
    names = (
        [paths[0].name]
        if len(paths) == 1
        else [
            p.resolve()
            .relative_to(os.path.commonpath([q.resolve().parent for q in paths]))
            .as_posix()
            for p in paths
        ]
    )
    for path, file in zip(paths, files, strict=True):
        if file.schema_arrow.names != schema.names:
            raise ValueError(
                f"{path} has the columns {file.schema_arrow.names}, the first shard "
                f"{paths[0]} {schema.names}; all shards must share one schema"
            )
    # (file, row group, row in group) of every row, from the footers only.
    where_rows: list[tuple[int, int, int]] = []
    ids: list[str] = []
    for f, file in enumerate(files):
        row = 0
        for group in range(file.metadata.num_row_groups):
            n = file.metadata.row_group(group).num_rows
            where_rows += [(f, group, r) for r in range(n)]
            ids += [f"{names[f]}/{row + r}" for r in range(n)]
            row += n
    labels = None
    if label is not None:
        class_names = _hf_features(schema).get(label, {}).get("names")
        values = [v for file in files for v in file.read(columns=[label]).column(0).to_pylist()]
        labels = [
            class_names[v] if class_names and isinstance(v, int) and v >= 0 else str(v)
            for v in values
        ]
    stamps = [file_stamp(p) for p in paths]

    @lru_cache(maxsize=1)
    def group_images(f: int, group: int) -> list[Any]:
        return files[f].read_row_group(group, columns=[image]).column(0).to_pylist()

    def load(i: int) -> Any:
        f, group, r = where_rows[i]
        return decode(group_images(f, group)[r])

    return ImageSource(
        ids=ids,
        labels=labels,
        description=f"parquet {spec} ({len(paths)} file(s), column {image!r})",
        loader=load,
        stamper=lambda i: f"{stamps[where_rows[i][0]]}",
    )
