"""The paper's architectures at their published shapes (#16 part 1), random weights, no downloads.

Each encoder is built from its checkpoint's published configuration (the ``config.json`` on the
model card, or open_clip's shipped model config) with random weights, and checked at those
shapes: every hook point's shape and token layout, the block hooks against the model's own
``output_hidden_states`` (open_clip: plain torch forward hooks), the CLS / no-CLS token rules,
and - for CLIP-336 and SigLIP-384 - an fp16 cache extracted from a folder of real-size JPEGs.
LLaVA-1.5 is its real vision tower and projector with a reduced language model (see
``llava_15_reduced``).

Models are built one at a time (a module-scoped fixture, torn down before the next) and run on
one image per forward in float32 under ``torch.no_grad`` (a real-size forward is the cost of this
file; batches and image order are tested on the tiny models of every family).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from sae_vlm_plugin import VisionModel, extract_activations, extract_to_cache
from sae_vlm_plugin.activations import resolve_hooks
from sae_vlm_plugin.families.base import first_output
from sae_vlm_plugin.steering import default_hook, steer
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.tiny.real_size import (
    SEED,
    aimv2_large_224,
    clip_vit_l14_336,
    llava_15_reduced,
    open_clip_model,
    siglip_so400m_384,
    webssl_dino300m_224,
    webssl_mae300m_224,
)
from sae_vlm_plugin.tokens import TokenSelection

pytestmark = pytest.mark.slow

N_IMAGES = 1


# --- what each build must look like ------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """The published layout of one encoder build."""

    build: Callable[[], torch.nn.Module]
    family: str
    n_layers: int
    width: int
    image_size: int
    n_tokens: int
    """Tokens on the residual stream: patches (+1 CLS)."""
    has_cls: bool
    params_millions: tuple[float, float]
    """Range the encoder's parameter count must fall in (millions)."""
    extra_hooks: dict[str, int]
    """The hooks after the blocks, in forward order, and their widths."""
    token_hooks: tuple[str, ...] = ()
    """Extra hooks that hold every token (the rest hold one vector per image)."""
    transformers: bool = True
    extract: tuple[tuple[str, ...], str] | None = None
    """Hooks and token selection to extract into an fp16 cache from real-size JPEGs."""

    @property
    def n_prefix(self) -> int:
        return int(self.has_cls)

    def expected_hooks(self) -> list[str]:
        blocks = [f"blocks.{layer}.hook_resid_post" for layer in range(self.n_layers)]
        return blocks + list(self.extra_hooks)


ENCODERS: dict[str, Published] = {
    "clip_vit_l14_336": Published(
        clip_vit_l14_336,
        "clip",
        n_layers=24,
        width=1024,
        image_size=336,
        n_tokens=577,
        has_cls=True,
        params_millions=(303, 305),
        extra_hooks={"hook_post_norm": 1024, "hook_image_embeds": 768},
        extract=(
            ("blocks.22.hook_resid_post", "blocks.23.hook_resid_post", "hook_image_embeds"),
            "all",
        ),
    ),
    "siglip_so400m_384": Published(
        siglip_so400m_384,
        "siglip",
        n_layers=27,
        width=1152,
        image_size=384,
        n_tokens=729,
        has_cls=False,
        params_millions=(427, 429),
        extra_hooks={"hook_post_norm": 1152, "hook_pooled": 1152},
        token_hooks=("hook_post_norm",),
        extract=(("blocks.26.hook_resid_post", "hook_post_norm", "hook_pooled"), "all"),
    ),
    "aimv2_large_224": Published(
        aimv2_large_224,
        "aimv2",
        n_layers=24,
        width=1024,
        image_size=224,
        n_tokens=256,
        has_cls=False,
        params_millions=(308, 310),
        extra_hooks={"hook_post_norm": 1024},
        token_hooks=("hook_post_norm",),
    ),
    "webssl_mae300m_224": Published(
        webssl_mae300m_224,
        "webssl_mae",
        n_layers=24,
        width=1024,
        image_size=224,
        n_tokens=257,
        has_cls=True,
        params_millions=(303.5, 305),
        extra_hooks={"hook_post_norm": 1024},
        token_hooks=("hook_post_norm",),
    ),
    "webssl_dino300m_224": Published(
        webssl_dino300m_224,
        "webssl_dino",
        n_layers=24,
        width=1024,
        image_size=224,
        n_tokens=257,
        has_cls=True,
        params_millions=(302, 305),
        extra_hooks={"hook_post_norm": 1024},
        token_hooks=("hook_post_norm",),
    ),
    "open_clip_ViT-L-14-336": Published(
        open_clip_model("ViT-L-14-336"),
        "open_clip",
        n_layers=24,
        width=1024,
        image_size=336,
        n_tokens=577,
        has_cls=True,
        params_millions=(303, 305),
        extra_hooks={"hook_post_norm": 1024, "hook_image_embeds": 768},
        token_hooks=("hook_post_norm",),
        # The whole open_clip model, text tower included: its token embedding has over 2**24
        # values, which the cache's weight fingerprint once sampled past the end of.
        extract=(("blocks.22.hook_resid_post", "hook_image_embeds"), "all"),
        transformers=False,
    ),
    "open_clip_ViT-SO400M-14-SigLIP-384": Published(
        open_clip_model("ViT-SO400M-14-SigLIP-384"),
        "open_clip",
        n_layers=27,
        width=1152,
        image_size=384,
        n_tokens=729,
        has_cls=False,
        params_millions=(427, 429),
        extra_hooks={"hook_post_norm": 1152, "hook_pooled": 1152, "hook_image_embeds": 1152},
        token_hooks=("hook_post_norm",),
        transformers=False,
    ),
}


