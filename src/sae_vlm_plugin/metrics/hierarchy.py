"""Matryoshka levels against a human taxonomy (paper appendix E.3, Table A8).

Each neuron is mapped to a depth of the taxonomy tree: the mean, over all pairs of its top-k
activating images (k = 16 in the paper), of the depth of the pair's lowest common ancestor
(LCA)::

    depth_k = mean_{n < m in top_k} depth(LCA(class(n), class(m)))

Depths count from the root of the tree (depth 0, above the kingdoms): kingdom 1, phylum 2,
class 3, order 4, family 5, genus 6, species 7 for iNaturalist 2021. ``depth(LCA)`` of two
images is the number of leading path components their classes share, so two images of the
same species meet at depth 7 and images of different kingdoms at 0. A neuron of depth 2 thus
fires for species from several classes of one phylum, as in the paper's example.
The per-level table averages these depths over the neurons of each Matryoshka group.

The paper's numbers come from its ``inat_depth.py``, which differs in three ways, all followed
by :func:`reference_lca_depths`: a neuron counts only if its k-th best activation is non-zero;
its mean is rounded to an integer depth (Python's ``round``, half to even) before averaging over
the level; and it also reports each neuron's majority-vote depth (the most frequent pair LCA,
ties to the value met first in ``itertools.combinations`` order). :func:`mean_lca_depth` is the
unrounded mean over every neuron with at least two top images.
"""

# jaxtyping shape strings such as "n_images k" are not forward references.

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sae_vlm_plugin.json_files import read_json
from sae_vlm_plugin.metrics.top_activations import TopActivations

if TYPE_CHECKING:
    from jaxtyping import Float, Int

__all__ = [
    "LevelStats",
    "ReferenceDepths",
    "Taxonomy",
    "hierarchy_by_level",
    "mean_lca_depth",
    "parse_inat_folder_name",
    "reference_lca_depths",
    "table_a8",
]


def parse_inat_folder_name(name: str) -> tuple[str, ...]:
    """Root-to-leaf path of an iNaturalist class folder: ``"00001_Animalia_Chordata_Aves_..."``
    -> ``("Animalia", "Chordata", "Aves", ...)`` (the parts after the leading number)."""
    number, _, rest = name.partition("_")
    if not number.isdigit() or not rest:
        raise ValueError(
            f"{name!r} is not an iNaturalist class folder name; expected "
            "'<number>_<kingdom>_<phylum>_..._<species>', e.g. "
            "'00001_Animalia_Chordata_Aves_Passeriformes_Corvidae_Corvus_corax'"
        )
    return tuple(rest.split("_"))


@dataclass(frozen=True)
class Taxonomy:
    """Classes and their root-to-leaf paths (the root itself is implicit, at depth 0)."""

    classes: tuple[str, ...]
    """Class labels; an image's class is an index into this tuple."""
    paths: tuple[tuple[str, ...], ...]
    """Path of each class from the first level below the root down to the class."""

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.paths):
            raise ValueError(
                f"Taxonomy has {len(self.classes)} classes but {len(self.paths)} paths"
            )
        if not self.classes:
            raise ValueError("Taxonomy is empty")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("Taxonomy class labels must be distinct")
        for label, path in zip(self.classes, self.paths, strict=True):
            if not path:
                raise ValueError(f"class {label!r} has an empty taxonomy path")

    @classmethod
    def from_folder_names(cls, names: Sequence[str]) -> Taxonomy:
        """From iNaturalist-style folder names; each name is its own class label."""
        return cls(tuple(names), tuple(parse_inat_folder_name(n) for n in names))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Sequence[str]]) -> Taxonomy:
        """From ``{class label: [level-1 name, level-2 name, ...]}``."""
        return cls(tuple(mapping), tuple(tuple(path) for path in mapping.values()))

    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        """From a ``.json`` object ``{class label: [names...]}``, or any other text file with
        one iNaturalist folder name per line (blank lines ignored)."""
        path = Path(path)
        if path.suffix == ".json":
            mapping = read_json(path)
            if not isinstance(mapping, dict):
                raise ValueError(f"{path}: expected a JSON object {{label: [names...]}}")
            return cls.from_mapping(mapping)
        text = path.read_text(encoding="utf-8")
        return cls.from_folder_names([line.strip() for line in text.splitlines() if line.strip()])

    def class_indices(self, labels: Sequence[str]) -> Int[Tensor, " n_images"]:
        """Class index of each label (e.g. each image's folder name)."""
        lookup = {label: i for i, label in enumerate(self.classes)}
        missing = [label for label in labels if label not in lookup]
        if missing:
            raise ValueError(f"labels not in the taxonomy: {missing[:5]}")
        return torch.tensor([lookup[label] for label in labels], dtype=torch.long)

    def lca_depth(self, a: int, b: int) -> int:
        """Depth of the lowest common ancestor of classes ``a`` and ``b``."""
        depth = 0
        for x, y in zip(self.paths[a], self.paths[b], strict=False):
            if x != y:
                break
            depth += 1
        return depth

    def codes(self) -> tuple[Int[Tensor, "n_classes max_depth"], Int[Tensor, " n_classes"]]:
        """Per class and level, an integer naming the node at that level (-1 past the end of
        the path), and each path's length."""
        max_depth = max(len(p) for p in self.paths)
        codes = torch.full((len(self.paths), max_depth), -1, dtype=torch.long)
        for level in range(max_depth):
            names: dict[str, int] = {}
            for i, path in enumerate(self.paths):
                if level < len(path):
                    codes[i, level] = names.setdefault(path[level], len(names))
        lengths = torch.tensor([len(p) for p in self.paths], dtype=torch.long)
        return codes, lengths


