"""Hardening of training configs and the run lifecycle (issue #18): typed config fields,
non-finite losses, run directories, token selections, sweep names, duplicate keys and safe
trainer-state loads."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.training.job import TrainingDivergedError
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sweep import VisionSAESweepRunner
from sae_vlm_plugin.training.sweep_config import sweep_from_file

HOOK = "blocks.1.hook_resid_post"


def _values(run_dir: Path, cache: Path, steps: int = 20, **overrides) -> dict:
    batch = overrides.get("train_batch_size_tokens", 64)
    return {
        "cached_activations_path": str(cache),
        "hook_name": HOOK,
        "expansion_factor": 4,
        "k": 4,
        "train_batch_size_tokens": batch,
        "training_tokens": batch * steps,
        "lr_warm_up_steps": 2,
        "threshold_start_step": 4,
        "dead_after_inputs": 64 * 20,
        "n_batches_for_norm_estimate": 2,
        "logger": {"wandb_log_frequency": 5},
        "checkpoint_every_steps": 10,
        "checkpoint_path": str(run_dir),
        **overrides,
    }


# -- item 3: every field is coerced to and checked against its annotation ---------------------


def test_yaml_strings_that_are_numbers_become_numbers(tmp_path):
    path = tmp_path / "run.yaml"  # in the plugin's earlier names, converted
    path.write_text("cache_path: c\nlr: 3e-4\nauxk_alpha: 1\ntraining_steps: 2e4\nk: '32'\n")
    cfg = VisionSAERunnerConfig.from_file(path)
    assert (cfg.lr, cfg.aux_loss_coefficient, cfg.total_training_steps, cfg.k) == (
        3e-4,
        1.0,
        20000,
        32,
    )
    assert [type(cfg.lr), type(cfg.aux_loss_coefficient)] == [float, float]
    assert [type(cfg.training_tokens), type(cfg.k)] == [int, int]
    path.write_text("cached_activations_path: c\ntraining_tokens: 4096e4\n")
    assert VisionSAERunnerConfig.from_file(path).total_training_steps == 10000
    cfg = VisionSAERunnerConfig.from_dict({"cache_path": "c", "group_fractions": ["0.5", 0.5]})
    assert cfg.group_fractions == [0.5, 0.5]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("k", "abc", "k: expected int, got 'abc'"),
        ("k", 2.5, "k: expected int, got 2.5"),
        ("k", True, "k: expected int, got True"),
        ("lr", "fast", "lr: expected float or None, got 'fast'"),
        ("lr", float("nan"), "lr: expected float or None, got nan"),
        ("scale_inputs", "yes please", "scale_inputs: expected bool, got 'yes please'"),
        ("scale_inputs", 1, "scale_inputs: expected bool, got 1"),
        ("hook_name", 22, "hook_name: expected str, got 22"),
        ("group_fractions", [0.5, "x"], "group_fractions: expected list[float] or None"),
        ("extra_metadata", [1], "extra_metadata: expected dict[str, Any], got [1]"),
        (
            "architecture",
            "topk",
            "architecture: expected one of 'paper_matryoshka_batchtopk', 'paper_batchtopk', "
            "'matryoshka_batchtopk', 'batchtopk', got 'topk'",
        ),
    ],
)
def test_a_value_of_the_wrong_type_names_field_value_and_type(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VisionSAERunnerConfig.from_dict({"cache_path": "c", key: value})


def test_cli_set_values_are_coerced_or_refused_in_one_line(tmp_path, tiny_cache, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_values(tmp_path / "run", tiny_cache)))
    argv = ["train", "--config", str(config), "--set", "k=abc"]
    assert cli_main(argv) == 2
    assert capsys.readouterr().err.strip() == "sae-vlm train: error: k: expected int, got 'abc'"
    argv = ["train", "--config", str(config), "--set", "lr=3e-4", "--set", "training_steps=5"]
    assert cli_main(argv) == 0
    recorded = yaml.safe_load((tmp_path / "run" / "config.json").read_text())
    assert (recorded["lr"], recorded["training_tokens"]) == (3e-4, 5 * 64)


def test_unknown_keys_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown config keys \['lr_rate'\]; valid keys: .*lr,"):
        VisionSAERunnerConfig.from_dict({"cache_path": "c", "lr_rate": 1})


# -- item 16b: sweep names stay inside the run directory; repeated keys are refused ----------


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "a/b", "..", ".", ""])
def test_sweep_names_that_leave_the_run_directory_are_refused(tmp_path, name):
    path = tmp_path / "sweep.yaml"
    spec = {"checkpoint_path": str(tmp_path / "runs"), "shared": {"cache_path": "c"}}
    spec["saes"] = {name: {}}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=re.escape(f"SAE name {name!r}")):
        sweep_from_file(path)


def test_repeated_keys_in_sweep_and_run_files_are_refused(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("run_dir: r\nsaes:\n  a: {k: 4}\n  b: {k: 8, k: 16}\n")
    with pytest.raises(ValueError, match=r"sweep\.yaml: line 4: duplicate key 'k'"):
        sweep_from_file(sweep)
    run = tmp_path / "run.yaml"
    run.write_text("cache_path: c\nlr: 1e-3\nk: 4\nlr: 1e-4\n")
    with pytest.raises(ValueError, match=r"run\.yaml: line 4: duplicate key 'lr'"):
        VisionSAERunnerConfig.from_file(run)
    as_json = tmp_path / "run.json"
    as_json.write_text('{"cache_path": "c", "k": 4, "k": 8}')
    with pytest.raises(ValueError, match=r"run\.json: duplicate key 'k'"):
        VisionSAERunnerConfig.from_file(as_json)


# -- issue 27 items 3 and 12: YAML alias bombs and malformed --set values ---------------------


def _alias_bomb(depth: int) -> str:
    """A YAML document of a few hundred bytes whose aliases expand to ``9**depth`` strings."""
    lines = ["cache_path: c", "extra_metadata:", '  l0: &l0 ["lol","lol","lol","lol","lol"]']
    for level in range(1, depth + 1):
        refs = ",".join([f"*l{level - 1}"] * 9)
        lines.append(f"  l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, tiny_cache, capsys):
    run = tmp_path / "run.yaml"
    run.write_text(_alias_bomb(6))
    with pytest.raises(ValueError, match=r"run\.yaml: .*expands to more than"):
        VisionSAERunnerConfig.from_file(run)
    small = tmp_path / "small.yaml"
    small.write_text(_alias_bomb(2))  # aliases that expand to little are plain YAML
    assert len(VisionSAERunnerConfig.from_file(small).extra_metadata["l2"]) == 9
    config = tmp_path / "ok.yaml"
    config.write_text(yaml.safe_dump(_values(tmp_path / "run", tiny_cache)))
    levels = ["l0: &l0 [x,x,x,x,x,x,x,x,x]"]
    levels += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 7)]
    argv = ["train", "--config", str(config), "--set", "extra_metadata={" + ", ".join(levels) + "}"]
    assert cli_main(argv) == 2
    assert "expands to more than" in capsys.readouterr().err


def test_a_malformed_set_value_is_a_one_line_error(tmp_path, tiny_cache, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_values(tmp_path / "run", tiny_cache)))
    argv = ["train", "--config", str(config), "--set", "group_fractions=[0.5,0.5"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("sae-vlm train: error: --set group_fractions=[0.5,0.5: not valid YAML")


# -- item 17: the trainer state is loaded with weights_only=True ------------------------------


class _Payload:
    """A pickle that writes a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_pickle_in_the_trainer_state_is_refused_on_resume(tmp_path, tiny_cache, monkeypatch):
    cfg = VisionSAERunnerConfig(**_values(tmp_path / "run", tiny_cache))
    VisionSAETrainingRunner(cfg, progress=False).run()
    shutil.rmtree(tmp_path / "run" / "final")
    state = tmp_path / "run" / "checkpoints" / "step_10" / "trainer_state.pt"
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(marker)}, state)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(
        ValueError, match=re.escape(f"{state}: refused by torch.load(weights_only=True)")
    ):
        VisionSAETrainingRunner(cfg, progress=False).run()
    assert not marker.exists()


