"""The runner config's fields and saved configs speak SAELens' names and units; the plugin's
earlier names stay accepted everywhere a user gives settings, converted exactly, and a run
directory saved in the earlier spelling resumes (issue #26, part 2)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.training.config_names import alias_names
from sae_vlm_plugin.training.presets import preset_config
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionLoggingConfig, VisionSAERunnerConfig
from sae_vlm_plugin.training.sweep_config import sweep_from_file

HOOK = "blocks.1.hook_resid_post"


def _earlier(run_dir: Path | str, cache: Path | str) -> dict:
    """What the earlier ``VisionSAERunnerConfig.to_dict()`` wrote into ``config.json`` (every
    field, the plugin's earlier names), for a 20-step run with checkpoints every 10 steps."""
    return {
        "hook_name": HOOK, "tokens": None, "tokens_per_image": 2, "cache_path": str(cache),
        "allow_incomplete_cache": False, "model": None, "images": None, "images_split": None,
        "image_column": None, "label_column": None, "dataset_name": None,
        "extraction_batch_size": 64, "mixing_buffer_batches": 16, "data_order": "buffered",
        "d_in": None, "architecture": "paper_matryoshka_batchtopk", "expansion_factor": 4,
        "d_sae": None, "k": 4, "group_fractions": None, "auxk_alpha": 0.03,
        "dead_after_inputs": 1280, "threshold_start_step": 4, "reference_logging_every": None,
        "batch_size": 64, "training_steps": 20, "lr": None, "warmup_steps": 2,
        "scale_inputs": True, "n_batches_for_scaling": 2, "seed": 0, "device": "cpu",
        "adaptive_threads": False, "run_dir": str(run_dir), "checkpoint_every_steps": 10,
        "log_every_steps": 5, "eval_every_steps": 1000, "eval_images": None,
        "scoring_encoder": "dinov2", "feature_sampling_window": 2000, "log_to_wandb": False,
        "wandb_project": "sae_vlm_plugin", "wandb_entity": None, "wandb_id": None,
        "run_name": None, "wandb_tags": [], "wandb_dir": None, "preset": None,
        "extra_metadata": {},
    }  # fmt: skip


def _canonical(run_dir: Path | str, cache: Path | str) -> dict:
    """The same run in SAELens' names and units (only what differs from the defaults)."""
    return {
        "cached_activations_path": str(cache),
        "hook_name": HOOK,
        "expansion_factor": 4,
        "k": 4,
        "train_batch_size_tokens": 64,
        "training_tokens": 64 * 20,
        "lr_warm_up_steps": 2,
        "threshold_start_step": 4,
        "dead_after_inputs": 1280,
        "n_batches_for_norm_estimate": 2,
        "checkpoint_path": str(run_dir),
        "checkpoint_every_steps": 10,
        "logger": {"wandb_log_frequency": 5, "eval_every_n_wandb_logs": 200},
    }


def test_the_earlier_spelling_gives_the_identical_canonical_config(tmp_path):
    canonical = VisionSAERunnerConfig(**_canonical("run", "cache"))
    earlier = _earlier("run", "cache")
    assert VisionSAERunnerConfig(**earlier) == canonical
    assert VisionSAERunnerConfig.from_dict(earlier) == canonical
    path = tmp_path / "earlier.yaml"
    path.write_text(yaml.safe_dump(earlier))
    assert VisionSAERunnerConfig.from_file(path) == canonical
    saved = canonical.to_dict()
    assert not set(saved) & {*alias_names(), "sae"}
    assert saved["logger"] == dataclasses.asdict(
        VisionLoggingConfig(wandb_log_frequency=5, eval_every_n_wandb_logs=200)
    )
    assert (canonical.total_training_steps, canonical.eval_period) == (20, 1000)
    assert VisionSAERunnerConfig.from_dict(json.loads(json.dumps(saved))) == canonical


@pytest.mark.parametrize(
    ("earlier", "canonical"),
    [
        ({"model": "m", "images": "i"}, {"model_name": "m", "dataset_path": "i"}),
        ({"cache_path": "c2"}, {"cached_activations_path": "c2"}),
        ({"run_dir": "r"}, {"checkpoint_path": "r"}),
        ({"warmup_steps": 7}, {"lr_warm_up_steps": 7}),
        ({"auxk_alpha": 0.1}, {"aux_loss_coefficient": 0.1}),
        ({"n_batches_for_scaling": 5}, {"n_batches_for_norm_estimate": 5}),
        # the run length was 100k steps whatever the batch; training_steps is exact in tokens
        ({"batch_size": 32}, {"train_batch_size_tokens": 32, "training_tokens": 3_200_000}),
        ({"batch_size": 32, "training_steps": 2000}, {"train_batch_size_tokens": 32, "training_tokens": 64_000}),
        # evaluation every 1000 steps unless given, whatever the log period
        ({"log_every_steps": 50}, {"logger": {"wandb_log_frequency": 50, "eval_every_n_wandb_logs": 20}}),
        ({"log_every_steps": 30}, {"logger": {"wandb_log_frequency": 30}, "eval_every_steps": 1000}),
        ({"eval_every_steps": 500}, {"logger": {"eval_every_n_wandb_logs": 5}}),
        ({"log_every_steps": 6, "eval_every_steps": 3}, {"logger": {"wandb_log_frequency": 6}, "eval_every_steps": 3}),
        (
            {"log_to_wandb": True, "wandb_project": "p", "wandb_entity": "e", "wandb_id": "i",
             "run_name": "n", "wandb_tags": ["t"], "wandb_dir": "d"},
            {"logger": {"log_to_wandb": True, "wandb_project": "p", "wandb_entity": "e",
                        "wandb_id": "i", "run_name": "n", "wandb_tags": ["t"], "wandb_dir": "d"}},
        ),
    ],
)  # fmt: skip
def test_each_earlier_name_is_converted_exactly(earlier, canonical):
    source = {} if {"model", "cache_path"} & set(earlier) else {"cached_activations_path": "c"}
    old = VisionSAERunnerConfig(**source, **earlier)
    new = VisionSAERunnerConfig(**source, **canonical)
    assert old == new
    assert old.to_dict() == new.to_dict()


def test_the_units_behind_the_converted_names():
    cfg = VisionSAERunnerConfig(
        cache_path="c", batch_size=32, training_steps=9, warmup_steps=2, log_every_steps=30
    )
    assert (cfg.total_training_steps, cfg.training_tokens) == (9, 9 * 32)
    assert (cfg.eval_period, cfg.logger.wandb_log_frequency) == (1000, 30)
    window = VisionSAERunnerConfig(cached_activations_path="c", dead_feature_window=9)
    assert (window.dead_after_inputs, window.dead_feature_inputs) == (None, 10 * 4096)
    inputs = VisionSAERunnerConfig(cached_activations_path="c")  # the paper's 10M inputs
    assert inputs.dead_feature_steps == math.ceil(10_000_000 / 4096) - 1
    assert inputs.use_cached_activations
    replaced = dataclasses.replace(inputs, train_batch_size_tokens=2048)
    assert replaced.total_training_steps == 200_000  # SAELens' unit: the tokens stay


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cache_path": "c"}, "cache_path and cached_activations_path name the same setting"),
        ({"training_steps": 5, "training_tokens": 5}, "training_tokens and training_steps name the same setting"),
        ({"run_dir": "a", "checkpoint_path": "a"}, "checkpoint_path and run_dir name the same setting"),
        ({"dead_after_inputs": 5, "dead_feature_window": 3}, "dead_feature_window and dead_after_inputs name the same setting"),
        ({"log_every_steps": 5, "logger": {"wandb_log_frequency": 6}}, "log_every_steps=5 disagrees with the nested SAELens config's 6"),
        ({"wandb_project": "a", "logger": {"wandb_project": "b"}}, "logger.wandb_project='a' disagrees"),
        ({"logger": {"wandb_frequency": 6}}, r"unknown logger settings \['wandb_frequency'\]"),
    ],
)  # fmt: skip
def test_one_setting_in_two_spellings_is_refused(values, message):
    with pytest.raises(ValueError, match=message):
        VisionSAERunnerConfig(**{"cached_activations_path": "c", **values})


