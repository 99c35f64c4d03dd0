"""Hardening of the activation cache (#18): bad shard files, incomplete caches, weight
fingerprints, model references."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from sae_vlm_plugin import ActivationCache, VisionModel, extract_to_cache
from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.tiny import models as tm

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


# -- item 5: incomplete caches, missing and foreign shards; sae-vlm cache verify ------------


def _source(cache: Path, **overrides: object):
    """The activation stream training would read from ``cache``."""
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
    from sae_vlm_plugin.training.sources import activation_source

    return activation_source(
        VisionSAERunnerConfig(cache_path=str(cache), hook_name=BLOCK, **overrides)
    )


def _mark_incomplete(cache: Path) -> None:
    """What a killed extraction leaves: a manifest not yet marked complete."""
    manifest = json.loads((cache / "cache.json").read_text())
    manifest["complete"] = False
    del manifest["shard_rows"]
    (cache / "cache.json").write_text(json.dumps(manifest))


def test_training_refuses_an_incomplete_cache_unless_asked(tmp_path, model):
    out = tmp_path / "c"
    extract_to_cache(model, tm.pixel_batch(7), BLOCK, out, **OPTIONS)
    _mark_incomplete(out)
    (out / BLOCK / "shard_000002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"extraction did not finish \(2 of 3 shards written\)"):
        _source(out)
    source = _source(out, allow_incomplete_cache=True, batch_size=4)
    assert next(source.make_batches(0)).shape == (4, tm.WIDTH)


def test_training_refuses_missing_stray_foreign_and_miscounted_shards(tmp_path, model):
    out = tmp_path / "c"
    extract_to_cache(model, tm.pixel_batch(7), BLOCK, out, **OPTIONS)
    other = extract_to_cache(model, tm.pixel_batch(7), BLOCK, tmp_path / "other", tokens="cls")
    folder = out / BLOCK
    shutil.copy(other.shard_paths()[0], folder / "shard_000000.safetensors")  # another cache's
    shutil.copy(folder / "shard_000002.safetensors", folder / "shard_000001.safetensors")
    shutil.copy(folder / "shard_000002.safetensors", folder / "shard_000007.safetensors")
    (folder / "shard_000002.safetensors").unlink()
    problems = ActivationCache(out).shard_problems(BLOCK)
    assert len(problems) == 4, problems
    assert "shard_000000.safetensors: a shard of another cache" in problems[1]
    assert "shard_000001.safetensors: a copy of shard 2" in problems[2]
    assert problems[3].endswith("shard_000002.safetensors: missing")
    assert "shard_000007.safetensors: a stray file, not one of this cache's 3 shards" in problems[0]
    with pytest.raises(ValueError, match=r"cannot train on the cache at .*: .*a stray file"):
        _source(out)


def test_cli_cache_verify_prints_a_summary_and_exits_2_listing_the_problems(
    tmp_path, model, capsys
):
    out = tmp_path / "c"
    hooks = [BLOCK, "hook_post_norm"]
    extract_to_cache(model, tm.pixel_batch(7), hooks, out, **{**OPTIONS, "tokens": "cls"})
    assert cli_main(["cache", "verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{BLOCK}: 3 of 3 shards, 7 rows x {tm.WIDTH} float32" in printed
    assert f"hook_post_norm: 3 of 3 shards, 7 rows x {tm.WIDTH} float32" in printed
    assert printed.rstrip().endswith("ok")

    _truncate(out / BLOCK / "shard_000001.safetensors", 8)
    (out / "hook_post_norm" / "shard_000000.safetensors").unlink()
    assert cli_main(["cache", "verify", str(out)]) == 2
    captured = capsys.readouterr()
    assert f"{BLOCK}: 3 of 3 shards, 4 rows" in captured.out
    assert "hook_post_norm: 2 of 3 shards, 4 rows" in captured.out
    error = captured.err.strip()
    assert error.startswith(f"sae-vlm cache: error: 2 problem(s) in {out}: ")
    assert "shard_000001.safetensors: its tensors need" in error
    assert "hook_post_norm/shard_000000.safetensors: missing" in error
    assert len(error.splitlines()) == 1

    _mark_incomplete(out)
    assert cli_main(["cache", "verify", str(out)]) == 2
    assert "the extraction did not finish" in capsys.readouterr().err


# -- item 7: a resume with other weights is refused -----------------------------------------


def _other_init() -> VisionModel:
    """The tiny CLIP's architecture with another random init: same name, other weights."""
    from transformers import CLIPVisionModel

    torch.manual_seed(tm.SEED + 1)
    return VisionModel(CLIPVisionModel(tm.clip_vision_config()).eval())


