"""Path lists: a CSV, parquet or text file naming one image per row (and optionally its label).

Paths are relative to the list file's folder (absolute ones are kept); ids are the paths as
written. A CSV or parquet file has a header: the path column is ``path`` / ``image`` / ``file``
/ ``filename`` / ``image_path`` (or the one named by ``--image-column``), the label column as
in ``columns``. A ``.txt`` file has one path a line, optionally followed by a tab and a label;
blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from sae_vlm_plugin.images.columns import choose_image_column, choose_label_column
from sae_vlm_plugin.images.source import ImageSource, file_stamp

PATH_COLUMNS = ("path", "image", "file", "filename", "image_path", "filepath")
"""Path columns found without being named."""

LIST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV / TSV or a parquet file (values as text)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        columns = [table.column(n).to_pylist() for n in table.column_names]
        return table.column_names, [[str(v) for v in row] for row in zip(*columns, strict=True)]
    with path.open(newline="") as file:
        rows = list(csv.reader(file, delimiter="\t" if path.suffix == ".tsv" else ","))
    if not rows:
        raise ValueError(f"the path list {path} is empty")
    return rows[0], rows[1:]


def read_path_list(
    path: Path, *, image_column: str | None = None, label_column: str | None = None
) -> tuple[list[str], list[str] | None]:
    """The paths (as written) and labels (or None) a list file names, in its order."""
    if path.suffix == ".txt":
        entries = [
            line.split("\t", 1)
            for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        paths = [entry[0].strip() for entry in entries]
        labelled = [entry[1].strip() for entry in entries if len(entry) == 2]
        if labelled and len(labelled) != len(entries):
            raise ValueError(f"{path}: some lines have a label (after a tab) and some do not")
        return paths, labelled or None
    header, rows = _read_table(path)
    where = f"the path list {path}"
    found = [name for name in PATH_COLUMNS if name in header]
    column = choose_image_column(found[:1], header, image_column, where)
    label = choose_label_column([h for h in header if h != column], label_column, where)
    at = header.index(column)
    labels = [row[header.index(label)] for row in rows] if label else None
    return [row[at] for row in rows], labels


def path_list_source(
    path: Path, *, image_column: str | None = None, label_column: str | None = None
) -> ImageSource:
    """An ``ImageSource`` over the images a list file names (see the module docstring)."""
    written, labels = read_path_list(path, image_column=image_column, label_column=label_column)
    if not written:
        raise ValueError(f"the path list {path} names no image")
    files = [path.parent / p for p in written]  # an absolute p stays as it is
    return ImageSource(
        ids=written,
        labels=labels,
        description=f"path list {path} ({len(files)} images)",
        loader=lambda i: Image.open(files[i]),
        stamper=lambda i: file_stamp(files[i]),
    )
