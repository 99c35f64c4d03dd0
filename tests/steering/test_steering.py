"""Steering edits on the tiny LLaVA and tiny CLIP encoders, checked against plain torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.steering import (
    default_hook,
    diffmean_vector,
    generate,
    steer,
    steer_direction,
)
from sae_vlm_plugin.tiny import models as tiny_models

LATENT = 3
VALUE = 40.0


def _sae(d_in: int = tiny_models.WIDTH, d_sae: int = 64, hook_name: str | None = None, seed=0):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.1)
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    return sae.eval()


@pytest.fixture
def llava():
    tiny = tiny_models.llava_model()
    return tiny, VisionModel(tiny.model)


@pytest.fixture
def inputs(llava):
    tiny, _ = llava
    image = tiny_models.synthetic_image("circle", "red")
    return dict(
        tiny.processor(images=[image], text=["<image> describe the image"], return_tensors="pt")
    )


def _projector_input(tiny, run) -> torch.Tensor:
    """The projector's input during ``run()``, read by a plain torch pre-hook."""
    seen: list[torch.Tensor] = []
    handle = tiny.model.model.multi_modal_projector.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[0]


def _read_block_output(tiny, pixels) -> torch.Tensor:
    with torch.no_grad():
        out = tiny.model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[tiny.model.config.vision_feature_layer]


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad(), model.trace(**inputs):
        logits = model.output.logits.save()
    return logits