def _interrupt(cache: ActivationCache) -> None:
    """Make ``cache`` look like a killed extraction: not complete, its last shard missing."""
    _mark_incomplete(cache.path)
    cache.shard_paths()[-1].unlink()


def test_weights_fingerprint_samples_tensors_past_2_to_the_24_values_to_their_last():
    # Float32 sample positions rounded to the tensor's length (an IndexError on open_clip's
    # 49,408 x 768 token embedding); the last sample must be the last value.
    from sae_vlm_plugin.cache import weights_fingerprint

    embedding = torch.nn.Embedding(2**24 + 4, 1)
    before = weights_fingerprint(embedding)
    with torch.no_grad():
        embedding.weight[-1] += 1.0
    assert weights_fingerprint(embedding) != before


def test_weights_fingerprint_tells_random_inits_apart_and_survives_a_reload(tmp_path, model):
    from sae_vlm_plugin.cache import weights_fingerprint

    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "clip")
    reloaded = VisionModel(str(checkpoint))
    same = weights_fingerprint(model.source_module)
    assert weights_fingerprint(reloaded.source_module) == same
    assert weights_fingerprint(tm.clip_vision_model()) == same
    assert weights_fingerprint(_other_init().source_module) != same
    changed = tm.clip_vision_model()
    with torch.no_grad():
        changed.vision_model.encoder.layers[1].mlp.fc1.weight.add_(1e-3)
    assert weights_fingerprint(changed) != same


def test_a_resume_with_other_weights_is_refused(tmp_path, model, image_folder):
    from sae_vlm_plugin.cache import weights_fingerprint

    reference = extract_to_cache(model, image_folder, BLOCK, tmp_path / "reference", **OPTIONS)
    out = tmp_path / "c"
    cache = extract_to_cache(model, image_folder, BLOCK, out, **OPTIONS)
    recorded = json.loads((out / "cache.json").read_text())["weights_fingerprint"]
    assert recorded == weights_fingerprint(model.source_module)
    _interrupt(cache)
    other = _other_init()
    with pytest.raises(
        ValueError,
        match=rf"fingerprint {recorded}, but CLIPVisionModel now has "
        rf"{weights_fingerprint(other.source_module)} \(another random init",
    ):
        extract_to_cache(other, image_folder, BLOCK, out, **OPTIONS)
    resumed = extract_to_cache(
        VisionModel(tm.clip_vision_model()), image_folder, BLOCK, out, **OPTIONS
    )
    _assert_same_rows(resumed, reference)


def test_an_older_cache_without_a_fingerprint_resumes_with_a_warning(tmp_path, model, image_folder):
    reference = extract_to_cache(model, image_folder, BLOCK, tmp_path / "reference", **OPTIONS)
    out = tmp_path / "c"
    cache = extract_to_cache(model, image_folder, BLOCK, out, **OPTIONS)
    _interrupt(cache)
    manifest = json.loads((out / "cache.json").read_text())
    del manifest["weights_fingerprint"]
    (out / "cache.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="records no weights fingerprint"):
        resumed = extract_to_cache(model, image_folder, BLOCK, out, **OPTIONS)
    _assert_same_rows(resumed, reference)
    assert "weights_fingerprint" not in resumed.manifest


# -- items 11 and 21: local model paths are recorded absolute; a missing one is named ----------


@pytest.fixture
def local_clip(tmp_path, monkeypatch) -> Path:
    """A CLIP checkpoint at ``models/clip`` under the working directory (``tmp_path``)."""
    monkeypatch.chdir(tmp_path)
    return tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "models" / "clip")