def write_jpegs(folder: Path, size: int, n: int = N_IMAGES) -> list[Path]:
    """``n`` real-size ``size`` x ``size`` JPEGs of synthetic concept images in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (shape, colour) in enumerate([("circle", "red"), ("square", "blue")][:n]):
        path = folder / f"{i:02d}_{colour}_{shape}.jpg"
        tm.synthetic_image(shape, colour, size=size, seed=i).save(path, quality=90)
        paths.append(path)
    return paths


@dataclass
class EncoderRun:
    """One encoder at its published shape, run once on two JPEGs: what every test reads."""

    name: str
    spec: Published
    module: torch.nn.Module
    model: VisionModel
    folder: Path
    pixels: torch.Tensor
    captured: dict[str, torch.Tensor]
    """Every hook point, from one ``VisionModel.capture``."""
    reference: dict[str, torch.Tensor]
    """The same values read without the plugin (``output_hidden_states`` / forward hooks)."""

    def release(self) -> None:
        self.__dict__.clear()
        gc.collect()


def _transformers_reference(module: Any, pixels: torch.Tensor, spec: Published):
    """The hook values from the model's own forward: ``hidden_states[l + 1]``, the final norm
    (CLIP's ``post_layernorm`` on CLS, read by a forward hook: ``CLIPVisionModelWithProjection``
    returns it only projected), ``pooler_output`` and ``image_embeds``."""
    pooled: dict[str, torch.Tensor] = {}
    handle = None
    if spec.family == "clip":
        handle = module.vision_model.post_layernorm.register_forward_hook(
            lambda _m, _i, out: pooled.__setitem__("cls", out)
        )
    try:
        with torch.no_grad():
            out = module(pixel_values=pixels, output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    assert len(out.hidden_states) == spec.n_layers + 1
    reference = {
        f"blocks.{layer}.hook_resid_post": out.hidden_states[layer + 1]
        for layer in range(spec.n_layers)
    }
    if spec.family == "clip":
        reference["hook_post_norm"] = pooled["cls"]
        reference["hook_image_embeds"] = out.image_embeds
    else:
        reference["hook_post_norm"] = out.last_hidden_state
        if "hook_pooled" in spec.extra_hooks:
            reference["hook_pooled"] = out.pooler_output
    return reference


def _open_clip_reference(module: Any, pixels: torch.Tensor, spec: Published):
    """The hook values from plain torch forward hooks on the blocks, the final norm and the
    attention pool during ``encode_image``, and ``encode_image`` itself."""
    visual = module.visual
    if hasattr(visual, "trunk"):
        blocks, norm = visual.trunk.blocks, visual.trunk.norm
        pool = visual.trunk.attn_pool
    else:
        blocks, norm, pool = visual.transformer.resblocks, visual.ln_post, None
    assert len(blocks) == spec.n_layers
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda _m, _i, out: seen.__setitem__(name, first_output(out))

    handles = [
        block.register_forward_hook(keep(f"blocks.{layer}.hook_resid_post"))
        for layer, block in enumerate(blocks)
    ]
    handles.append(norm.register_forward_hook(keep("hook_post_norm")))
    if pool is not None:
        handles.append(pool.register_forward_hook(keep("hook_pooled")))
    try:
        with torch.no_grad():
            seen["hook_image_embeds"] = module.encode_image(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def encoder(request, tmp_path_factory) -> Iterator[EncoderRun]:
    """One encoder at a time: built, captured at every hook on two JPEGs, read by reference."""
    name = request.param
    spec = ENCODERS[name]
    module = spec.build()
    model = VisionModel(module)
    folder = tmp_path_factory.mktemp(name.replace("-", "_")) / "images"
    paths = write_jpegs(folder, spec.image_size)
    images = [Image.open(path).convert("RGB") for path in paths]
    pixels = model.preprocess(images)
    captured = model.capture(pixels, model.hook_points)
    if spec.transformers:
        reference = _transformers_reference(module, pixels, spec)
    else:
        reference = _open_clip_reference(module, pixels, spec)
    run = EncoderRun(name, spec, module, model, folder, pixels, captured, reference)
    yield run
    run.release()
    del module, model, pixels, captured, reference, run
    gc.collect()


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, msg: str = ""
) -> None:
    """``torch.testing.assert_close``, with a fast ``allclose`` first (the full check takes
    seconds on the 50M values of a SigLIP-384 capture); its report on a mismatch."""
    assert actual.shape == expected.shape, msg
    assert actual.dtype == expected.dtype, msg
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        torch.testing.assert_close(
            actual, expected, atol=atol, rtol=rtol, msg=lambda report: f"{msg}: {report}"
        )


def _n_params_millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_every_hook_point_has_the_published_shape_and_token_layout(encoder):
    spec, model = encoder.spec, encoder.model
    assert model.family.name == spec.family
    assert model.n_layers == spec.n_layers
    assert model.hook_points == spec.expected_hooks()
    low, high = spec.params_millions
    assert low <= _n_params_millions(model._module) <= high
    assert encoder.pixels.shape == (N_IMAGES, 3, spec.image_size, spec.image_size)
    patches = (spec.image_size // 14) ** 2
    assert spec.n_tokens == patches + spec.n_prefix
    for name in model.hook_points:
        point = model.hook_point(name)
        value = encoder.captured[name]
        width = spec.width if name.startswith("blocks.") else spec.extra_hooks[name]
        assert point.d_model == width, name
        if name.startswith("blocks.") or name in spec.token_hooks:
            assert point.has_tokens, name
            assert value.shape == (N_IMAGES, spec.n_tokens, width), name
            assert (point.n_prefix_tokens, point.has_cls) == (spec.n_prefix, spec.has_cls), name
        else:
            assert not point.has_tokens, name
            assert value.shape == (N_IMAGES, width), name
        assert value.dtype == torch.float32
        assert torch.isfinite(value).all(), name


def test_hooks_equal_the_model_read_without_the_plugin(encoder):
    """``blocks.{l}.hook_resid_post == hidden_states[l + 1]`` at every layer (the last
    included), and the post-norm / pooled / embedding hooks equal the model's own outputs."""
    reference = encoder.reference
    assert set(reference) == set(encoder.model.hook_points)
    for name in encoder.model.hook_points:
        assert_close(encoder.captured[name], reference[name], atol=1e-5, rtol=1e-5, msg=name)


