"""Sweeps: SAEs trained together from one pass over the activations equal the same SAEs
trained one at a time; sweep files, preset patterns and their errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from sae_vlm_plugin import VisionModel, extract_to_cache
from sae_vlm_plugin.cache import ActivationCache
from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.training.data_parallel import wrap_for_ddp
from sae_vlm_plugin.training.job import JsonlLog
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sweep import VisionSAESweepRunner
from sae_vlm_plugin.training.sweep_config import sweep_from_file, sweep_from_presets

HOOKS = ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")


@pytest.fixture(scope="module")
def two_hook_cache(tmp_path_factory) -> Path:
    """All 17 tokens of 96 synthetic images at two blocks of the tiny CLIP."""
    images, _ = tm.synthetic_images(96)
    out = tmp_path_factory.mktemp("cache") / "cache"
    extract_to_cache(
        VisionModel(tm.clip_vision_model()), images, list(HOOKS), out, tokens="all", progress=False
    )
    return out


def _shared(cache: Path) -> dict:
    return {
        "cached_activations_path": str(cache),
        "train_batch_size_tokens": 64,
        "training_tokens": 64 * 24,
        "lr_warm_up_steps": 4,
        "threshold_start_step": 6,
        "dead_after_inputs": 192,
        "n_batches_for_norm_estimate": 3,
        "logger": {"wandb_log_frequency": 6},
        "checkpoint_every_steps": 12,
    }


SAES = {
    "batchtopk-x4": {"hook_name": HOOKS[0], "architecture": "paper_batchtopk", "k": 4},
    "matryoshka-x8": {
        "hook_name": HOOKS[0],
        "architecture": "paper_matryoshka_batchtopk",
        "expansion_factor": 8,
        "k": 6,
    },
    "batchtopk-x2-lr": {
        "hook_name": HOOKS[1],
        "architecture": "paper_batchtopk",
        "expansion_factor": 2,
        "k": 8,
        "lr": 1e-3,
    },
    "saelens-matryoshka": {
        "hook_name": HOOKS[1],
        "architecture": "matryoshka_batchtopk",
        "expansion_factor": 4,
        "k": 4,
    },
}


def _configs(root: Path, cache: Path) -> list[VisionSAERunnerConfig]:
    return [
        VisionSAERunnerConfig(
            **{"expansion_factor": 4, **_shared(cache), **own, "checkpoint_path": str(root / name)}
        )
        for name, own in SAES.items()
    ]


def test_a_sweep_of_four_equals_the_four_trained_alone(tmp_path, two_hook_cache, monkeypatch):
    reads: list[str | None] = []
    plain = ActivationCache.batches

    def counted(self, hook=None, *args, **kwargs):
        reads.append(hook)
        return plain(self, hook, *args, **kwargs)

    monkeypatch.setattr(ActivationCache, "batches", counted)
    swept = VisionSAESweepRunner(_configs(tmp_path / "sweep", two_hook_cache), progress=False).run()
    assert sorted(reads) == sorted(HOOKS * 2)  # per hook: the scaling estimate and one pass
    reads.clear()
    alone = [
        VisionSAETrainingRunner(cfg, progress=False).run()
        for cfg in _configs(tmp_path / "alone", two_hook_cache)
    ]
    assert len(reads) == 2 * len(SAES)
    for name, a, b in zip(SAES, swept, alone, strict=True):
        assert a.cfg.d_sae == b.cfg.d_sae, name
        for key, value in b.state_dict().items():
            torch.testing.assert_close(a.state_dict()[key], value, atol=0, rtol=0, msg=name)
        assert a.cfg.metadata.hook_name == SAES[name]["hook_name"]
        log = (tmp_path / "sweep" / name / "log.jsonl").read_text()
        assert log == (tmp_path / "alone" / name / "log.jsonl").read_text()


def test_a_killed_sweep_resumes_from_the_checkpoint_all_saes_share(tmp_path, two_hook_cache):
    configs = _configs(tmp_path / "sweep", two_hook_cache)[:2]
    reference = [s.state_dict() for s in VisionSAESweepRunner(configs, progress=False).run()]
    _unfinish(configs)  # as if killed after the step-12 checkpoints
    resumed = VisionSAESweepRunner(configs, progress=False).run()
    for a, b in zip(resumed, reference, strict=True):
        for key, value in b.items():
            torch.testing.assert_close(a.state_dict()[key], value, atol=0, rtol=0)

    # A new SAE without the others' checkpoints cannot join the sweep's stream mid-way.
    _unfinish(configs)
    newcomer = VisionSAERunnerConfig(
        **{**configs[0].to_dict(), "k": 2, "checkpoint_path": str(tmp_path / "new")}
    )
    with pytest.raises(ValueError, match="no checkpoint step in common"):
        VisionSAESweepRunner([*configs, newcomer], progress=False).run()


def _unfinish(configs: list[VisionSAERunnerConfig]) -> None:
    """Remove the runs' exports, leaving their checkpoints."""
    for cfg in configs:
        shutil.rmtree(Path(cfg.checkpoint_path) / "final")


