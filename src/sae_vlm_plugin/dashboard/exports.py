"""Exports of dashboard data to Neuronpedia's batch feature JSON and to SAEDashboard's data
classes, both built from (and validated by) the real ``sae_dashboard`` classes.

Neither tool knows images, so an image becomes a "sequence": its first token is the image
reference (a path relative to the export folder, or a ``data:`` URI) with the image's activation;
for patch-token SAEs the following tokens are ``patch r,c`` with the latent's activation on each
patch (from the heatmaps, in activation units). Similar latents by decoder cosine go into the
correlated-features table (SAEDashboard's ``correlated_features_cossim`` - and its ``pearson``
column, which its HTML table displays - and Neuronpedia's ``correlated_features_l1``, where
Neuronpedia's own converter puts the cosine).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sae_vlm_plugin.dashboard.data import DashboardData
from sae_vlm_plugin.dashboard.thumbnails import write_thumbnails
from sae_vlm_plugin.images import ImageSource

TOP_GROUP_TITLE = "TOP ACTIVATIONS"
CDN_NOTE = (
    "SAEDashboard's saedashboard.html loads d3 and plotly from a CDN: it renders only with a "
    "network (saedashboard.json and the plugin's own dashboard need none)"
)
"""Said wherever ``saedashboard.html`` is written: unlike everything else here it is not
offline, and a blank page would otherwise look like a bug."""


def _bar_values(data: DashboardData, r: int) -> list[float]:
    """Centres of latent row ``r``'s histogram bins."""
    n_bins = int(data.histograms.shape[1])
    peak = float(data.max_activation[r])
    return [round((b + 0.5) * peak / n_bins, 5) for b in range(n_bins)]


def _patch_values(data: DashboardData, r: int, slot: int) -> list[float]:
    """Activations of latent row ``r`` on each patch of its ``slot``-th top image, in the units
    of the heatmap's peak (the largest patch activation over its top images)."""
    if data.heatmaps is None or data.heatmap_peaks is None:
        return []
    peak = float(data.heatmap_peaks[r])
    return [round(v * peak / 255, 4) for v in data.heatmaps[r, slot].tolist()]


def _image_refs(
    data: DashboardData,
    source: ImageSource,
    out: Path,
    positions: dict[int, int],
    embed_images: bool,
    thumbnail_size: int,
) -> dict[int, str]:
    shown = data.top_indices[data.top_indices >= 0].unique().tolist()
    paths = write_thumbnails(source, (positions[p] for p in shown), out, size=thumbnail_size)
    refs = {}
    for p in shown:
        relative = paths[positions[p]]
        if embed_images:
            encoded = base64.b64encode((out / relative).read_bytes()).decode()
            refs[p] = "data:image/jpeg;base64," + encoded
        else:
            refs[p] = relative
    return refs


def export_neuronpedia(
    data: DashboardData,
    source: ImageSource,
    out_dir: str | Path,
    *,
    model_id: str,
    layer: int,
    sae_set: str,
    positions: dict[int, int] | None = None,
    embed_images: bool = False,
    features_per_batch: int = 128,
    thumbnail_size: int = 112,
) -> list[Path]:
    """Write ``batch-<n>.json`` files in Neuronpedia's dashboard batch format (the
    ``NeuronpediaDashboardBatch`` of ``sae_dashboard``); returns their paths.

    Images are referenced by thumbnail paths relative to ``out_dir`` (written there), or with
    ``embed_images`` embedded as ``data:`` URIs. With concept labels (``data.concepts``), also
    writes ``explanations.json`` (Neuronpedia explanations; its path is returned last).
    """
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import (
        NeuronpediaDashboardBatch,
        NeuronpediaDashboardFeature,
    )

    data.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = positions if positions is not None else {p: p for p in range(len(data.image_ids))}
    refs = _image_refs(data, source, out, positions, embed_images, thumbnail_size)
    n_tokens = 1 + (int(data.heatmaps.shape[2]) if data.heatmaps is not None else 0)
    written = []
    for batch, start in enumerate(range(0, data.n_latents, features_per_batch)):
        features = []
        for r in range(start, min(start + features_per_batch, data.n_latents)):
            feature: dict[str, Any] = {
                "feature_index": int(data.latents[r]),
                "frac_nonzero": float(data.density[r]),
                "freq_hist_data_bar_values": _bar_values(data, r),
                "freq_hist_data_bar_heights": [float(c) for c in data.histograms[r].tolist()],
                "n_prompts_total": len(data.image_ids),
                "n_tokens_in_prompt": n_tokens,
                "dataset": source.description,
                "activations": _np_activations(data, r, refs),
            }
            if data.similar_indices is not None and data.similar_values is not None:
                feature["correlated_features_indices"] = data.similar_indices[r].tolist()
                feature["correlated_features_l1"] = [
                    round(v, 4) for v in data.similar_values[r].tolist()
                ]
            features.append(NeuronpediaDashboardFeature(**feature))
        record = NeuronpediaDashboardBatch(model_id=model_id, layer=layer, sae_set=sae_set)
        record.features = features
        path = out / f"batch-{batch}.json"
        path.write_text(json.dumps(record.to_dict(), allow_nan=False))
        written.append(path)
    if data.concepts is not None or data.steering is not None:
        written.append(_write_explanations(data, out, model_id, f"{layer}-{sae_set}"))
    return written


