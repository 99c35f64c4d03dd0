"""Agreement of a monosemanticity metric with people: the paper's user-study benchmark
(section 4.2.1, appendices C and D, Table A1).

For each neuron pair ``(k_x, k_y)`` three annotators chose the top-16 grid that "looks more
similar and focused on the same thing"; the majority vote ``R_user`` is one of ``k_x, k_y``.
A metric answers the same question with ``R_MS = k_x if MS_x > MS_y else k_y`` (ties go to
``k_y``, as in appendix C), and its alignment score is the fraction of pairs where
``R_MS = R_user``, pooled and per 0.1-wide bin of ``|MS_x - MS_y|``.

The released files (``metric_benchmark.tar.gz`` of the paper's repository):

- ``pairs.csv``: ``k_x, k_y, R_user, MS_x_dino, MS_y_dino, MS_x_clip, MS_y_clip``;
- ``top16_images.csv``: ``k, x_1, ..., x_16`` (ImageNet train images shown to annotators);
- ``activations.csv``: ``k, a_1, ..., a_50000`` (each neuron on the ImageNet val images).
"""

# jaxtyping shape strings such as "n_images k" are not forward references.

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score

if TYPE_CHECKING:
    from jaxtyping import Float

__all__ = [
    "AlignmentBin",
    "AlignmentResult",
    "BenchmarkPairs",
    "alignment_score",
    "load_benchmark_activations",
    "load_benchmark_pairs",
    "load_benchmark_top_images",
    "recompute_benchmark_ms",
    "score_benchmark",
]


@dataclass(frozen=True)
class BenchmarkPairs:
    """The rows of ``pairs.csv``; neuron ids are kept as the strings written in the file."""

    k_x: tuple[str, ...]
    k_y: tuple[str, ...]
    user_prefers_x: np.ndarray
    """Bool per pair: the majority of annotators chose ``k_x``."""
    ms_x: dict[str, np.ndarray]
    """MS of ``k_x`` per image encoder, keyed by the column suffix (``"dino"``, ``"clip"``)."""
    ms_y: dict[str, np.ndarray]

    @property
    def n_pairs(self) -> int:
        return len(self.k_x)

    @property
    def neuron_ids(self) -> tuple[str, ...]:
        """Distinct neuron ids, in order of first appearance."""
        return tuple(
            dict.fromkeys(i for pair in zip(self.k_x, self.k_y, strict=True) for i in pair)
        )


@dataclass(frozen=True)
class AlignmentBin:
    """Pairs with ``low <= |difference| < high``."""

    low: float
    high: float
    n_pairs: int
    score: float
    """Fraction aligned; NaN for an empty bin."""


@dataclass(frozen=True)
class AlignmentResult:
    score: float
    """Fraction of all pairs where the metric agrees with the annotators."""
    n_pairs: int
    bins: tuple[AlignmentBin, ...]
    """From ``[0, bin_width)`` up to the bin of the largest difference."""
    bin_width: float
    n_skipped: int = 0
    """Pairs left out because a score (or ``bin_by``) is missing: NaN, e.g. an empty cell of
    ``pairs.csv`` or a dead neuron's MS. ``n_pairs`` counts only the scored pairs."""


