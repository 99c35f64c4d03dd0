"""``sae-vlm train`` (one SAE from a preset or a config file) and ``sae-vlm sweep`` (several SAEs
from one pass over the activations), both resumable and data-parallel under torchrun."""

from __future__ import annotations

import argparse
from typing import Any

from sae_vlm_plugin.command_line import add_command, add_image_arguments, print_table


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``key=value`` pairs; values are parsed as YAML scalars/lists (``k=32``, ``lr=1e-4``),
    as a config file's values are (``load_yaml_text``)."""
    from sae_vlm_plugin.pretrained.schema import load_yaml_text

    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        overrides[key.replace("-", "_")] = load_yaml_text(value, f"--set {pair}")
    return overrides


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` pairs (any spelling the config takes; ``logger.NAME`` sets the logger's) plus
    the dedicated flags (``--images``, ``--cache`` ...) that were given, in the config's flat
    form (``config_names``): a flag replaces a ``--set`` of the same setting."""
    from sae_vlm_plugin.training.config_names import merge_settings
    from sae_vlm_plugin.training.runner_config import flat_config

    flags = {
        "images": "dataset_path",
        "cache_path": "cached_activations_path",
        "model": "model_name",
        "device": "device",
        "split": "images_split",
        "image_column": "image_column",
        "label_column": "label_column",
        "run_dir": "checkpoint_path",
    }
    given = {
        field: getattr(args, key)
        for key, field in flags.items()
        if getattr(args, key, None) is not None
    }
    return merge_settings(flat_config(_parse_overrides(args.set or [])), given)


def _cmd_train(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.distributed import DataParallel, process_group_from_environment
    from sae_vlm_plugin.training.job import is_finished
    from sae_vlm_plugin.training.presets import list_presets, preset_config
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

    if args.list_presets:
        print_table(list_presets())
        return 0
    from sae_vlm_plugin.training.config_names import merge_settings
    from sae_vlm_plugin.training.runner_config import flat_config, read_mapping

    overrides = _data_overrides(args)
    if args.config is not None:
        values = flat_config(read_mapping(args.config, "config keys"))
        config = VisionSAERunnerConfig(**merge_settings(values, overrides))
    elif args.preset is not None:
        config = preset_config(args.preset, **overrides)
    else:
        raise ValueError("give --preset NAME or --config FILE (see --list-presets)")
    finished = is_finished(config.checkpoint_path)
    with process_group_from_environment(config.device):  # torchrun: data-parallel
        sae = VisionSAETrainingRunner(config).run()
        is_main = DataParallel.current().is_main
    if is_main:
        print(_trained_line(config.checkpoint_path, config.architecture, sae.cfg.d_sae, finished))
    return 0


def _trained_line(run_dir: str, architecture: str, d_sae: int, finished: bool) -> str:
    """What ``train`` / ``sweep`` print for one SAE: trained now, or found already finished
    (then nothing was trained: a re-run of a finished command is a no-op)."""
    if finished:
        return f"already trained: {run_dir}/final"
    return f"trained {architecture} d_sae={d_sae} -> {run_dir}/final"


def _cmd_sweep(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.distributed import DataParallel, process_group_from_environment
    from sae_vlm_plugin.training.job import is_finished
    from sae_vlm_plugin.training.sweep import VisionSAESweepRunner
    from sae_vlm_plugin.training.sweep_config import sweep_from_file, sweep_from_presets

    overrides = _data_overrides(args)
    overrides.pop("checkpoint_path", None)  # --run-dir: the root each SAE's folder goes under
    if args.config is not None:
        configs = sweep_from_file(args.config, args.run_dir, **overrides)
    elif args.preset:
        configs = sweep_from_presets(args.preset, args.run_dir or "runs/sweep", **overrides)
    else:
        raise ValueError("give --config SWEEP_FILE or --preset PATTERN (repeatable)")
    finished = [is_finished(config.checkpoint_path) for config in configs]
    with process_group_from_environment(configs[0].device):  # torchrun: each SAE data-parallel
        saes = VisionSAESweepRunner(configs).run()
        is_main = DataParallel.current().is_main
    if is_main:
        for config, sae, done in zip(configs, saes, finished, strict=True):
            print(_trained_line(config.checkpoint_path, config.architecture, sae.cfg.d_sae, done))
    return 0


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    add_image_arguments(
        parser, help="train from these images (extracting on the fly); any form extract takes"
    )
    parser.add_argument("--cache", dest="cache_path", help="train from this activation cache")
    parser.add_argument("--model", help="override the preset's model")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config setting, by SAELens' name or the plugin's earlier one; "
        "logger.NAME sets the logger's (repeatable)",
    )


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``train`` and ``sweep`` to the ``sae-vlm`` subcommands."""
    train = add_command(
        commands,
        "train",
        _cmd_train,
        help="train a vision SAE with SAELens (a paper preset or a config file)",
        description="Train a vision SAE through SAELens' SAETrainer. Re-running the same command "
        "resumes from the run directory's latest checkpoint. Under torchrun it trains "
        "data-parallel over the ranks.",
    )
    train.add_argument("--preset", help="a paper preset (see --list-presets)")
    train.add_argument("--config", help="a YAML or JSON VisionSAERunnerConfig")
    train.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    train.add_argument(
        "--run-dir", help="the run's checkpoint_path: checkpoints, log.jsonl and final/ go here"
    )
    _add_data_flags(train)

    sweep = add_command(
        commands,
        "sweep",
        _cmd_sweep,
        help="train several SAEs from one pass over the activations",
        description="Train several SAEs (widths, k, architectures, hooks) on one activation "
        "stream per hook, each exactly as `sae-vlm train` would. SAE i goes to RUN_DIR/<name>. "
        "Re-running resumes; under torchrun every SAE trains data-parallel.",
    )
    sweep.add_argument(
        "--config", help="a sweep file: checkpoint_path, shared settings, saes (name -> settings)"
    )
    sweep.add_argument(
        "--preset",
        action="append",
        metavar="PATTERN",
        help="presets matching this shell pattern, e.g. 'clip-l14-336-l22-*' (repeatable)",
    )
    sweep.add_argument("--run-dir", help="each SAE trains in RUN_DIR/<name>")
    _add_data_flags(sweep)
