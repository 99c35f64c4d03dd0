"""Webdataset ``.tar`` shards, read with random access: a local ``.tar``, a brace pattern
(``shards/{00000..00099}.tar``) or a folder of shards.

A sample is what webdataset makes of a tar: consecutive members sharing a key (``webdataset``'s
``base_plus_ext``: ``dir/000017.jpg`` and ``dir/000017.json`` are sample ``dir/000017``). Its
image is the member whose extension names an image format (``jpg``, ``png``, ``webp`` ...), or
the one named ``image_key`` (a sample with several image members needs it); its label comes
from ``.cls`` (text) or a ``.json`` member's ``label`` / ``class`` / ``cls`` field (when the
first sample's JSON has none, the others' are not read for labels), or the member or JSON field
named ``label_key``.

Each shard's members are indexed once from the tar headers (``tarfile`` seeks past the data,
so indexing reads a few hundred bytes per member, not the images); an image is then read by
seeking to its bytes. That gives exact positions: an extraction resumes and splits across
``torchrun`` ranks image by image without re-reading anything. Ids are ``<shard>/<key>``, the
shard named relative to the folder the shards share. A member that fails to decode raises
``ImageReadError`` naming that id (``--skip-unreadable`` skips it); a tar whose headers cannot
be read is refused naming the shard.

Shards named by URL (``pipe:...``, ``http(s)://``, ``s3://``, ``gs://``, ``file:``; brace
patterns expand) cannot be indexed: ``webdataset_stream`` reads them in order with webdataset's
own pipeline as an ``ImageStream`` (same ids and labels; a resume skips the images already
extracted by count).
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braceexpand import braceexpand
from PIL import Image
from webdataset.tariterators import base_plus_ext

from sae_vlm_plugin.images.source import ImageSource, file_stamp
from sae_vlm_plugin.images.stream import ImageStream, StreamItem

logger = logging.getLogger(__name__)

WEBDATASET_IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "ppm", "pgm", "pbm", "pnm", "webp", "bmp", "gif", "tif", "tiff"}
)
"""Member extensions taken as images (webdataset's image decoders, plus bmp, gif, tiff)."""

JSON_LABEL_FIELDS = ("label", "class", "cls")
"""Fields of a sample's ``.json`` member taken as its label, in this order."""


@dataclass(frozen=True)
class TarMember:
    """Where one member's bytes lie in its shard."""

    offset: int
    size: int

    def read(self, path: Path) -> bytes:
        with path.open("rb") as file:
            file.seek(self.offset)
            data = file.read(self.size)
        if len(data) != self.size:
            raise ValueError(f"truncated member: {len(data)} of {self.size} bytes")
        return data


def is_tar_spec(spec: str) -> bool:
    """Whether ``spec`` is written as tar shards: ends in ``.tar`` (a file or brace pattern)."""
    return spec.endswith(".tar") and ("{" in spec or Path(spec).is_file())


def holds_tar_shards(folder: Path) -> bool:
    """Whether ``folder`` directly holds ``.tar`` files (a folder of shards)."""
    return any(p.suffix == ".tar" and p.is_file() for p in folder.iterdir())


def shard_paths(spec: str | Path) -> list[Path]:
    """The shard files of a ``.tar`` path, a brace pattern or a folder of ``.tar`` files, in
    order (the pattern's order; a folder's sorted by name). FileNotFoundError naming the first
    missing shard."""
    text = str(spec)
    if Path(text).is_dir():
        paths = sorted(p for p in Path(text).iterdir() if p.suffix == ".tar" and p.is_file())
        if not paths:
            raise ValueError(f"no .tar shards in the folder {text}")
        return paths
    paths = [Path(p) for p in braceexpand(text)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"no such shard: {missing[0]} ({len(missing)} of the {len(paths)} shards of {text} "
            "are missing)"
        )
    return paths


def _shard_names(paths: list[Path]) -> list[str]:
    """Each shard's name in ids: its path relative to the folder all the shards share."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    return [p.resolve().relative_to(common).as_posix() for p in paths]


def _index_shard(path: Path) -> list[tuple[str, dict[str, TarMember]]]:
    """The samples of one shard, in tar order: ``(key, {extension: member})``, grouped as
    webdataset groups them (consecutive members with the same key; extensions lower-cased)."""
    samples: list[tuple[str, dict[str, TarMember]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                split = base_plus_ext(info.name)
                if split[0] is None:
                    continue  # webdataset skips members without an extension too
                key, extension = split[0], split[1].lower()
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][extension] = TarMember(info.offset_data, info.size)
    except tarfile.ReadError as error:
        if samples:  # a truncated shard: what was indexed stays, the last member fails to read
            logger.warning(
                "shard %s ends early (%s); %d samples indexed", path, error, len(samples)
            )
        else:
            raise ValueError(f"cannot read the tar shard {path}: {error}") from None
    return samples


def _image_member(members: Mapping[str, Any], image_key: str | None, sample: str) -> str | None:
    """The extension of sample ``sample``'s image member: ``image_key``, else the one whose last
    part names an image format (ValueError naming them if there are several); None if none."""
    if image_key is not None:
        return image_key if image_key in members else None
    found = [ext for ext in members if ext.rsplit(".", 1)[-1] in WEBDATASET_IMAGE_EXTENSIONS]
    if len(found) > 1:
        raise ValueError(
            f"sample {sample} has several image members ({', '.join(found)}); name one with "
            "--image-column (image_column=)"
        )
    return found[0] if found else None


def _label(path: Path, members: dict[str, TarMember], label_key: str | None) -> str | None:
    """A sample's label: member ``label_key`` (a JSON field if no member has that name), else
    ``.cls``, else the first of ``JSON_LABEL_FIELDS`` in ``.json``; None when it has none."""
    if label_key is not None and label_key in members:
        return members[label_key].read(path).decode().strip()
    if label_key is None and "cls" in members:
        return members["cls"].read(path).decode().strip()
    if "json" in members:
        record = json.loads(members["json"].read(path))
        fields = (label_key,) if label_key is not None else JSON_LABEL_FIELDS
        if isinstance(record, dict):
            for field in fields:
                if field in record:
                    return str(record[field])
    return None


def webdataset_source(
    spec: str | Path, *, image_key: str | None = None, label_key: str | None = None
) -> ImageSource:
    """An ``ImageSource`` over the webdataset shards ``spec`` (see the module docstring).
    Samples without an image member are left out (logged); labels are kept only when every
    sample has one (ValueError if ``label_key`` is named and some sample lacks it)."""
    paths = shard_paths(spec)
    names = _shard_names(paths)
    ids: list[str] = []
    labels: list[str | None] = []
    where: list[tuple[Path, TarMember, str]] = []
    no_image: list[str] = []
    json_labels: bool | None = None  # whether .json members hold labels (decided by the first)
    for path, name in zip(paths, names, strict=True):
        stamp = file_stamp(path)
        for key, members in _index_shard(path):
            extension = _image_member(members, image_key, f"{name}/{key}")
            if extension is None:
                no_image.append(f"{name}/{key}")
                continue
            ids.append(f"{name}/{key}")
            from_json = label_key is None and "cls" not in members and "json" in members
            if from_json and json_labels is False:  # metadata without labels: not read again
                labels.append(None)
            else:
                labels.append(_label(path, members, label_key))
                if from_json and json_labels is None:
                    json_labels = labels[-1] is not None
            where.append((path, members[extension], stamp))
    if no_image:
        logger.warning(
            "%d sample(s) of %s have no image member%s and are left out, e.g. %s (members "
            "by extension: %s)",
            len(no_image),
            spec,
            f" {image_key!r}" if image_key else "",
            no_image[0],
            ", ".join(sorted(WEBDATASET_IMAGE_EXTENSIONS)),
        )
    if not ids:
        raise ValueError(f"no image samples in the webdataset shards {spec}")
    missing = [i for i, label in zip(ids, labels, strict=True) if label is None]
    if label_key is not None and missing:
        raise ValueError(f"sample {missing[0]} of {spec} has no label {label_key!r}")

    def load(i: int) -> Image.Image:
        path, member, _ = where[i]
        return Image.open(io.BytesIO(member.read(path)))

    return ImageSource(
        ids=ids,
        labels=None if missing else [str(label) for label in labels],
        description=f"webdataset {spec} ({len(paths)} shard(s))",
        loader=load,
        stamper=lambda i: f"{where[i][2]}@{where[i][1].offset}",
    )


URL_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "file:")
"""How webdataset URLs begin (read as streams)."""


def is_tar_url(spec: str) -> bool:
    """Whether ``spec`` names tar shards by URL (``URL_PREFIXES``), which are streamed."""
    return spec.startswith(URL_PREFIXES) and ".tar" in spec


def _url_name(url: str) -> str:
    """A shard URL's name in ids: the file name its path ends with (``pipe:cat a/x.tar`` and
    ``https://host/a/x.tar`` are both ``x.tar``), as an indexed shard's is."""
    return url.split()[-1].rstrip("/").rsplit("/", 1)[-1].removeprefix("file:")


def _sample_label(sample: dict[str, Any], label_key: str | None) -> str | None:
    """A streamed sample's label, by the rules of ``_label``."""

    def text(name: str) -> str | None:
        value = sample.get(name)
        return value.decode().strip() if isinstance(value, bytes) else None

    if label_key is not None and text(label_key) is not None:
        return text(label_key)
    if label_key is None and text("cls") is not None:
        return text("cls")
    if isinstance(sample.get("json"), bytes):
        record = json.loads(sample["json"])
        fields = (label_key,) if label_key is not None else JSON_LABEL_FIELDS
        if isinstance(record, dict):
            for field in fields:
                if field in record:
                    return str(record[field])
    return None


def webdataset_stream(
    spec: str, *, image_key: str | None = None, label_key: str | None = None
) -> ImageStream:
    """An ``ImageStream`` over the webdataset shards at the URL (or brace pattern of URLs)
    ``spec``, read with webdataset's ``tarfile_to_samples``; samples without an image member
    are passed over, and positions count images."""
    import webdataset as wds

    urls = list(braceexpand(spec))
    names = [_url_name(url) for url in urls]

    def read(shard: int, start: int) -> Iterator[StreamItem]:
        pipeline = wds.DataPipeline(wds.SimpleShardList([urls[shard]]), wds.tarfile_to_samples())
        members = (
            {k.lower(): v for k, v in sample.items() if not k.startswith("__")} | sample
            for sample in pipeline
        )
        images = (
            (sample, extension)
            for sample in members
            if (
                extension := _image_member(
                    sample, image_key, f"{names[shard]}/{sample.get('__key__')}"
                )
            )
            is not None
        )
        try:
            for sample, extension in itertools.islice(images, start, None):
                yield StreamItem(
                    f"{names[shard]}/{sample['__key__']}",
                    _sample_label(sample, label_key),
                    sample[extension],
                )
        except (OSError, tarfile.TarError, ValueError) as error:
            raise ValueError(f"cannot read the tar shard {urls[shard]}: {error}") from error

    return ImageStream(
        description=f"webdataset {spec} ({len(urls)} shard(s), streamed)",
        shard_names=names,
        reader=read,
    )