def alignment_score(
    score_x: Float[Tensor, " n_pairs"] | np.ndarray | Sequence[float],
    score_y: Float[Tensor, " n_pairs"] | np.ndarray | Sequence[float],
    user_prefers_x: np.ndarray | Sequence[bool],
    *,
    bin_by: np.ndarray | Sequence[float] | None = None,
    bin_width: float = 0.1,
) -> AlignmentResult:
    """Fraction of pairs where ``score_x > score_y`` agrees with ``user_prefers_x``.

    Args:
        score_x, score_y: the metric for the two neurons of each pair.
        user_prefers_x: the annotators' majority choice was ``k_x``.
        bin_by: per-pair distance that sets the bins (default ``|score_x - score_y|``).
            Table A1(a) bins both encoders' rows by the DINOv2 distance.
        bin_width: bin width; pair ``i`` goes to bin ``floor(bin_by_i / bin_width)`` (the
            quotient is rounded to 9 decimals first, so 0.3 lands in [0.3, 0.4)).

    A pair with a missing (NaN) score or ``bin_by`` cannot be decided; it is left out of every
    fraction and counted in ``n_skipped``.

    Raises:
        ValueError: lengths differ, no pair has both scores, an infinite value or a non-positive
            ``bin_width``.
    """
    x = _as_float_array(score_x, "score_x")
    y = _as_float_array(score_y, "score_y")
    users = np.asarray(user_prefers_x, dtype=bool)
    distance = np.abs(x - y) if bin_by is None else np.abs(_as_float_array(bin_by, "bin_by"))
    if not (x.shape == y.shape == users.shape == distance.shape):
        raise ValueError(
            f"score_x, score_y, user_prefers_x and bin_by need one value per pair, got lengths "
            f"{x.shape[0]}, {y.shape[0]}, {users.shape[0]}, {distance.shape[0]}"
        )
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    for name, values in (("score_x", x), ("score_y", y), ("bin_by", distance)):
        if np.isinf(values).any():
            at = int(np.flatnonzero(np.isinf(values))[0])
            raise ValueError(f"{name} is {values[at]} for pair {at}; scores must be finite")
    scored = ~(np.isnan(x) | np.isnan(y) | np.isnan(distance))
    if not scored.any():
        raise ValueError(f"no pairs to score: {x.shape[0]} pairs, none with both scores")
    n_skipped = int((~scored).sum())
    x, y, users, distance = x[scored], y[scored], users[scored], distance[scored]
    aligned = (x > y) == users
    bin_index = np.floor(np.round(distance / bin_width, 9)).astype(np.int64)
    bins = []
    for b in range(int(bin_index.max()) + 1):
        members = bin_index == b
        count = int(members.sum())
        bins.append(
            AlignmentBin(
                low=b * bin_width,
                high=(b + 1) * bin_width,
                n_pairs=count,
                score=float(aligned[members].mean()) if count else math.nan,
            )
        )
    return AlignmentResult(
        score=float(aligned.mean()),
        n_pairs=int(x.shape[0]),
        bins=tuple(bins),
        bin_width=bin_width,
        n_skipped=n_skipped,
    )


def score_benchmark(
    pairs: BenchmarkPairs,
    scores: Mapping[str, float] | str,
    *,
    bin_by: str | None = None,
    bin_width: float = 0.1,
) -> AlignmentResult:
    """Alignment score of a metric on the benchmark pairs.

    Args:
        pairs: from :func:`load_benchmark_pairs`.
        scores: the metric per neuron id (e.g. from :func:`recompute_benchmark_ms`, or any
            new metric), or the name of an MS column of ``pairs.csv`` (``"dino"``, ``"clip"``)
            to reproduce the paper's numbers.
        bin_by: ``None`` bins by the metric's own differences; an MS column name bins by that
            encoder's MS distance (Table A1(a) uses ``"dino"`` for both rows).
        bin_width: see :func:`alignment_score`.
    """
    if isinstance(scores, str):
        x, y = _ms_column(pairs, scores)
    else:
        missing = [k for k in pairs.neuron_ids if k not in scores]
        if missing:
            raise ValueError(
                f"scores lack {len(missing)} benchmark neurons, e.g. {missing[:5]}; give a "
                "score for every neuron id of pairs.csv"
            )
        x = np.array([scores[k] for k in pairs.k_x], dtype=np.float64)
        y = np.array([scores[k] for k in pairs.k_y], dtype=np.float64)
    distance = None
    if bin_by is not None:
        bx, by = _ms_column(pairs, bin_by)
        distance = np.abs(bx - by)
    return alignment_score(x, y, pairs.user_prefers_x, bin_by=distance, bin_width=bin_width)


def load_benchmark_pairs(path: str | Path) -> BenchmarkPairs:
    """Read ``pairs.csv``. ``R_user`` names the chosen neuron: it must equal the row's ``k_x``
    or ``k_y`` (compared as text, then as numbers); the literals ``x``/``k_x`` and
    ``y``/``k_y`` are accepted too. Every ``MS_x_<name>``/``MS_y_<name>`` column pair is
    loaded (empty cells become NaN, and their pairs are skipped when scored)."""
    path = Path(path)
    header, rows, lines = _read_table(path)
    missing = [c for c in ("k_x", "k_y", "R_user") if c not in header]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {header}")
    names = [c[len("MS_x_") :] for c in header if c.startswith("MS_x_")]
    names = [n for n in names if f"MS_y_{n}" in header]
    if not rows:
        raise ValueError(f"{path}: no pairs")
    k_x = tuple(r["k_x"].strip() for r in rows)
    k_y = tuple(r["k_y"].strip() for r in rows)
    prefers = np.array(
        [
            _user_prefers_x(r["R_user"].strip(), kx, ky, line, path)
            for r, kx, ky, line in zip(rows, k_x, k_y, lines, strict=True)
        ],
        dtype=bool,
    )
    ms = {
        column: np.array(
            [_cell(r, column, line, path) for r, line in zip(rows, lines, strict=True)]
        )
        for n in names
        for column in (f"MS_x_{n}", f"MS_y_{n}")
    }
    ms_x = {n: ms[f"MS_x_{n}"] for n in names}
    ms_y = {n: ms[f"MS_y_{n}"] for n in names}
    return BenchmarkPairs(k_x, k_y, prefers, ms_x, ms_y)