EXPLANATION_TYPE = "clip-concept-cosine"
STEERING_EXPLANATION_TYPE = "steering-census"


def _write_explanations(data: DashboardData, out: Path, model_id: str, source: str) -> Path:
    """``explanations.json``: Neuronpedia explanations (the fields of its explanation export:
    ``modelId``, ``layer`` = the source id, ``index``, ``description``, ``explanationModelName``,
    ``typeName``): per named latent its concept labels (``EXPLANATION_TYPE``), and per latent
    the steerability census clamped, what its answers gained (``STEERING_EXPLANATION_TYPE``)."""

    def explanation(r: int, description: str, model: str, kind: str) -> dict[str, str]:
        return {
            "modelId": model_id,
            "layer": source,
            "index": str(int(data.latents[r])),
            "description": description,
            "explanationModelName": model,
            "typeName": kind,
        }

    explanations = []
    text_model = str(data.meta.get("concept labels", ""))
    for r, labels in enumerate(data.concepts or []):
        if labels:
            words = ", ".join(word for word, _ in labels)
            explanations.append(explanation(r, words, text_model, EXPLANATION_TYPE))
    census = str(data.meta.get("steering census", ""))
    for r, entry in enumerate(data.steering or []):
        if entry and entry.get("word"):
            rank = "" if entry["p"] is None else f" (p {entry['p']:.3f} against random directions)"
            description = (
                f"clamped, adds '{entry['word']}' to {entry['score']:.0%} of answers at "
                f"{entry['multiple']}x{rank}"
                + (f"; one-word answer: {entry['one_word']}" if entry.get("one_word") else "")
            )
            explanations.append(explanation(r, description, census, STEERING_EXPLANATION_TYPE))
    path = out / "explanations.json"
    path.write_text(json.dumps(explanations, indent=1))
    return path


def _np_activations(data: DashboardData, r: int, refs: dict[int, str]) -> list[dict[str, Any]]:
    activations = []
    peak = float(data.max_activation[r])
    for slot in range(data.n_top):
        image = int(data.top_indices[r, slot])
        if image < 0:
            break
        patches = _patch_values(data, r, slot)
        activations.append(
            {
                "bin_min": -1,
                "bin_max": peak,
                "bin_contains": -1,
                "tokens": [refs[image], *_patch_names(len(patches))],
                "values": [round(float(data.top_values[r, slot]), 5), *patches],
                "qualifying_token_index": 0,
            }
        )
    return activations


def _patch_names(n_patches: int) -> list[str]:
    side = math.isqrt(n_patches)
    return [f"patch {p // side},{p % side}" for p in range(n_patches)]


class _ImageVocabulary:
    """The ``tokenizer.vocab`` SAEDashboard decodes with: token ``p < n_images`` is image ``p``'s
    reference, token ``n_images + j`` is patch ``j``."""

    def __init__(self, refs: list[str], n_patches: int) -> None:
        self.vocab = {ref: i for i, ref in enumerate(refs)}
        for j, name in enumerate(_patch_names(n_patches)):
            self.vocab[name] = len(refs) + j


