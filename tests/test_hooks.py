"""Hook points against independent references: transformers' ``output_hidden_states`` and
outputs, plain torch forward hooks for open_clip / timm, and LLaVA's own feature path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sae_vlm_plugin import VisionModel, list_families, register_family
from sae_vlm_plugin.families.base import first_output
from sae_vlm_plugin.families.clip import ClipFamily
from sae_vlm_plugin.tiny import models as tm

TRANSFORMERS_BUILDS = [
    "clip_vision",
    "clip_vision_with_projection",
    "siglip_vision",
    "aimv2_vision",
    "webssl_mae",
    "webssl_dino",
]
EXPECTED_FAMILY = {
    "clip_vision": "clip",
    "clip_vision_with_projection": "clip",
    "clip": "clip",
    "siglip_vision": "siglip",
    "aimv2_vision": "aimv2",
    "webssl_mae": "webssl_mae",
    "webssl_dino": "webssl_dino",
    "open_clip_vit": "open_clip",
    "open_clip_siglip": "open_clip",
}


def _block_hooks(model: VisionModel) -> list[str]:
    return [f"blocks.{layer}.hook_resid_post" for layer in range(model.n_layers)]


def test_every_build_is_detected_as_its_family(vision_build):
    name, module = vision_build
    model = VisionModel(module)
    assert model.family.name == EXPECTED_FAMILY[name]
    assert model.n_layers == tm.N_LAYERS
    assert model.hook_points[: tm.N_LAYERS] == _block_hooks(model)


@pytest.mark.parametrize("name", TRANSFORMERS_BUILDS)
def test_block_hooks_equal_output_hidden_states(name):
    module = tm.VISION_BUILDERS[name]()
    model = VisionModel(module)
    pixels = tm.pixel_batch(3)
    captured = model.capture(pixels, _block_hooks(model), stop=False)
    with torch.no_grad():
        reference = module(pixel_values=pixels, output_hidden_states=True).hidden_states
    for layer in range(tm.N_LAYERS):
        got = captured[f"blocks.{layer}.hook_resid_post"]
        torch.testing.assert_close(got, reference[layer + 1], atol=1e-6, rtol=0)


def test_clip_model_image_tower_hooks_equal_hidden_states_and_image_features():
    module = tm.clip_model()
    model = VisionModel(module)
    pixels = tm.pixel_batch(3)
    captured = model.capture(pixels, [*_block_hooks(model), "hook_image_embeds"])
    with torch.no_grad():
        hidden = module.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        embeds = module.get_image_features(pixel_values=pixels)
    for layer in range(tm.N_LAYERS):
        torch.testing.assert_close(
            captured[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=1e-6, rtol=0
        )
    torch.testing.assert_close(captured["hook_image_embeds"], embeds, atol=1e-6, rtol=0)


def test_clip_image_embeds_and_post_norm_equal_model_outputs():
    module = tm.clip_vision_model_with_projection()
    model = VisionModel(module)
    pixels = tm.pixel_batch(2)
    captured = model.capture(pixels, ["hook_post_norm", "hook_image_embeds"])
    with torch.no_grad():
        out = module(pixel_values=pixels)
        pooled = module.vision_model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(captured["hook_image_embeds"], out.image_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(captured["hook_post_norm"], pooled, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["siglip_vision", "aimv2_vision"])
def test_post_norm_and_pooled_equal_last_hidden_state_and_pooler_output(name):
    module = tm.VISION_BUILDERS[name]()
    model = VisionModel(module)
    pixels = tm.pixel_batch(2)
    captured = model.capture(pixels, ["hook_post_norm", "hook_pooled"])
    with torch.no_grad():
        out = module(pixel_values=pixels)
    torch.testing.assert_close(captured["hook_post_norm"], out.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(captured["hook_pooled"], out.pooler_output, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["open_clip_vit", "open_clip_siglip"])
def test_open_clip_hooks_equal_plain_forward_hooks_and_encode_image(name):
    module = tm.VISION_BUILDERS[name]()
    model = VisionModel(module)
    blocks = (
        module.visual.trunk.blocks
        if name == "open_clip_siglip"
        else module.visual.transformer.resblocks
    )
    pixels = tm.pixel_batch(3)
    reference: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(
            lambda _m, _i, out, layer=layer: reference.__setitem__(layer, first_output(out))
        )
        for layer, block in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            embeds = module.encode_image(pixels)
    finally:
        for handle in handles:
            handle.remove()
    captured = model.capture(pixels, [*_block_hooks(model), "hook_image_embeds"])
    for layer in range(tm.N_LAYERS):
        torch.testing.assert_close(
            captured[f"blocks.{layer}.hook_resid_post"], reference[layer], atol=1e-6, rtol=0
        )
    torch.testing.assert_close(captured["hook_image_embeds"], embeds, atol=1e-6, rtol=0)


def test_llava_vision_features_and_projector_out_equal_what_llava_feeds_its_language_model(
    tiny_llava, synthetic_images
):
    module, processor = tiny_llava.model, tiny_llava.processor
    model = VisionModel(module)
    assert model.family.name == "llava"
    images, _ = synthetic_images
    inputs = processor(
        images=images[:2],
        text=["<image> describe the image ."] * 2,
        return_tensors="pt",
        padding=True,
    )
    captured = model.capture(
        inputs["pixel_values"],
        ["vision.blocks.1.hook_resid_post", "hook_vision_features", "hook_projector_out"],
    )
    tower = module.model.vision_tower
    embedded: dict[str, torch.Tensor] = {}

    def grab_inputs_embeds(_module, args, kwargs):
        embedded["inputs_embeds"] = kwargs["inputs_embeds"]

    handle = module.model.language_model.register_forward_pre_hook(
        grab_inputs_embeds, with_kwargs=True
    )
    try:
        with torch.no_grad():
            hidden = tower(
                pixel_values=inputs["pixel_values"], output_hidden_states=True
            ).hidden_states
            module(**inputs)
    finally:
        handle.remove()
    # llava-1.5: hidden_states[-2] (block n_layers - 2), CLS dropped.
    torch.testing.assert_close(
        captured["vision.blocks.1.hook_resid_post"], hidden[2], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        captured["hook_vision_features"], hidden[-2][:, 1:], atol=1e-6, rtol=0
    )
    image_positions = inputs["input_ids"] == module.config.image_token_index
    fed = embedded["inputs_embeds"][image_positions].reshape(2, tm.N_PATCHES, -1)
    torch.testing.assert_close(captured["hook_projector_out"], fed, atol=1e-6, rtol=0)


def test_early_stop_does_not_run_deeper_blocks():
    module = tm.clip_vision_model()
    model = VisionModel(module)
    ran: list[str] = []
    layers = module.vision_model.encoder.layers
    # Pre-hooks: they fire when a module starts, whatever happens inside it.
    handles = [
        layer.register_forward_pre_hook(lambda *_, i=i: ran.append(f"block{i}"))
        for i, layer in enumerate(layers)
    ]
    handles.append(
        module.vision_model.post_layernorm.register_forward_pre_hook(
            lambda *_: ran.append("post_norm")
        )
    )
    try:
        model.capture(tm.pixel_batch(2), ["blocks.0.hook_resid_post"])
        assert ran == ["block0"]
        ran.clear()
        model.capture(tm.pixel_batch(2), ["blocks.0.hook_resid_post"], stop=False)
        assert ran == ["block0", "block1", "block2", "post_norm"]
    finally:
        for handle in handles:
            handle.remove()


def test_short_names_work_in_a_plain_nnsight_trace_for_every_family(vision_build):
    _, module = vision_build
    model = VisionModel(module)
    pixels = tm.pixel_batch(2)
    args, kwargs = model.forward_inputs(pixels)
    with torch.no_grad(), model.trace(*args, **kwargs):
        last = model.blocks[tm.N_LAYERS - 1].output.save()
    reference = model.capture(pixels, [f"blocks.{tm.N_LAYERS - 1}.hook_resid_post"])
    torch.testing.assert_close(first_output(last), next(iter(reference.values())))


def test_trace_on_pixels_and_read_hook_are_right_for_every_family(vision_build):
    """#18 item 13: ``trace(pixel_values=...)`` + ``read_hook(name)`` give ``(batch, tokens, d)``
    for every family, where ``blocks[l].output[0]`` is image 0 whenever blocks return tensors."""
    _, module = vision_build
    model = VisionModel(module)
    pixels = tm.pixel_batch(3)
    hook = f"blocks.{tm.N_LAYERS - 1}.hook_resid_post"
    with torch.no_grad(), model.trace(pixel_values=pixels):
        value = model.read_hook(hook).save()
    expected = model.capture(pixels, [hook])[hook]
    assert value.shape[0] == 3
    torch.testing.assert_close(value, expected)


def test_llava_traces_on_pixels_alone(tiny_llava):
    """#18 item 13: LLaVA's ``trace(pixel_values=...)`` needs text tokens; the wrapper supplies
    the image placeholders, so the vision tower's hooks read as for any encoder."""
    model = VisionModel(tiny_llava.model)
    pixels = tm.pixel_batch(2)
    hook = "vision.blocks.1.hook_resid_post"
    with torch.no_grad(), model.trace(pixel_values=pixels):
        value = model.read_hook(hook).save()
    with torch.no_grad():
        tower = tiny_llava.model.model.vision_tower
        reference = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(value, reference, atol=1e-6, rtol=0)


