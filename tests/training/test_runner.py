"""The vision training runner end to end on a tiny CLIP: from a cache and from images, resume,
export, presets, config files and errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from sae_lens import SAE

from sae_vlm_plugin import VisionModel, extract_to_cache
from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.training.presets import list_presets, preset_config
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

HOOK = "blocks.1.hook_resid_post"


def _config(run_dir: Path, cache: Path, steps: int = 40, **overrides) -> VisionSAERunnerConfig:
    batch = overrides.get("train_batch_size_tokens", 64)
    values = {
        "cached_activations_path": str(cache),
        "hook_name": HOOK,
        "expansion_factor": 4,
        "k": 4,
        "train_batch_size_tokens": batch,
        "training_tokens": batch * steps,
        "lr_warm_up_steps": 5,
        "threshold_start_step": 10,
        "dead_after_inputs": 64 * 20,
        "n_batches_for_norm_estimate": 4,
        "logger": {"wandb_log_frequency": 5},
        "checkpoint_every_steps": 10,
        "checkpoint_path": str(run_dir),
        **overrides,
    }
    return VisionSAERunnerConfig(**values)


@pytest.mark.parametrize(
    "architecture", ["paper_matryoshka_batchtopk", "paper_batchtopk", "matryoshka_batchtopk"]
)
def test_training_from_a_cache_exports_a_plain_saelens_sae(tmp_path, tiny_cache, architecture):
    cfg = _config(tmp_path / "run", tiny_cache, architecture=architecture)
    sae = VisionSAETrainingRunner(cfg, progress=False).run()
    loaded = SAE.load_from_disk(tmp_path / "run" / "final")
    assert loaded.cfg.architecture() == "jumprelu"
    assert loaded.cfg.d_in == tm.WIDTH
    assert loaded.cfg.d_sae == 4 * tm.WIDTH
    metadata = loaded.cfg.metadata
    assert metadata.hook_name == HOOK
    assert metadata.model_name == "CLIPVisionModel"
    assert metadata.family == "clip"
    assert metadata.tokens == "all"
    assert metadata.training_architecture == architecture
    assert metadata.layer == 1
    assert metadata.expansion_factor == 4
    assert metadata.k == 4
    if architecture.endswith("matryoshka_batchtopk"):
        assert metadata.group_fractions == [0.0625, 0.125, 0.25, 0.5625]
    assert metadata.library_versions["sae-lens"]
    for key, value in sae.state_dict().items():
        torch.testing.assert_close(value, loaded.state_dict()[key])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_steps = [entry["step"] for entry in log if entry["kind"] == "train"]
    assert train_steps == list(range(5, 41, 5))
    assert all(
        "losses/overall_loss" in entry and "metrics/l0" in entry
        for entry in log
        if entry["kind"] == "train"
    )


def test_exported_sae_runs_on_raw_activations_with_l0_near_k(tmp_path, tiny_cache):
    cfg = _config(
        tmp_path / "run",
        tiny_cache,
        steps=150,
        threshold_start_step=20,
        logger={"wandb_log_frequency": 50, "eval_every_n_wandb_logs": 20},
    )
    sae = VisionSAETrainingRunner(cfg, progress=False).run()
    from sae_vlm_plugin import ActivationCache

    raw = ActivationCache(tiny_cache).load()["activations"]
    codes = sae.encode(raw)
    l0 = (codes > 0).float().sum(-1).mean().item()
    assert 0.5 * cfg.k <= l0 <= 2.0 * cfg.k, l0
    reconstruction = sae.decode(codes)
    explained = 1 - (raw - reconstruction).pow(2).sum() / (raw - raw.mean(0)).pow(2).sum()
    assert explained > 0.3, explained.item()


def test_training_from_images_extracts_on_the_fly(tmp_path):
    images, _ = tm.synthetic_images(60)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")
    checkpoint = tmp_path / "clip"
    tm.clip_vision_model().save_pretrained(checkpoint)
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(
        size={"shortest_edge": tm.IMAGE_SIZE}, crop_size=tm.IMAGE_SIZE
    ).save_pretrained(checkpoint)
    cfg = VisionSAERunnerConfig(
        model_name=str(checkpoint),
        dataset_path=str(folder),
        hook_name=HOOK,
        tokens="random_k",
        tokens_per_image=4,
        expansion_factor=2,
        k=4,
        train_batch_size_tokens=32,
        training_tokens=32 * 12,
        lr_warm_up_steps=2,
        threshold_start_step=4,
        n_batches_for_norm_estimate=2,
        mixing_buffer_batches=2,
        extraction_batch_size=16,
        logger={"wandb_log_frequency": 4},
        checkpoint_path=str(tmp_path / "run"),
    )
    sae = VisionSAETrainingRunner(cfg, progress=False).run()
    assert sae.cfg.metadata.model_name == str(checkpoint)
    assert sae.cfg.metadata.tokens == "random_4@seed0"
    assert sae.cfg.metadata.training_data == str(folder)


KILLABLE_TRAINING = textwrap.dedent(
    """
    import time
    from sae_vlm_plugin.cache import ActivationCache
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

    plain = ActivationCache.batches

    def slow(self, *args, **kwargs):
        for batch in plain(self, *args, **kwargs):
            time.sleep(0.05)
            yield batch

    ActivationCache.batches = slow
    VisionSAETrainingRunner(VisionSAERunnerConfig(**{config!r}), progress=False).run()
    """
)


def test_a_killed_run_resumes_to_the_same_final_weights(tmp_path, tiny_cache):
    reference = VisionSAETrainingRunner(
        _config(tmp_path / "reference", tiny_cache), progress=False
    ).run()
    cfg = _config(tmp_path / "killed", tiny_cache)
    script = KILLABLE_TRAINING.format(config=cfg.to_dict())
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while not (tmp_path / "killed" / "checkpoints" / "step_20" / "runner_state.json").exists():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (tmp_path / "killed" / "final").exists()
    resumed = VisionSAETrainingRunner(cfg, progress=False).run()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=0, rtol=0)
    log = [
        json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    ]
    steps = [entry["step"] for entry in log if entry["kind"] == "train"]
    assert steps == sorted(set(steps)) == list(range(5, 41, 5))


def test_evaluator_results_reach_the_log(tmp_path, tiny_cache):
    calls = []

    def evaluator(sae, step, activation_scaler):
        calls.append(step)
        return {"eval/d_sae": sae.cfg.d_sae}

    cfg = _config(tmp_path / "run", tiny_cache, steps=20, eval_every_steps=10)
    VisionSAETrainingRunner(cfg, evaluator=evaluator, progress=False).run()
    assert calls == [10, 20]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["eval/d_sae"] for entry in log if entry["kind"] == "eval"] == [128, 128]


def test_presets_cover_the_paper_and_errors_are_clear(tmp_path, tiny_cache):
    presets = list_presets()
    assert len(presets) == 2 * 6 * (5 + 4 + 1 + 1) + 2
    steering = preset_config("steering", cache_path=str(tiny_cache))
    assert (
        steering.architecture,
        steering.expansion_factor,
        steering.tokens,
        steering.hook_name,
    ) == (
        "paper_matryoshka_batchtopk",
        64,
        None,  # a cache records its own token selection, as it does its model
        "blocks.22.hook_resid_post",
    )
    assert steering.model_name is None
    table1 = preset_config("clip-l14-336-l22-cls-batchtopk-x8", dataset_path="/data/imagenet/train")
    assert table1.model_name == "openai/clip-vit-large-patch14-336"
    assert (table1.k, table1.train_batch_size_tokens, table1.lr_warm_up_steps) == (20, 4096, 1000)
    assert (table1.training_tokens, table1.total_training_steps) == (4096 * 100_000, 100_000)
    assert (table1.dead_after_inputs, table1.eval_period) == (10_000_000, 1000)
    # #15 item 1: every reference script passes --auxk_alpha 0.03 (not dictionary_learning's 1/32)
    assert table1.aux_loss_coefficient == steering.aux_loss_coefficient == 0.03
    # #15 item 2: get_norm_factor(data, steps=100) averages batches 0..100
    assert table1.n_batches_for_norm_estimate == 101
    assert preset_config("steering", images="x").tokens == "random_k+replacement"
    with pytest.raises(
        ValueError,
        match=r"unknown preset 'clip-l14-336-l22-cls-batchtopk-x9'.*Closest: clip-l14-336-l22-cls-batchtopk-x",
    ):
        preset_config("clip-l14-336-l22-cls-batchtopk-x9", images="x")


def test_config_errors_name_what_is_wrong(tmp_path, tiny_cache):
    with pytest.raises(ValueError, match="either cached_activations_path"):
        VisionSAERunnerConfig()
    with pytest.raises(
        ValueError, match="architecture: expected one of 'paper_matryoshka_batchtopk', "
    ):
        _config(tmp_path, tiny_cache, architecture="topk")
    with pytest.raises(ValueError, match="k=200 is larger than d_sae=128"):
        VisionSAETrainingRunner(_config(tmp_path, tiny_cache, k=200), progress=False).run()
    with pytest.raises(ValueError, match="unknown config keys \\['lr_rate'\\]"):
        VisionSAERunnerConfig.from_dict({"cache_path": "x", "lr_rate": 1})
    with pytest.raises(
        ValueError, match=r"holds blocks\.1\.hook_resid_post, not 'blocks\.0\.hook_resid_post'"
    ):
        VisionSAETrainingRunner(_config(tmp_path, tiny_cache, hook_name="blocks.0.hook_resid_post"))
    with pytest.raises(
        ValueError, match="have d_in=32, but the config asks for an SAE with d_in=768"
    ):
        VisionSAETrainingRunner(_config(tmp_path, tiny_cache, d_in=768))
    with pytest.raises(ValueError, match="group_fractions must sum to 1"):
        VisionSAETrainingRunner(
            _config(tmp_path / "g", tiny_cache, group_fractions=[0.5, 0.2]), progress=False
        ).run()


def test_nan_activations_name_the_step(tmp_path):
    pixels = tm.pixel_batch(40)
    out = tmp_path / "cache"
    extract_to_cache(
        VisionModel(tm.clip_vision_model()), pixels, HOOK, out, tokens="all", progress=False
    )
    shard = next((out / HOOK).glob("shard_*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(shard))
    tensors["activations"][:] = float("nan")
    save_file(tensors, str(shard))
    cfg = _config(tmp_path / "run", out, scale_inputs=False)
    with pytest.raises(ValueError, match=r"step 0: the activation batch holds NaN or inf"):
        VisionSAETrainingRunner(cfg, progress=False).run()


def test_cli_train_with_a_config_file_and_overrides(tmp_path, tiny_cache, capsys):
    config_file = tmp_path / "run.yaml"
    values = _config(tmp_path / "run", tiny_cache, steps=10).to_dict()
    import yaml

    config_file.write_text(yaml.safe_dump(values))
    assert (
        cli_main(
            [
                "train",
                "--config",
                str(config_file),
                "--set",
                "k=8",
                "--run-dir",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    assert "d_sae=128" in capsys.readouterr().out
    assert SAE.load_from_disk(tmp_path / "cli" / "final").cfg.metadata.training_steps == 10
    assert cli_main(["train", "--list-presets"]) == 0
    assert "steering" in capsys.readouterr().out


def test_trained_sae_round_trips_through_a_registry_entry_and_from_pretrained(tmp_path, tiny_cache):
    from sae_vlm_plugin import register_releases

    trained = VisionSAETrainingRunner(
        _config(tmp_path / "run", tiny_cache, steps=20), progress=False
    ).run()
    meta = trained.cfg.metadata
    release = {
        "tiny-clip-trained": {
            "repo_id": str(tmp_path / "run"),
            "model": meta.model_name,
            "conversion_func": "sae_vlm_sae_lens",
            "verified": True,
            "metadata": {
                "family": meta.family,
                "tokens": meta.tokens,
                "training_architecture": meta.training_architecture,
                "training_data": meta.training_data,
                "k": meta.k,
                "expansion_factor": meta.expansion_factor,
                "group_fractions": meta.group_fractions,
            },
            "saes": [
                {"id": "layer1-x4", "path": "final", "metadata": {"hook_name": meta.hook_name}}
            ],
        }
    }
    assert register_releases(release) == ["tiny-clip-trained"]
    loaded = SAE.from_pretrained("tiny-clip-trained", "layer1-x4")
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for key in (
        "model_name",
        "hook_name",
        "family",
        "tokens",
        "training_architecture",
        "k",
        "layer",
        "group_fractions",
    ):
        assert loaded.cfg.metadata[key] == meta[key], key


def test_reference_data_order_replays_one_epoch_with_its_short_batch(tmp_path, tiny_cache):
    """#15 item 3: the reference trains on itertools.cycle(DataLoader(rows, shuffle=True)):
    every row once per epoch, the short last batch kept, the first epoch's order replayed."""
    import itertools

    from torch.utils.data import DataLoader

    from sae_vlm_plugin import ActivationCache

    cache = ActivationCache(tiny_cache)
    rows = cache.load()["activations"]  # 4080 rows: 3 full batches of 1024 and one of 1008
    permutation = torch.randperm(len(rows), generator=torch.Generator().manual_seed(5))
    reference = DataLoader(rows, batch_size=1024, sampler=permutation.tolist())
    expected = list(itertools.islice(itertools.cycle(reference), 9))
    got = list(itertools.islice(cache.batches(batch_size=1024, seed=5, order="reference"), 9))
    assert [len(b) for b in got] == [1024, 1024, 1024, 1008] * 2 + [1024]
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="has no equal share for 2 ranks"):
        next(cache.batches(batch_size=1024, order="reference", rank=0, world_size=2))
    with pytest.raises(ValueError, match="needs cached_activations_path"):
        VisionSAERunnerConfig(model_name="m", dataset_path="i", data_order="reference")

    sae = VisionSAETrainingRunner(
        _config(tmp_path / "run", tiny_cache, train_batch_size_tokens=1000, data_order="reference"),
        progress=False,
    ).run()  # 4080 rows: every fifth step is a batch of 80
    assert torch.isfinite(sae.W_dec).all()


def test_adaptive_threads_trains_and_leaves_the_callers_thread_count(tmp_path, tiny_cache):
    """adaptive_threads=True governs each step's CPU threads (sae_vlm_plugin.threads) and hands
    the caller's count back."""
    before = torch.get_num_threads()
    sae = VisionSAETrainingRunner(
        _config(tmp_path / "run", tiny_cache, adaptive_threads=True), progress=False
    ).run()
    assert torch.isfinite(sae.W_dec).all()
    assert torch.get_num_threads() == before