# -- item 4: a non-finite loss stops training, naming the step, and saves nothing from it -----


def test_a_nan_loss_stops_training_at_its_step_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_cache, capsys
):
    values = _values(
        tmp_path / "run",
        tiny_cache,
        lr=1e30,
        checkpoint_every_steps=1,
        logger={"wandb_log_frequency": 1},
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    assert cli_main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert error.startswith("sae-vlm train: error: ")
    found = re.search(r"training diverged: the training loss is nan at step (\d+);", error)
    assert found, error
    step = int(found.group(1))
    assert f"the last good checkpoint, step {step - 1}, is kept" in error
    run = tmp_path / "run"
    assert not (run / "final").exists()
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == [f"step_{i}" for i in range(1, step)]
    for checkpoint in checkpoints:
        state = load_file(str(checkpoint / "training_sae.safetensors"))
        assert all(torch.isfinite(tensor).all() for tensor in state.values())
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e["kind"] == "train"] == list(range(1, step))


def test_a_nan_loss_between_log_steps_is_reported_at_its_own_step(tmp_path, tiny_cache):
    from sae_lens.training.sae_trainer import SAETrainer

    plain = SAETrainer._train_step

    def nan_at_step_7(self, *args, **kwargs):
        output = plain(self, *args, **kwargs)
        if self.n_training_steps == 6:  # counted after the step
            output.loss = output.loss * float("nan")
        return output

    values = _values(tmp_path / "run", tiny_cache, logger={"wandb_log_frequency": 10})
    cfg = VisionSAERunnerConfig(**values)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SAETrainer, "_train_step", nan_at_step_7)
        with pytest.raises(TrainingDivergedError, match="loss is nan at step 7;"):
            VisionSAETrainingRunner(cfg, progress=False).run()
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- items 9 and 28b: the run directory --------------------------------------------------------


