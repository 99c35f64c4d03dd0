"""MS figures name what they show and the coverage of the latents they show."""

from __future__ import annotations

import math

import torch
from PIL import Image

from sae_vlm_plugin.metrics.figures import Coverage, figure_title, plot_sorted_ms
from sae_vlm_plugin.metrics.monosemanticity import MonosemanticityResult

NAN = math.nan


def _said(path) -> dict[str, str]:
    with Image.open(path) as image:
        return dict(image.text)


def test_coverage_splits_the_unscored_into_below_support_and_dead():
    scores = torch.tensor([0.5, NAN, NAN, 0.2, NAN, NAN], dtype=torch.float64)
    support = torch.tensor([40, 3, 0, 20, 0, 15])
    coverage = Coverage.of(scores, support, min_support=16)
    assert (coverage.n_scored, coverage.n_below_support, coverage.n_dead) == (2, 2, 2)
    assert coverage.text() == "scored 2 / below support 2 (< 16 images) / dead 2, of 6"


def test_sorted_ms_plot_carries_title_and_coverage(tmp_path):
    result = MonosemanticityResult(
        torch.tensor([0.9, 0.4, NAN, NAN], dtype=torch.float64),
        torch.tensor([30, 18, 2, 0]),
        n_images=100,
        min_support=16,
    )
    title = figure_title("toy-clip", "blocks.2.hook_resid_post (cls)", "toy world, 2000 images")
    plot_sorted_ms({"SAE latents": result}, tmp_path / "ms.png", title=title)
    said = _said(tmp_path / "ms.png")
    assert (
        said["Title"]
        == "toy-clip \u00b7 blocks.2.hook_resid_post (cls)\nimages: toy world, 2000 images"
    )
    assert said["Description"] == (
        "SAE latents: scored 2 / below support 1 (< 16 images) / dead 1, of 4"
    )


def test_dashboard_plot_names_model_hook_and_images(tmp_path):
    from sae_vlm_plugin.dashboard import data_from_codes, write_from_data
    from sae_vlm_plugin.images import open_image_source

    generator = torch.Generator().manual_seed(5)
    dense = torch.rand(30, 12, generator=generator)
    dense[dense < 0.6] = 0
    dense[:, 11] = 0  # one dead latent
    ids = [f"im{i}" for i in range(30)]
    scores = torch.rand(12, dtype=torch.float64)
    scores[11] = NAN
    source = open_image_source(torch.rand(30, 3, 16, 16))
    source.ids = ids
    data = data_from_codes(
        dense.to_sparse(), ids, scores,
        meta={"model": "toy-clip", "hook": "hook_pooled", "tokens": "cls", "min_support": 2},
    )  # fmt: skip
    write_from_data(data, source, tmp_path, thumbnail_size=16)
    said = _said(tmp_path / "ms_distribution.png")
    assert said["Title"] == figure_title("toy-clip", "hook_pooled (cls)", source.description)
    assert said["Description"].endswith("dead 1, of 12")
