"""``VisionSAESweepRunner``: several SAEs trained from one pass over the activations.

The paper's Table 1 is 60 SAEs (two architectures x six widths x five layers) on the same
ImageNet activations. A sweep reads each hook's activation stream once and feeds every batch to
every SAE on that hook, each with its own SAELens ``SAETrainer`` (optimizer, learning rate,
scaler, sparsity statistics), as SAELens' ``MultiSAETrainer`` does. Unlike ``MultiSAETrainer``,
every SAE keeps its own trainer settings: the paper's learning rate depends on the width.

Each SAE sees exactly the batches it would see trained alone with its config (the stream is a
pure function of the data settings and the seed), starts from the same initial weights (the
seed is set before each SAE is built) and so ends with the same weights. What the SAEs of a
sweep must share is listed in ``SHARED_SETTINGS``; they may differ in hook, architecture,
width, k, learning rate and the other SAE settings. Under ``torchrun`` every SAE trains
data-parallel over all ranks (``data_parallel``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_vlm_plugin.devices import check_device
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.ownership import owned_directory
from sae_vlm_plugin.threads import ThreadGovernor
from sae_vlm_plugin.training.job import Evaluator, TrainingJob
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sources import ActivationSource, activation_source

if TYPE_CHECKING:
    from sae_vlm_plugin.model import VisionModel

SHARED_SETTINGS = (
    "cached_activations_path",
    "model_name",
    "dataset_path",
    "dataset_name",
    "tokens",
    "tokens_per_image",
    "extraction_batch_size",
    "mixing_buffer_batches",
    "data_order",
    "train_batch_size_tokens",
    "training_tokens",
    "seed",
    "device",
    "adaptive_threads",
    "checkpoint_every_steps",
    "n_checkpoints",
    "n_batches_for_norm_estimate",
    "logger.log_to_wandb",
    "logger.wandb_project",
    "logger.wandb_entity",
    "logger.wandb_id",
    "logger.run_name",
    "logger.wandb_tags",
    "logger.wandb_dir",
)
"""Settings every SAE of a sweep must have in common: those of the activation stream, its
length and position (checkpoints), and the run's logging."""

SCALING_SEED_OFFSET = 1_000_003
"""The scaling estimate reads its own stream (seed + this), leaving the training stream untouched."""