def test_cls_rule(encoder, tmp_path):
    """``tokens='cls'`` is taken where the encoder has a CLS token and refused where it has none;
    ``patches`` drops exactly the CLS token."""
    spec, model = encoder.spec, encoder.model
    first, last = "blocks.0.hook_resid_post", f"blocks.{spec.n_layers - 1}.hook_resid_post"
    one = encoder.pixels[:1]
    patches = extract_activations(model, one, first, tokens="patches", progress=False)[first]
    assert patches.shape == (spec.n_tokens - spec.n_prefix, spec.width)
    assert_close(patches, encoder.captured[first][0, spec.n_prefix :], atol=1e-4, rtol=1e-4)
    if spec.has_cls:
        assert resolve_hooks(model, [last], TokenSelection("cls"))
        cls = extract_activations(model, one, first, tokens="cls", progress=False)[first]
        assert cls.shape == (1, spec.width)
        assert_close(cls, encoder.captured[first][:1, 0], atol=1e-4, rtol=1e-4)
    else:
        message = rf"tokens='cls' needs a CLS token, and the {spec.family} family has none"
        with pytest.raises(ValueError, match=message):
            extract_activations(model, one, last, tokens="cls", progress=False)
        out = tmp_path / "cache"
        with pytest.raises(ValueError, match=message):
            extract_to_cache(model, encoder.folder, last, out, tokens="cls", progress=False)
        assert not out.exists()


