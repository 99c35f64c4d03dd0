"""The Neuronpedia export read back by the real ``neuronpedia`` client's data classes."""

from __future__ import annotations

import base64
import dataclasses
import io

import pytest
import torch
from PIL import Image

from dashboard_helpers import random_sae
from sae_vlm_plugin import VisionModel
from sae_vlm_plugin.dashboard import (
    collect_dashboard,
    export_neuronpedia,
    neuronpedia_features,
    neuronpedia_source,
)
from sae_vlm_plugin.tiny import models as tm

N_IMAGES = 40


@pytest.fixture(scope="module")
def collected():
    model = VisionModel(tm.clip_vision_model())
    images, _ = tm.synthetic_images(N_IMAGES)
    embeddings = torch.randn(N_IMAGES, 8, generator=torch.Generator().manual_seed(1))
    found = collect_dashboard(
        random_sae(32, "patches"), model, images, embeddings=embeddings, latents=range(6)
    )
    concepts = [[("red", 0.31), ("circle", 0.2)]] + [[] for _ in range(found.data.n_latents - 1)]
    data = dataclasses.replace(found.data, concepts=concepts, meta={**found.data.meta,
                               "concept labels": "toy text tower"})  # fmt: skip
    return found, data


def test_the_client_reads_every_feature_activation_and_explanation(collected, tmp_path):
    from neuronpedia.np_activation import Activation
    from neuronpedia.np_explanation import Explanation
    from neuronpedia.np_feature import Feature

    found, data = collected
    export_neuronpedia(
        data, found.source, tmp_path, model_id="tiny-clip", source_set="tiny-res-x4",
        positions=found.positions, features_per_batch=4,
    )  # fmt: skip
    features = neuronpedia_features(tmp_path)
    assert all(isinstance(f, Feature) for f in features)
    assert [f.index for f in features] == list(range(6))
    assert {f.source for f in features} == {"1-tiny-res-x4"}  # blocks.1 -> layer 1
    first = features[0]
    assert first.density == pytest.approx(float(data.density[0]))
    assert len(first.activations) == data.n_top
    for activation in first.activations:
        assert isinstance(activation, Activation)
        assert 0 < activation.quantileFraction <= 1
        assert activation.quantileMin <= activation.values[0] <= activation.quantileMax
    assert first.activations[0].quantileFraction == pytest.approx(data.n_top / N_IMAGES)
    assert first.activations[0].quantileMax == pytest.approx(float(data.max_activation[0]), 1e-4)
    # The documented image folder: each image token is a thumbnail next to the batches.
    with Image.open(tmp_path / first.activations[0].tokens[0]) as image:
        assert image.format == "JPEG"
    (explanation,) = first.explanations
    assert isinstance(explanation, Explanation)
    assert (explanation.source, explanation.index, explanation.text) == (
        "1-tiny-res-x4",
        0,
        "red, circle",
    )
    assert explanation.explainer_model == "toy text tower"
    assert all(f.explanations == [] for f in features[1:])


def test_embedded_images_are_data_urls_of_jpegs(collected, tmp_path):
    found, data = collected
    export_neuronpedia(
        data, found.source, tmp_path, model_id="m", source_set="s", embed_images=True,
        positions=found.positions,
    )  # fmt: skip
    tokens = [a.tokens[0] for f in neuronpedia_features(tmp_path) for a in f.activations]
    prefix = "data:image/jpeg;base64,"
    assert tokens
    assert all(t.startswith(prefix) for t in tokens)
    with Image.open(io.BytesIO(base64.b64decode(tokens[0][len(prefix) :]))) as image:
        assert image.format == "JPEG"


def test_source_names_follow_the_hook_block():
    from neuronpedia.np_source import Source
    from neuronpedia.np_source_set import SourceSet

    assert neuronpedia_source("vision.blocks.22.hook_resid_post", "llava-res") == "22-llava-res"
    assert neuronpedia_source("hook_pooled", "clip-pooled", layer=24) == "24-clip-pooled"
    source_set = SourceSet(
        name="llava-res",
        model_id="llava",
        sources=[Source(id="22-llava-res", model_id="llava", set_name="llava-res")],
    )
    assert source_set.get_source_for_layer_number(22).id == neuronpedia_source(
        "vision.blocks.22.hook_resid_post", source_set.name
    )
    with pytest.raises(ValueError, match="hook 'hook_pooled' names no block"):
        neuronpedia_source("hook_pooled", "s")
    with pytest.raises(ValueError, match="'Final_SAE' is not valid"):
        neuronpedia_source("blocks.1.hook_resid_post", "Final_SAE")


def test_the_command_refuses_a_bad_source_set_before_building(tmp_path, image_folder, capsys):
    from sae_vlm_plugin.cli import main

    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "ckpt")
    random_sae(16, "cls", matryoshka=False).save_model(tmp_path / "sae")
    argv = ["dashboard", "--sae", str(tmp_path / "sae"), "--images", str(image_folder)]
    argv += ["--out", str(tmp_path / "dash"), "--model", str(checkpoint), "--neuronpedia"]
    assert main([*argv, "--source-set", "Final_SAE"]) == 2
    assert "source set name 'Final_SAE' is not valid" in capsys.readouterr().err
    assert not (tmp_path / "dash" / "index.html").exists()