def test_earlier_names_through_presets_sweeps_and_set(tmp_path, tiny_cache):
    old = preset_config(
        "steering", cache_path="c", batch_size=64, training_steps=9, warmup_steps=0, run_dir="r"
    )
    new = preset_config(
        "steering",
        cached_activations_path="c",
        train_batch_size_tokens=64,
        training_tokens=576,
        lr_warm_up_steps=0,
        checkpoint_path="r",
    )
    assert old == new
    paths = {}
    for spelling, root in ((_earlier, "run_dir"), (_canonical, "checkpoint_path")):
        paths[spelling] = tmp_path / f"{spelling.__name__}.yaml"
        shared = {k: v for k, v in spelling("x", "c").items() if k not in ("run_dir", root)}
        spec = {root: "root", "shared": shared, "saes": {"a": {"k": 8}, "b": {}}}
        paths[spelling].write_text(yaml.safe_dump(spec))
    assert sweep_from_file(paths[_earlier]) == sweep_from_file(paths[_canonical])
    # a later layer replaces an earlier one's setting whatever its spelling, in the unit it
    # was given in: the earlier 20 steps stay 20 steps at another batch, 1280 tokens 40 steps
    assert sweep_from_file(paths[_earlier], batch_size=32)[0].total_training_steps == 20
    assert sweep_from_file(paths[_canonical], batch_size=32)[0].total_training_steps == 40
    steps = sweep_from_file(paths[_canonical], training_steps=3)[0].total_training_steps
    assert steps == 3

    config = tmp_path / "run.yaml"  # a config in SAELens' names, --set in the earlier ones
    config.write_text(yaml.safe_dump(_canonical(tmp_path / "unused", tiny_cache)))
    argv = ["train", "--config", str(config), "--run-dir", str(tmp_path / "cli")]
    argv += ["--set", "batch_size=32", "--set", "training_steps=3", "--set", "log_every_steps=1"]
    assert cli_main(argv) == 0
    recorded = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (recorded["train_batch_size_tokens"], recorded["training_tokens"]) == (32, 96)
    assert recorded["logger"]["wandb_log_frequency"] == 1
    assert recorded["checkpoint_path"] == str(tmp_path / "cli")
    assert not set(recorded) & set(alias_names())


