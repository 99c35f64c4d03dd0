"""ViSAEBench's own metric code on a plugin SAE of the trained world (toy CLIP), through the
plugin's backbone and SAE adapters; MS@16 as ViSAEBench defines it, beside the exact MS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import visaebench

from sae_vlm_plugin import VisionModel, extract_to_cache
from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score
from sae_vlm_plugin.metrics.ms_at_k import ms_at_k
from sae_vlm_plugin.metrics.visaebench import (
    BenchSAE,
    VisionModelBackbone,
    patch_activations,
    visaebench_evaluate,
)
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.toy import world_images
from sae_vlm_plugin.toy.world import SHAPE_FAMILIES, SHAPES
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The toy CLIP, 160 world images labelled by shape, an SAE on its block-2 patch tokens and
    a second encoder to judge similarity (ViSAEBench requires another model)."""
    model = VisionModel("toy-clip")
    images, objects = world_images(160, seed=5)
    labels = [SHAPES.index(o.shape) for o in objects]
    root = tmp_path_factory.mktemp("visaebench")
    extract_to_cache(model, images, HOOK, root / "cache", tokens="patches", progress=False)
    cfg = VisionSAERunnerConfig(
        cache_path=str(root / "cache"), hook_name=HOOK, architecture="batchtopk",
        expansion_factor=4, k=8, batch_size=256, training_steps=40, warmup_steps=4,
        n_batches_for_scaling=2, checkpoint_every_steps=0, run_dir=str(root / "run"),
    )  # fmt: skip
    sae = VisionSAETrainingRunner(cfg, progress=False).run()
    return model, images, labels, sae, VisionModel(tm.webssl_dino_model())


def test_visaebench_metrics_run_on_a_plugin_sae(world):
    model, images, labels, sae, evaluator = world
    assert isinstance(VisionModelBackbone(model), visaebench.BackboneInterface)
    assert isinstance(BenchSAE(sae), visaebench.SAEInterface)
    groups = {
        family: {"class_indices": [SHAPES.index(s) for s in shapes], "hierarchy_depth": 1}
        for family, shapes in SHAPE_FAMILIES.items()
    }
    results = visaebench_evaluate(
        sae, model, images, labels, layer=2, evaluator=evaluator, sibling_groups=groups
    )
    by_name = {r.metric_name: r for r in results}
    assert set(by_name) == {
        "fvu", "downstream_preservation", "feature_localization", "absorption_rate",
        "sparse_probing_auc", "monosemanticity",
    }  # fmt: skip
    assert all(math.isfinite(r.value) for r in results)
    # ViSAEBench's k-sparse probes of the max-pooled codes, an AUC over k normalised to [0, 1]
    assert 0.0 <= by_name["sparse_probing_auc"].value <= 1.0
    # ViSAEBench's FVU over every patch row (N rows; its sums run over rows and dims):
    # (sum r^2 / N - (sum r / N)^2) / (sum x^2 / N - (sum x / N)^2), r = x - SAE(x).
    rows = patch_activations(VisionModelBackbone(model), images, 2).reshape(-1, sae.cfg.d_in)
    with torch.no_grad():
        residual = rows - sae.decode(sae.encode(rows))
    n = len(rows)
    spread = [t.pow(2).sum() / n - (t.sum() / n) ** 2 for t in (residual, rows)]
    assert by_name["fvu"].value == pytest.approx(float(spread[0] / spread[1]), rel=1e-4)


def test_ms_at_16_equals_visaebench_monosemanticity_and_differs_from_exact_ms(world):
    from visaebench.metrics import MonosemanticityScore

    model, images, _, sae, evaluator = world
    activations = patch_activations(VisionModelBackbone(model), images, 2)
    bench = MonosemanticityScore().compute(
        BenchSAE(sae), activations, images=images,
        evaluator_backbone=VisionModelBackbone(evaluator), evaluator_layer=-1, device="cpu",
    )  # fmt: skip
    with torch.no_grad():
        codes = sae.encode(activations).amax(dim=1)  # ViSAEBench max-pools patch codes
    embeddings = VisionModelBackbone(evaluator).extract_activations(images, layer=-1).mean(1)
    ours = ms_at_k(codes, embeddings, k=16)
    scored = ours.scores[~torch.isnan(ours.scores)]
    assert len(scored) == bench.metadata["num_features_scored"]
    np.testing.assert_allclose(scored.numpy(), bench.metadata["ms_distribution"], atol=1e-5)
    assert ours.mean == pytest.approx(bench.value, abs=1e-6)
    exact = monosemanticity_score(codes, embeddings)
    assert exact.scores.nanmean().item() != pytest.approx(ours.mean, abs=1e-3)


def test_ms_at_k_by_hand():
    codes = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [0.25, 0.0]])
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    # k = 2: images 0 and 1, weights 1 and 0.5 (min 0, max 1), cosine 0.
    assert ms_at_k(codes, embeddings, k=2).scores[0].item() == pytest.approx(0.0)
    # k = 3: pairs (0,1) w .5 cos 0, (0,3) w .25 cos 1, (1,3) w .125 cos 0.
    assert ms_at_k(codes, embeddings, k=3).scores[0].item() == pytest.approx(0.25 / 0.875)
    assert math.isnan(ms_at_k(codes, embeddings, k=3).scores[1].item())  # dead
    sparse = ms_at_k(codes.to_sparse(), embeddings, k=3).scores
    torch.testing.assert_close(sparse, ms_at_k(codes, embeddings, k=3).scores, equal_nan=True)


def test_ms_at_k_sparse_equals_dense_on_random_codes():
    generator = torch.Generator().manual_seed(3)
    dense = torch.rand(60, 40, generator=generator)
    dense[dense < 0.7] = 0
    dense[:, 0] = torch.rand(60, generator=generator) + 0.5  # fires on every image
    dense[:, 1] = 0  # dead
    dense[:5, 2] = torch.rand(5, generator=generator)  # fewer than k images
    embeddings = torch.randn(60, 12, generator=generator)
    expected = ms_at_k(dense, embeddings, k=16, chunk=7).scores
    got = ms_at_k(dense.to_sparse(), embeddings, k=16, chunk=7).scores
    torch.testing.assert_close(got, expected, equal_nan=True)
    assert math.isnan(got[1].item())
    with pytest.raises(ValueError, match="sparse codes must be non-negative"):
        ms_at_k((-dense).to_sparse(), embeddings)