def test_sweep_settings_that_must_agree_are_checked(tmp_path, two_hook_cache):
    first, second = _configs(tmp_path, two_hook_cache)[:2]
    second.train_batch_size_tokens = 128
    with pytest.raises(ValueError, match=r"differs from .* in train_batch_size_tokens"):
        VisionSAESweepRunner([first, second])
    second.train_batch_size_tokens = first.train_batch_size_tokens
    second.logger.wandb_project = "another"
    with pytest.raises(ValueError, match=r"differs from .* in logger\.wandb_project"):
        VisionSAESweepRunner([first, second])
    second.logger.wandb_project = first.logger.wandb_project
    second.checkpoint_path = first.checkpoint_path
    with pytest.raises(ValueError, match="needs its own checkpoint_path"):
        VisionSAESweepRunner([first, second])
    with pytest.raises(ValueError, match="at least one"):
        VisionSAESweepRunner([])


def test_sweep_file_and_cli(tmp_path, two_hook_cache, capsys):
    spec = {
        "checkpoint_path": str(tmp_path / "from-file"),
        "shared": {
            **_shared(two_hook_cache),
            "training_tokens": 64 * 6,
            "checkpoint_every_steps": 0,
        },
        "saes": {name: SAES[name] for name in ("batchtopk-x4", "batchtopk-x2-lr")},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    configs = sweep_from_file(path, k=2)
    assert [Path(c.checkpoint_path).name for c in configs] == ["batchtopk-x4", "batchtopk-x2-lr"]
    assert {c.k for c in configs} == {2}

    assert cli_main(["sweep", "--config", str(path), "--set", "k=3"]) == 0
    out = capsys.readouterr().out
    assert out.count("trained paper_batchtopk") == 2
    assert (tmp_path / "from-file" / "batchtopk-x2-lr" / "final" / "cfg.json").exists()

    path.write_text(yaml.safe_dump({**spec, "sae": {}}))
    with pytest.raises(
        ValueError,
        match="unknown sweep keys \\['sae'\\]; valid: checkpoint_path, run_dir, shared, saes",
    ):
        sweep_from_file(path)


def test_preset_patterns_pick_the_table_1_saes_of_a_layer(tmp_path):
    configs = sweep_from_presets(["clip-l14-336-l22-cls-*"], str(tmp_path), images="imagenet/train")
    assert len(configs) == 12  # 2 architectures x 6 widths
    assert {c.hook_name for c in configs} == {"blocks.22.hook_resid_post"}
    assert {(c.architecture, c.expansion_factor) for c in configs} == {
        (a, x)
        for a in ("paper_batchtopk", "paper_matryoshka_batchtopk")
        for x in (1, 2, 4, 8, 16, 64)
    }
    assert configs[0].checkpoint_path == str(tmp_path / configs[0].preset)
    with pytest.raises(ValueError, match="no preset matches 'clip-l99-\\*'"):
        sweep_from_presets(["clip-l99-*"], str(tmp_path), images="x")


def test_data_parallel_refusals():
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        DataParallel(rank=0, world_size=3).check_batch_size(64)

    class BuiltinTrainer:
        sae = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="Valid architectures under torchrun: paper_batchtopk"):
        wrap_for_ddp(BuiltinTrainer())


def test_saes_of_one_hook_share_one_ms_evaluator(tmp_path, two_hook_cache, monkeypatch):
    from sae_vlm_plugin.metrics.evaluation import MonosemanticityEvaluator

    built: list[tuple] = []

    def from_images(model, images, hook, tokens, *, scoring_encoder):
        built.append((hook, images, scoring_encoder))
        return lambda sae, step, scaler: {"ms_mean": float(sae.cfg.d_sae)}

    monkeypatch.setattr(MonosemanticityEvaluator, "from_images", from_images)
    monkeypatch.setattr("sae_vlm_plugin.model.VisionModel", lambda *args, **kwargs: "model")
    configs = _configs(tmp_path, two_hook_cache)
    for cfg in configs:
        cfg.training_tokens, cfg.eval_every_steps, cfg.eval_images = 6 * 64, 3, "held-out"
    VisionSAESweepRunner(configs, progress=False).run()
    assert sorted(built) == [(hook, "held-out", "dinov2") for hook in HOOKS]
    for cfg in configs:
        log = JsonlLog(Path(cfg.checkpoint_path) / "log.jsonl")
        evals = [e for e in log.read() if e["kind"] == "eval"]
        assert [(e["step"], e["ms_mean"]) for e in evals] == [
            (3, 32 * cfg.expansion_factor),
            (6, 32 * cfg.expansion_factor),
        ]