def mean_lca_depth(
    top: TopActivations | Int[Tensor, "n_neurons k"],
    image_classes: Int[Tensor, " n_images"] | Sequence[int],
    taxonomy: Taxonomy,
    *,
    min_images: int = 2,
    neuron_chunk_size: int = 4096,
) -> Float[Tensor, " n_neurons"]:
    """Mean LCA depth over all pairs of each neuron's top images (see the module docstring).

    Args:
        top: :class:`TopActivations` or ``(n_neurons, k)`` image indices (-1 = padding).
        image_classes: class index (into ``taxonomy.classes``) of every image.
        taxonomy: the tree.
        min_images: neurons with fewer top images than this get NaN (at least 2: a depth
            needs a pair).
        neuron_chunk_size: neurons compared at once; memory ~ ``chunk * k^2 * max_depth``.

    Comparing paths level by level is enough to find the common prefix because a node is
    equal in two paths only if all its ancestors are: the prefix length is the number of
    leading levels that agree, capped at the shorter path.
    """
    indices = top.indices if isinstance(top, TopActivations) else top
    if not isinstance(indices, Tensor) or indices.ndim != 2 or indices.dtype.is_floating_point:
        raise ValueError("top must be TopActivations or a 2-D integer (n_neurons, k) tensor")
    if isinstance(min_images, bool) or min_images < 2:
        raise ValueError(f"min_images must be >= 2 (a depth needs a pair), got {min_images!r}")
    indices = indices.to(device="cpu", dtype=torch.long)
    classes, codes, lengths = _check_indices(indices, image_classes, taxonomy)
    n_neurons, k = (int(s) for s in indices.shape)
    pair_mask = torch.ones(k, k, dtype=torch.bool).triu(diagonal=1)
    depths = []
    for start in range(0, n_neurons, neuron_chunk_size):
        block = indices[start : start + neuron_chunk_size]
        valid = block >= 0
        lca = _pair_lca_depths(block, classes, codes, lengths)
        pairs = valid[:, :, None] & valid[:, None, :] & pair_mask
        n_pairs = pairs.sum(dim=(1, 2))
        total = (lca * pairs).sum(dim=(1, 2)).to(torch.float64)
        mean = total / n_pairs.clamp(min=1)
        enough = valid.sum(dim=1) >= min_images
        depths.append(torch.where(enough, mean, torch.full_like(mean, torch.nan)))
    if not depths:
        return torch.empty(0, dtype=torch.float64)
    return torch.cat(depths)


