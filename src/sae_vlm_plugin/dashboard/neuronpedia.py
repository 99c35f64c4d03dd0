"""Neuronpedia export: feature batches in SAEDashboard's ``NeuronpediaDashboardBatch`` JSON,
explanations in Neuronpedia's explanation JSON, and a reader that turns the folder into the
``neuronpedia`` client's own data classes (``Feature`` with its ``Activation`` and
``Explanation`` lists), ready for ``Source.upload_batch``.

Neuronpedia names a source ``{layer}-{source set}`` (``"22-clip-res-x8"``): the layer is the
block number of the hook (``blocks.22.hook_resid_post`` and LLaVA's
``vision.blocks.22.hook_resid_post`` both give 22); a hook outside the blocks needs ``layer``
given. Each image is one "sequence" whose first token is the image: a thumbnail path relative
to the export folder (the images folder, ``thumbs/<size>/``, travels next to the batches) or,
with ``embed_images``, a ``data:image/jpeg;base64,...`` URL inside the batch itself.

Top activations form one quantile bin: ``bin_min`` is the smallest activation shown,
``bin_max`` the latent's largest, and ``bin_contains`` the fraction of images in that range,
``n_shown / n_images`` - a fraction in ``[0, 1]`` as the client requires (SAEDashboard's own
``-1`` marker is refused by ``neuronpedia.Activation``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sae_vlm_plugin.dashboard.data import DashboardData
from sae_vlm_plugin.dashboard.exports import bar_values, image_refs, patch_names, patch_values
from sae_vlm_plugin.hooks import parse_block_hook
from sae_vlm_plugin.images import ImageSource

SOURCE_SET_NAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
"""Neuronpedia's source set names: lowercase words of letters and digits joined by hyphens."""
EXPLANATION_TYPE = "clip-concept-cosine"
STEERING_EXPLANATION_TYPE = "steering-census"


def default_source_set(meta: dict[str, Any]) -> str:
    """``{tokens}-sae-vlm-{d_sae}`` from a dashboard's setup (``"cls-sae-vlm-512"``)."""
    tokens = re.sub(r"[^a-z0-9]+", "-", str(meta.get("tokens", "all")).lower()).strip("-")
    return f"{tokens}-sae-vlm-{int(meta['d_sae'])}"


def neuronpedia_source(hook: str, source_set: str, layer: int | None = None) -> str:
    """Neuronpedia's source id ``{layer}-{source_set}``; ``layer`` defaults to the hook's block."""
    if not SOURCE_SET_NAME.match(source_set):
        raise ValueError(
            f"source set name {source_set!r} is not valid on Neuronpedia: use lowercase letters, "
            "digits and single hyphens (e.g. 'clip-res-x8')"
        )
    if layer is None:
        parsed = parse_block_hook(hook)
        if parsed is None:
            raise ValueError(
                f"hook {hook!r} names no block, so its Neuronpedia layer is unknown: give layer= "
                "(hooks with one: blocks.L.hook_resid_post, vision.blocks.L.hook_resid_post)"
            )
        layer = parsed[1]
    if layer < 0:
        raise ValueError(f"Neuronpedia layer {layer} is negative: give the block's 0-based index")
    return f"{layer}-{source_set}"


def export_neuronpedia(
    data: DashboardData,
    source: ImageSource,
    out_dir: str | Path,
    *,
    model_id: str,
    source_set: str,
    layer: int | None = None,
    positions: dict[int, int] | None = None,
    embed_images: bool = False,
    features_per_batch: int = 128,
    thumbnail_size: int = 112,
) -> list[Path]:
    """Write ``batch-<n>.json`` files (``sae_dashboard``'s ``NeuronpediaDashboardBatch``) and,
    with concept labels or a steering census, ``explanations.json`` (returned last).

    The source is ``neuronpedia_source(data.meta["hook"], source_set, layer)``. Images are
    thumbnail paths relative to ``out_dir`` (written there), or with ``embed_images`` data URLs.
    ``features_per_batch`` is at most 128, the client's upload limit.
    """
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import (
        NeuronpediaDashboardBatch,
        NeuronpediaDashboardFeature,
    )

    if not 1 <= features_per_batch <= 128:
        raise ValueError(f"features_per_batch={features_per_batch}: Neuronpedia takes 1 to 128")
    source_id = neuronpedia_source(str(data.meta.get("hook", "")), source_set, layer)
    data.check()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    positions = positions if positions is not None else {p: p for p in range(len(data.image_ids))}
    refs = image_refs(data, source, out, positions, embed_images, thumbnail_size)
    n_tokens = 1 + (int(data.heatmaps.shape[2]) if data.heatmaps is not None else 0)
    written = []
    for batch, start in enumerate(range(0, data.n_latents, features_per_batch)):
        features = []
        for r in range(start, min(start + features_per_batch, data.n_latents)):
            feature: dict[str, Any] = {
                "feature_index": int(data.latents[r]),
                "frac_nonzero": float(data.density[r]),
                "freq_hist_data_bar_values": bar_values(data, r),
                "freq_hist_data_bar_heights": [float(c) for c in data.histograms[r].tolist()],
                "n_prompts_total": len(data.image_ids),
                "n_tokens_in_prompt": n_tokens,
                "dataset": source.description,
                "activations": _activations(data, r, refs),
            }
            if data.similar_indices is not None and data.similar_values is not None:
                feature["correlated_features_indices"] = data.similar_indices[r].tolist()
                # Neuronpedia's own converter puts the decoder cosine in this column.
                feature["correlated_features_l1"] = [
                    round(v, 4) for v in data.similar_values[r].tolist()
                ]
            features.append(NeuronpediaDashboardFeature(**feature))
        layer_number, _, set_name = source_id.partition("-")
        record = NeuronpediaDashboardBatch(
            model_id=model_id, layer=int(layer_number), sae_set=set_name
        )
        record.features = features
        path = out / f"batch-{batch}.json"
        path.write_text(json.dumps(record.to_dict(), allow_nan=False))
        written.append(path)
    if data.concepts is not None or data.steering is not None:
        written.append(_write_explanations(data, out, model_id, source_id))
    return written


