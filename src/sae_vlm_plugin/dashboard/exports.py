"""Export of dashboard data to SAEDashboard's data classes, built from (and validated by) the
real ``sae_dashboard`` classes, and the image-as-sequence helpers the Neuronpedia export shares.

Neither tool knows images, so an image becomes a "sequence": its first token is the image
reference (a path relative to the export folder, or a ``data:`` URI) with the image's activation;
for patch-token SAEs the following tokens are ``patch r,c`` with the latent's activation on each
patch (from the heatmaps, in activation units). Similar latents by decoder cosine go into
SAEDashboard's correlated-features table (``correlated_features_cossim``, and its ``pearson``
column, which its HTML table displays).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sae_vlm_plugin.dashboard.data import DashboardData
from sae_vlm_plugin.dashboard.thumbnails import write_thumbnails
from sae_vlm_plugin.images import ImageSource

TOP_GROUP_TITLE = "TOP ACTIVATIONS"


def bar_values(data: DashboardData, r: int) -> list[float]:
    """Centres of latent row ``r``'s histogram bins."""
    n_bins = int(data.histograms.shape[1])
    peak = float(data.max_activation[r])
    return [round((b + 0.5) * peak / n_bins, 5) for b in range(n_bins)]


def patch_values(data: DashboardData, r: int, slot: int) -> list[float]:
    """Activations of latent row ``r`` on each patch of its ``slot``-th top image, in the units
    of the heatmap's peak (the largest patch activation over its top images)."""
    if data.heatmaps is None or data.heatmap_peaks is None:
        return []
    peak = float(data.heatmap_peaks[r])
    return [round(v * peak / 255, 4) for v in data.heatmaps[r, slot].tolist()]


def image_refs(
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


def patch_names(n_patches: int) -> list[str]:
    side = math.isqrt(n_patches)
    return [f"patch {p // side},{p % side}" for p in range(n_patches)]


SETUP_FILE = "saedashboard_setup.json"
"""What SAEDashboard's ``SaeVisData.load_json`` needs besides ``saedashboard.json`` (its config,
layout and a model with a tokenizer vocabulary), written next to it."""


class _ImageVocabulary:
    """The ``tokenizer.vocab`` SAEDashboard decodes with: token ``p < n_images`` is image ``p``'s
    reference, token ``n_images + j`` is patch ``j``."""

    def __init__(self, tokens: list[str]) -> None:
        self.vocab = {token: i for i, token in enumerate(tokens)}


@dataclass(frozen=True)
class SAEDashboardSetup:
    """The vocabulary and layout of an SAEDashboard export, from which SAEDashboard's own
    config and a stand-in model (a tokenizer, no weights) are rebuilt."""

    hook_point: str
    features: list[int]
    tokens: list[str]
    """Token id -> text: image references, then ``patch r,c`` names."""
    n_top: int
    n_bins: int
    n_similar: int

    def vis_config(self) -> Any:
        """SAEDashboard's ``SaeVisConfig`` with the one-column layout of the export: the top
        images as sequences, the activation histogram, the decoder-cosine neighbours."""
        from sae_dashboard.components_config import (
            ActsHistogramConfig,
            Column,
            FeatureTablesConfig,
            SequencesConfig,
        )
        from sae_dashboard.layout import SaeVisLayoutConfig
        from sae_dashboard.sae_vis_data import SaeVisConfig

        layout = SaeVisLayoutConfig(
            columns=[
                Column(
                    SequencesConfig(
                        stack_mode="stack-all",
                        buffer=None,
                        compute_buffer=True,
                        n_quantiles=0,
                        top_acts_group_size=self.n_top,
                    ),
                    ActsHistogramConfig(n_bins=self.n_bins),
                    FeatureTablesConfig(
                        n_rows=self.n_similar,
                        neuron_alignment_table=False,
                        correlated_neurons_table=False,
                        correlated_features_table=self.n_similar > 0,
                    ),
                )
            ],
            height=750,
        )
        return SaeVisConfig(
            hook_point=self.hook_point, features=self.features, feature_centric_layout=layout
        )

    def model(self) -> Any:
        """The stand-in for SAEDashboard's ``model``: only its tokenizer is read (and this
        setup, which ``export_saedashboard`` saves)."""
        return SimpleNamespace(tokenizer=_ImageVocabulary(self.tokens), setup=self)


def load_saedashboard(folder: str | Path) -> Any:
    """An export (``export_saedashboard``'s folder) loaded by SAEDashboard's own
    ``SaeVisData.load_json`` from the saved files alone, ready for its writers."""
    from sae_dashboard.sae_vis_data import SaeVisData

    folder = Path(folder)
    setup = SAEDashboardSetup(**json.loads((folder / SETUP_FILE).read_text()))
    return SaeVisData.load_json(
        folder / "saedashboard.json", setup.vis_config(), setup.model(), encoder=None
    )


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
    so SAEDashboard's own writers (``save_json``, ``save_feature_centric_vis``) work on it; its
    ``model.setup`` (``SAEDashboardSetup``) rebuilds config and vocabulary from a file."""
    from sae_dashboard.components import (
        ActsHistogramData,
        FeatureTablesData,
        SequenceData,
        SequenceGroupData,
        SequenceMultiGroupData,
    )
    from sae_dashboard.feature_data import FeatureData
    from sae_dashboard.sae_vis_data import SaeVisData
    from sae_dashboard.utils_fns import FeatureStatistics

    data.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = positions if positions is not None else {p: p for p in range(len(data.image_ids))}
    refs = image_refs(data, source, out, positions, False, thumbnail_size)
    n_images = len(data.image_ids)
    n_patches = int(data.heatmaps.shape[2]) if data.heatmaps is not None else 0
    names = [refs.get(p, f"image:{data.image_ids[p]}") for p in range(n_images)]
    has_similar = data.similar_indices is not None
    setup = SAEDashboardSetup(
        hook_point=hook_point,
        features=data.latents.tolist(),
        tokens=names + patch_names(n_patches),
        n_top=data.n_top,
        n_bins=int(data.histograms.shape[1]),
        n_similar=int(data.similar_indices.shape[1]) if has_similar else 0,  # type: ignore[union-attr]
    )
    feature_data = {}
    for r in range(data.n_latents):
        sequences = []
        for slot in range(data.n_top):
            image = int(data.top_indices[r, slot])
            if image < 0:
                break
            patches = patch_values(data, r, slot)
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
                bar_values=bar_values(data, r),
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
    return SaeVisData(
        cfg=setup.vis_config(),
        feature_data_dict=feature_data,
        feature_stats=stats,
        model=setup.model(),
    )


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
    """``saedashboard.json`` (``SaeVisData.save_json``), ``SETUP_FILE`` (so that
    ``load_saedashboard`` rebuilds it from the files alone) and, with ``html``,
    ``saedashboard.html`` (``save_feature_centric_vis``, made offline and image-aware by
    ``offline_page.make_offline``) in ``out_dir``."""
    from sae_dashboard.data_writing_fns import save_feature_centric_vis

    from sae_vlm_plugin.dashboard.offline_page import make_offline

    out = Path(out_dir)
    vis = saedashboard_data(data, source, out, hook_point=hook_point, positions=positions)
    paths = {"json": out / "saedashboard.json", "setup": out / SETUP_FILE}
    vis.save_json(paths["json"])
    paths["setup"].write_text(json.dumps(asdict(vis.model.setup)))
    if html:
        paths["html"] = out / "saedashboard.html"
        save_feature_centric_vis(vis, paths["html"])
        make_offline(paths["html"])
    return paths