def load_benchmark_top_images(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read ``top16_images.csv``: neuron id -> its top images, best first."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != "k":
            raise ValueError(f"{path}: expected a header 'k, x_1, ..., x_16', got {header}")
        return {row[0].strip(): tuple(c.strip() for c in row[1:]) for row in reader if row}


def load_benchmark_activations(
    path: str | Path,
) -> tuple[tuple[str, ...], Float[Tensor, "n_images n_neurons"]]:
    """Read ``activations.csv`` (one row per neuron: ``k, a_1, ..., a_N``) as neuron ids and
    a float32 ``(n_images, n_neurons)`` matrix (a transposed view of the rows), ready for
    :func:`monosemanticity_score`. Ids are the first field of each line, unquoted."""
    path = Path(path)
    ids: list[str] = []
    rows: list[np.ndarray] = []
    with path.open(encoding="utf-8-sig") as f:
        header = f.readline().rstrip("\r\n").split(",")
        if not header or header[0].strip() != "k" or len(header) < 2:
            raise ValueError(f"{path}: expected a header 'k, a_1, ..., a_N', got {header[:3]}")
        n_images = len(header) - 1
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            neuron, _, rest = line.partition(",")
            values = np.fromstring(rest, dtype=np.float32, sep=",")
            if values.shape[0] != n_images:
                raise ValueError(
                    f"{path}:{line_number}: neuron {neuron!r} has {values.shape[0]} activations, "
                    f"the header announces {n_images}"
                )
            ids.append(neuron.strip().strip('"'))
            rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no neurons")
    return tuple(ids), torch.from_numpy(np.stack(rows)).T


def recompute_benchmark_ms(
    activations_path: str | Path,
    embeddings: Float[Tensor, "n_images d_embed"] | np.ndarray,
    **ms_options: Any,
) -> dict[str, float]:
    """MS of every benchmark neuron from ``activations.csv`` and embeddings of the same
    images (ImageNet val, in the file's ``a_1..a_N`` order) by the encoder of your choice.
    ``ms_options`` go to :func:`monosemanticity_score` (e.g. ``min_support``); neurons
    without a score map to NaN."""
    ids, activations = load_benchmark_activations(activations_path)
    result = monosemanticity_score(activations, embeddings, **ms_options)
    return dict(zip(ids, result.scores.tolist(), strict=True))


def _ms_column(pairs: BenchmarkPairs, name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in pairs.ms_x:
        raise ValueError(f"pairs have no MS column {name!r}; available: {sorted(pairs.ms_x)}")
    return pairs.ms_x[name], pairs.ms_y[name]


def _as_float_array(values: object, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per pair), got shape {array.shape}")
    return array


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """A CSV file's header, its rows as ``{column: text}`` and each row's line number. A UTF-8
    byte-order mark (Excel's "CSV UTF-8") is dropped; a repeated column, or a row with more or
    fewer fields than the header, is refused naming the file (and line)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        repeated = [c for i, c in enumerate(header) if c in header[:i]]
        if repeated:
            raise ValueError(f"{path}: repeated column {repeated[0]!r}")
        rows, lines = [], []
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}:{reader.line_num}: {len(fields)} fields, the header has {len(header)}"
                )
            rows.append(dict(zip(header, fields, strict=True)))
            lines.append(reader.line_num)
    return header, rows, lines


def _cell(row: dict[str, str], column: str, line: int, path: Path) -> float:
    """An MS cell as a number; empty: NaN."""
    text = row[column].strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}:{line}: {column}={text!r} is not a number") from None


def _user_prefers_x(choice: str, k_x: str, k_y: str, line: int, path: Path) -> bool:
    def same(a: str, b: str) -> bool:
        if a == b:
            return True
        try:
            return float(a) == float(b)
        except ValueError:
            return False

    is_x, is_y = same(choice, k_x), same(choice, k_y)
    if is_x != is_y:
        return is_x
    if choice in ("x", "k_x"):
        return True
    if choice in ("y", "k_y"):
        return False
    raise ValueError(
        f"{path}:{line}: R_user={choice!r} must name the chosen neuron, k_x={k_x!r} or k_y={k_y!r}"
    )