def _activations(data: DashboardData, r: int, refs: dict[int, str]) -> list[dict[str, Any]]:
    """Latent row ``r``'s top images as one quantile bin (see the module docstring)."""
    shown = [int(i) for i in data.top_indices[r].tolist() if i >= 0]
    if not shown:
        return []
    values = [round(float(v), 5) for v in data.top_values[r, : len(shown)].tolist()]
    bin_min, bin_max = min(values), round(float(data.max_activation[r]), 5)
    contains = round(len(shown) / len(data.image_ids), 6)
    activations = []
    for slot, image in enumerate(shown):
        patches = patch_values(data, r, slot)
        activations.append(
            {
                "bin_min": bin_min,
                "bin_max": bin_max,
                "bin_contains": contains,
                "tokens": [refs[image], *patch_names(len(patches))],
                "values": [values[slot], *patches],
                "qualifying_token_index": 0,
            }
        )
    return activations


def _write_explanations(data: DashboardData, out: Path, model_id: str, source: str) -> Path:
    """``explanations.json`` in Neuronpedia's explanation JSON (``modelId``, ``source``,
    ``layer`` - the source id, as its database export names it -, ``index``,
    ``description``, ``explanationModelName``, ``typeName``): per named latent its concept
    labels (``EXPLANATION_TYPE``), and per latent the steerability census clamped, what its
    answers gained (``STEERING_EXPLANATION_TYPE``)."""

    def explanation(r: int, description: str, model: str, kind: str) -> dict[str, str]:
        return {
            "modelId": model_id,
            "source": source,
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


def neuronpedia_features(out_dir: str | Path) -> list[Any]:
    """The export in ``out_dir`` as the ``neuronpedia`` client's ``Feature`` objects (with
    ``Activation`` and ``Explanation`` lists), in latent order; each batch of at most 128 of
    them is what ``Source.upload_batch`` sends. Needs the ``neuronpedia`` package."""
    from neuronpedia.np_activation import Activation
    from neuronpedia.np_explanation import Explanation
    from neuronpedia.np_feature import Feature

    out = Path(out_dir)
    batches = sorted(out.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not batches:
        raise FileNotFoundError(f"no batch-<n>.json in {out}: not a Neuronpedia export")
    explained: dict[int, list[Any]] = {}
    if (out / "explanations.json").is_file():
        for raw in json.loads((out / "explanations.json").read_text()):
            item = Explanation.from_np_db_json(raw)
            explained.setdefault(item.index, []).append(item)
    features = []
    for path in batches:
        batch = json.loads(path.read_text())
        source = f"{batch['layer']}-{batch['sae_set']}"
        for raw in batch["features"]:
            index = int(raw["feature_index"])
            activations = [
                Activation.from_np_db_json(
                    {
                        "modelId": batch["model_id"],
                        "source": source,
                        "index": index,
                        "tokens": a["tokens"],
                        "values": a["values"],
                        "binMin": a["bin_min"],
                        "binMax": a["bin_max"],
                        "binContains": a["bin_contains"],
                    }
                )
                for a in raw["activations"]
            ]
            features.append(
                Feature(
                    modelId=batch["model_id"],
                    source=source,
                    index=index,
                    density=raw["frac_nonzero"],
                    explanations=explained.get(index, []),
                    activations=activations,
                )
            )
    return features