EXTRACTED = sorted(name for name, spec in ENCODERS.items() if spec.extract)


@pytest.mark.parametrize("encoder", EXTRACTED, indirect=True)
def test_fp16_cache_from_real_size_jpegs_holds_the_float32_capture(encoder, tmp_path):
    spec, model = encoder.spec, encoder.model
    assert spec.extract is not None
    hooks, tokens = spec.extract
    with Image.open(next(encoder.folder.iterdir())) as image:
        assert image.format == "JPEG"
        assert image.size == (spec.image_size, spec.image_size)
    cache = extract_to_cache(
        model,
        encoder.folder,
        list(hooks),
        tmp_path / "cache",
        tokens=tokens,
        dtype="float16",
        progress=False,
    )
    assert cache.complete
    assert cache.settings["dtype"] == "float16"
    assert cache.image_ids == sorted(p.name for p in encoder.folder.iterdir())
    for hook in hooks:
        width = spec.width if hook.startswith("blocks.") else spec.extra_hooks[hook]
        assert cache.d_in(hook) == width
        stored = cache.load(hook, dtype=torch.float16)
        rows = stored["activations"]
        assert rows.dtype == torch.float16
        captured = encoder.captured[hook]
        if captured.ndim == 3:
            per_image = spec.n_tokens
            expected = captured[stored["image_index"], stored["token_index"]]
            assert stored["token_index"].tolist() == list(range(per_image)) * N_IMAGES
        else:
            per_image = 1
            expected = captured[stored["image_index"]]
        assert rows.shape == (N_IMAGES * per_image, width)
        assert stored["image_index"].tolist() == [
            i for i in range(N_IMAGES) for _ in range(per_image)
        ]
        assert torch.isfinite(rows).all()
        # fp16 keeps 11 significant bits: rounding moves a value by at most 2**-11 of itself.
        assert_close(rows.float(), expected, rtol=2**-11, atol=1e-6, msg=hook)


# --- LLaVA-1.5 --------------------------------------------------------------------------------

LATENT = 3
VALUE = 40.0


