"""Which column of a table holds the images, and which the labels: found, or named by the user.

Shared by every tabular form (HF datasets, parquet shards, path lists) so that ``--image-column``
and ``--label-column`` mean the same everywhere and a bad name gets the same one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence

LABEL_COLUMNS = ("label", "labels", "class", "cls", "category")
"""Label columns found without being named, in this order of preference."""


def choose_image_column(
    candidates: Sequence[str], columns: Sequence[str], named: str | None, where: str
) -> str:
    """``named`` if it is one of ``columns``, else the only one of ``candidates`` (the columns
    whose type holds images); ValueError naming ``where`` and the valid choices otherwise."""
    if named is not None:
        if named not in columns:
            raise ValueError(f"{where} has no column {named!r}; its columns: {', '.join(columns)}")
        return named
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            f"{where} has no image column; name one with --image-column (image_column=) "
            f"among: {', '.join(columns)}"
        )
    raise ValueError(
        f"{where} has several image columns ({', '.join(candidates)}); name one with "
        "--image-column (image_column=)"
    )


def choose_label_column(columns: Sequence[str], named: str | None, where: str) -> str | None:
    """``named`` if it is one of ``columns``, else the first of ``LABEL_COLUMNS`` present, else
    None (no labels); ValueError naming ``where`` and the valid choices for a bad name."""
    if named is not None:
        if named not in columns:
            raise ValueError(f"{where} has no label column {named!r}; valid: {', '.join(columns)}")
        return named
    return next((name for name in LABEL_COLUMNS if name in columns), None)
