"""Image folders: an ImageNet-style tree ``root/<class>/<image>`` (labels = class folders), a
flat folder (no labels), and the split rule: a root holding split folders (``train/``,
``val/``, ``validation/``, ``test/``) is refused unless a split is named, since reading it
whole would mix the splits and take their names for class labels."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sae_vlm_plugin.images.source import ImageSource, file_stamp

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

SPLIT_FOLDERS = ("train", "training", "val", "valid", "validation", "test", "testing")
"""Folder names that mark a dataset root holding splits rather than classes."""


def split_folders(root: Path) -> list[str]:
    """The subfolders of ``root`` named like splits (``SPLIT_FOLDERS``), sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower() in SPLIT_FOLDERS)


def resolve_split(root: Path, split: str | None, what: str = "folder") -> Path:
    """The folder to read: ``root / split`` when a split is named (ValueError listing the
    folders there if it is missing); ``root`` itself otherwise, unless it holds two or more
    split folders, which is refused with a message naming them."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if split is not None:
        if split not in folders:
            raise ValueError(
                f"split {split!r} is not a folder of {root}; its folders: "
                + (", ".join(folders) or "none")
            )
        return root / split
    splits = split_folders(root)
    if len(splits) >= 2:
        raise ValueError(
            f"the {what} {root} holds the splits {', '.join(splits)}; name one with --split "
            "(split=), e.g. --split " + splits[0] + " (reading them all would mix the splits "
            "and take their names for class labels)"
        )
    return root


def folder_source(root: Path, split: str | None = None) -> ImageSource:
    """The images under ``root`` (or ``root / split``), sorted by relative path; labels are
    the first path component when every image sits in a subfolder."""
    root = resolve_split(root, split)
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
        stamper=lambda i: file_stamp(files[i]),
    )
