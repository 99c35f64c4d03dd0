"""Models the user wrapped with nnsight (``NNsight``, ``TransformersModel``, the deprecated
``VisionLanguageModel``) work with every API that takes a model, and share one set of edits
with the plugin: a steer installed by the plugin changes the user's own trace and generate."""

from __future__ import annotations

import warnings

import pytest
import torch
from nnsight import NNsight, TransformersModel
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from dashboard_helpers import HOOK, random_sae
from sae_vlm_plugin import VisionModel, evaluate_sae, extract_activations, generate, steer
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.toy import toy_model_path, world_images
from sae_vlm_plugin.toy.llava_training import conversation

LLAVA_HOOK = "vision.blocks.2.hook_resid_post"


def _block_output(user, pixels):
    with torch.no_grad(), user.trace(pixels):
        value = user.vision_model.encoder.layers[1].output[0].clone().save()
    return value


def test_a_plain_nnsight_model_sees_the_plugins_steer_and_its_removal():
    module = tm.clip_vision_model()
    user = NNsight(module)
    pixels = tm.pixel_batch(2)
    sae = random_sae(32, "all")
    before = _block_output(user, pixels)
    with steer(user, sae, {3: 10.0}) as handle:
        assert len(user._edits) == 1
        steered = _block_output(user, pixels)
        with torch.no_grad():
            expected = sae.decode(
                handle.module.edit_codes(sae.encode(before.reshape(-1, tm.WIDTH)))
            ).reshape(before.shape)
        torch.testing.assert_close(steered, expected, atol=1e-5, rtol=1e-5)
        # The plugin's own view of the same model reads the same edited value.
        plugin = VisionModel(user)
        with torch.no_grad(), plugin.trace(pixel_values=pixels):
            read = plugin.read_hook(HOOK).clone().save()
        torch.testing.assert_close(read, steered)
    assert user._edits == []
    torch.testing.assert_close(_block_output(user, pixels), before)


def test_an_edit_the_user_made_is_seen_by_the_plugin():
    user = NNsight(tm.clip_vision_model())
    pixels = tm.pixel_batch(2)
    with user.edit(inplace=True):
        user.vision_model.encoder.layers[0].output[0][:] = 0
    plugin = VisionModel(user)
    rows = plugin.capture(pixels, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"]
    assert rows.abs().max() == 0


def test_extraction_and_evaluation_take_the_users_wrapper():
    module = tm.clip_vision_model()
    images, _ = tm.synthetic_images(24)
    ours = extract_activations(module, images, HOOK, tokens="cls", progress=False)[HOOK]
    theirs = extract_activations(NNsight(module), images, HOOK, tokens="cls", progress=False)[HOOK]
    torch.testing.assert_close(theirs, ours)
    embeddings = torch.randn(24, 8, generator=torch.Generator().manual_seed(0))
    sae = random_sae(32, "cls")
    report = evaluate_sae(sae, NNsight(module), images, embeddings=embeddings, progress=False)
    direct = evaluate_sae(sae, VisionModel(module), images, embeddings=embeddings, progress=False)
    torch.testing.assert_close(report.sae_scores.scores, direct.sae_scores.scores, equal_nan=True)


def test_a_transformers_model_with_a_vision_task_is_steered_by_the_plugin():
    """The trained toy CLIP (a CLIPModel) under TransformersModel's image-feature-extraction
    task: the plugin steers its image tower, the user's own trace of the whole model sees it."""
    user = TransformersModel(
        str(toy_model_path("toy-clip")), task="image-feature-extraction", dispatch=True
    )
    plugin = VisionModel(user)
    assert plugin.family.name == "clip"
    images, _ = world_images(2, seed=1)
    pixels = plugin.preprocess(images)
    text = torch.zeros(2, 3, dtype=torch.long)

    def users_block():
        with torch.no_grad(), user.trace(pixel_values=pixels, input_ids=text):
            value = user.vision_model.encoder.layers[1].output[0].save()
        return value

    plain = users_block()
    with steer(user, _sae(plain.shape[-1], HOOK), {3: 10.0}, force=True):
        steered = users_block()
        with torch.no_grad(), plugin.trace(pixel_values=pixels):
            read = plugin.read_hook(HOOK).clone().save()
    assert (steered - plain).abs().max() > 1
    torch.testing.assert_close(read, steered)
    torch.testing.assert_close(users_block(), plain)


def _sae(d_in: int, hook: str) -> JumpReLUSAE:
    """A JumpReLU SAE (threshold 0) whose encoder is its decoder's transpose, random rows."""
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=64, metadata=SAEMetadata(hook_name=hook)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(64, d_in, generator=generator))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.threshold.zero_()
    return sae


@pytest.fixture(scope="module")
def llava_sae():
    return _sae(128, LLAVA_HOOK)


def _describe(user, prompt, images):
    with (
        torch.no_grad(),
        user.generate(text=prompt, images=images, max_new_tokens=8, do_sample=False) as tracer,
    ):
        ids = tracer.result.save()
    return user.processor.batch_decode(ids, skip_special_tokens=True)[0]


@pytest.mark.parametrize("wrapper", ["TransformersModel", "VisionLanguageModel"])
def test_the_users_llava_generate_is_steered_by_the_plugin(wrapper, llava_sae):
    import nnsight

    path = str(toy_model_path("toy-llava"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VisionLanguageModel's deprecation
        if wrapper == "TransformersModel":
            user = TransformersModel(path, task="image-text-to-text", dispatch=True)
        else:
            user = nnsight.VisionLanguageModel(path, dispatch=True)
    plugin = VisionModel(user)
    assert plugin.family.name == "llava"
    assert LLAVA_HOOK in plugin.hook_points
    images, _ = world_images(1, seed=3)
    prompt = conversation(user.processor, "describe the image.")
    plain = _describe(user, prompt, images)
    with steer(user, llava_sae, {3: 50.0}, hook=LLAVA_HOOK, force=True):
        steered = _describe(user, prompt, images)
        inputs = user.processor(text=prompt, images=images, return_tensors="pt")
        ids = generate(plugin, **inputs, max_new_tokens=8, do_sample=False)
        assert user.processor.batch_decode(ids, skip_special_tokens=True)[0] == steered
    assert steered != plain
    assert _describe(user, prompt, images) == plain
