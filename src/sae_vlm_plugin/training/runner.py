"""``VisionSAETrainingRunner``: a vision SAE trained by SAELens' own ``SAETrainer``.

The runner builds the training SAE (a paper architecture or a SAELens built-in), the activation
stream (from a cache or from images), and drives ``SAETrainer`` through its public seams
(``step``, ``maybe_reset_sparsity``, ``build_train_step_log_dict``, ``save_trainer_state`` /
``load_trainer_state``, ``set_final_sae_metadata``), as SAELens' own multi-SAE coordinator does.
It adds what a vision run needs around them:

- a JSON-lines log (``run_dir/log.jsonl``) of every logged step and evaluation, written whether
  or not wandb is on;
- checkpoints (``run_dir/checkpoints/step_N``: the full training SAE state, SAELens' trainer
  state, and the runner's position) and exact resume: the activation stream is a pure function
  of the seed, so a resumed run replays it to the checkpoint's position and ends with the same
  weights as an uninterrupted run;
- the export: ``run_dir/final`` holds a SAELens inference SAE (``cfg.json`` +
  ``sae_weights.safetensors``, input scaling folded in) whose metadata records model, family,
  hook, tokens, dataset, preset and library versions; plain ``sae_lens.SAE.load_from_disk`` loads it.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae_vlm_plugin.hooks import parse_block_hook
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

Evaluator = Callable[[Any, int, Any], dict[str, Any]]
"""``(training SAE in eval mode, step, the trainer's ActivationScaler) -> metrics``, run every
``eval_every_steps`` (e.g. ``metrics.evaluation.MonosemanticityEvaluator``)."""

CHECKPOINT_STATE = "training_sae.safetensors"
RUNNER_STATE = "runner_state.json"
SCALING_SEED_OFFSET = 1_000_003
"""The scaling estimate reads its own stream (seed + this), leaving the training stream untouched."""


@dataclass(frozen=True)
class ActivationSource:
    """Where a run's activations come from, and what to record about them."""

    d_in: int
    model_name: str
    family: str
    hook_name: str
    tokens: str
    dataset: str
    make_batches: Callable[[int], Iterator[torch.Tensor]]
    """``seed -> endless iterator of (batch_size, d_in) batches``, deterministic in the seed."""


def activation_source(cfg: VisionSAERunnerConfig, model: Any = None) -> ActivationSource:
    """The activation stream ``cfg`` describes (``model``: an already built ``VisionModel``)."""
    if cfg.cache_path is not None:
        from sae_vlm_plugin.cache import ActivationCache

        cache = ActivationCache(cfg.cache_path)
        if cfg.hook_name not in cache.hooks:
            raise ValueError(
                f"the cache at {cache.path} holds {', '.join(cache.hooks)}, not {cfg.hook_name!r}; "
                "set hook_name to one of them"
            )
        settings = cache.settings
        return ActivationSource(
            d_in=cache.d_in(cfg.hook_name),
            model_name=settings["model"],
            family=settings["family"],
            hook_name=cfg.hook_name,
            tokens=settings["tokens"],
            dataset=cfg.dataset_name or cache.manifest.get("dataset", str(cache.path)),
            make_batches=lambda seed: cache.batches(
                cfg.hook_name, cfg.batch_size, seed=seed, device=None
            ),
        )
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.tokens import TokenSelection
    from sae_vlm_plugin.training.image_stream import image_activation_batches

    if model is None:
        assert cfg.model is not None  # the config checks that images come with a model
        model = VisionModel(cfg.model, device=cfg.device)
    vision_model = model
    selection = TokenSelection.parse(cfg.tokens, k=cfg.tokens_per_image, seed=cfg.seed)
    point = vision_model.hook_point(cfg.hook_name)
    return ActivationSource(
        d_in=point.d_model,
        model_name=vision_model.model_name,
        family=vision_model.family.name,
        hook_name=cfg.hook_name,
        tokens=selection.describe(),
        dataset=cfg.dataset_name or str(cfg.images),
        make_batches=lambda seed: image_activation_batches(
            vision_model,
            cfg.images,
            cfg.hook_name,
            selection,
            cfg.batch_size,
            batch_size_images=cfg.extraction_batch_size,
            buffer_batches=cfg.mixing_buffer_batches,
            seed=seed,
        ),
    )


def build_training_sae(cfg: VisionSAERunnerConfig, d_in: int) -> Any:
    """The training SAE of ``cfg.architecture`` at width ``cfg.sae_width(d_in)``."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    from sae_vlm_plugin.training import (
        PaperBatchTopKTrainingSAE,
        PaperBatchTopKTrainingSAEConfig,
        PaperMatryoshkaBatchTopKTrainingSAE,
        PaperMatryoshkaBatchTopKTrainingSAEConfig,
        group_sizes_from_fractions,
    )
    from sae_vlm_plugin.training.config import PAPER_GROUP_FRACTIONS

    d_sae = cfg.sae_width(d_in)
    common: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "k": cfg.k, "device": cfg.device}
    paper: dict[str, Any] = {
        "auxk_alpha": cfg.auxk_alpha,
        "dead_feature_threshold": cfg.dead_feature_threshold,
        "threshold_start_step": cfg.threshold_start_step,
    }
    fractions = cfg.group_fractions or list(PAPER_GROUP_FRACTIONS)
    if cfg.architecture == "paper_batchtopk":
        return PaperBatchTopKTrainingSAE(PaperBatchTopKTrainingSAEConfig(**common, **paper))
    if cfg.architecture == "paper_matryoshka_batchtopk":
        return PaperMatryoshkaBatchTopKTrainingSAE(
            PaperMatryoshkaBatchTopKTrainingSAEConfig(**common, **paper, group_fractions=fractions)
        )
    builtin = {**common, "aux_loss_coefficient": cfg.auxk_alpha}
    if cfg.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**builtin))
    widths = list(itertools.accumulate(group_sizes_from_fractions(fractions, d_sae)))
    return MatryoshkaBatchTopKTrainingSAE(
        MatryoshkaBatchTopKTrainingSAEConfig(**builtin, matryoshka_widths=widths)
    )


class JsonlLog:
    """Append-only JSON-lines log; a resumed run truncates entries past its checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [
            line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        entry = {"step": step, "kind": kind, **{k: _jsonable(v) for k, v in values.items()}}
        with self.path.open("a") as file:
            file.write(json.dumps(entry) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class VisionSAETrainingRunner:
    """Train the SAE ``cfg`` describes; ``run()`` returns the exported inference SAE."""

    def __init__(
        self,
        cfg: VisionSAERunnerConfig,
        *,
        model: Any = None,
        evaluator: Evaluator | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.progress = progress
        self.run_dir = Path(cfg.run_dir)
        self.source = activation_source(cfg, model)
        if evaluator is None and cfg.eval_images is not None:
            evaluator = self._ms_evaluator(model)
        self.evaluator = evaluator
        if cfg.d_in is not None and cfg.d_in != self.source.d_in:
            where = cfg.cache_path or f"{self.source.model_name} {cfg.hook_name}"
            raise ValueError(
                f"the activations of {where} have d_in={self.source.d_in}, but the config asks "
                f"for an SAE with d_in={cfg.d_in}"
            )
        self.log = JsonlLog(self.run_dir / "log.jsonl")

    def run(self) -> Any:
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer
        from tqdm.auto import tqdm

        from sae_vlm_plugin.training import (
            PaperBatchTopKTrainingSAE,
            estimate_paper_scaling_factor,
            paper_learning_rate,
            prepare_paper_trainer,
        )

        cfg, source = self.cfg, self.source
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_run_dir()
        torch.manual_seed(cfg.seed)
        sae = build_training_sae(cfg, source.d_in)
        d_sae = sae.cfg.d_sae
        lr = cfg.lr if cfg.lr is not None else paper_learning_rate(d_sae)
        is_paper = isinstance(sae, PaperBatchTopKTrainingSAE)
        trainer_cfg = SAETrainerConfig(
            total_training_samples=cfg.training_steps * cfg.batch_size,
            train_batch_size_samples=cfg.batch_size,
            lr=lr,
            lr_end=lr,
            lr_scheduler_name="constant",
            lr_warm_up_steps=0 if is_paper else cfg.warmup_steps,
            device=cfg.device,
            n_checkpoints=0,
            checkpoint_path=None,
            save_final_checkpoint=False,
            logger=LoggingConfig(log_to_wandb=True, wandb_log_frequency=cfg.log_every_steps),
        )
        batches = source.make_batches(cfg.seed)
        trainer = SAETrainer(trainer_cfg, sae, batches, evaluator=None)
        resume_from = self._latest_checkpoint()
        scaling = None
        if resume_from is None and cfg.scale_inputs:
            scaling = estimate_paper_scaling_factor(
                source.make_batches(cfg.seed + SCALING_SEED_OFFSET), cfg.n_batches_for_scaling
            )
        if is_paper:
            prepare_paper_trainer(trainer, scaling_factor=scaling, warmup_steps=cfg.warmup_steps)
        else:
            trainer.activation_scaler.scaling_factor = scaling
        if resume_from is not None:
            self._restore(trainer, resume_from)
            for _ in range(trainer.n_training_steps):
                next(batches)  # replay the stream to the checkpoint's position
            self.log.truncate_after(trainer.n_training_steps)
        else:
            self.log.truncate_after(-1)
        wandb_run = self._start_wandb()
        sae.to(cfg.device)
        bar = tqdm(
            total=cfg.training_steps,
            initial=trainer.n_training_steps,
            desc="train SAE",
            unit="step",
            disable=not self.progress,
        )
        try:
            while trainer.n_training_steps < cfg.training_steps:
                step = trainer.n_training_steps
                sparsity = trainer.maybe_reset_sparsity()
                batch = next(batches)
                if not torch.isfinite(batch).all():
                    raise ValueError(
                        f"step {step}: the activation batch holds NaN or inf values "
                        f"({(~torch.isfinite(batch)).sum().item()} entries); check the source"
                    )
                output = trainer.step(batch)
                trainer.n_training_steps += 1
                done = trainer.n_training_steps
                if sparsity:
                    self._record(done, "sparsity", sparsity, wandb_run)
                if done % cfg.log_every_steps == 0 or done == cfg.training_steps:
                    values = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
                    self._record(done, "train", values, wandb_run)
                    bar.set_postfix(loss=f"{output.loss.item():.4g}")
                if self.evaluator is not None and (
                    done % cfg.eval_every_steps == 0 or done == cfg.training_steps
                ):
                    sae.eval()
                    metrics = self.evaluator(sae, done, trainer.activation_scaler)
                    self._record(done, "eval", metrics, wandb_run)
                    sae.train()
                if (
                    cfg.checkpoint_every_steps
                    and done % cfg.checkpoint_every_steps == 0
                    and done < cfg.training_steps
                ):
                    self._save_checkpoint(trainer)
                bar.update(1)
        finally:
            bar.close()
            if wandb_run is not None:
                wandb_run.finish()
        return self._export(trainer)

    def _ms_evaluator(self, model: Any) -> Evaluator:
        """MS on ``cfg.eval_images``, seen by the run's model (for a cache: the model it names)."""
        from sae_vlm_plugin.metrics.evaluation import MonosemanticityEvaluator
        from sae_vlm_plugin.model import VisionModel

        if model is None:
            model = VisionModel(self.source.model_name, device=self.cfg.device)
        return MonosemanticityEvaluator.from_images(
            model,
            self.cfg.eval_images,
            self.cfg.hook_name,
            self.source.tokens,
            scoring_encoder=self.cfg.scoring_encoder,
        )

    # -- checkpoints ----------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        config_path = self.run_dir / "config.json"
        mine = self.cfg.to_dict()
        if config_path.exists():
            recorded = json.loads(config_path.read_text())
            differences = [k for k in mine if recorded.get(k) != mine[k] and k != "run_dir"]
            if differences:
                raise ValueError(
                    f"{self.run_dir} holds a run with different settings ({', '.join(differences)}); "
                    "resume it with the same config or choose another run_dir"
                )
        config_path.write_text(json.dumps(mine, indent=1))

    def _latest_checkpoint(self) -> Path | None:
        checkpoints = sorted(
            (self.run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1])
        )
        complete = [p for p in checkpoints if (p / RUNNER_STATE).exists()]
        return complete[-1] if complete else None

    def _save_checkpoint(self, trainer: Any) -> None:
        step = trainer.n_training_steps
        final = self.run_dir / "checkpoints" / f"step_{step}"
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        state = {k: v.detach().cpu().contiguous() for k, v in trainer.sae.state_dict().items()}
        save_file(state, str(tmp / CHECKPOINT_STATE))
        trainer.save_trainer_state(tmp)
        (tmp / RUNNER_STATE).write_text(
            json.dumps({"step": step, "samples": trainer.n_training_samples})
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def _restore(self, trainer: Any, checkpoint: Path) -> None:
        trainer.sae.load_state_dict(
            load_file(str(checkpoint / CHECKPOINT_STATE), device=self.cfg.device)
        )
        trainer.load_trainer_state(checkpoint)

    # -- logging --------------------------------------------------------------------------

    def _start_wandb(self) -> Any:
        if not self.cfg.log_to_wandb:
            return None
        import wandb

        return wandb.init(
            project=self.cfg.wandb_project, config=self.cfg.to_dict(), dir=str(self.run_dir)
        )

    def _record(self, step: int, kind: str, values: dict[str, Any], wandb_run: Any) -> None:
        self.log.write(step, kind, values)
        if wandb_run is not None:
            wandb_run.log(values, step=step)

    # -- export ---------------------------------------------------------------------------

    def _export(self, trainer: Any) -> Any:
        from sae_lens import SAE

        from sae_vlm_plugin import __version__
        from sae_vlm_plugin.environment import library_versions

        sae = trainer.sae
        scaling = trainer.activation_scaler.scaling_factor
        if scaling is not None:
            sae.fold_activation_norm_scaling_factor(scaling)
            trainer.activation_scaler.scaling_factor = None
        trainer.set_final_sae_metadata()
        metadata = sae.cfg.metadata
        # The registry's vocabulary (``pretrained.schema.VisionMetadata``) plus SAELens' own keys.
        metadata.model_name = self.source.model_name
        metadata.hook_name = self.source.hook_name
        metadata.family = self.source.family
        metadata.tokens = self.source.tokens
        metadata.training_architecture = self.cfg.architecture
        metadata.training_data = self.source.dataset
        metadata.dataset_path = self.source.dataset
        parsed = parse_block_hook(self.source.hook_name)
        metadata.layer = parsed[1] if parsed is not None else None
        metadata.k = self.cfg.k
        metadata.expansion_factor = sae.cfg.d_sae / sae.cfg.d_in
        widths = getattr(sae.cfg, "matryoshka_widths", None)  # cumulative, paper and built-in
        if widths:
            sizes = [b - a for a, b in itertools.pairwise([0, *widths])]
            metadata.group_fractions = [size / sae.cfg.d_sae for size in sizes]
        metadata.preset = self.cfg.preset
        metadata.training_steps = self.cfg.training_steps
        metadata.sae_vlm_plugin_version = __version__
        metadata.library_versions = library_versions()
        for key, value in self.cfg.extra_metadata.items():
            metadata[key] = value
        final = self.run_dir / "final"
        sae.save_inference_model(final)
        return SAE.load_from_disk(final, device=self.cfg.device)
