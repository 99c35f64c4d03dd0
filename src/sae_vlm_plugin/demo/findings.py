"""The paper's findings as checks on a labelled world: each one held or did not, with its figure.

- ``neuron_purity``: per neuron, the mean over attributes of the largest fraction of its top
  images sharing one value of the attribute (1.0: its top images agree on everything).
- ``concept_purity``: their mean over neurons (the demo's top-16 attribute purity; it rewards a
  conjunction, "large red striped", as much as a single concept).
- ``single_concept_purity``: per neuron, the largest fraction of its top images sharing one
  concept (any attribute's value), averaged over neurons: what a monosemantic latent wins on.
- ``alignment_with_purity``: Table A1's shape with ground truth in place of annotators: random
  pairs of neurons, "preferred" = the purer one, the fraction of pairs where MS agrees, per
  0.1-wide bin of the MS difference.
- ``hierarchy_finding``: Table A8: mean taxonomy depth of each Matryoshka group's neurons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from sae_vlm_plugin.metrics.alignment import AlignmentResult, alignment_score
from sae_vlm_plugin.metrics.hierarchy import Taxonomy, hierarchy_by_level, mean_lca_depth


@dataclass(frozen=True)
class Finding:
    """One claim of the paper measured here."""

    name: str
    claim: str
    held: bool
    figure: str
    """What was measured, in words and numbers."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def neuron_purity(top_indices: Tensor, attributes: Sequence[tuple[str, ...]]) -> Tensor:
    """Purity of each neuron's top images (rows of ``top_indices``, -1 = padding); NaN for a
    neuron whose top set is not full."""
    purities = torch.full((len(top_indices),), math.nan, dtype=torch.float64)
    n_attributes = len(attributes[0])
    for n, row in enumerate(top_indices.tolist()):
        if min(row) < 0:
            continue
        total = 0.0
        for a in range(n_attributes):
            values = [attributes[i][a] for i in row]
            total += max(values.count(v) for v in set(values)) / len(values)
        purities[n] = total / n_attributes
    return purities


def concept_purity(top_indices: Tensor, attributes: Sequence[tuple[str, ...]]) -> float:
    """Mean ``neuron_purity`` over the neurons with a full top set (NaN if there are none)."""
    purities = neuron_purity(top_indices, attributes)
    full = purities[~torch.isnan(purities)]
    return float(full.mean()) if len(full) else math.nan


def single_concept_purity(top_indices: Tensor, attributes: Sequence[tuple[str, ...]]) -> float:
    """Mean over neurons with a full top set of ``max_c |{top images showing c}| / |top|``,
    ``c`` ranging over every attribute's values (NaN if no neuron has a full set)."""
    purities = []
    for row in top_indices.tolist():
        if min(row) < 0:
            continue
        counts: dict[tuple[int, str], int] = {}
        for i in row:
            for a, value in enumerate(attributes[i]):
                counts[a, value] = counts.get((a, value), 0) + 1
        purities.append(max(counts.values()) / len(row))
    return sum(purities) / len(purities) if purities else math.nan


def alignment_with_purity(
    scores: Tensor, purity: Tensor, n_pairs: int = 4000, seed: int = 0
) -> AlignmentResult | None:
    """MS-vs-purity agreement over ``n_pairs`` random pairs of neurons that have both a score
    and a purity and differ in purity (ties prefer neither); None when fewer than 2 neurons."""
    valid = torch.nonzero(~torch.isnan(scores) & ~torch.isnan(purity)).flatten()
    if len(valid) < 2:
        return None
    generator = torch.Generator().manual_seed(seed)
    x = valid[torch.randint(len(valid), (n_pairs,), generator=generator)]
    y = valid[torch.randint(len(valid), (n_pairs,), generator=generator)]
    keep = purity[x] != purity[y]
    if not bool(keep.any()):
        return None
    x, y = x[keep], y[keep]
    return alignment_score(scores[x], scores[y], (purity[x] > purity[y]).numpy())


def alignment_finding(result: AlignmentResult | None) -> Finding:
    claim = "MS agrees with the ground-truth purer neuron, the more so the larger the MS gap"
    if result is None:
        return Finding("alignment", claim, False, "too few scored neurons to form pairs")
    populated = [b for b in result.bins if b.n_pairs >= 20]
    grows = len(populated) >= 2 and populated[-1].score > populated[0].score
    held = result.score > 0.5 and grows
    bins = ", ".join(f"[{b.low:.1f},{b.high:.1f}) {b.score:.2f} (n={b.n_pairs})" for b in populated)
    return Finding(
        "alignment",
        claim,
        held,
        f"agreement {result.score:.3f} over {result.n_pairs} pairs; by |MS difference|: {bins}",
    )