def test_vision_model_loads_a_saved_checkpoint_by_path(tmp_path):
    from transformers import CLIPImageProcessor

    module = tm.clip_vision_model_with_projection()
    module.save_pretrained(tmp_path)
    CLIPImageProcessor(
        size={"shortest_edge": tm.IMAGE_SIZE}, crop_size=tm.IMAGE_SIZE
    ).save_pretrained(tmp_path)
    model = VisionModel(str(tmp_path))
    assert model.family.name == "clip"
    assert type(model.source_module).__name__ == "CLIPVisionModelWithProjection"
    assert model.model_name == str(tmp_path)
    images, _ = tm.synthetic_images(2)
    pixels = model.preprocess(images)
    assert pixels.shape == (2, 3, tm.IMAGE_SIZE, tm.IMAGE_SIZE)
    got = model.capture(pixels, ["hook_image_embeds"])["hook_image_embeds"]
    with torch.no_grad():
        torch.testing.assert_close(got, module(pixel_values=pixels).image_embeds, atol=1e-6, rtol=0)


def test_vision_model_loads_open_clip_by_architecture_name_offline():
    model = VisionModel("open_clip:ViT-S-32")  # no pretrained tag: random weights, no download
    assert model.family.name == "open_clip"
    assert "blocks.11.hook_resid_post" in model.hook_points