def test_model_reference_makes_local_paths_absolute_and_keeps_hub_names(local_clip, monkeypatch):
    from sae_vlm_plugin.families.registry import model_reference

    absolute = str(local_clip.resolve())
    assert model_reference("models/clip") == absolute
    assert model_reference("./models/../models/clip") == absolute
    monkeypatch.setenv("HOME", str(local_clip.parent))
    assert model_reference("~/clip") == absolute
    for name in (
        "openai/clip-vit-large-patch14",
        "facebook/dinov2-base",
        "open_clip:ViT-B-32/openai",
        "hf-hub:timm/ViT-SO400M-14-SigLIP-384",
        "toy-clip",
    ):
        assert model_reference(name) == name
    for missing in ("models/nothing", "./clip", "/no/such/model", "a/b/c"):
        with pytest.raises(FileNotFoundError, match=f"^no such directory: {missing}$"):
            model_reference(missing)
        assert model_reference(missing, strict=False) == missing


def test_a_missing_local_model_says_no_such_directory(local_clip, capsys):
    with pytest.raises(FileNotFoundError, match=r"^no such directory: models/clip2$"):
        VisionModel("models/clip2")
    code = cli_main(
        ["extract", "--model", "models/clip2", "--hook", BLOCK, "--images", ".", "--out", "c"]
    )
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "sae-vlm extract: error: no such directory: models/clip2"
    )


def test_relative_model_paths_reach_the_cache_and_the_sae_absolute(local_clip, image_folder):
    from sae_lens import SAE
    from transformers import CLIPVisionModel

    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

    absolute = str(local_clip.resolve())
    assert VisionModel("models/clip").model_name == absolute
    assert VisionModel(CLIPVisionModel.from_pretrained("models/clip")).model_name == absolute
    arguments = ["--hook", BLOCK, "--tokens", "all", "--images", str(image_folder)]
    assert cli_main(["extract", "--model", "models/clip", *arguments, "--out", "cache"]) == 0
    assert ActivationCache("cache").settings["model"] == absolute
    config = VisionSAERunnerConfig(
        cache_path="cache",
        hook_name=BLOCK,
        expansion_factor=2,
        k=4,
        batch_size=32,
        training_steps=4,
        warmup_steps=1,
        n_batches_for_scaling=1,
        run_dir="run",
    )
    VisionSAETrainingRunner(config, progress=False).run()
    assert SAE.load_from_disk("run/final").cfg.metadata.model_name == absolute


def test_an_older_cache_with_a_relative_model_path_resumes_and_records_it_absolute(
    local_clip, image_folder
):
    model = VisionModel("models/clip")
    cache = extract_to_cache(model, image_folder, BLOCK, "cache", **OPTIONS)
    _interrupt(cache)
    manifest = json.loads(Path("cache/cache.json").read_text())
    manifest["settings"]["model"] = "models/clip"  # as caches recorded it before
    Path("cache/cache.json").write_text(json.dumps(manifest))
    resumed = extract_to_cache(model, image_folder, BLOCK, "cache", **OPTIONS)
    assert resumed.complete
    assert resumed.settings["model"] == str(local_clip.resolve())
    assert resumed.shard_problems() == []


def test_a_text_tower_by_relative_path_is_named_as_its_vision_model(tmp_path, monkeypatch):
    from sae_vlm_plugin.families.toy_models import toy_model_path
    from sae_vlm_plugin.naming.text_tower import load_text_tower

    monkeypatch.chdir(tmp_path)
    shutil.copytree(toy_model_path("toy-clip"), tmp_path / "models" / "clip")
    tower = load_text_tower("models/clip")
    assert tower.name == VisionModel("models/clip").model_name == str(tmp_path / "models" / "clip")
    with pytest.raises(FileNotFoundError, match=r"^no such directory: models/clip2$"):
        load_text_tower("models/clip2")