def _write_config(tmp_path: Path, cache: Path, **overrides) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_values(tmp_path / "run", cache, **overrides)))
    return config


def test_a_train_that_fails_before_it_starts_leaves_no_config(tmp_path, tiny_cache, capsys):
    config = _write_config(tmp_path, tiny_cache, steps=5)
    assert cli_main(["train", "--config", str(config), "--set", "k=200"]) == 2
    assert "k=200 is larger than d_sae=128" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()
    assert cli_main(["train", "--config", str(config), "--set", "k=8"]) == 0
    assert (tmp_path / "run" / "final" / "cfg.json").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["k"] == 8


def test_train_into_a_folder_of_other_files_is_refused(tmp_path, tiny_cache, capsys):
    config = _write_config(tmp_path, tiny_cache, steps=5)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert cli_main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'run'} is not empty (notes.txt) and holds no training run" in error
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_rerunning_a_finished_train_says_so_and_trains_nothing(tmp_path, tiny_cache, capsys):
    from sae_lens import SAE
    from sae_lens.training.sae_trainer import SAETrainer

    config = _write_config(tmp_path, tiny_cache, steps=10)
    assert cli_main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    log = (tmp_path / "run" / "log.jsonl").read_text()
    trained = SAE.load_from_disk(tmp_path / "run" / "final").state_dict()

    def no_training(self, batch):
        raise AssertionError("a finished run trained again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SAETrainer, "step", no_training)
        assert cli_main(["train", "--config", str(config)]) == 0
        assert capsys.readouterr().out.strip() == f"already trained: {tmp_path / 'run'}/final"
        cfg = VisionSAERunnerConfig.from_file(config)
        again = VisionSAETrainingRunner(cfg, progress=False).run()
    for key, value in trained.items():
        assert torch.equal(again.state_dict()[key], value), key
    assert (tmp_path / "run" / "log.jsonl").read_text() == log
    assert cli_main(["train", "--config", str(config), "--set", "k=8"]) == 2
    assert "holds a run with different settings (k)" in capsys.readouterr().err


def test_a_sweep_trains_only_its_unfinished_saes(tmp_path, tiny_cache):
    def config(name: str, root: str = "sweep", **own) -> VisionSAERunnerConfig:
        return VisionSAERunnerConfig(**_values(tmp_path / root / name, tiny_cache, **own))

    done = [config("a"), config("b", k=8)]
    VisionSAESweepRunner(done, progress=False).run()
    logs = [(Path(c.checkpoint_path) / "log.jsonl").read_text() for c in done]
    newcomer = config("c", expansion_factor=2)
    saes = VisionSAESweepRunner([*done, newcomer], progress=False).run()
    assert [(Path(c.checkpoint_path) / "log.jsonl").read_text() for c in done] == logs
    alone = VisionSAETrainingRunner(config("c", "alone", expansion_factor=2), progress=False).run()
    for key, value in alone.state_dict().items():
        assert torch.equal(saes[2].state_dict()[key], value), key


# -- item 14b: a token selection that contradicts the cache's is refused -----------------------


@pytest.fixture(scope="module")
def random_2_cache(tmp_path_factory) -> Path:
    """Two random tokens of each of 64 synthetic images (``random_2@seed0``)."""
    from sae_vlm_plugin import VisionModel, extract_to_cache
    from sae_vlm_plugin.tiny import models as tm

    images, _ = tm.synthetic_images(64)
    out = tmp_path_factory.mktemp("cache") / "random"
    model = VisionModel(tm.clip_vision_model())
    extract_to_cache(model, images, HOOK, out, tokens="random_k", k=2, progress=False)
    return out


def test_tokens_that_contradict_the_cache_are_refused(tmp_path, tiny_cache, capsys):
    config = _write_config(tmp_path, tiny_cache, steps=5)
    assert cli_main(["train", "--config", str(config), "--set", "tokens=patches"]) == 2
    error = capsys.readouterr().err
    assert f"tokens='patches' asks for patches, but the cache at {tiny_cache} holds all" in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("tokens", "per_image", "refused"),
    [
        ("cls", 2, "cls"),
        ("random_k", 3, "random_3"),
        ("random_4", 2, "random_4"),
        ("random_k+replacement", 2, r"random_2\+replacement"),
    ],
)
def test_a_random_k_cache_refuses_another_selection(
    tmp_path, random_2_cache, tokens, per_image, refused
):
    values = _values(tmp_path / "run", random_2_cache, tokens=tokens, tokens_per_image=per_image)
    with pytest.raises(ValueError, match=f"asks for {refused}, but .* holds random_2@seed0"):
        VisionSAETrainingRunner(VisionSAERunnerConfig(**values), progress=False)


