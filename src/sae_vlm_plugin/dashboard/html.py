"""Write a static, self-contained dashboard: ``index.html`` (inline CSS/JS), ``data/*.js`` and
thumbnails, readable from the file system with no network."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import torch

from sae_vlm_plugin.dashboard._assets import CSS, JS
from sae_vlm_plugin.dashboard.data import DashboardData

CHUNK_SIZE = 256
"""Latents per on-demand data file ``data/latents/c<N>.js``."""

FORMAT_VERSION = 1


def write_dashboard(
    data: DashboardData,
    out_dir: str | Path,
    thumbnails: dict[int, str],
    *,
    title: str = "SAE latents",
    ms_plot: str | None = None,
) -> Path:
    """Write ``index.html`` and its data files for ``data`` into ``out_dir``.

    ``thumbnails`` maps image positions (rows of the codes) to paths relative to ``out_dir``;
    every shown top image needs one. Returns the path of ``index.html``.
    """
    data.check()
    out = Path(out_dir)
    (out / "data" / "latents").mkdir(parents=True, exist_ok=True)
    shown = data.top_indices[data.top_indices >= 0].unique().tolist()
    missing = [i for i in shown if i not in thumbnails]
    if missing:
        raise ValueError(
            f"no thumbnail for image {data.image_ids[missing[0]]!r} ({len(missing)} missing)"
        )
    thumbs = [""] * len(data.image_ids)
    image_ids = [""] * len(data.image_ids)
    for index in shown:
        thumbs[index] = thumbnails[index]
        image_ids[index] = data.image_ids[index]
    columns: dict[str, Any] = {
        "latent": data.latents.tolist(),
        "ms": _floats(data.scores, 4),
        "support": data.support.tolist(),
        "density": _floats(data.density, 6),
        "max": _floats(data.max_activation, 4),
    }
    if data.top_labels is not None:
        columns["label"] = data.top_labels
    if data.concepts is not None:
        columns["concept"] = [labels[0][0] if labels else "" for labels in data.concepts]
        columns["concept_score"] = [
            round(labels[0][1], 4) if labels else None for labels in data.concepts
        ]
        columns["concepts"] = [[word for word, _ in labels] for labels in data.concepts]
    if data.steering is not None:
        columns["steer_word"] = [(e or {}).get("word") or "" for e in data.steering]
        columns["steer_score"] = [
            round(e["score"], 4) if e and "score" in e else None for e in data.steering
        ]
        columns["steers"] = [bool(e and e["steers"]) for e in data.steering]
    n_groups = 0
    if data.groups is not None:
        columns["group"] = data.groups.tolist()
        n_groups = int(data.groups.max()) + 1 if data.groups.numel() else 0
    setup = {k: v for k, v in data.meta.items() if isinstance(v, str | int | float)}
    setup["latents shown"] = data.n_latents
    meta = {
        "title": title,
        "version": FORMAT_VERSION,
        "chunk_size": CHUNK_SIZE,
        "n_groups": n_groups,
        "heatmap_side": data.heatmap_side,
        "ms_plot": ms_plot,
        "setup": setup,
    }
    index = {"meta": meta, "columns": columns, "thumbs": thumbs, "imageIds": image_ids}
    _write_js(out / "data" / "index.js", "window.SAEDASH = " + _dumps(index) + ";\n")
    for chunk, start in enumerate(range(0, data.n_latents, CHUNK_SIZE)):
        rows = {
            str(int(data.latents[r])): _latent_record(data, r)
            for r in range(start, min(start + CHUNK_SIZE, data.n_latents))
        }
        _write_js(
            out / "data" / "latents" / f"c{chunk}.js",
            f"SAEDASH_CHUNK({chunk}, " + _dumps(rows) + ");\n",
        )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f'<header><b>{html.escape(title)}</b> &middot; <a href="#">index</a></header>'
        '<main id="main">loading&hellip;</main>'
        '<div id="status" hidden data-view="none"></div>'
        '<script src="data/index.js"></script>'
        f"<script>{JS}</script></body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _latent_record(data: DashboardData, r: int) -> dict[str, Any]:
    keep = data.top_indices[r] >= 0
    record: dict[str, Any] = {
        "top": [
            [int(i), round(float(v), 5)]
            for i, v in zip(data.top_indices[r][keep], data.top_values[r][keep], strict=True)
        ],
        "hist": data.histograms[r].tolist(),
    }
    if data.similar_indices is not None and data.similar_values is not None:
        record["sim"] = [
            [int(i), round(float(v), 4)]
            for i, v in zip(data.similar_indices[r], data.similar_values[r], strict=True)
        ]
    if data.concepts is not None:
        record["concepts"] = [[word, round(score, 4)] for word, score in data.concepts[r]]
    if data.steering is not None and data.steering[r] is not None:
        record["steering"] = data.steering[r]
    if data.heatmaps is not None:
        record["heat"] = [
            base64.b64encode(data.heatmaps[r, j].numpy().tobytes()).decode()
            for j in range(int(keep.sum()))
        ]
    return record


def _floats(values: torch.Tensor, digits: int) -> list[float | None]:
    return [None if math.isnan(v) else round(v, digits) for v in values.double().tolist()]


def _dumps(value: Any) -> str:
    # "</" would end an inline script; escape it although these files are loaded by src.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _write_js(path: Path, text: str) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
