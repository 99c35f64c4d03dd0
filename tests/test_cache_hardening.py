"""Hardening of the activation cache (#18): bad shard files, incomplete caches, weight
fingerprints, model references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tiny_models as tm
from sae_vlm_plugin import ActivationCache, VisionModel, extract_to_cache

BLOCK = "blocks.1.hook_resid_post"
OPTIONS = {"tokens": "random_k", "k": 2, "batch_size": 2, "images_per_shard": 3, "progress": False}


@pytest.fixture
def model() -> VisionModel:
    return VisionModel(tm.clip_vision_model())


def _truncate(path: Path, n_bytes: int) -> None:
    """Drop the last ``n_bytes`` of a file, as a full disk or a killed copy leaves it."""
    path.write_bytes(path.read_bytes()[:-n_bytes])


def _assert_same_rows(cache: ActivationCache, reference: ActivationCache) -> None:
    a, b = cache.load(), reference.load()
    for key in ("activations", "image_index", "token_index"):
        assert torch.equal(a[key], b[key]), key


# -- item 6: truncated and foreign-format shard files --------------------------------------


def test_a_truncated_shard_is_named_instead_of_a_json_error(tmp_path, model):
    cache = extract_to_cache(model, tm.pixel_batch(6), BLOCK, tmp_path / "c", **OPTIONS)
    shard = cache.shard_paths()[1]
    _truncate(shard, 10)  # the data ends early
    with pytest.raises(ValueError, match=rf"{shard}: its tensors need \d+ bytes of data"):
        cache.load()
    _truncate(shard, shard.stat().st_size - 20)  # only part of the header is left
    with pytest.raises(ValueError, match=rf"{shard}: not a safetensors file or truncated"):
        cache.n_rows()


def test_a_pickle_named_safetensors_is_refused_without_reading_its_claimed_header(tmp_path, model):
    cache = extract_to_cache(model, tm.pixel_batch(6), BLOCK, tmp_path / "c", **OPTIONS)
    shard = cache.shard_paths()[0]
    torch.save({"activations": torch.zeros(6, tm.WIDTH)}, shard)
    for read in (cache.n_rows, cache.load, lambda: next(cache.batches(batch_size=2))):
        with pytest.raises(ValueError, match=rf"{shard}: not a safetensors file or truncated"):
            read()


def test_a_resumed_extraction_redoes_bad_shards(tmp_path, model, image_folder):
    reference = extract_to_cache(model, image_folder, BLOCK, tmp_path / "reference", **OPTIONS)
    out = tmp_path / "damaged"
    damaged = extract_to_cache(model, image_folder, BLOCK, out, **OPTIONS)
    shards = damaged.shard_paths()
    _truncate(shards[1], 10)
    torch.save({"x": torch.zeros(3)}, shards[2])
    shards[4].write_bytes(b"")
    with pytest.warns(UserWarning, match="re-extracting a bad shard") as caught:
        resumed = extract_to_cache(model, image_folder, BLOCK, out, **OPTIONS)
    messages = " ".join(str(warning.message) for warning in caught)
    assert all(str(shards[i]) in messages for i in (1, 2, 4))
    assert resumed.complete
    _assert_same_rows(resumed, reference)