def _check_indices(
    indices: Tensor, image_classes: Tensor | Sequence[int], taxonomy: Taxonomy
) -> tuple[Tensor, Tensor, Tensor]:
    """``(classes, codes, lengths)`` after checking ``indices`` against them."""
    classes = torch.as_tensor(image_classes, dtype=torch.long)
    codes, lengths = taxonomy.codes()
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= len(lengths)):
        raise ValueError(
            f"image_classes must lie in [0, {len(lengths)}), found "
            f"{int(classes.min())}..{int(classes.max())}"
        )
    if indices.numel() and int(indices.max()) >= classes.numel():
        raise ValueError(
            f"top image index {int(indices.max())} is out of range for {classes.numel()} "
            "image classes"
        )
    return classes, codes, lengths


def _pair_lca_depths(block: Tensor, classes: Tensor, codes: Tensor, lengths: Tensor) -> Tensor:
    """``(c, k, k)`` LCA depth of every pair of each neuron's top images (padding: class 0)."""
    cls = classes[block.clamp(min=0)]  # (c, k)
    paths, length = codes[cls], lengths[cls]  # (c, k, D), (c, k)
    agree = paths[:, :, None, :] == paths[:, None, :, :]  # (c, k, k, D)
    prefix = agree.long().cumprod(dim=-1).sum(dim=-1)
    return torch.minimum(prefix, torch.minimum(length[:, :, None], length[:, None, :]))


@dataclass(frozen=True)
class ReferenceDepths:
    """Per-neuron depths as the paper's ``inat_depth.py`` computes them (NaN: excluded)."""

    rounded_mean: Float[Tensor, " n_neurons"]
    """``round(mean over pairs of LCA depth)``, half to even."""
    majority: Float[Tensor, " n_neurons"]
    """The most frequent pair LCA depth (ties: the value met first in pair order)."""


def reference_lca_depths(
    top: TopActivations,
    image_classes: Int[Tensor, " n_images"] | Sequence[int],
    taxonomy: Taxonomy,
    *,
    neuron_chunk_size: int = 4096,
) -> ReferenceDepths:
    """The reference's two per-neuron depths over all ``k (k - 1) / 2`` pairs of each neuron's
    top-k images, for neurons whose k-th best activation is non-zero (others NaN).

    Pairs go in ``itertools.combinations`` order, ``(0, 1), (0, 2), ..., (k-2, k-1)``, the
    row-major upper triangle, which is what breaks majority ties.
    """
    if not isinstance(top, TopActivations):
        raise ValueError("reference_lca_depths needs TopActivations (it reads the k-th value)")
    indices = top.indices.to(device="cpu", dtype=torch.long)
    classes, codes, lengths = _check_indices(indices, image_classes, taxonomy)
    worst = top.values[:, -1].to("cpu") if top.k else torch.zeros(top.n_neurons)
    counted = ~torch.isnan(worst) & (worst != 0) & (top.k >= 2)
    rows, cols = torch.triu_indices(top.k, top.k, offset=1)
    n_values = int(lengths.max()) + 1
    rounded, majority = [], []
    for start in range(0, top.n_neurons, neuron_chunk_size):
        block = indices[start : start + neuron_chunk_size]
        lca = _pair_lca_depths(block, classes, codes, lengths)[:, rows, cols]  # (c, pairs)
        mean = lca.sum(dim=1).to(torch.float64) / max(lca.shape[1], 1)
        rounded.append(torch.round(mean))
        counts = torch.nn.functional.one_hot(lca, n_values).sum(dim=1)  # (c, n_values)
        order = torch.arange(lca.shape[1]).expand_as(lca)
        first = torch.full(counts.shape, lca.shape[1], dtype=torch.long)
        first = first.scatter_reduce(1, lca, order, reduce="amin")
        most = counts == counts.max(dim=1, keepdim=True).values
        first = torch.where(most, first, torch.full_like(first, lca.shape[1] + 1))
        majority.append(first.argmin(dim=1).to(torch.float64))
    nan = torch.full((top.n_neurons,), torch.nan, dtype=torch.float64)
    if not rounded:
        return ReferenceDepths(nan, nan.clone())
    return ReferenceDepths(
        torch.where(counted, torch.cat(rounded), nan),
        torch.where(counted, torch.cat(majority), nan),
    )