def test_clamp_replaces_projector_input_with_decoded_clamped_codes(llava, inputs):
    tiny, model = llava
    sae = _sae()
    hidden = _read_block_output(tiny, inputs["pixel_values"])
    codes = sae.encode(hidden)
    codes[..., LATENT] = VALUE
    expected = sae.decode(codes)[:, 1:]  # LLaVA's "default" strategy drops CLS

    with steer(model, sae, {LATENT: VALUE}) as handle:
        assert handle.hook == "vision.blocks.1.hook_resid_post"
        seen = _projector_input(tiny, lambda: model.trace(**inputs, trace=False))
        with torch.no_grad(), model.trace(**inputs):
            steered_codes = model.blocks[1].sae.hook_sae_acts_steered.output.save()
            features = model.read_hook(model.hook_point("hook_vision_features")).save()
    torch.testing.assert_close(seen, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    assert torch.all(steered_codes[..., LATENT] == VALUE)
    assert "forward" not in sae.__dict__  # the caller's SAE is never instrumented by nnsight


def test_keep_error_without_edit_is_the_model_and_clamp_moves_along_the_decoder_row(llava, inputs):
    tiny, model = llava
    sae = _sae()
    clean = _logits(model, inputs)
    with steer(model, sae, {}, keep_error=True):
        spliced = _logits(model, inputs)
    torch.testing.assert_close(spliced, clean, atol=1e-5, rtol=0)

    hidden = _read_block_output(tiny, inputs["pixel_values"])
    before = sae.encode(hidden)[..., LATENT]
    clean_in = _projector_input(tiny, lambda: model.trace(**inputs, trace=False))
    with steer(model, sae, {LATENT: VALUE}, keep_error=True):
        steered_in = _projector_input(tiny, lambda: model.trace(**inputs, trace=False))
    expected = (VALUE - before)[:, 1:, None] * sae.W_dec[LATENT].detach()
    torch.testing.assert_close(steered_in - clean_in, expected, atol=1e-4, rtol=1e-4)


def test_generate_steered_removed_and_persistent(llava, inputs):
    tiny, model = llava
    sae = _sae()
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    gen = {"max_new_tokens": 6, "do_sample": False}
    clean_ids = generate(model, **inputs, **gen)
    clean_logits = _logits(model, inputs)

    with steer(model, sae, {LATENT: VALUE}):
        steered_ids = generate(model, **inputs, **gen)
        steered_logits = _logits(model, inputs)
    assert not torch.equal(steered_logits, clean_logits)
    assert not torch.equal(steered_ids, clean_ids)

    # removed: bit-identical, no submodule left behind, same weights
    assert torch.equal(_logits(model, inputs), clean_logits)
    assert torch.equal(generate(model, **inputs, **gen), clean_ids)
    assert not hasattr(model.blocks[1], "sae")
    assert tiny.model.state_dict().keys() == state.keys()

    handle = steer(model, sae, {LATENT: VALUE})
    try:
        for _ in range(2):
            assert torch.equal(generate(model, **inputs, **gen), steered_ids)
    finally:
        handle.remove()
    assert not handle.active
    assert torch.equal(generate(model, **inputs, **gen), clean_ids)

    handle = steer(model, sae, {LATENT: VALUE})
    model.clear_edits()
    assert not handle.active
    assert torch.equal(generate(model, **inputs, **gen), clean_ids)
    handle.remove()


def test_traced_generation_reads_sae_values(llava, inputs):
    _, model = llava
    with (
        steer(model, _sae(), {LATENT: VALUE}, tokens="image"),
        torch.no_grad(),
        model.trace(
            **inputs, fn=model.source_module.generate, max_new_tokens=3, do_sample=False
        ) as tracer,
    ):
        codes = model.blocks[1].sae.hook_sae_acts.output.save()
        ids = tracer.result.save()
    assert codes.shape == (1, tiny_models.N_PATCHES, 64)  # CLS left alone under tokens="image"
    assert ids.shape[1] == inputs["input_ids"].shape[1] + 3


def test_modes_and_token_selection(llava, inputs):
    tiny, model = llava
    sae = _sae()
    hidden = _read_block_output(tiny, inputs["pixel_values"])
    codes = sae.encode(hidden)
    with (
        steer(model, sae, {LATENT: 2.0, 5: 0.0}, mode="scale", tokens=[0, 3]),
        torch.no_grad(),
        model.trace(**inputs),
    ):
        got = model.blocks[1].output[0].save()
    edited = codes[:, [0, 3]].clone()
    edited[..., LATENT] *= 2.0
    edited[..., 5] = 0.0
    expected = hidden.clone()
    expected[:, [0, 3]] = sae.decode(edited)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_default_hook(llava):
    _, model = llava
    assert default_hook(model, _sae()) == "vision.blocks.1.hook_resid_post"
    sae = _sae(hook_name="blocks.0.hook_resid_post")
    assert default_hook(model, sae) == "vision.blocks.0.hook_resid_post"
    clip = VisionModel(tiny_models.clip_vision_model())
    with pytest.raises(ValueError, match="no hook_name"):
        default_hook(clip, _sae())


def test_bad_input_errors(llava, inputs):
    _, model = llava
    with pytest.raises(ValueError, match=r"out of range.*d_sae=64"):
        steer(model, _sae(), {64: 1.0})
    with pytest.raises(ValueError, match="d_in=16"):
        steer(model, _sae(d_in=16), {0: 1.0})
    with pytest.raises(ValueError, match=r"has no hook 'blocks\.9\.hook_resid_pots'"):
        steer(model, _sae(), {0: 1.0}, hook="blocks.9.hook_resid_pots")
    with pytest.raises(
        ValueError, match=r"after vision block 1, the last block LLaVA's projector reads"
    ):
        steer(model, _sae(), {0: 1.0}, hook="vision.blocks.2.hook_resid_post")
    with pytest.raises(ValueError, match="mode"):
        steer(model, _sae(), {0: 1.0}, mode="set")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pixel_values"), steer(model, _sae(), {0: 1.0}):
        generate(model, input_ids=inputs["input_ids"], max_new_tokens=2)
    assert not model._edits
    clip = VisionModel(tiny_models.clip_vision_model_with_projection())
    with pytest.raises(ValueError, match="cannot generate"):
        generate(clip, pixel_values=tiny_models.pixel_batch(1))
    with pytest.raises(ValueError, match="LLaVA only"):
        steer(clip, _sae(), {0: 1.0}, hook="blocks.1.hook_resid_post", tokens="image")
    with pytest.raises(ValueError, match="one vector per image"):
        steer(clip, _sae(d_in=24), {0: 1.0}, hook="hook_image_embeds", tokens="patches")
    with pytest.raises(ValueError, match="no registered model family recognises a Linear"):
        steer(torch.nn.Linear(2, 2), _sae(), {0: 1.0}, hook="x")


@pytest.mark.parametrize(
    ("latents", "message"),
    [
        ({0: float("nan")}, r"latent 0: the value nan is not a finite number"),
        ({3: float("inf")}, r"latent 3: the value inf is not a finite number"),
        ({1.5: 3.0}, r"latent index 1\.5 is not an integer"),
        ({True: 3.0}, r"latent index True is not an integer"),
        ({-1: 3.0}, r"latent index -1 is out of range"),
    ],
)
def test_steer_refuses_non_finite_values_and_non_integral_latents(llava, latents, message):
    _, model = llava
    with pytest.raises(ValueError, match=message):
        steer(model, _sae(), latents)
    assert not model._edits


def test_integral_latent_keys_of_other_types_are_accepted(llava):
    _, model = llava
    with steer(model, _sae(), {np.int64(2): np.float32(1.5), torch.tensor(3): 2}) as handle:
        assert handle is not None
    assert not model._edits


def test_direction_steering_refuses_a_non_finite_alpha():
    clip = VisionModel(tiny_models.clip_vision_model_with_projection())
    vector = torch.ones(tiny_models.WIDTH)
    with pytest.raises(ValueError, match="alpha must be a finite number, got nan"):
        steer_direction(clip, vector, "blocks.1.hook_resid_post", alpha=float("nan"))


def test_clip_embedding_steering_changes_zero_shot_logits():
    module = tiny_models.clip_vision_model_with_projection()
    model = VisionModel(module)
    pixels = tiny_models.pixel_batch(2)
    text = torch.nn.functional.normalize(torch.randn(5, tiny_models.PROJECTION_DIM), dim=-1)

    def zero_shot() -> torch.Tensor:
        with torch.no_grad(), model.trace(pixel_values=pixels):
            embeds = model.output.image_embeds.save()
        return torch.nn.functional.normalize(embeds, dim=-1) @ text.T

    clean = zero_shot()
    sae = _sae(d_in=tiny_models.PROJECTION_DIM)
    with steer(model, sae, {LATENT: VALUE}, hook="hook_image_embeds"):
        steered = zero_shot()
        with torch.no_grad(), model.trace(pixel_values=pixels):
            embeds = model.output.image_embeds.save()
    with torch.no_grad():
        reference = module(pixel_values=pixels).image_embeds
        codes = sae.encode(reference)
        codes[..., LATENT] = VALUE
    torch.testing.assert_close(embeds, sae.decode(codes), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(steered, clean)
    torch.testing.assert_close(zero_shot(), clean, atol=0, rtol=0)

    # patches only: the CLS token (all CLIP's pooled embedding sees) is untouched
    with steer(model, _sae(), {LATENT: VALUE}, hook="blocks.2.hook_resid_post", tokens="patches"):
        torch.testing.assert_close(zero_shot(), clean, atol=1e-6, rtol=0)


def test_diffmean_vector_and_direction_steering():
    module = tiny_models.clip_vision_model()
    model = VisionModel(module)
    concept = tiny_models.pixel_batch(3, seed=1)
    other = tiny_models.pixel_batch(4, seed=2)
    hook = "blocks.1.hook_resid_post"

    def hidden(pixels):
        with torch.no_grad():
            return module(pixel_values=pixels, output_hidden_states=True).hidden_states[2]

    expected = hidden(concept).mean((0, 1)) - hidden(other).mean((0, 1))
    vector = diffmean_vector(model, hook, concept, other, batch_size=2)
    torch.testing.assert_close(vector, expected, atol=1e-5, rtol=1e-5)
    patches = diffmean_vector(model, hook, concept, other, tokens="patches")
    expected_patches = hidden(concept)[:, 1:].mean((0, 1)) - hidden(other)[:, 1:].mean((0, 1))
    torch.testing.assert_close(patches, expected_patches, atol=1e-5, rtol=1e-5)

    with (
        steer_direction(model, vector, hook, alpha=3.0) as handle,
        torch.no_grad(),
        model.trace(pixel_values=other),
    ):
        shifted = handle.envoy.hook_out.output.save()  # runs inside the block's output
        got = model.blocks[1].output[0].save()
    torch.testing.assert_close(got, hidden(other) + 3.0 * vector, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shifted, got)
    with pytest.raises(ValueError, match="width 32"):
        steer_direction(model, torch.zeros(5), hook)


def test_two_edits_stack_and_remove_independently(llava, inputs):
    _, model = llava
    clean = _logits(model, inputs)
    first = steer(model, _sae(seed=1), {LATENT: VALUE})
    only_first = _logits(model, inputs)
    second = steer_direction(
        model, torch.ones(tiny_models.WIDTH), "hook_vision_features", alpha=0.5
    )
    both = _logits(model, inputs)
    assert not torch.equal(both, only_first)
    first.remove()
    only_second = _logits(model, inputs)
    assert not torch.equal(only_second, clean)
    assert not torch.equal(only_second, both)
    second.remove()
    assert torch.equal(_logits(model, inputs), clean)


def test_white_image_prompt(llava):
    tiny, model = llava
    image = Image.new("RGB", (tiny_models.IMAGE_SIZE,) * 2, "white")
    batch = tiny.processor(images=[image], text=["<image> write a poem"], return_tensors="pt")
    assert generate(model, **batch, max_new_tokens=2, do_sample=False).shape[0] == 1


def test_every_encoder_family_can_be_steered(vision_build):
    _, module = vision_build
    model = VisionModel(module)
    args, kwargs = model.forward_inputs(tiny_models.pixel_batch(2))
    point = model.hook_point("blocks.1.hook_resid_post")

    def block_outputs() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), model.trace(*args, **kwargs):
            one = model.read_hook(point).save()
            two = model.read_hook(model.hook_point("blocks.2.hook_resid_post")).save()
        return one, two

    clean_one, clean_two = block_outputs()
    with steer(model, _sae(), {}, keep_error=True, hook=point.name):
        _, spliced_two = block_outputs()
    torch.testing.assert_close(spliced_two, clean_two, atol=1e-5, rtol=0)
    with steer(model, _sae(), {LATENT: VALUE}, hook=point.name, tokens="patches"):
        steered_one, steered_two = block_outputs()
    prefix = point.n_prefix_tokens
    assert torch.equal(steered_one[:, :prefix], clean_one[:, :prefix])
    assert not torch.allclose(steered_one[:, prefix:], clean_one[:, prefix:])
    assert not torch.allclose(steered_two, clean_two)
    assert torch.equal(block_outputs()[1], clean_two)


def test_handle_repr(llava):
    _, model = llava
    handle = steer(model, _sae(), {LATENT: VALUE})
    assert repr(handle) == (
        "Steering('vision.blocks.1.hook_resid_post' as 'sae', mode=clamp, latents={3: 40.0}, "
        "keep_error=False, active)"
    )
    handle.remove()
    assert repr(handle).endswith("removed)")
