"""``build_dashboard``: evaluate an SAE on images and write its static HTML dashboard."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from sae_vlm_plugin.dashboard.data import (
    DashboardData,
    check_latents,
    data_from_codes,
    group_levels,
)
from sae_vlm_plugin.dashboard.heatmaps import patch_heatmaps
from sae_vlm_plugin.dashboard.html import write_dashboard
from sae_vlm_plugin.dashboard.thumbnails import write_thumbnails
from sae_vlm_plugin.images import ImageSource, open_image_source
from sae_vlm_plugin.metrics.evaluation import MIN_SUPPORT
from sae_vlm_plugin.metrics.figures import Coverage, figure_title, plot_ms_distribution
from sae_vlm_plugin.model import ModelLike, as_vision_model

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_vlm_plugin.images import ImageInput
    from sae_vlm_plugin.model import VisionModel


@dataclass
class CollectedDashboard:
    """What ``collect_dashboard`` gathered: the data, the images, and where each recorded image
    is in them."""

    data: DashboardData
    source: ImageSource
    positions: dict[int, int]
    """Position in ``data.image_ids`` -> index in ``source``."""


def build_dashboard(
    sae: SAE,
    model: VisionModel,
    images: ImageInput,
    out_dir: str | Path,
    *,
    thumbnail_size: int = 112,
    title: str | None = None,
    **collect: Any,
) -> Path:
    """Write the dashboard of ``sae`` (a SAELens SAE) on ``images`` seen by ``model`` into
    ``out_dir``; returns the path of ``index.html``.

    ``collect`` goes to ``collect_dashboard`` (``embeddings``, ``scoring_encoder``, ``report``,
    ``latents``, ``n_top``, ``heatmaps``, ``similar`` ...). Thumbnails are written once per image
    id and size and reused by later builds.
    """
    found = collect_dashboard(sae, model, images, **collect)
    return write_from_data(
        found.data,
        found.source,
        out_dir,
        positions=found.positions,
        thumbnail_size=thumbnail_size,
        title=title or default_title(found.data),
    )


def default_title(data: DashboardData) -> str:
    """The page title when none is given: the model and hook the latents read."""
    return f"SAE latents: {data.meta['model']} {data.meta['hook']}"


def collect_dashboard(
    sae: SAE,
    model: ModelLike,
    images: ImageInput,
    *,
    embeddings: Tensor | None = None,
    scoring_encoder: Any = "dinov2",
    report: Any = None,
    hook: str | None = None,
    tokens: str | None = None,
    n_top: int = 16,
    latents: Sequence[int] | Tensor | None = None,
    heatmaps: bool | None = None,
    similar: bool | None = None,
    n_similar: int = 5,
    labels: Sequence[str] | None = None,
    concept_labels: Any = None,
    steerability: Any = None,
    batch_size: int = 64,
    progress: bool = False,
    force: bool = False,
    min_support: int = MIN_SUPPORT,
    skip_unreadable: bool = False,
) -> CollectedDashboard:
    """The dashboard data of ``sae`` (a SAELens SAE) on ``images`` seen by ``model``.

    The per-image codes and MS come from ``report`` (an ``EvaluationReport`` of this SAE on these
    images) or from running ``evaluate_sae`` with ``embeddings`` / ``scoring_encoder``.
    ``latents`` restricts the dashboard to some latents (default: all). ``heatmaps`` (default:
    when the SAE reads patch tokens) adds per-patch maps of each latent on its top images;
    ``similar`` (default: Matryoshka SAEs) the ``n_similar`` nearest latents by decoder cosine.
    Heatmaps are held as ``(n_latents, n_top, n_patches)`` floats while computed and written as
    one byte per patch (65,536 latents x 16 x 576 patches: 2.4 GB, then ~800 MB of page data),
    so for the widest patch SAEs pass ``latents`` (e.g. the best-scoring few thousand).
    ``labels`` (one per image of ``images``; default: the source's own labels, e.g. class
    folders) give each latent a searchable "top label". ``concept_labels`` (a
    ``naming.LatentLabels`` or its file / directory, from ``name_latents`` / ``sae-vlm name``)
    adds each latent's concept labels: a sortable, searchable column and a list on its page.
    ``steerability`` (a ``steering.SteerabilityReport`` or the folder / file ``sae-vlm
    steerability`` wrote) adds what clamping each latent makes LLaVA say: a sortable "steers"
    column and the answers on its page.
    ``force`` uses an SAE whose metadata names another model (``check_attachable``).
    ``min_support`` (16, as ``evaluate_sae``) and ``skip_unreadable`` go to ``evaluate_sae``
    when no ``report`` is given.

    Raises:
        ValueError: latents out of range, recorded image ids missing from ``images``, or an SAE
            whose width does not match the activations.
    """
    model = as_vision_model(model)
    from sae_vlm_plugin.metrics.evaluation import _group_bounds, evaluate_sae

    d_sae = int(sae.cfg.d_sae)
    if latents is not None:  # fail before the expensive evaluation
        check_latents(latents, d_sae)
    if concept_labels is not None:
        from sae_vlm_plugin.naming.labels import labels_for

        concept_labels = labels_for(concept_labels, d_sae)
    if steerability is not None:
        from sae_vlm_plugin.steering.census import SteerabilityReport

        if not isinstance(steerability, SteerabilityReport):
            steerability = SteerabilityReport.load(steerability)
    tokens = tokens or getattr(sae.cfg.metadata, "tokens", None) or "cls"
    if report is None:
        report = evaluate_sae(
            sae,
            model,
            images,
            scoring_encoder=scoring_encoder,
            embeddings=embeddings,
            hook=hook,
            tokens=tokens,
            batch_size=batch_size,
            progress=progress,
            force=force,
            skip_unreadable=skip_unreadable,
            min_support=min_support,
            with_uniqueness=False,  # not shown; quadratic in latents per image (dense SAEs)
        )
    if int(report.image_codes.shape[1]) != d_sae:
        raise ValueError(
            f"the SAE has {d_sae} latents but the activations have "
            f"{int(report.image_codes.shape[1])}: the SAE does not match the activations"
        )
    source = open_image_source(images)
    positions = source_positions(source, report.image_ids)
    labels = list(labels) if labels is not None else source.labels
    if labels is not None and len(labels) != len(source):
        raise ValueError(f"{len(labels)} labels for {len(source)} images")
    groups = group_levels(_group_bounds(sae), d_sae)
    if similar is None:
        similar = groups is not None
    data = data_from_codes(
        report.image_codes,
        report.image_ids,
        report.sae_scores.scores,
        latents=latents,
        n_top=n_top,
        groups=groups,
        w_dec=sae.W_dec if similar else None,
        n_similar=n_similar,
        image_labels=None if labels is None else [labels[positions[p]] for p in positions],
        meta={
            "model": str(report.setup.get("model", "")),
            "hook": str(report.setup.get("hook", "")),
            "tokens": str(tokens),
            "d_in": int(sae.cfg.d_in),
            "min_support": int(report.sae_scores.min_support),
            "n_unreadable": int(report.setup.get("n_unreadable", 0)),
        },
    )
    if concept_labels is not None:
        data.concepts = [concept_labels.labels(int(j)) for j in data.latents]
        data.meta["concept labels"] = str(concept_labels.meta.get("text_model", ""))
    if steerability is not None:
        from sae_vlm_plugin.steering.census import dashboard_entry

        data.steering = [dashboard_entry(steerability, int(j)) for j in data.latents]
        data.meta["steering census"] = f"{steerability.hook}, {len(steerability.prompts)} prompts"
    if heatmaps is None:
        heatmaps = str(tokens).split("@")[0].split("_")[0] in ("patches", "all", "random")
    if heatmaps:
        if source.is_pixels:
            raise ValueError("patch heatmaps need images, not a preprocessed pixel tensor")
        data.heatmaps, data.heatmap_side, data.heatmap_peaks = patch_heatmaps(
            sae,
            model,
            source,
            str(report.setup["hook"]),
            data.latents,
            data.top_indices,
            image_positions=positions,
            batch_size=min(batch_size, 16),
        )
    return CollectedDashboard(data, source, positions)


def source_positions(source: ImageSource, image_ids: Sequence[str]) -> dict[int, int]:
    """``position in image_ids -> index in source``; ValueError naming recorded ids that the
    source does not have."""
    where = {image_id: i for i, image_id in enumerate(source.ids)}
    missing = [image_id for image_id in image_ids if image_id not in where]
    if missing:
        raise ValueError(
            f"{len(missing)} image ids recorded with the activations are missing from the "
            f"images ({source.description}), e.g. {missing[:3]}"
        )
    return {p: where[image_id] for p, image_id in enumerate(image_ids)}


def write_from_data(
    data: DashboardData,
    source: ImageSource,
    out_dir: str | Path,
    *,
    positions: dict[int, int] | None = None,
    thumbnail_size: int = 112,
    title: str = "SAE latents",
) -> Path:
    """Thumbnails of the shown top images, the MS plot and the page for ``data``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = positions if positions is not None else source_positions(source, data.image_ids)
    shown = data.top_indices[data.top_indices >= 0].unique().tolist()
    by_source = write_thumbnails(source, (positions[p] for p in shown), out, size=thumbnail_size)
    thumbs = {p: by_source[positions[p]] for p in shown}
    min_support = max(2, int(data.meta.get("min_support", 2)))
    plot_ms_distribution(
        data.scores,
        Coverage.of(data.scores, data.support, min_support),
        out / "ms_distribution.png",
        title=figure_title(
            str(data.meta.get("model", "")),
            f"{data.meta.get('hook', '')} ({data.meta.get('tokens', '')})",
            source.description,
        ),
    )
    return write_dashboard(
        data,
        out,
        thumbs,
        title=title,
        ms_plot="ms_distribution.png",
    )