@dataclass
class LlavaRun:
    tiny: tm.TinyLlava
    model: VisionModel
    inputs: dict[str, torch.Tensor]
    captured: dict[str, torch.Tensor]
    hidden_states: tuple[torch.Tensor, ...]
    """The vision tower's hidden states, as LLaVA's own forward computed them."""
    fed: torch.Tensor
    """The language model's input embeddings at the image positions."""
    logits: torch.Tensor

    def release(self) -> None:
        self.__dict__.clear()
        gc.collect()


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> Iterator[LlavaRun]:
    tiny = llava_15_reduced()
    module = tiny.model
    model = VisionModel(module)
    folder = tmp_path_factory.mktemp("llava") / "images"
    image = Image.open(write_jpegs(folder, 336, n=1)[0]).convert("RGB")
    inputs = dict(
        tiny.processor(images=[image], text=["<image> describe the image ."], return_tensors="pt")
    )
    captured = model.capture(inputs["pixel_values"], model.hook_points)
    seen: dict[str, Any] = {}
    handles = [
        module.model.vision_tower.register_forward_hook(
            lambda _m, _i, out: seen.__setitem__("tower", out.hidden_states)
        ),
        module.model.language_model.register_forward_pre_hook(
            lambda _m, _a, kwargs: seen.__setitem__("embeds", kwargs["inputs_embeds"]),
            with_kwargs=True,
        ),
    ]
    try:
        with torch.no_grad():
            logits = module(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    positions = inputs["input_ids"] == module.config.image_token_index
    fed = seen["embeds"][positions].reshape(1, -1, seen["embeds"].shape[-1])
    run = LlavaRun(tiny, model, inputs, captured, seen["tower"], fed, logits)
    yield run
    run.release()
    seen.clear()
    del tiny, module, model, captured, logits, fed, run
    gc.collect()


def test_llava_reads_block_22_of_24_and_feeds_576_image_tokens(llava):
    model, captured = llava.model, llava.captured
    assert model.family.name == "llava"
    expected = [f"vision.blocks.{layer}.hook_resid_post" for layer in range(24)]
    assert model.hook_points == [*expected, "hook_vision_features", "hook_projector_out"]
    assert model.family.read_blocks(model.source_module) == [22]
    assert default_hook(model) == "vision.blocks.22.hook_resid_post"
    projector = llava.tiny.model.model.multi_modal_projector
    assert (projector.linear_1.in_features, projector.linear_1.out_features) == (1024, 4096)
    assert (projector.linear_2.in_features, projector.linear_2.out_features) == (4096, 4096)
    assert (
        int((llava.inputs["input_ids"] == model.source_module.config.image_token_index).sum())
        == 576
    )
    assert len(llava.hidden_states) == 25
    for layer in range(24):
        name = f"vision.blocks.{layer}.hook_resid_post"
        point = model.hook_point(name)
        assert (point.d_model, point.n_prefix_tokens, point.has_cls) == (1024, 1, True)
        assert captured[name].shape == (1, 577, 1024)
        assert_close(captured[name], llava.hidden_states[layer + 1], atol=1e-5, rtol=1e-5, msg=name)
    features, out = captured["hook_vision_features"], captured["hook_projector_out"]
    assert model.hook_point("hook_vision_features").d_model == 1024
    assert model.hook_point("hook_projector_out").d_model == 4096
    assert features.shape == (1, 576, 1024)
    assert out.shape == (1, 576, 4096)
    # vision_feature_layer=-2 is block 22's output; the "default" strategy drops CLS.
    assert_close(features, llava.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)
    assert_close(features, captured["vision.blocks.22.hook_resid_post"][:, 1:], atol=0, rtol=0)
    assert_close(out, llava.fed, atol=1e-5, rtol=1e-5)


def _sae(d_in: int, d_sae: int = 2048):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(SEED)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0, d_in**-0.5)
        sae.W_dec.normal_(0, d_sae**-0.5)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def test_llava_steering_at_block_22_changes_the_vision_features_and_the_logits(llava):
    model = llava.model
    sae = _sae(1024)
    codes = sae.encode(llava.hidden_states[-2])
    codes[..., LATENT] = VALUE
    expected = sae.decode(codes)[:, 1:]
    with steer(model, sae, {LATENT: VALUE}) as handle:
        assert handle.hook == "vision.blocks.22.hook_resid_post"
        with torch.no_grad(), model.trace(**llava.inputs):
            steered_codes = model.blocks[22].sae.hook_sae_acts_steered.output.save()
            features = model.read_hook("hook_vision_features").save()
            logits = model.output.logits.save()
    assert not handle.active
    assert steered_codes.shape == (1, 577, 2048)
    assert torch.all(steered_codes[..., LATENT] == VALUE)
    assert features.shape == (1, 576, 1024)
    assert_close(features, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(features, llava.captured["hook_vision_features"], atol=1e-2)
    assert logits.shape == llava.logits.shape
    # the next-token logits, what generation samples from, move too
    assert not torch.allclose(logits[:, -1], llava.logits[:, -1], atol=1e-3)