class VisionSAESweepRunner:
    """Train the SAEs ``configs`` describe from one pass over each hook's activations;
    ``run()`` returns their exported inference SAEs, in order.

    ``model``: an already built ``VisionModel`` (training from images). ``evaluator`` runs on
    every SAE (default: MS on ``eval_images`` for the SAEs whose config names them).
    """

    def __init__(
        self,
        configs: Sequence[VisionSAERunnerConfig],
        *,
        model: VisionModel | None = None,
        evaluator: Evaluator | None = None,
        progress: bool = True,
    ) -> None:
        if not configs:
            raise ValueError("a sweep needs at least one SAE config")
        _check_shared_settings(configs)
        self.configs = list(configs)
        self.progress = progress
        self.parallel = DataParallel.current()
        first = self.configs[0]
        check_device(first.device)
        self.parallel.check_batch_size(first.train_batch_size_tokens)
        if model is None and first.model_name is not None:
            from sae_vlm_plugin.model import VisionModel

            device = self.parallel.device_for(first.device)
            model = VisionModel(first.model_name, device=device)
        self.model = model
        self.sources: dict[str, ActivationSource] = {}
        for cfg in self.configs:
            if cfg.hook_name not in self.sources:
                self.sources[cfg.hook_name] = activation_source(cfg, model, self.parallel)
        self._ms_evaluators: dict[tuple[str, str, str], Evaluator] = {}
        names = _job_names(self.configs)
        self.jobs = [
            TrainingJob(
                cfg,
                self.sources[cfg.hook_name],
                name=name,
                evaluator=evaluator or self._ms_evaluator(cfg),
                parallel=self.parallel,
            )
            for cfg, name in zip(self.configs, names, strict=True)
        ]

    def run(self) -> list[Any]:
        """Train the SAEs not yet finished (a finished run's ``final/`` is kept as it is) and
        return every SAE's saved inference SAE."""
        parallel = self.parallel
        with ExitStack() as held:  # one run at a time per run directory (rank 0 holds them)
            if parallel.is_main:
                for job in self.jobs:
                    held.enter_context(owned_directory(job.run_dir, "training run"))
            for job in self.jobs:
                job.check_run_dir()
            finished = parallel.broadcast(
                [job.is_finished() for job in self.jobs] if parallel.is_main else None
            )
            todo = [job for job, done in zip(self.jobs, finished, strict=True) if not done]
            if todo:
                self._train(todo)
            return [job.saved_sae() for job in self.jobs]

    def _train(self, jobs: list[TrainingJob]) -> None:
        """Train and export ``jobs`` from one pass over their hooks' streams. The config is
        recorded only once every SAE is built, so a run refused at that point (k > d_sae,
        say) leaves nothing behind."""
        from tqdm.auto import tqdm

        from sae_vlm_plugin.training.scaling import mean_squared_norm, paper_scaling_factor

        parallel, first = self.parallel, self.configs[0]
        # In the order of the configs: under data parallelism every rank must run the scaling
        # estimate's collectives (and read the streams) in the same order.
        hooks = list(dict.fromkeys(job.cfg.hook_name for job in jobs))
        resume_step = parallel.broadcast(self._resume_step(jobs) if parallel.is_main else None)
        scaling: dict[str, float] = {}
        if resume_step is None:
            for hook in hooks:
                if any(job.cfg.scale_inputs for job in jobs if job.cfg.hook_name == hook):
                    stream = self.sources[hook].make_batches(first.seed + SCALING_SEED_OFFSET)
                    local = mean_squared_norm(stream, first.n_batches_for_norm_estimate)
                    scaling[hook] = paper_scaling_factor(parallel.mean(local))
        for job in jobs:
            factor = scaling.get(job.cfg.hook_name) if job.cfg.scale_inputs else None
            job.start(factor, resume_step)
        for job in jobs:
            job.record_config()
        streams = {hook: self.sources[hook].make_batches(first.seed) for hook in hooks}
        start = resume_step or 0
        for stream in streams.values():
            for _ in range(start):
                next(stream)  # replay the stream to the checkpoint's position
        wandb_run = self._start_wandb(jobs) if parallel.is_main else None
        description = "train SAE" if len(jobs) == 1 else f"train {len(jobs)} SAEs"
        bar = tqdm(
            total=first.total_training_steps,
            initial=start,
            desc=description,
            unit="step",
            disable=not (self.progress and parallel.is_main),
        )
        governor = ThreadGovernor()  # fewer CPU threads while other work shares the cores
        governed = first.adaptive_threads and torch.device(jobs[0].device).type == "cpu"
        try:
            with governor.loop(on_cpu=governed):
                for step in range(start, first.total_training_steps):
                    batches = {hook: _next_batch(stream, step) for hook, stream in streams.items()}
                    with governor.unit(on_cpu=governed):
                        losses = [
                            job.train_step(batches[job.cfg.hook_name], wandb_run) for job in jobs
                        ]
                    if (step + 1) % first.logger.wandb_log_frequency == 0:
                        bar.set_postfix(loss=" ".join(f"{loss.item():.4g}" for loss in losses))
                    bar.update(1)
        finally:
            bar.close()
            if wandb_run is not None:
                wandb_run.finish()
        for job in jobs:
            job.export()

    def _resume_step(self, jobs: list[TrainingJob]) -> int | None:
        """The latest step every SAE of ``jobs`` has a complete checkpoint of (None: start
        afresh)."""
        steps = {job.name or str(job.run_dir): set(job.checkpoint_steps()) for job in jobs}
        if not any(steps.values()):
            return None
        common = set.intersection(*steps.values())
        if not common:
            listing = "; ".join(f"{name}: {sorted(s) or 'none'}" for name, s in steps.items())
            raise ValueError(
                "the SAEs of this sweep have no checkpoint step in common, so the shared "
                f"stream cannot resume ({listing}); resume the sweep with the SAEs it was "
                "started with, or give new SAEs a sweep of their own"
            )
        return max(common)

    def _ms_evaluator(self, cfg: VisionSAERunnerConfig) -> Evaluator | None:
        """MS on ``cfg.eval_images``, seen by the run's model (for a cache: the model it names);
        SAEs of the same hook, images and scoring encoder share one, whose activations and
        embeddings are computed once. Only rank 0 evaluates."""
        if cfg.eval_images is None or not self.parallel.is_main:
            return None
        key = (cfg.hook_name, cfg.eval_images, cfg.scoring_encoder)
        if key not in self._ms_evaluators:
            from sae_vlm_plugin.metrics.evaluation import MonosemanticityEvaluator
            from sae_vlm_plugin.model import VisionModel

            source = self.sources[cfg.hook_name]
            if self.model is None:
                device = self.parallel.device_for(cfg.device)
                self.model = VisionModel(source.model_name, device=device)
            self._ms_evaluators[key] = MonosemanticityEvaluator.from_images(
                self.model,
                cfg.eval_images,
                cfg.hook_name,
                source.tokens,
                scoring_encoder=cfg.scoring_encoder,
            )
        return self._ms_evaluators[key]

    def _start_wandb(self, jobs: list[TrainingJob]) -> Any:
        first = self.configs[0]
        if not first.logger.log_to_wandb:
            return None
        import wandb

        config = (
            first.to_dict()
            if len(self.configs) == 1
            else {job.name: job.cfg.to_dict() for job in jobs}
        )
        return wandb.init(**wandb_settings(first), config=config)