def test_verify_checks_the_image_table_and_the_recorded_row_counts(tmp_path, model):
    from sae_vlm_plugin.cache import verify_cache

    out = tmp_path / "c"
    extract_to_cache(model, tm.pixel_batch(7), BLOCK, out, **OPTIONS)
    assert verify_cache(out).ok
    manifest = json.loads((out / "cache.json").read_text())
    manifest["shard_rows"][BLOCK].append(6)
    (out / "cache.json").write_text(json.dumps(manifest))
    (out / "images.json").write_text('{"ids": ["a"], "labels": null}')
    assert verify_cache(out).problems == [
        f"{out / 'images.json'}: 1 image ids, the manifest says 7",
        "the manifest records rows of 4 shards, not 3",
    ]
    (out / "images.json").unlink()
    assert "images.json: unreadable (FileNotFoundError" in verify_cache(out).problems[0]


def test_an_extraction_into_a_directory_another_run_holds_is_refused(
    tmp_path, model, hold_directory
):
    """Issue 27 item 4: a second extraction (here with other settings) into the --out of a
    running one is refused at once, and writes nothing there."""
    out = tmp_path / "c"
    hold_directory(out)
    with pytest.raises(ValueError, match="in use by another extraction"):
        extract_to_cache(model, tm.pixel_batch(6), BLOCK, out, tokens="cls", progress=False)
    assert list(out.iterdir()) == []


def test_a_resume_over_images_changed_under_the_same_names_is_refused(tmp_path, model):
    """#27 item 14: the cache identifies images by their content stamps too (a file's size and
    modification time), so a folder regenerated under the same names is not resumed."""
    import os

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()

    def paint(colour, mtime):
        for i in range(6):
            Image.new("RGB", (20, 20), colour).save(images / f"{i}.png")
            os.utime(images / f"{i}.png", ns=(mtime, mtime))

    paint("red", 10**18)
    out = tmp_path / "c"
    extract_to_cache(model, images, BLOCK, out, **OPTIONS)
    (out / BLOCK / "shard_000001.safetensors").unlink()  # as if stopped after one shard
    paint("blue", 2 * 10**18)
    with pytest.raises(ValueError, match="images changed"):
        extract_to_cache(model, images, BLOCK, out, **OPTIONS)


# -- issue 27 item 18: a hand-edited cache.json; a shard overwritten by another of its cache ---


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        (lambda m: m["settings"].update(n_images=float("nan")), "settings.n_images"),
        (lambda m: m.pop("hooks"), "hooks"),
        (lambda m: m["settings"].update(hooks="blocks.1"), "settings.hooks"),
        (lambda m: m["hooks"][BLOCK].update(d_in=-3), f"hooks.{BLOCK}.d_in"),
        (lambda m: m.update(complete="yes"), "complete"),
        (lambda m: m.update(shard_rows={BLOCK: [1, "x"]}), "shard_rows"),
    ],
)
def test_a_hand_edited_manifest_is_a_one_line_error_naming_the_field(
    tmp_path, model, capsys, edit, said
):
    out = tmp_path / "c"
    extract_to_cache(model, tm.pixel_batch(7), BLOCK, out, **OPTIONS)
    manifest = json.loads((out / "cache.json").read_text())
    edit(manifest)
    (out / "cache.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=re.escape(f"{out / 'cache.json'}: {said}")):
        ActivationCache(out)
    assert cli_main(["cache", "verify", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert said in error[0]
    argv = ["train", "--preset", "steering", "--cache", str(out), "--run-dir", str(tmp_path / "r")]
    assert cli_main(argv) == 2
    assert said in capsys.readouterr().err


def test_a_shard_overwritten_by_another_shard_of_the_cache_is_found(tmp_path, model):
    out = tmp_path / "c"
    extract_to_cache(model, tm.pixel_batch(9), BLOCK, out, **OPTIONS)
    shutil.copyfile(
        out / BLOCK / "shard_000000.safetensors", out / BLOCK / "shard_000001.safetensors"
    )
    problems = ActivationCache(out).shard_problems()
    assert problems == [f"{out / BLOCK / 'shard_000001.safetensors'}: a copy of shard 0"]
