"""The toy world written out in every form ``open_images`` reads, the same images in the same
order: (a) a folder tree, (b) webdataset shards (and ``b_url``: the same by URL, streamed), (c) a saved HF ``DatasetDict``, (d) parquet
shards, (e) the parquet shards streamed by ``datasets``, (f) a CSV of paths.

The order is the folder tree's (sorted relative paths ``<label>/<nnn>.png``), so row ``i`` of
every form is the same image with the same label. Images are PNG (lossless): every form
decodes to the same pixels.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from sae_vlm_plugin.toy import world_images

N_IMAGES = 20
N_SHARDS = 3


@dataclass
class Form:
    """One written form: the ``--images`` value, the extra arguments it needs, its ids."""

    images: str
    arguments: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


def toy_rows(n: int = N_IMAGES, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """``(relative path, label, PNG bytes)`` of ``n`` toy-world images, sorted by path."""
    images, objects = world_images(n, seed)
    rows = []
    for i, (image, obj) in enumerate(zip(images, objects, strict=True)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append((f"{obj.label}/{i:03d}.png", obj.label, buffer.getvalue()))
    return sorted(rows)


def _shard_bounds(n: int, n_shards: int) -> list[tuple[int, int]]:
    size = -(-n // n_shards)
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def write_forms(root: Path, n: int = N_IMAGES, seed: int = 0) -> dict[str, Form]:
    """Write the six forms under ``root``; returns them by letter."""
    import datasets
    import webdataset as wds

    rows = toy_rows(n, seed)
    paths = [path for path, _, _ in rows]
    labels = [label for _, label, _ in rows]
    forms: dict[str, Form] = {}

    tree = root / "a_tree"
    for path, _, data in rows:
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    forms["a"] = Form(str(tree), ids=paths)

    shards = root / "b_shards"
    shards.mkdir()
    tar_ids = []
    for s, (start, end) in enumerate(_shard_bounds(n, N_SHARDS)):
        with wds.TarWriter(str(shards / f"toy-{s:05d}.tar")) as sink:
            for path, label, data in rows[start:end]:
                key = path.removesuffix(".png")
                sink.write({"__key__": key, "png": data, "json": json.dumps({"label": label})})
                tar_ids.append(f"toy-{s:05d}.tar/{key}")
    pattern = f"{shards}/toy-{{00000..{N_SHARDS - 1:05d}}}.tar"
    forms["b"] = Form(pattern, ids=tar_ids)
    # the same shards by URL, which webdataset streams (here through a pipe)
    forms["b_url"] = Form(f"pipe:cat {pattern}", ids=tar_ids)

    names = sorted(set(labels))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": data, "path": None} for _, _, data in rows], "label": labels},
        features=features,
    )
    held_out = table.select(range(3))
    saved = root / "c_saved"
    datasets.DatasetDict({"train": table, "validation": held_out}).save_to_disk(str(saved))
    forms["c"] = Form(str(saved), ["--split", "train"], ids=[str(i) for i in range(n)])

    parquet = root / "d_parquet"
    parquet.mkdir()
    parquet_ids = []
    for s, (start, end) in enumerate(_shard_bounds(n, N_SHARDS)):
        table.select(range(start, end)).to_parquet(str(parquet / f"part-{s:05d}.parquet"))
        parquet_ids += [f"part-{s:05d}.parquet/{r}" for r in range(end - start)]
    forms["d"] = Form(str(parquet), ids=parquet_ids)

    streamed_ids = []
    for s, (start, end) in enumerate(_shard_bounds(n, N_SHARDS)):
        streamed_ids += [f"shard{s:05d}/{r}" for r in range(end - start)]
    forms["e"] = Form(f"hf:{parquet}", ["--split", "train", "--stream"], ids=streamed_ids)

    listing = root / "f_list.csv"
    listing.write_text(
        "path,label\n"
        + "".join(f"a_tree/{p},{label}\n" for p, label in zip(paths, labels, strict=True))
    )
    forms["f"] = Form(str(listing), ids=[f"a_tree/{p}" for p in paths])
    return forms