def hierarchy_finding(
    top_indices: Tensor,
    image_classes: Tensor,
    taxonomy: Taxonomy,
    matryoshka_widths: Sequence[int],
    scores: Tensor | None = None,
) -> tuple[Finding, list[dict[str, Any]]]:
    """Whether the Matryoshka groups' mean LCA depth rises from the first to the last group
    (broad concepts first, specific ones later), with the per-group rows of Table A8."""
    depths = mean_lca_depth(top_indices, image_classes, taxonomy)
    levels = hierarchy_by_level(depths, matryoshka_widths, scores)
    rows = [vars(level) for level in levels]
    means = [level.mean_depth for level in levels]
    known = [m for m in means if not math.isnan(m)]
    held = len(known) >= 2 and known[0] < known[-1]
    figure = "mean depth per group: " + ", ".join(
        f"{m:.2f}" if not math.isnan(m) else "n/a" for m in means
    )
    claim = "early Matryoshka groups hold broader concepts (lower taxonomy depth) than later ones"
    return Finding("hierarchy", claim, held, figure), rows


def comparison_finding(name: str, claim: str, sae: float, raw: float) -> Finding:
    """A finding that SAE latents beat raw neurons on one measure."""
    return Finding(name, claim, sae > raw, f"SAE latents {sae:.3f} vs raw neurons {raw:.3f}")


def seed_findings(runs: Sequence[dict[str, Any]]) -> list[Finding]:
    """The paper's findings over SAE seeds: each held in how many of ``runs`` (the per-seed
    figures of ``demo.world``), held overall when in more than half, with mean +- spread."""
    n = len(runs)

    def spread(key: str, field: str | None = "mean") -> str:
        values = [run[key] if field is None else run[key][field] for run in runs]
        return _mean_spread(values)

    def held(flags: Sequence[bool], claim: str, name: str, figure: str) -> Finding:
        return Finding(
            name, claim, sum(flags) > n / 2, f"held in {sum(flags)} of {n} seeds; {figure}"
        )

    findings = []
    for name, claim, sae, raw in (
        ("ms_clip", "(MS, toy CLIP embeddings)", "ms_sae", "ms_raw"),
        ("ms_labels", "(MS, label embeddings)", "ms_labels_sae", "ms_labels_raw"),
    ):
        findings.append(
            held(
                [run[sae]["mean"] > run[raw]["mean"] for run in runs],
                f"SAE latents are more monosemantic than raw neurons {claim}",
                name,
                f"SAE latents {spread(sae)} vs raw neurons {spread(raw)}",
            )
        )
    findings.append(
        held(
            [r["single_concept_purity_sae"] > r["single_concept_purity_raw"] for r in runs],
            "the top-16 images of a latent share a single concept more than a neuron's do",
            "purity",
            f"single-concept purity: SAE latents {spread('single_concept_purity_sae', None)} vs "
            f"raw neurons {spread('single_concept_purity_raw', None)}; the claim rests on it. "
            f"Attribute-mean purity (rewards conjunctions): {spread('purity_sae', None)} vs "
            f"{spread('purity_raw', None)}",
        )
    )
    groups = zip(*[[row["mean_depth"] for row in run["hierarchy"]] for run in runs], strict=True)
    findings.append(
        held(
            [run["hierarchy_held"] for run in runs],
            "early Matryoshka groups hold broader concepts (lower taxonomy depth) than later ones",
            "hierarchy",
            "mean depth per group: " + ", ".join(_mean_spread(list(g)) for g in groups),
        )
    )
    scores = [run["alignment"]["score"] for run in runs if run["alignment"] is not None]
    findings.append(
        held(
            [run["alignment_held"] for run in runs],
            "MS agrees with the ground-truth purer neuron, the more so the larger the MS gap",
            "alignment",
            f"agreement {_mean_spread(scores)}; seed 0's bins: "
            + ", ".join(
                f"[{b['low']:.1f},{b['high']:.1f}) {b['score']:.2f} (n={b['n_pairs']})"
                for b in (runs[0]["alignment"] or {"bins": []})["bins"]
                if b["n_pairs"] >= 20
            ),
        )
    )
    named = [run["naming"]["named_right"] for run in runs]
    findings.append(
        held(
            [run["naming_held"] for run in runs],
            "a concept's latent is labelled with the concept's word first (toy CLIP text tower)",
            "naming",
            f"named right {_mean_spread(named)}; seed 0: {runs[0]['naming_figure']}",
        )
    )
    return findings


def _mean_spread(values: Sequence[float]) -> str:
    """``"mean (min-max)"`` of ``values``, to 3 decimals (just the value when there is one)."""
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return "n/a"
    mean = sum(known) / len(known)
    if len(known) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({min(known):.3f}-{max(known):.3f})"