def wandb_settings(cfg: VisionSAERunnerConfig) -> dict[str, Any]:
    """``wandb.init`` arguments of a run: project, entity, name, id (resumed if it exists),
    tags and directory (``logger.wandb_dir``, else ``$WANDB_DIR``, else ``checkpoint_path``)."""
    logger = cfg.logger
    settings: dict[str, Any] = {
        "project": logger.wandb_project,
        "entity": logger.wandb_entity,
        "name": logger.run_name,
        "id": logger.wandb_id,
        "tags": list(logger.wandb_tags) or None,
        "dir": logger.wandb_dir or os.environ.get("WANDB_DIR") or str(cfg.checkpoint_path),
    }
    if logger.wandb_id is not None:
        settings["resume"] = "allow"
    return settings


def _check_shared_settings(configs: Sequence[VisionSAERunnerConfig]) -> None:
    first = configs[0]
    for cfg in configs[1:]:
        different = [name for name in SHARED_SETTINGS if _get(cfg, name) != _get(first, name)]
        if different:
            raise ValueError(
                f"the SAEs of a sweep share one activation stream, so they must agree on "
                f"{', '.join(SHARED_SETTINGS)}; {cfg.checkpoint_path} differs from "
                f"{first.checkpoint_path} in {', '.join(different)}"
            )
    run_dirs = [str(Path(cfg.checkpoint_path).resolve()) for cfg in configs]
    duplicates = sorted({d for d in run_dirs if run_dirs.count(d) > 1})
    if duplicates:
        raise ValueError(
            f"every SAE of a sweep needs its own checkpoint_path; shared: {duplicates}"
        )


def _get(cfg: VisionSAERunnerConfig, name: str) -> Any:
    """The setting ``name`` of ``cfg``; ``logger.NAME`` reads the logger's."""
    head, _, rest = name.partition(".")
    value = getattr(cfg, head)
    return getattr(value, rest) if rest else value


def _job_names(configs: Sequence[VisionSAERunnerConfig]) -> list[str]:
    """Prefixes of each SAE's entries in a shared wandb run: none for one SAE, else the
    run directory's name (or ``sae{i}`` when those repeat)."""
    if len(configs) == 1:
        return [""]
    names = [Path(cfg.checkpoint_path).name for cfg in configs]
    if len(set(names)) < len(names):
        return [f"sae{i}" for i in range(len(configs))]
    return names


def _next_batch(stream: Iterator[torch.Tensor], step: int) -> torch.Tensor:
    batch = next(stream)
    if not torch.isfinite(batch).all():
        raise ValueError(
            f"step {step}: the activation batch holds NaN or inf values "
            f"({(~torch.isfinite(batch)).sum().item()} entries); check the source"
        )
    return batch
