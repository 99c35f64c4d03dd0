"""The paper's evaluation of an SAE, offline (``evaluate_sae``) and during training
(``MonosemanticityEvaluator``).

``evaluate_sae`` reports, for the SAE's latents and for the raw neurons of the same hook (the
paper's "No SAE" baseline): MS mean +- std, best, worst, quantiles and counts above thresholds,
per Matryoshka group, and beside it ``ms_at_16``, ViSAEBench's top-16 approximation
(``ms_at_k``) on the same codes; and the SAE's R^2, L0 and dead fraction on the rows it reads. It writes
``evaluation.json`` and the paper's Figure 5 (MS over neurons sorted by score, against the
normalised neuron index) as ``ms_sorted.png``. It also reports the uniqueness of the latents'
top-16 image sets (appendix G) and, given a taxonomy of the images' classes, the mean LCA depth
of each Matryoshka level's top images (appendix E.3, Table A8).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sae_vlm_plugin.images import ImageReadError, ImageSource, open_image_source
from sae_vlm_plugin.metrics.embeddings import image_embeddings, load_scoring_encoder
from sae_vlm_plugin.metrics.figures import figure_title, plot_sorted_ms
from sae_vlm_plugin.metrics.hierarchy import Taxonomy, table_a8
from sae_vlm_plugin.metrics.monosemanticity import MonosemanticityResult, monosemanticity_score
from sae_vlm_plugin.metrics.ms_at_k import ms_at_k
from sae_vlm_plugin.metrics.sae_activations import (
    HookRows,
    ImageActivations,
    encode_rows,
    hook_rows,
    image_activations,
    pool_codes,
)
from sae_vlm_plugin.metrics.top_activations import TopActivations, top_activations
from sae_vlm_plugin.metrics.uniqueness import jaccard_uniqueness
from sae_vlm_plugin.model import ModelLike, as_vision_model

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_vlm_plugin.images import ImageInput
    from sae_vlm_plugin.model import VisionModel

MS_THRESHOLDS = (0.5, 0.75, 0.9)
TOP_IMAGES = 16
MIN_SUPPORT = TOP_IMAGES
"""Default ``min_support`` of ``evaluate_sae`` (and ``sae-vlm evaluate`` / ``dashboard``): a
latent is scored once it fires on as many images as its top set holds; below that its MS rests
on a handful of images (with 2, the cosine of one pair) and tops the MS-sorted lists."""
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def ms_statistics(result: MonosemanticityResult) -> dict[str, float]:
    """Mean, std, best, worst, quantiles and counts above ``MS_THRESHOLDS`` of scored neurons."""
    scores = result.scores[~torch.isnan(result.scores)]
    stats = result.summary()
    stats = {
        "mean": stats["mean"],
        "std": stats["std"],
        "best": stats["max"],
        "worst": stats["min"],
        "n_scored": stats["n_scored"],
        "n_dead": stats["n_dead"],
        "n_neurons": float(result.n_neurons),
    }
    for q in QUANTILES:
        stats[f"q{int(q * 100):02d}"] = (
            float(torch.quantile(scores, q)) if scores.numel() else math.nan
        )
    for threshold in MS_THRESHOLDS:
        stats[f"n_above_{threshold}"] = float((scores > threshold).sum())
    return stats


def _group_bounds(sae: SAE) -> list[tuple[int, int]]:
    fractions = sae.cfg.metadata.get("group_fractions")
    if not fractions:
        return []
    sizes = [round(f * sae.cfg.d_sae) for f in fractions[:-1]]
    sizes.append(sae.cfg.d_sae - sum(sizes))
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return bounds


@dataclass
class EvaluationReport:
    """What ``evaluate_sae`` measured; ``to_dict`` is the JSON written to disk."""

    sae: dict[str, Any]
    raw_neurons: dict[str, float]
    groups: list[dict[str, Any]]
    reconstruction: dict[str, float]
    setup: dict[str, Any]
    uniqueness: dict[str, float]
    hierarchy: list[dict[str, Any]]
    sae_scores: MonosemanticityResult
    raw_scores: MonosemanticityResult
    image_codes: Tensor
    """Sparse ``(n_images, d_sae)`` per-image SAE activations the scores were computed from."""
    image_raw: Tensor
    """``(n_images, d_in)`` per-image raw hook activations."""
    image_ids: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "setup": self.setup,
            "sae": self.sae,
            "raw_neurons": self.raw_neurons,
            "matryoshka_groups": self.groups,
            "reconstruction": self.reconstruction,
            "uniqueness": self.uniqueness,
            "hierarchy": self.hierarchy,
        }


def evaluate_sae(
    sae: SAE,
    model: ModelLike,
    images: ImageInput,
    *,
    scoring_encoder: Any = "dinov2",
    embeddings: Tensor | None = None,
    hook: str | None = None,
    tokens: str | None = None,
    min_support: int = MIN_SUPPORT,
    taxonomy: Taxonomy | None = None,
    batch_size: int = 64,
    out_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    skip_unreadable: bool = False,
    with_uniqueness: bool = True,
) -> EvaluationReport:
    """Evaluate ``sae`` (a SAELens SAE) on ``images`` seen by ``model`` (a ``VisionModel``).

    ``hook`` and ``tokens`` default to the SAE's metadata. ``embeddings`` (one row per image, in
    source order) replaces running ``scoring_encoder`` (see ``image_embeddings``). ``taxonomy``
    (e.g. ``Taxonomy.from_folder_names`` of iNaturalist's class folders) places each image by
    its label (the class folder of an ImageNet-style tree) and adds the Matryoshka hierarchy.
    With ``out_dir``, writes ``evaluation.json`` and ``ms_sorted.png`` there. ``force`` uses an
    SAE whose metadata names another model (``check_attachable``). An unreadable image raises
    ValueError naming it unless ``skip_unreadable`` (then it is left out and counted in
    ``setup["n_unreadable"]``). ``with_uniqueness=False`` skips the uniqueness of the top sets
    (``uniqueness`` is then empty): its cost grows with the square of the latents sharing
    an image, which a dense SAE on few images makes large.
    """
    model = as_vision_model(model)
    from sae_vlm_plugin.pretrained.loading import check_attachable

    hook = hook or sae.cfg.metadata.hook_name
    tokens, image_activation = _evaluation_tokens(tokens, sae.cfg.metadata.tokens)
    point = check_attachable(sae, model, hook, force=force)
    scorer = load_scoring_encoder(scoring_encoder) if embeddings is None else None  # fail first
    source = open_image_source(images)
    data = _readable_activations(
        sae, model, source, point.name, tokens, batch_size, progress, skip_unreadable
    )
    readable = _readable_subset(source, data.image_ids)
    if embeddings is None:
        scored = image_embeddings(readable, scorer, batch_size=batch_size, progress=progress)
        keep = {image_id: i for i, image_id in enumerate(scored.image_ids)}
        embeddings = scored.embeddings[[keep[i] for i in data.image_ids]]
    elif len(embeddings) == len(source) != data.n_images:  # rows of all images: keep readable
        embeddings = embeddings[_source_positions(source, data.image_ids)]
    if len(embeddings) != data.n_images:
        raise ValueError(f"{len(embeddings)} embeddings for {data.n_images} readable images")
    image_codes, image_raw = data.image_codes, data.image_raw
    sae_scores = monosemanticity_score(image_codes, embeddings, min_support=min_support)
    raw_scores = monosemanticity_score(image_raw, embeddings, min_support=min_support)
    groups = []
    for level, (start, stop) in enumerate(_group_bounds(sae)):
        part = MonosemanticityResult(
            sae_scores.scores[start:stop],
            sae_scores.support[start:stop],
            sae_scores.n_images,
            sae_scores.min_support,
        )
        groups.append({"level": level, "latents": [start, stop], **ms_statistics(part)})
    top = top_activations(image_codes, k=TOP_IMAGES)
    uniqueness = _uniqueness(top) if with_uniqueness else {}
    hierarchy = []
    if taxonomy is not None:
        labels = source.labels
        if labels is None:
            raise ValueError(
                "a taxonomy needs labelled images (an ImageNet-style class-folder tree)"
            )
        by_id = dict(zip(source.ids, labels, strict=True))
        classes = taxonomy.class_indices([by_id[i] for i in data.image_ids])
        widths = [stop for _, stop in _group_bounds(sae)] or [sae.cfg.d_sae]
        hierarchy = table_a8(top, classes, taxonomy, widths, sae_scores.scores)
    report = EvaluationReport(
        sae={**ms_statistics(sae_scores), "ms_at_16": ms_at_k(image_codes, embeddings).mean},
        raw_neurons={**ms_statistics(raw_scores), "ms_at_16": ms_at_k(image_raw, embeddings).mean},
        groups=groups,
        uniqueness=uniqueness,
        hierarchy=hierarchy,
        reconstruction={
            "explained_variance": data.explained_variance,
            "l0": data.n_active / data.n_rows,
            "dead_fraction": float(1 - data.fired.float().mean()),
            "n_rows": float(data.n_rows),
        },
        setup={
            "model": model.model_name,
            "hook": point.name,
            "tokens": tokens,
            "images": source.description,
            "n_images": data.n_images,
            "n_unreadable": len(source) - data.n_images,
            "d_in": sae.cfg.d_in,
            "d_sae": sae.cfg.d_sae,
            "min_support": min_support,
            "scoring_encoder": "given embeddings"
            if scorer is None
            else f"{scorer.model.model_name} ({scorer.hook}, {scorer.tokens})",
            "image_activation": image_activation,
        },
        sae_scores=sae_scores,
        raw_scores=raw_scores,
        image_codes=image_codes,
        image_raw=image_raw,
        image_ids=data.image_ids,
    )
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def _uniqueness(top: TopActivations) -> dict[str, float]:
    """The report's summary of ``jaccard_uniqueness`` of the top-image sets."""
    unique = jaccard_uniqueness(top)
    return {
        "n_latents": float(unique.n_neurons),
        "mean_jaccard": unique.mean_jaccard,
        "max_jaccard": unique.max_jaccard,
        "fraction_unique": unique.fraction_unique,
        "n_pairs_above_0.5": float(unique.n_above_threshold),
    }


def _evaluation_tokens(given: str | None, trained_on: str | None) -> tuple[str, str]:
    """The token selection ``evaluate_sae`` reads, and how it makes one activation per image.

    Given tokens are used as given; otherwise the SAE's own (``cfg.metadata.tokens``), except
    for an SAE trained on random tokens: as the reference does for its steering SAE
    (``save_activations.py --mean_pool``), its codes on every token are averaged per image."""
    if given is not None:
        return given, "mean of the SAE's codes over the token rows per image"
    trained = trained_on or "cls"
    if trained.startswith("random_"):
        return "all", (
            f"mean of the SAE's codes over every token per image (trained on {trained}; the "
            "reference's --mean_pool)"
        )
    return trained, "mean of the SAE's codes over the token rows per image"


def _readable_activations(
    sae: SAE,
    model: VisionModel,
    source: ImageSource,
    hook: str,
    tokens: str,
    batch_size: int,
    progress: bool,
    skip_unreadable: bool,
) -> ImageActivations:
    """``image_activations`` of ``sae``; an unreadable image (without ``skip_unreadable``) says
    how to skip it."""
    parameter = sae.W_enc
    try:
        return image_activations(
            model,
            source,
            hook,
            tokens,
            lambda rows: sae.encode(rows.to(device=parameter.device, dtype=parameter.dtype)),
            sae.decode,
            batch_size=batch_size,
            progress=progress,
            skip_unreadable=skip_unreadable,
        )
    except ImageReadError as error:
        raise ValueError(
            f"{error} (skip_unreadable=True, or --skip-unreadable, leaves such images out)"
        ) from error


def _source_positions(source: ImageSource, image_ids: list[str]) -> list[int]:
    """Index in ``source`` of each of ``image_ids``."""
    where = {image_id: i for i, image_id in enumerate(source.ids)}
    return [where[image_id] for image_id in image_ids]


def _readable_subset(source: ImageSource, image_ids: list[str]) -> ImageSource:
    """The images of ``source`` that ``image_ids`` name (the readable ones), in that order, so
    the scoring encoder reads only images that are known to decode."""
    if len(image_ids) == len(source):
        return source
    keep = _source_positions(source, image_ids)
    return ImageSource(
        ids=list(image_ids),
        labels=None if source.labels is None else [source.labels[i] for i in keep],
        description=f"{source.description} (readable images)",
        loader=lambda i: source.loader(keep[i]),
    )


def write_report(report: EvaluationReport, out_dir: str | Path) -> Path:
    """``evaluation.json`` and ``ms_sorted.png`` (paper Figure 5) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(
        json.dumps(_finite_or_none(report.to_dict()), indent=2, allow_nan=False)
    )
    setup = report.setup
    plot_sorted_ms(
        {"SAE latents": report.sae_scores, "raw neurons (no SAE)": report.raw_scores},
        out / "ms_sorted.png",
        title=figure_title(
            str(setup["model"]), f"{setup['hook']} ({setup['tokens']})", str(setup["images"])
        ),
    )
    return out


def _finite_or_none(value: Any) -> Any:
    """``value`` with every NaN / infinite float replaced by None (JSON's ``null``): the json
    module would write bare ``NaN``, which JSON parsers other than Python's refuse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


class MonosemanticityEvaluator:
    """MS of a training SAE's latents on held-out images, for ``VisionSAETrainingRunner``.

    The held-out rows and embeddings are computed once; each call encodes the rows with the
    SAE's inference encoder (threshold, not the batch-dependent BatchTopK of training), after the
    trainer's input scaling, and logs ``eval/ms_*`` statistics.
    """

    def __init__(self, rows: HookRows, embeddings: Tensor, *, min_support: int = 2) -> None:
        if len(embeddings) != rows.n_images:
            raise ValueError(f"{len(embeddings)} embeddings for {rows.n_images} images")
        self.rows, self.embeddings, self.min_support = rows, embeddings, min_support

    @classmethod
    def from_images(
        cls,
        model: VisionModel,
        images: ImageInput,
        hook: str,
        tokens: str,
        *,
        scoring_encoder: Any = "dinov2",
        min_support: int = 2,
        progress: bool = False,
    ) -> MonosemanticityEvaluator:
        scorer = load_scoring_encoder(scoring_encoder)  # before extracting: fails first
        rows = hook_rows(model, images, hook, tokens, progress=progress)
        scored = image_embeddings(images, scorer, progress=progress)
        keep = {image_id: i for i, image_id in enumerate(scored.image_ids)}
        return cls(
            rows, scored.embeddings[[keep[i] for i in rows.image_ids]], min_support=min_support
        )

    def __call__(self, sae: SAE, step: int, activation_scaler: Any) -> dict[str, float]:
        rows = self.rows.rows.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)
        codes = encode_rows(lambda x: sae.encode(activation_scaler(x)), rows)
        result = monosemanticity_score(
            pool_codes(codes, self.rows.image_index, self.rows.n_images),
            self.embeddings,
            min_support=self.min_support,
        )
        stats = ms_statistics(result)
        return {f"eval/ms_{key}": value for key, value in stats.items()} | {
            "eval/l0": codes.indices().shape[1] / len(rows)
        }