def test_unknown_module_error_lists_the_known_families():
    with pytest.raises(ValueError, match="no registered model family recognises a Linear") as error:
        VisionModel(nn.Linear(2, 2))
    for family in ("clip", "siglip", "aimv2", "webssl_mae", "webssl_dino", "open_clip", "llava"):
        assert family in str(error.value)


def test_forcing_an_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model family 'clp'.*did you mean clip"):
        VisionModel(tm.clip_vision_model(), family="clp")


def test_register_family_refuses_duplicates_and_adds_new_ones():
    with pytest.raises(ValueError, match="already registered"):
        register_family(ClipFamily())

    class OtherClip(ClipFamily):
        name = "other_clip_for_test"
        description = "a third-party family"

    register_family(OtherClip())
    assert list_families()["other_clip_for_test"] == "a third-party family"
    model = VisionModel(tm.clip_vision_model(), family="other_clip_for_test")
    assert model.family.name == "other_clip_for_test"


def test_unknown_hook_and_out_of_range_layer_errors_say_what_is_valid():
    model = VisionModel(tm.clip_vision_model())
    with pytest.raises(
        ValueError,
        match=r"no hook 'hook_pooled'.*blocks\.\{0\.\.2\}\.hook_resid_post, hook_post_norm",
    ):
        model.hook_point("hook_pooled")
    with pytest.raises(ValueError, match=r"layer 3 is out of range.*blocks are 0\.\.2"):
        model.hook_point("blocks.3.hook_resid_post")


def _save_with_processor(module, processor, path):
    module.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("name", ["siglip_vision", "aimv2_vision", "webssl_mae", "webssl_dino"])
def test_every_transformers_family_loads_a_saved_checkpoint_by_path(name, tmp_path):
    module = tm.VISION_BUILDERS[name]()
    family = VisionModel(module).family
    processor = family.image_processor(tm.IMAGE_SIZE)
    model = VisionModel(_save_with_processor(module, processor, tmp_path))
    assert model.family.name == family.name
    assert type(model.source_module) is type(module)
    pixels = tm.pixel_batch(2)
    hook = "blocks.2.hook_resid_post"
    torch.testing.assert_close(
        model.capture(pixels, [hook])[hook], VisionModel(module).capture(pixels, [hook])[hook]
    )


def test_llava_loads_a_saved_checkpoint_and_processor_by_path(tiny_llava, tmp_path):
    model = VisionModel(_save_with_processor(tiny_llava.model, tiny_llava.processor, tmp_path))
    assert model.family.name == "llava"
    assert "hook_projector_out" in model.hook_points


def test_forcing_the_llava_family_on_another_checkpoint_is_refused_before_building_it(tmp_path):
    # Once, this built a default-size random LLaVA around the CLIP config (OOM at 24 GB).
    module = tm.VISION_BUILDERS["clip"]()
    path = _save_with_processor(module, VisionModel(module).family.image_processor(32), tmp_path)
    with pytest.raises(
        ValueError, match=r"is a 'clip' model, not a LLaVA model; the llava family loads"
    ):
        VisionModel(str(path), family="llava")


class CLIPVisionModel(nn.Module):
    """transformers 5.x layout of a CLIP vision tower: no ``vision_model`` level, and blocks that
    return a tensor instead of a 1-tuple. Built around a 4.57 model's own modules."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        vision = hf_model.vision_model
        self.config = hf_model.config
        self.embeddings = vision.embeddings
        self.pre_layrnorm = vision.pre_layrnorm
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_TensorBlock(layer) for layer in vision.encoder.layers)
        self.post_layernorm = vision.post_layernorm

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers:
            hidden = layer(hidden)
        return self.post_layernorm(hidden[:, 0])


class _TensorBlock(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden, None, None)[0]


def test_transformers_5_flat_layout_with_tensor_blocks_resolves_by_structure():
    hf_model = tm.clip_vision_model()
    flat = VisionModel(CLIPVisionModel(hf_model))
    assert flat.hook_point("blocks.1.hook_resid_post").module_path == "encoder.layers.1"
    pixels = tm.pixel_batch(2)
    with torch.no_grad():
        reference = hf_model(pixel_values=pixels, output_hidden_states=True)
    got = flat.capture(pixels, [*_block_hooks(flat), "hook_post_norm"])
    for layer in range(tm.N_LAYERS):
        torch.testing.assert_close(
            got[f"blocks.{layer}.hook_resid_post"], reference.hidden_states[layer + 1]
        )
    torch.testing.assert_close(got["hook_post_norm"], reference.pooler_output)
