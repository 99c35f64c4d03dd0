"""The vision runner reads SAELens' own training configs: its ``LanguageModelSAERunnerConfig``
(from SAELens' training tutorial) with only the vision keys changed, its nested training SAE
config and ``LoggingConfig``, in SAELens' names and units."""

from __future__ import annotations

import json

import pytest
import yaml
from sae_lens import (
    BatchTopKTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LoggingConfig,
    MatryoshkaBatchTopKTrainingSAEConfig,
)

from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.training.config_names import alias_names
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sweep import wandb_settings

HOOK = "blocks.1.hook_resid_post"


def _tutorial_config() -> LanguageModelSAERunnerConfig:
    """SAELens' training tutorial config (docs/training_saes.md), with a BatchTopK SAE."""
    return LanguageModelSAERunnerConfig(
        model_name="tiny-stories-1L-21M",
        hook_name="blocks.0.hook_mlp_out",
        dataset_path="apollo-research/roneneldan-TinyStories-tokenizer-gpt2",
        is_dataset_tokenized=True,
        streaming=True,
        sae=BatchTopKTrainingSAEConfig(d_in=1024, d_sae=16 * 1024, k=32),
        lr=5e-5,
        adam_beta1=0.9,
        adam_beta2=0.999,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        train_batch_size_tokens=4096,
        context_size=512,
        n_batches_in_buffer=64,
        training_tokens=4096 * 300,
        store_batch_size_prompts=16,
        feature_sampling_window=1000,
        dead_feature_window=1000,
        dead_feature_threshold=1e-4,
        logger=LoggingConfig(
            log_to_wandb=True,
            wandb_project="sae_lens_tutorial",
            wandb_log_frequency=30,
            eval_every_n_wandb_logs=20,
        ),
        device="cpu",
        seed=42,
        n_checkpoints=0,
        checkpoint_path="checkpoints",
        dtype="float32",
        verbose=False,
    )


def test_a_saelens_yaml_trains_with_only_the_vision_keys_changed(tmp_path, image_folder):
    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "ckpt")
    values = json.loads(json.dumps(_tutorial_config().to_dict()))  # what a YAML holds
    values.update(  # the vision keys
        model_name=str(checkpoint),
        hook_name=HOOK,
        dataset_path=str(image_folder),
        checkpoint_path=str(tmp_path / "run"),
        train_batch_size_tokens=16,
        training_tokens=16 * 12,
        lr_warm_up_steps=2,
    )
    values["sae"].update(d_in=tm.WIDTH, d_sae=4 * tm.WIDTH, k=4)
    values["logger"]["log_to_wandb"] = False
    path = tmp_path / "sae_lens.yaml"
    path.write_text(yaml.safe_dump(values))

    cfg = VisionSAERunnerConfig.from_file(path)
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.k) == ("batchtopk", tm.WIDTH, 128, 4)
    assert (cfg.train_batch_size_tokens, cfg.training_tokens, cfg.lr_warm_up_steps) == (16, 192, 2)
    assert cfg.total_training_steps == 12
    assert (cfg.model_name, cfg.dataset_path, cfg.checkpoint_path) == (
        str(checkpoint),
        str(image_folder),
        str(tmp_path / "run"),
    )
    assert cfg.aux_loss_coefficient == 1.0  # the BatchTopK config's default
    assert (cfg.dead_feature_window, cfg.dead_after_inputs) == (1000, None)
    assert (cfg.dead_feature_steps, cfg.dead_feature_inputs) == (1000, 1001 * 16)
    assert cfg.n_batches_for_norm_estimate == 1000  # SAELens' default, read
    logger = cfg.logger
    assert (logger.wandb_log_frequency, logger.eval_every_n_wandb_logs) == (30, 20)
    assert (cfg.eval_every_steps, cfg.eval_period) == (None, 600)
    assert (logger.wandb_project, logger.run_name) == (
        "sae_lens_tutorial",
        values["logger"]["run_name"],
    )
    assert cfg.extra_metadata["sae_lens_lm_settings"]["context_size"] == 512
    assert (cfg.n_checkpoints, cfg.use_cached_activations) == (0, False)

    saved = cfg.to_dict()  # one spelling: SAELens' names, the logger nested
    shared = {"model_name", "dataset_path", "train_batch_size_tokens", "training_tokens"}
    shared |= {"lr_warm_up_steps", "checkpoint_path", "dead_feature_window", "n_checkpoints"}
    shared |= {"n_batches_for_norm_estimate", "aux_loss_coefficient", "feature_sampling_window"}
    assert shared <= set(saved)
    assert set(values["logger"]) - set(saved["logger"]) == {
        "log_activations_store_to_wandb",  # SAELens' artifact uploads: refused unless default
        "log_optimizer_state_to_wandb",
        "log_weights_to_wandb",
    }
    assert not set(saved) & {*alias_names(), "sae"}
    for key in shared - {"aux_loss_coefficient"}:
        assert saved[key] == values[key], key
    assert VisionSAERunnerConfig.from_dict(saved) == cfg
    cfg.n_batches_for_norm_estimate = 2  # a tiny run: 1000 batches of 16 images' tokens is long

    sae = VisionSAETrainingRunner(cfg, progress=False).run()
    assert sae.cfg.d_sae == 128
    record = json.loads((tmp_path / "run" / "final" / "cfg.json").read_text())
    assert record["metadata"]["sae_lens_lm_settings"]["context_size"] == 512
    assert record["metadata"]["training_steps"] == 12
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded == cfg.to_dict()  # the run directory's config spells SAELens' names