@dataclass(frozen=True)
class LevelStats:
    """One row of Table A8: a Matryoshka group's neurons ``[start, stop)``."""

    level: int
    start: int
    stop: int
    n_with_depth: int
    """Neurons of the level with a depth (enough top images)."""
    mean_depth: float
    ms_mean: float
    ms_max: float
    ms_min: float
    n_with_score: int
    """Neurons of the level with a (non-NaN) MS."""


def hierarchy_by_level(
    depths: Float[Tensor, " n_neurons"],
    matryoshka_widths: Sequence[int],
    scores: Float[Tensor, " n_neurons"] | None = None,
) -> list[LevelStats]:
    """Average LCA depth (and MS mean / max / min if ``scores`` is given) per Matryoshka level.

    Args:
        depths: per-neuron mean LCA depth, from :func:`mean_lca_depth` (NaN ignored).
        matryoshka_widths: cumulative widths as in SAELens' ``matryoshka_widths``: level ``g``
            holds neurons ``[widths[g-1], widths[g])`` (``widths[-1]`` = 0); strictly
            increasing, ending at ``n_neurons``. The paper's iNaturalist SAE uses
            ``[3, 16, 69, 359, 1536]``.
        scores: per-neuron MS, e.g. ``monosemanticity_score(...).scores`` (NaN ignored).
    """
    n_neurons = int(depths.shape[0])
    widths = [int(w) for w in matryoshka_widths]
    starts = [0, *widths[:-1]]
    increasing = all(b > a for a, b in zip(starts, widths, strict=True))
    if not widths or widths[-1] != n_neurons or not increasing:
        raise ValueError(
            "matryoshka_widths must be strictly increasing positive cumulative widths ending at "
            f"n_neurons={n_neurons}, got {widths}"
        )
    if scores is not None and int(scores.shape[0]) != n_neurons:
        raise ValueError(f"scores has {int(scores.shape[0])} neurons but depths has {n_neurons}")
    levels = []
    for level, (start, stop) in enumerate(zip(starts, widths, strict=True)):
        depth = depths[start:stop]
        depth = depth[~torch.isnan(depth)]
        ms = scores[start:stop] if scores is not None else torch.empty(0)
        ms = ms[~torch.isnan(ms)]
        levels.append(
            LevelStats(
                level=level,
                start=start,
                stop=stop,
                n_with_depth=int(depth.numel()),
                mean_depth=float(depth.mean()) if depth.numel() else math.nan,
                ms_mean=float(ms.mean()) if ms.numel() else math.nan,
                ms_max=float(ms.max()) if ms.numel() else math.nan,
                ms_min=float(ms.min()) if ms.numel() else math.nan,
                n_with_score=int(ms.numel()),
            )
        )
    return levels


def table_a8(
    top: TopActivations,
    image_classes: Int[Tensor, " n_images"] | Sequence[int],
    taxonomy: Taxonomy,
    matryoshka_widths: Sequence[int],
    scores: Float[Tensor, " n_neurons"] | None = None,
) -> list[dict[str, float | int]]:
    """One row per Matryoshka level with the paper's depths and the exact one.

    ``mean_depth`` / ``n_with_depth`` and ``majority_depth`` are ``inat_depth.py``'s (rounded
    per-neuron means and majority votes over neurons whose k-th activation is non-zero): the
    numbers of Table A8. ``unrounded_mean_depth`` / ``n_with_unrounded_depth`` average
    :func:`mean_lca_depth` over every neuron with two top images. MS columns as in
    :func:`hierarchy_by_level`.
    """
    reference = reference_lca_depths(top, image_classes, taxonomy)
    majority = hierarchy_by_level(reference.majority, matryoshka_widths)
    exact = hierarchy_by_level(mean_lca_depth(top, image_classes, taxonomy), matryoshka_widths)
    rows = []
    for level, vote, plain in zip(
        hierarchy_by_level(reference.rounded_mean, matryoshka_widths, scores),
        majority,
        exact,
        strict=True,
    ):
        rows.append(
            {
                **vars(level),
                "majority_depth": vote.mean_depth,
                "unrounded_mean_depth": plain.mean_depth,
                "n_with_unrounded_depth": plain.n_with_depth,
            }
        )
    return rows