def test_a_run_dir_saved_in_the_earlier_spelling_resumes(tmp_path, tiny_cache):
    from sae_lens import SAE
    from sae_lens.training.sae_trainer import SAETrainer

    straight = VisionSAERunnerConfig(**_canonical(tmp_path / "straight", tiny_cache))
    expected = VisionSAETrainingRunner(straight, progress=False).run()
    run = tmp_path / "old-run"
    VisionSAETrainingRunner(
        VisionSAERunnerConfig(**_canonical(run, tiny_cache)), progress=False
    ).run()
    shutil.rmtree(run / "final")  # interrupted after its step-10 checkpoint ...
    (run / "config.json").write_text(json.dumps(_earlier(run, tiny_cache), indent=1))
    # ... by the earlier version, which wrote its config in its own names

    plain, steps = SAETrainer.step, []

    def counted(self, batch):
        steps.append(self.n_training_steps)
        return plain(self, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SAETrainer, "step", counted)
        argv = ["train", "--config", str(tmp_path / "earlier.json")]
        (tmp_path / "earlier.json").write_text(json.dumps(_earlier(run, tiny_cache)))
        assert cli_main(argv) == 0
    assert steps == list(range(10, 20))  # resumed from the step-10 checkpoint
    resumed = SAE.load_from_disk(run / "final")
    for key, value in expected.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert (
        json.loads((run / "config.json").read_text())
        == dataclasses.replace(straight, checkpoint_path=str(run)).to_dict()
    )  # rewritten in SAELens' names

    shutil.rmtree(run / "final")
    (run / "config.json").write_text(json.dumps({**_earlier(run, tiny_cache), "k": 8}))
    with pytest.raises(ValueError, match=r"holds a run with different settings \(k\)"):
        VisionSAETrainingRunner(VisionSAERunnerConfig(**_earlier(run, tiny_cache))).run()


@pytest.mark.parametrize(
    ("tokens", "batch", "n"), [(1000, 64, 3), (64 * 20, 64, 2), (4096 * 7 + 5, 4096, 10)]
)
def test_n_checkpoints_checkpoints_where_saelens_trainer_does(tokens, batch, n):
    """SAELens' own trainer, asked after each step whether a checkpoint is due."""
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = VisionSAERunnerConfig(
        cached_activations_path="c",
        training_tokens=tokens,
        train_batch_size_tokens=batch,
        n_checkpoints=n,
        checkpoint_every_steps=0,
        lr_warm_up_steps=0,
    )
    trainer_cfg = SAETrainerConfig(
        total_training_samples=tokens, train_batch_size_samples=batch, n_checkpoints=n, lr_end=3e-4
    )
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=4, d_sae=8, k=2))
    trainer = SAETrainer(trainer_cfg, sae, iter(()))
    saved: list[int] = []
    trainer.save_checkpoint = lambda *args, **kwargs: saved.append(trainer.n_training_steps + 1)
    for step in range(cfg.total_training_steps):  # SAELens' loop: samples, check, then steps
        trainer.n_training_samples = (step + 1) * batch
        trainer._checkpoint_if_needed()
        trainer.n_training_steps += 1
    assert saved
    assert cfg.checkpoint_steps() == {s for s in saved if s < cfg.total_training_steps}
    both = dataclasses.replace(cfg, checkpoint_every_steps=2)
    every_2 = set(range(2, cfg.total_training_steps, 2))
    assert both.checkpoint_steps() == cfg.checkpoint_steps() | every_2