def test_nested_saelens_objects_set_the_runner_fields(tiny_cache):
    tutorial = _tutorial_config()
    cfg = VisionSAERunnerConfig(
        sae=tutorial.sae, logger=tutorial.logger, cache_path=str(tiny_cache), hook_name=HOOK
    )
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.k) == ("batchtopk", 1024, 16384, 32)
    assert (cfg.logger.log_to_wandb, cfg.logger.wandb_log_frequency) == (True, 30)
    assert cfg.logger.eval_every_n_wandb_logs == 20
    matryoshka = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=32, d_sae=128, k=4, matryoshka_widths=[16, 48, 128]
    )
    cfg = VisionSAERunnerConfig(sae=matryoshka, cache_path=str(tiny_cache), hook_name=HOOK)
    assert cfg.architecture == "matryoshka_batchtopk"
    assert cfg.group_fractions == [0.125, 0.25, 0.625]
    with pytest.raises(ValueError, match="k=8 disagrees with the nested SAELens config's 4"):
        VisionSAERunnerConfig(sae=matryoshka, k=8, cache_path=str(tiny_cache))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 64, "train_batch_size_tokens": 64}, "train_batch_size_tokens and batch_size"),
        ({"dead_feature_threshold": 10_000_000}, "in SAELens it is a firing density"),
        ({"lr_scheduler_name": "cosineannealing"}, "lr_scheduler_name cannot be changed"),
        ({"sae": {"architecture": "standard", "d_in": 32, "d_sae": 64}}, "valid architectures: "),
        ({"sae": {"architecture": "batchtopk", "d_in": 32, "d_sae": 64, "l1": 1}}, "unknown batchtopk settings \\['l1'\\]"),
        ({"sae": {"architecture": "batchtopk", "d_in": 32, "d_sae": 64, "topk_threshold_lr": 0.1}}, "sae.topk_threshold_lr cannot be changed"),
        ({"logger": {"log_weights_to_wandb": False}}, "logger.log_weights_to_wandb cannot be changed"),
    ],
)  # fmt: skip
def test_saelens_settings_the_runner_cannot_honour_are_refused(tiny_cache, values, message):
    with pytest.raises(ValueError, match=message):
        VisionSAERunnerConfig.from_dict({"cache_path": str(tiny_cache), **values})


def test_wandb_entity_name_id_tags_and_dir(tiny_cache, tmp_path, monkeypatch):
    import wandb

    cfg = VisionSAERunnerConfig.from_dict(
        {
            "cache_path": str(tiny_cache),
            "run_dir": str(tmp_path / "run"),
            "logger": {"wandb_entity": "lab", "run_name": "clip-l22", "wandb_id": "abc123"},
            "wandb_tags": ["vision", "x8"],
        }
    )
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-here"))
    settings = wandb_settings(cfg)
    assert settings == {
        "project": "sae_vlm_plugin",
        "entity": "lab",
        "name": "clip-l22",
        "id": "abc123",
        "tags": ["vision", "x8"],
        "dir": str(tmp_path / "wandb-here"),
        "resume": "allow",
    }
    (tmp_path / "wandb-here").mkdir()
    run = wandb.init(mode="offline", **settings)
    try:
        assert (run.name, run.id, tuple(run.tags)) == ("clip-l22", "abc123", ("vision", "x8"))
        assert run.dir.startswith(str(tmp_path / "wandb-here"))
    finally:
        run.finish()
