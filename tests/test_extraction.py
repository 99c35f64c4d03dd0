"""Token selection, image sources and in-memory extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sae_vlm_plugin import TokenSelection, VisionModel, extract_activations, open_image_source
from sae_vlm_plugin.images import BACKGROUND, ImageReadError, to_rgb
from sae_vlm_plugin.tiny import models as tm

BLOCK = "blocks.1.hook_resid_post"


def _all_tokens(model: VisionModel, pixels: torch.Tensor) -> torch.Tensor:
    return model.capture(pixels, [BLOCK])[BLOCK]


def test_patches_all_and_mean_match_hand_computation():
    model = VisionModel(tm.clip_vision_model())
    pixels = tm.pixel_batch(3)
    full = _all_tokens(model, pixels)  # (3, 17, d), CLS first
    got = {
        kind: extract_activations(model, pixels, BLOCK, tokens=kind, progress=False)[BLOCK]
        for kind in ("cls", "patches", "all", "mean")
    }
    torch.testing.assert_close(got["cls"], full[:, 0])
    torch.testing.assert_close(got["patches"], full[:, 1:].reshape(-1, tm.WIDTH))
    torch.testing.assert_close(got["all"], full.reshape(-1, tm.WIDTH))
    hand_mean = torch.stack([sum(full[i, t] for t in range(1, 17)) / 16 for i in range(3)])
    torch.testing.assert_close(got["mean"], hand_mean)


def test_families_without_cls_take_every_token_as_a_patch():
    model = VisionModel(tm.siglip_vision_model())
    pixels = tm.pixel_batch(2)
    patches = extract_activations(model, pixels, BLOCK, tokens="patches", progress=False)[BLOCK]
    torch.testing.assert_close(patches, _all_tokens(model, pixels).reshape(-1, tm.WIDTH))


@settings(max_examples=8, deadline=None)
@given(batch_size=st.integers(1, 7), k=st.integers(1, 5), seed=st.integers(0, 3))
def test_random_k_is_reproducible_across_batch_sizes(batch_size, k, seed):
    model = _clip_model()
    pixels = tm.pixel_batch(7)
    reference = extract_activations(
        model, pixels, BLOCK, tokens="random_k", k=k, seed=seed, batch_size=7, progress=False
    )[BLOCK]
    got = extract_activations(
        model,
        pixels,
        BLOCK,
        tokens="random_k",
        k=k,
        seed=seed,
        batch_size=batch_size,
        progress=False,
    )[BLOCK]
    torch.testing.assert_close(got, reference)
    assert got.shape == (7 * k, tm.WIDTH)


_CACHED_MODEL: list[VisionModel] = []


def _clip_model() -> VisionModel:
    if not _CACHED_MODEL:
        _CACHED_MODEL.append(VisionModel(tm.clip_vision_model()))
    return _CACHED_MODEL[0]


def test_random_k_takes_distinct_tokens_seeded_per_image_id():
    selection = TokenSelection("random_k", k=4, seed=1)
    first = selection.token_indices("img_a", n_tokens=17, n_prefix=1)
    assert torch.equal(first, selection.token_indices("img_a", 17, 1))
    assert len(set(first.tolist())) == 4
    assert all(0 <= t < 17 for t in first.tolist())
    other_seed = TokenSelection("random_k", k=4, seed=2).token_indices("img_a", 17, 1)
    other_image = selection.token_indices("img_b", 17, 1)
    assert not (torch.equal(first, other_seed) and torch.equal(first, other_image))
    # Rows of an image are its tokens at those positions.
    model = _clip_model()
    pixels = tm.pixel_batch(1)
    rows = extract_activations(model, pixels, BLOCK, tokens=selection, progress=False)[BLOCK]
    positions = selection.token_indices("0", 17, 1)
    torch.testing.assert_close(rows, _all_tokens(model, pixels)[0, positions])


def test_random_k_with_replacement_follows_the_reference_rule():
    """#15 item 8: save_activations.py draws torch.randint(0, n_tokens, (k,)) per image: uniform
    over every token (CLS included), a token may repeat, any k works."""
    selection = TokenSelection.parse("random_3+replacement", seed=1)
    assert (selection.kind, selection.k, selection.replacement) == ("random_k", 3, True)
    assert selection.describe() == "random_3+replacement@seed1"
    assert TokenSelection.parse(selection.describe().partition("@")[0], seed=1) == selection
    draws = torch.stack([selection.token_indices(f"img_{i}", 5, 1) for i in range(4000)])
    counts = torch.bincount(draws.flatten(), minlength=5).double()
    assert counts.min() > 0.9 * counts.mean()  # uniform, token 0 (CLS) included
    repeats = sum(len(set(row.tolist())) < 3 for row in draws)
    assert abs(repeats / 4000 - (1 - 4 * 3 / 25)) < 0.03  # P(repeat) = 1 - (5*4*3)/5^3
    assert len(TokenSelection.parse("random_100+replacement").token_indices("a", 17, 1)) == 100
    assert torch.equal(draws[7], selection.token_indices("img_7", 5, 1))
    model = _clip_model()
    pixels = tm.pixel_batch(2)
    rows = extract_activations(model, pixels, BLOCK, tokens=selection, progress=False)[BLOCK]
    positions = [selection.token_indices(str(i), 17, 1) for i in range(2)]
    expected = torch.cat([_all_tokens(model, pixels)[i, p] for i, p in enumerate(positions)])
    torch.testing.assert_close(rows, expected)
    with pytest.raises(ValueError, match=r"unknown token draw '\+twice'"):
        TokenSelection.parse("random_2+twice")
    with pytest.raises(ValueError, match="only random_k draws with replacement"):
        TokenSelection("cls", replacement=True)


def test_random_k_with_more_tokens_than_the_hook_has_is_refused():
    # It used to take every token silently while recording random_100 in the metadata.
    selection = TokenSelection("random_k", k=100)
    with pytest.raises(ValueError, match=r"k=100 tokens per image, but the hook has 17"):
        selection.token_indices("img_a", n_tokens=17, n_prefix=1)
    with pytest.raises(ValueError, match=r"k=100 tokens per image, but the hook has 17"):
        extract_activations(_clip_model(), tm.pixel_batch(1), BLOCK, tokens=selection)
    assert len(TokenSelection("random_k", k=17).token_indices("img_a", 17, 1)) == 17


def test_several_hooks_come_from_one_pass_in_source_order(synthetic_images):
    images, _ = synthetic_images
    model = _clip_model()
    out = extract_activations(
        model, images[:5], [BLOCK, "hook_post_norm"], tokens="cls", batch_size=2, progress=False
    )
    pixels = model.preprocess(images[:5])
    torch.testing.assert_close(out[BLOCK], _all_tokens(model, pixels)[:, 0], atol=1e-6, rtol=0)
    assert out["hook_post_norm"].shape == (5, tm.WIDTH)


def test_image_sources_folder_paths_pil_and_dataset_agree(image_folder, synthetic_images):
    import datasets

    images, labels = synthetic_images
    folder = open_image_source(image_folder)
    assert len(folder) == len(images)
    assert sorted(folder.labels) == sorted(labels)
    assert folder.ids[0].count("/") == 1
    paths = sorted(image_folder.rglob("*.png"))
    by_path = open_image_source(paths)
    assert by_path.labels is None
    assert by_path.load(0).tobytes() == folder.load(0).tobytes()
    flat = open_image_source(image_folder / folder.ids[0].split("/")[0])
    assert flat.labels is None
    assert len(flat) == 2
    dataset = datasets.Dataset.from_dict(
        {"image": images, "label": [0] * len(images)},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["shape"])}
        ),
    )
    from_dataset = open_image_source(dataset)
    assert from_dataset.labels == ["shape"] * len(images)
    assert from_dataset.load(3).tobytes() == images[3].convert("RGB").tobytes()
    model = _clip_model()
    a = extract_activations(model, images, BLOCK, progress=False)[BLOCK]
    b = extract_activations(model, dataset, BLOCK, progress=False)[BLOCK]
    torch.testing.assert_close(a, b)


def test_unreadable_image_is_named_or_skipped_and_counted(tmp_path, caplog):
    good = tm.synthetic_image("circle", "red")
    good.save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image at all")
    good.save(tmp_path / "c.png")
    model = _clip_model()
    with pytest.raises(ImageReadError, match=r"cannot read image b\.png"):
        extract_activations(model, tmp_path, BLOCK, progress=False)
    out = extract_activations(model, tmp_path, BLOCK, skip_unreadable=True)
    assert out[BLOCK].shape == (2, tm.WIDTH)
    assert "skipped 1 unreadable image(s) of 3" in caplog.text


def test_empty_and_wrong_sources_raise(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images"):
        open_image_source(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_image_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="empty"):
        open_image_source([])
    with pytest.raises(ValueError, match=r"\(n, 3, h, w\)"):
        open_image_source(torch.zeros(2, 32, 32))
    with pytest.raises(TypeError, match="only PIL images or only paths"):
        open_image_source([Image.new("RGB", (4, 4)), "a.png"])


def test_token_selection_errors():
    with pytest.raises(
        ValueError, match="unknown token selection 'clss'; valid: cls, patches, all, mean, random_k"
    ):
        TokenSelection.parse("clss")
    with pytest.raises(ValueError, match="needs a CLS token, and the siglip family has none"):
        extract_activations(
            VisionModel(tm.siglip_vision_model()),
            tm.pixel_batch(1),
            BLOCK,
            tokens="cls",
            progress=False,
        )
    with pytest.raises(ValueError, match="hook_post_norm is one vector per image"):
        extract_activations(
            _clip_model(), tm.pixel_batch(1), "hook_post_norm", tokens="patches", progress=False
        )


def test_wide_and_transparent_images_are_seen_as_a_person_sees_them(tmp_path):
    """#18 item 15: a 16-bit image is scaled to 8 bits (PIL's convert clips it to white) and
    transparent pixels show the documented background, not the colour hidden under them."""
    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[:2, :, 3] = 255  # opaque top half, transparent bottom half
    rgba[2:, :, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    source = open_image_source(tmp_path)
    wide = np.asarray(source.load(source.ids.index("wide.png")))
    assert wide.dtype == np.uint8
    np.testing.assert_array_equal(wide[..., 0], np.round(ramp / 257).astype(np.uint8))
    assert (wide[..., 0] == wide[..., 2]).all()
    clear = np.asarray(source.load(source.ids.index("clear.png")))
    assert (clear[:2] == [255, 0, 0]).all()
    assert (clear[2:] == list(BACKGROUND)).all()
    half = Image.new("LA", (2, 2), (0, 128))  # black at alpha 128/255 over white
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)


@pytest.mark.parametrize("family_model", ["clip", "siglip"])
def test_images_one_or_three_pixels_tall_are_read_as_pictures(tmp_path, family_model):
    """#27 item 8: an image 1 or 3 pixels tall is not taken for a channels-first array (a pure
    red 48x3 image was preprocessed as black; a 1x1 image stopped the extraction)."""
    build = tm.clip_vision_model if family_model == "clip" else tm.siglip_vision_model
    model = VisionModel(build())
    red = model.preprocess([Image.new("RGB", (48, 48), (255, 0, 0))])
    for width, height in [(48, 3), (3, 48), (48, 1), (1, 1), (3, 3)]:
        pixels = model.preprocess([Image.new("RGB", (width, height), (255, 0, 0))])
        torch.testing.assert_close(pixels, red)
    Image.new("RGB", (1, 1), (0, 255, 0)).save(tmp_path / "dot.png")
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "blue.png")
    acts = extract_activations(model, tmp_path, BLOCK, tokens="mean", progress=False)
    assert acts[BLOCK].shape[0] == 2


def test_an_image_its_preprocessor_cannot_take_is_named_and_skippable(tmp_path):
    """#27 item 8: a preprocessing failure names the image and --skip-unreadable skips it."""

    def picky(images):
        if images[0].size == (7, 7):
            raise ValueError("cannot take this one")
        return torch.zeros(len(images), 3, 32, 32)

    Image.new("RGB", (7, 7)).save(tmp_path / "odd.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "fine.png")
    model = VisionModel(tm.clip_vision_model(), preprocess=picky)
    with pytest.raises(ImageReadError, match=r"odd\.png.*cannot take this one"):
        extract_activations(model, tmp_path, BLOCK, tokens="cls", progress=False)
    acts = extract_activations(
        model, tmp_path, BLOCK, tokens="cls", skip_unreadable=True, progress=False
    )
    assert acts[BLOCK].shape[0] == 1
