"""The tiny-model fixtures every other test leans on: each family builds offline and runs."""

from __future__ import annotations

import time

import pytest
import torch

from sae_vlm_plugin.tiny import models as tm

# Encoders whose token sequence starts with a CLS token.
HAS_CLS = {
    "clip_vision",
    "clip_vision_with_projection",
    "clip",
    "webssl_mae",
    "webssl_dino",
    "open_clip_vit",
}


@pytest.mark.parametrize("name", sorted(tm.VISION_BUILDERS))
def test_vision_build_is_fast_deterministic_and_runs(name):
    build = tm.VISION_BUILDERS[name]
    build()  # first call pays for imports
    start = time.perf_counter()
    model = build()
    assert time.perf_counter() - start < 1.0
    again = build()
    for (key, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key

    pixels = tm.pixel_batch(2)
    with torch.no_grad():
        if name.startswith("open_clip"):
            embeds = model.encode_image(pixels)
            assert embeds.shape[0] == 2
            assert torch.isfinite(embeds).all()
            return
        if name == "clip":
            out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
        else:
            out = model(pixel_values=pixels, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == tm.N_LAYERS + 1
    n_tokens = tm.N_PATCHES + (1 if name in HAS_CLS else 0)
    assert hidden[-1].shape == (2, n_tokens, tm.WIDTH)
    assert torch.isfinite(hidden[-1]).all()


def test_open_clip_builds_have_the_block_layouts_the_plugin_resolves():
    vit = tm.open_clip_vit_model()
    assert len(vit.visual.transformer.resblocks) == tm.N_LAYERS
    siglip = tm.open_clip_siglip_model()
    assert len(siglip.visual.trunk.blocks) == tm.N_LAYERS
    assert siglip.visual.trunk.cls_token is None


def test_tiny_llava_processor_and_generate(tiny_llava, synthetic_images):
    images, _ = synthetic_images
    inputs = tiny_llava.processor(
        images=images[:2],
        text=["<image> describe the image ."] * 2,
        return_tensors="pt",
        padding=True,
    )
    image_token = tiny_llava.model.config.image_token_index
    # One placeholder per patch (CLS dropped by the "default" strategy).
    assert (inputs["input_ids"] == image_token).sum(dim=1).tolist() == [tm.N_PATCHES] * 2
    with torch.no_grad():
        out = tiny_llava.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_synthetic_images_are_labelled_and_reproducible():
    images, labels = tm.synthetic_images(9)
    assert len(set(labels)) == 9
    again, _ = tm.synthetic_images(9)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(images, again, strict=True))
    assert images[0].size == (tm.IMAGE_SIZE, tm.IMAGE_SIZE)
