"""The ``sae-vlm`` command. Each subcommand parses its arguments here and calls the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sae_vlm_plugin import __version__
from sae_vlm_plugin.arguments import check_arguments, non_negative_int, positive_int
from sae_vlm_plugin.cache_commands import add_cache_commands
from sae_vlm_plugin.dashboard.cli import add_dashboard_command
from sae_vlm_plugin.demo.commands import add_demo_command
from sae_vlm_plugin.metrics.commands import add_metric_commands
from sae_vlm_plugin.naming.commands import add_naming_commands
from sae_vlm_plugin.pretrained.commands import add_pretrained_commands
from sae_vlm_plugin.steering.commands import add_steer_commands


def _print_table(rows: dict[str, str]) -> None:
    """Two aligned columns: key, value."""
    width = max(map(len, rows), default=0)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def _cmd_env(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.environment import environment_report

    _print_table(environment_report())
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.cache import extract_to_cache
    from sae_vlm_plugin.distributed import DataParallel, process_group_from_environment
    from sae_vlm_plugin.model import VisionModel

    with process_group_from_environment(args.device) as device:  # torchrun: one rank per device
        model = VisionModel(args.model, family=args.family, device=device)
        cache = extract_to_cache(
            model,
            args.images,
            args.hook,
            args.out,
            tokens=args.tokens,
            batch_size=args.batch_size,
            k=args.k,
            seed=args.seed,
            dtype=args.dtype,
            images_per_shard=args.images_per_shard,
            skip_unreadable=args.skip_unreadable,
            num_workers=args.workers,
        )
        is_main = DataParallel.current().is_main
    if is_main:
        for hook in cache.hooks:
            print(f"{hook}: {cache.n_rows(hook)} rows x {cache.d_in(hook)} -> {cache.path / hook}")
    return 0


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


def _data_overrides(args: argparse.Namespace) -> dict[str, object]:
    """``--set`` pairs plus the dedicated flags (``--images``, ``--cache`` ...) that were given."""
    overrides = _parse_overrides(args.set or [])
    for key in ("images", "cache_path", "model", "device"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    return overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.distributed import DataParallel, process_group_from_environment
    from sae_vlm_plugin.training.job import is_finished
    from sae_vlm_plugin.training.presets import list_presets, preset_config
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

    if args.list_presets:
        _print_table(list_presets())
        return 0
    overrides = _data_overrides(args)
    if args.run_dir is not None:
        overrides["run_dir"] = args.run_dir
    if args.config is not None:
        values = VisionSAERunnerConfig.from_file(args.config).to_dict()
        config = VisionSAERunnerConfig.from_dict({**values, **overrides})
    elif args.preset is not None:
        config = preset_config(args.preset, **overrides)
    else:
        raise ValueError("give --preset NAME or --config FILE (see --list-presets)")
    finished = is_finished(config.run_dir)
    with process_group_from_environment(config.device):  # torchrun: data-parallel
        sae = VisionSAETrainingRunner(config).run()
        is_main = DataParallel.current().is_main
    if is_main:
        print(_trained_line(config.run_dir, config.architecture, sae.cfg.d_sae, finished))
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
    if args.config is not None:
        configs = sweep_from_file(args.config, args.run_dir, **overrides)
    elif args.preset:
        configs = sweep_from_presets(args.preset, args.run_dir or "runs/sweep", **overrides)
    else:
        raise ValueError("give --config SWEEP_FILE or --preset PATTERN (repeatable)")
    finished = [is_finished(config.run_dir) for config in configs]
    with process_group_from_environment(configs[0].device):  # torchrun: each SAE data-parallel
        saes = VisionSAESweepRunner(configs).run()
        is_main = DataParallel.current().is_main
    if is_main:
        for config, sae, done in zip(configs, saes, finished, strict=True):
            print(_trained_line(config.run_dir, config.architecture, sae.cfg.d_sae, done))
    return 0


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", help="train from this image folder (extracting on the fly)")
    parser.add_argument("--cache", dest="cache_path", help="train from this activation cache")
    parser.add_argument("--model", help="override the preset's model")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override any config field (repeatable)"
    )


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a vision SAE with SAELens (a paper preset or a config file)",
        description="Train a vision SAE through SAELens' SAETrainer. Re-running the same command "
        "resumes from the run directory's latest checkpoint. Under torchrun it trains "
        "data-parallel over the ranks.",
    )
    train.add_argument("--preset", help="a paper preset (see --list-presets)")
    train.add_argument("--config", help="a YAML or JSON VisionSAERunnerConfig")
    train.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    train.add_argument("--run-dir", help="checkpoints, log.jsonl and final/ go here")
    _add_data_flags(train)
    train.set_defaults(handler=_cmd_train)

    sweep = commands.add_parser(
        "sweep",
        help="train several SAEs from one pass over the activations",
        description="Train several SAEs (widths, k, architectures, hooks) on one activation "
        "stream per hook, each exactly as `sae-vlm train` would. SAE i goes to RUN_DIR/<name>. "
        "Re-running resumes; under torchrun every SAE trains data-parallel.",
    )
    sweep.add_argument(
        "--config", help="a sweep file: run_dir, shared settings, saes (name -> settings)"
    )
    sweep.add_argument(
        "--preset",
        action="append",
        metavar="PATTERN",
        help="presets matching this shell pattern, e.g. 'clip-l14-336-l22-*' (repeatable)",
    )
    sweep.add_argument("--run-dir", help="each SAE trains in RUN_DIR/<name>")
    _add_data_flags(sweep)
    sweep.set_defaults(handler=_cmd_sweep)


def _cmd_families(args: argparse.Namespace) -> int:
    from sae_vlm_plugin.families import list_families

    _print_table(list_families())
    return 0


def _add_extract(commands: argparse._SubParsersAction) -> None:
    extract = commands.add_parser(
        "extract",
        help="stream activations of a hook into a resumable on-disk cache",
        description="Extract activations into a cache directory that SAE training reads. "
        "Re-running the same command resumes an interrupted extraction.",
    )
    extract.add_argument(
        "--model", required=True, help="hub id, local path, open_clip:ARCH/TAG or hf-hub:ORG/REPO"
    )
    extract.add_argument("--family", help="force a model family (see `sae-vlm families`)")
    extract.add_argument(
        "--hook",
        required=True,
        action="append",
        help="canonical hook name, e.g. blocks.22.hook_resid_post (repeatable)",
    )
    extract.add_argument(
        "--tokens",
        default="cls",
        help="cls | patches | all | mean | random_k | random_k+replacement (default: cls)",
    )
    extract.add_argument(
        "--k", type=positive_int, default=2, help="tokens per image for random_k (default: 2)"
    )
    extract.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the random_k draw (default: 0)"
    )
    extract.add_argument(
        "--images", required=True, help="an image folder (ImageNet-style tree or flat)"
    )
    extract.add_argument(
        "--out", required=True, help="cache directory (created; resumed if it exists)"
    )
    extract.add_argument("--batch-size", type=positive_int, default=64)
    extract.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    extract.add_argument("--images-per-shard", type=positive_int, default=256)
    extract.add_argument(
        "--skip-unreadable", action="store_true", help="skip corrupt images and report the count"
    )
    extract.add_argument(
        "--workers", type=non_negative_int, default=0, help="image decoding worker processes"
    )
    extract.add_argument("--device", help="e.g. cuda, cuda:1, cpu (default: where the model loads)")
    extract.set_defaults(handler=_cmd_extract)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-vlm",
        description="Sparse autoencoders for vision and vision-language models "
        "(SAELens / nnsight / SAEDashboard plugin).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    env = commands.add_parser("env", help="print library versions and the device, for bug reports")
    env.set_defaults(handler=_cmd_env)
    families = commands.add_parser("families", help="list the supported model families")
    families.set_defaults(handler=_cmd_families)
    _add_extract(commands)
    add_cache_commands(commands)
    _add_train(commands)
    add_metric_commands(commands)
    add_dashboard_command(commands)
    add_steer_commands(commands)
    add_naming_commands(commands)
    add_pretrained_commands(commands)
    add_demo_command(commands)
    return parser


USER_ERRORS = (ValueError, OSError, FloatingPointError)
"""What a user's mistake raises (a bad value; a missing, existing or unreachable file or model;
a training run diverged by its settings, ``training.job.TrainingDivergedError``): one line,
exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. A user error prints ``sae-vlm COMMAND: error: MESSAGE`` and returns 2,
    as argparse does for bad flags; ``--debug`` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)  # before any command imports torch or SAELens
        return int(args.handler(args))
    except USER_ERRORS as error:
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"sae-vlm {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