def saedashboard_data(
    data: DashboardData,
    source: ImageSource,
    out_dir: str | Path,
    *,
    hook_point: str,
    positions: dict[int, int] | None = None,
    thumbnail_size: int = 112,
) -> Any:
    """An ``sae_dashboard.sae_vis_data.SaeVisData`` filled from image activations: per latent
    the top images as sequences (``TOP ACTIVATIONS`` group), the activation histogram, the
    decoder-cosine neighbours and feature statistics. Its ``model`` is a stand-in whose
    tokenizer vocabulary names the images (thumbnail paths relative to ``out_dir``) and patches,
    so SAEDashboard's own writers (``save_json``, ``save_feature_centric_vis``) work on it."""
    from sae_dashboard.components import (
        ActsHistogramData,
        FeatureTablesData,
        SequenceData,
        SequenceGroupData,
        SequenceMultiGroupData,
    )
    from sae_dashboard.components_config import (
        ActsHistogramConfig,
        Column,
        FeatureTablesConfig,
        SequencesConfig,
    )
    from sae_dashboard.feature_data import FeatureData
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig, SaeVisData
    from sae_dashboard.utils_fns import FeatureStatistics

    data.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = positions if positions is not None else {p: p for p in range(len(data.image_ids))}
    refs = _image_refs(data, source, out, positions, False, thumbnail_size)
    n_images = len(data.image_ids)
    n_patches = int(data.heatmaps.shape[2]) if data.heatmaps is not None else 0
    names = [refs.get(p, f"image:{data.image_ids[p]}") for p in range(n_images)]
    has_similar = data.similar_indices is not None
    layout = SaeVisLayoutConfig(
        columns=[
            Column(
                SequencesConfig(
                    stack_mode="stack-all",
                    buffer=None,
                    compute_buffer=True,
                    n_quantiles=0,
                    top_acts_group_size=data.n_top,
                ),
                ActsHistogramConfig(n_bins=int(data.histograms.shape[1])),
                FeatureTablesConfig(
                    n_rows=int(data.similar_indices.shape[1]) if has_similar else 0,  # type: ignore[union-attr]
                    neuron_alignment_table=False,
                    correlated_neurons_table=False,
                    correlated_features_table=has_similar,
                ),
            )
        ],
        height=750,
    )
    feature_data = {}
    for r in range(data.n_latents):
        sequences = []
        for slot in range(data.n_top):
            image = int(data.top_indices[r, slot])
            if image < 0:
                break
            patches = _patch_values(data, r, slot)
            sequences.append(
                SequenceData(
                    original_index=image,
                    qualifying_token_index=0,
                    token_ids=[image] + [n_images + j for j in range(len(patches))],
                    feat_acts=[round(float(data.top_values[r, slot]), 5), *patches],
                    # No logits for images: empty hover data, zero loss effect.
                    loss_contribution=[0.0] * (1 + len(patches)),
                    token_logits=[0.0] * (1 + len(patches)),
                    top_token_ids=[[] for _ in range(1 + len(patches))],
                    top_logits=[[] for _ in range(1 + len(patches))],
                    bottom_token_ids=[[] for _ in range(1 + len(patches))],
                    bottom_logits=[[] for _ in range(1 + len(patches))],
                )
            )
        tables = FeatureTablesData()
        if has_similar:
            tables.correlated_features_indices = data.similar_indices[r].tolist()  # type: ignore[index]
            tables.correlated_features_cossim = data.similar_values[r].tolist()  # type: ignore[index]
            # SAEDashboard's table shows the "pearson" column; there is no activation
            # correlation here, so it shows the decoder cosine too (valid JSON, no NaN).
            tables.correlated_features_pearson = tables.correlated_features_cossim
        peak = float(data.max_activation[r])
        feature_data[int(data.latents[r])] = FeatureData(
            feature_tables_data=tables,
            acts_histogram_data=ActsHistogramData(
                bar_heights=[float(c) for c in data.histograms[r].tolist()],
                bar_values=_bar_values(data, r),
                tick_vals=[0.0, round(peak / 2, 5), round(peak, 5)],
                title=f"ACTIVATIONS<br>DENSITY = {float(data.density[r]):.3%}"
                + _concept_title(data, r),
            ),
            sequence_data=SequenceMultiGroupData(
                seq_group_data=[
                    SequenceGroupData(
                        title=f"{TOP_GROUP_TITLE}<br>MAX = {peak:.3f}", seq_data=sequences
                    )
                ]
            ),
        )
    stats = FeatureStatistics(
        max=[float(v) for v in data.max_activation.tolist()],
        frac_nonzero=[float(v) for v in data.density.tolist()],
        skew=[0.0] * data.n_latents,
        kurtosis=[0.0] * data.n_latents,
    )
    cfg = SaeVisConfig(
        hook_point=hook_point,
        features=data.latents.tolist(),
        feature_centric_layout=layout,
    )
    stand_in = SimpleNamespace(tokenizer=_ImageVocabulary(names, n_patches))
    return SaeVisData(cfg=cfg, feature_data_dict=feature_data, feature_stats=stats, model=stand_in)


def _concept_title(data: DashboardData, r: int) -> str:
    """The histogram title's concept line: SAEDashboard has no field for a feature's labels.
    Its page sets titles as HTML (``innerHTML``), so the words are escaped: a label is text,
    never markup, and never a ``</script>`` that would end the page's inline data."""
    if not data.concepts or not data.concepts[r]:
        return ""
    words = (f"{html.escape(w)} {s:.2f}" for w, s in data.concepts[r])
    return "<br>CONCEPTS: " + ", ".join(words)


def export_saedashboard(
    data: DashboardData,
    source: ImageSource,
    out_dir: str | Path,
    *,
    hook_point: str,
    positions: dict[int, int] | None = None,
    html: bool = True,
) -> dict[str, Path]:
    """``saedashboard.json`` (``SaeVisData.save_json``) and, with ``html``,
    ``saedashboard.html`` (``save_feature_centric_vis``; it loads d3/plotly from a CDN, so it
    renders only online) in ``out_dir``."""
    from sae_dashboard.data_writing_fns import save_feature_centric_vis

    out = Path(out_dir)
    vis = saedashboard_data(data, source, out, hook_point=hook_point, positions=positions)
    paths = {"json": out / "saedashboard.json"}
    vis.save_json(paths["json"])
    if html:
        paths["html"] = out / "saedashboard.html"
        save_feature_centric_vis(vis, paths["html"])
    return paths