@pytest.mark.parametrize("tokens", [None, "random_k", "random_2"])
def test_the_cache_selection_or_the_same_one_trains(tmp_path, random_2_cache, tokens):
    values = _values(tmp_path / "run", random_2_cache, tokens=tokens, steps=5)
    sae = VisionSAETrainingRunner(VisionSAERunnerConfig(**values), progress=False).run()
    assert sae.cfg.metadata.tokens == "random_2@seed0"


def test_a_preset_with_a_cache_takes_the_cache_selection(random_2_cache):
    from sae_vlm_plugin.training.presets import preset_config

    cfg = preset_config("clip-l14-336-l22-cls-batchtopk-x8", cache_path=str(random_2_cache))
    assert (cfg.model_name, cfg.tokens) == (None, None)
    explicit = preset_config("steering", cache_path="c", tokens="patches")
    assert explicit.tokens == "patches"
    assert preset_config("steering", images="i").tokens.startswith("random_k")


def test_sweep_settings_are_checked_per_sae_and_name_it(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("run_dir: r\nshared: {cache_path: c}\nsaes:\n  wide: {k: abc}\n")
    with pytest.raises(ValueError, match=r"sweep\.yaml: SAE 'wide': k: expected int, got 'abc'"):
        sweep_from_file(path)
    path.write_text("run_dir: r\nshared: {cache_path: c}\nsaes:\n  wide: 5\n")
    with pytest.raises(ValueError, match=r"SAE 'wide' must map config keys to values, got int 5"):
        sweep_from_file(path)
    path.write_text("run_dir: r\nshared: [1]\nsaes:\n  wide: {}\n")
    with pytest.raises(ValueError, match=r"shared must map config keys to values, got list"):
        sweep_from_file(path)
    path.write_text("run_dir: r\nshared: {cache_path: c, lr: 3e-4}\nsaes:\n  wide:\n")
    assert [c.lr for c in sweep_from_file(path)] == [3e-4]


def test_a_train_into_a_run_dir_another_run_holds_is_refused(
    tmp_path, tiny_cache, capsys, hold_directory
):
    """Issue 27 item 5: the same training twice into one run dir: the second is refused at
    once (no doubled log, no '.final.tmp' left behind)."""
    config = _write_config(tmp_path, tiny_cache, steps=5)
    hold_directory(tmp_path / "run")
    assert cli_main(["train", "--config", str(config)]) == 2
    assert "is in use by another training run" in capsys.readouterr().err
    assert list((tmp_path / "run").iterdir()) == []


def test_a_batch_larger_than_the_whole_cache_is_refused(tmp_path, tiny_cache, capsys):
    """#27 item 23: every batch would hold the same rows several times over."""
    config = _write_config(
        tmp_path, tiny_cache, train_batch_size_tokens=8192, dead_after_inputs=8192
    )
    assert cli_main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "train_batch_size_tokens=8192 is larger than the 4080 rows of the cache" in error
    assert not (tmp_path / "run").exists()
