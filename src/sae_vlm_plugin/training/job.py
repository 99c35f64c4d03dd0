"""One SAE of a training run: its SAELens ``SAETrainer``, log, checkpoints and export.

A ``TrainingJob`` drives ``SAETrainer`` through its public seams (``step``,
``maybe_reset_sparsity``, ``build_train_step_log_dict``, ``save_trainer_state`` /
``load_trainer_state``, ``set_final_sae_metadata``), as SAELens' ``MultiSAETrainer`` does, and
adds what a vision run needs around them:

- ``checkpoint_path/config.json`` (the run's directory), written once training starts (a run
  refused before that leaves nothing): the same command resumes (a config of an earlier
  version too), other settings or a folder of other files are refused, and a finished run is
  not trained again;
- a JSON-lines log (``checkpoint_path/log.jsonl``) of every logged step and evaluation;
- checkpoints ``checkpoint_path/checkpoints/step_N`` (the full training SAE state, SAELens' trainer
  state, and the step), written atomically;
- the export: ``checkpoint_path/final`` holds a SAELens inference SAE (``cfg.json`` +
  ``sae_weights.safetensors``, input scaling folded in) whose metadata records model, family,
  hook, tokens, dataset, preset and library versions; plain ``sae_lens.SAE.load_from_disk``
  loads it. It is written to a temporary folder and renamed, so ``final/`` marks a finished run;
- a non-finite loss stops the run (``TrainingDivergedError``) before anything is saved from it.

Under data parallelism every rank runs the job on its share of each batch; rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.hooks import parse_block_hook
from sae_vlm_plugin.json_files import read_json
from sae_vlm_plugin.training.data_parallel import (
    consolidate_sparsity,
    drop_sparsity_counts,
    wrap_for_ddp,
)
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sources import ActivationSource, build_training_sae

Evaluator = Callable[[Any, int, Any], dict[str, Any]]
"""``(training SAE in eval mode, step, the trainer's ActivationScaler) -> metrics``, run every
``cfg.eval_period`` steps (e.g. ``metrics.evaluation.MonosemanticityEvaluator``)."""

CHECKPOINT_STATE = "training_sae.safetensors"
RUNNER_STATE = "runner_state.json"


class TrainingDivergedError(FloatingPointError):
    """The training loss (or the SAE's weights) stopped being finite: training stops, and
    nothing is saved from that state (the checkpoints before it are kept)."""


class NonFiniteLossWatch:
    """The first step whose loss is not finite, kept on the loss' device.

    Reading a CUDA loss on the CPU waits for the GPU, and the training loop reads losses only
    where it logs them. So each step only folds ``isfinite(loss)`` into two device scalars
    (no sync), and ``first()`` reads them where the loop syncs anyway: at the log cadence and
    before anything is saved. A diverged run goes on for at most ``wandb_log_frequency`` steps,
    and the step it reports is still the first bad one."""

    def __init__(self) -> None:
        self._step: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

    def update(self, step: int, loss: torch.Tensor) -> None:
        if self._step is None or self._loss is None:
            self._step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        newly = ~torch.isfinite(loss) & (self._step < 0)
        self._step = torch.where(newly, step, self._step)
        self._loss = torch.where(newly, loss, self._loss)

    def first(self) -> tuple[int, float] | None:
        """``(step, loss)`` of the first non-finite loss so far, or None."""
        if self._step is None or self._loss is None:
            return None
        step = int(self._step.item())
        return None if step < 0 else (step, float(self._loss.item()))


class JsonlLog:
    """Append-only JSON-lines log; a resumed run truncates entries past its checkpoint. Values
    that are not JSON scalars (wandb histograms, say) are left out."""

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
        entry: dict[str, Any] = {"step": step, "kind": kind}
        for key, value in values.items():
            plain = _jsonable(value)
            if plain is not _OMIT:
                entry[key] = plain
        with self.path.open("a") as file:
            file.write(json.dumps(entry) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


_OMIT = object()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str | list | dict):
        return value
    return _OMIT


class TrainingJob:
    """One SAE of a run; ``name`` prefixes its entries in a shared wandb run."""

    def __init__(
        self,
        cfg: VisionSAERunnerConfig,
        source: ActivationSource,
        *,
        name: str,
        evaluator: Evaluator | None,
        parallel: DataParallel,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.name = name
        self.evaluator = evaluator
        self.parallel = parallel
        self.device = parallel.device_for(cfg.device)
        self.run_dir = Path(cfg.checkpoint_path)
        self.log = JsonlLog(self.run_dir / "log.jsonl")
        self.trainer: Any = None
        self.loss_watch = NonFiniteLossWatch()
        if cfg.d_in is not None and cfg.d_in != source.d_in:
            where = cfg.cached_activations_path or f"{source.model_name} {cfg.hook_name}"
            raise ValueError(
                f"the activations of {where} have d_in={source.d_in}, but the config asks "
                f"for an SAE with d_in={cfg.d_in}"
            )
        path = cfg.cached_activations_path
        if path is not None and cfg.tokens is not None:
            _check_cache_tokens(cfg.tokens, cfg.tokens_per_image, path, source.tokens)
        self._checkpoint_steps = cfg.checkpoint_steps()

    # -- set-up ---------------------------------------------------------------------------

    def check_run_dir(self) -> None:
        """Refuse (rank 0) a run directory of another run, or one holding files of no run (the
        user's own). Nothing is written, so a run that fails before it starts leaves the
        directory as it was; ``record_config`` writes the config once training starts. A
        ``config.json`` of an earlier version (the plugin's earlier names) is read in today's
        names, so such a run resumes."""
        if not self.parallel.is_main:
            return
        config_path = self.run_dir / "config.json"
        mine = self.cfg.to_dict()
        if config_path.exists():
            recorded = _recorded_config(config_path)
            differences = [k for k in mine if recorded.get(k) != mine[k] and k != "checkpoint_path"]
            if differences:
                raise ValueError(
                    f"{self.run_dir} holds a run with different settings ({', '.join(differences)}); "
                    "resume it with the same config or choose another checkpoint_path"
                )
        elif self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            foreign = sorted(path.name for path in self.run_dir.iterdir())
            raise ValueError(
                f"{self.run_dir} is not empty ({', '.join(foreign[:5])}) and holds no training "
                "run (no config.json); choose an empty or new checkpoint_path"
            )

    def record_config(self) -> None:
        """Write the config to ``checkpoint_path/config.json`` (rank 0): a re-run with other
        settings is then refused, and the same command resumes."""
        if not self.parallel.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))

    def is_finished(self) -> bool:
        """Whether ``checkpoint_path/final`` holds this run's export (written atomically, last)."""
        return is_finished(self.run_dir)

    def checkpoint_steps(self) -> list[int]:
        """Steps of this job's complete checkpoints, ascending."""
        return sorted(
            int(path.parent.name.split("_")[1])
            for path in (self.run_dir / "checkpoints").glob(f"step_*/{RUNNER_STATE}")
        )

    def start(self, scaling_factor: float | None, resume_step: int | None) -> None:
        """Build the SAE and its trainer (from ``resume_step``'s checkpoint if given); under
        data parallelism, wrap it for DDP."""
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        from sae_vlm_plugin.training import (
            PaperBatchTopKTrainingSAE,
            paper_learning_rate,
            prepare_paper_trainer,
        )

        cfg, parallel = self.cfg, self.parallel
        torch.manual_seed(cfg.seed)
        sae = build_training_sae(dataclasses.replace(cfg, device=self.device), self.source.d_in)
        lr = cfg.lr if cfg.lr is not None else paper_learning_rate(sae.cfg.d_sae)
        is_paper = isinstance(sae, PaperBatchTopKTrainingSAE)
        local_batch = cfg.train_batch_size_tokens // parallel.world_size
        trainer_cfg = SAETrainerConfig(
            total_training_samples=cfg.total_training_steps * local_batch,
            train_batch_size_samples=local_batch,
            lr=lr,
            lr_end=lr,
            lr_scheduler_name="constant",
            lr_warm_up_steps=0 if is_paper else cfg.lr_warm_up_steps,
            device=self.device,
            dead_feature_window=cfg.dead_feature_steps,
            feature_sampling_window=cfg.feature_sampling_window,
            n_checkpoints=0,
            checkpoint_path=None,
            save_final_checkpoint=False,
            logger=LoggingConfig(
                log_to_wandb=True, wandb_log_frequency=cfg.logger.wandb_log_frequency
            ),
        )
        trainer = SAETrainer(trainer_cfg, sae, iter(()), evaluator=None)
        if is_paper:
            prepare_paper_trainer(
                trainer, scaling_factor=scaling_factor, warmup_steps=cfg.lr_warm_up_steps
            )
        else:
            trainer.activation_scaler.scaling_factor = scaling_factor
        if resume_step is not None:
            self._restore(trainer, self.run_dir / "checkpoints" / f"step_{resume_step}")
            drop_sparsity_counts(parallel, trainer)
            # SAELens counts this rank's rows; the checkpoint may come from another world size.
            trainer.n_training_samples = trainer.n_training_steps * local_batch
        if parallel.is_main:
            self.log.truncate_after(-1 if resume_step is None else resume_step)
        sae.to(self.device)
        if parallel.enabled:
            wrap_for_ddp(trainer)
        self.trainer = trainer

    # -- one step -------------------------------------------------------------------------

    def train_step(self, batch: torch.Tensor, wandb_run: Any) -> torch.Tensor:
        """One training step on this rank's ``batch``; logs, evaluates and checkpoints on the
        config's schedule. Returns the step's loss (this rank's, detached)."""
        trainer, cfg, parallel = self.trainer, self.cfg, self.parallel
        if _is_sparsity_window_end(trainer):
            consolidate_sparsity(parallel, trainer)
        sparsity = trainer.maybe_reset_sparsity()
        output = trainer.step(batch)
        trainer.n_training_steps += 1
        done = trainer.n_training_steps
        self.loss_watch.update(done, output.loss.detach())
        if sparsity:
            self._record(done, "sparsity", sparsity, wandb_run)
        last = cfg.total_training_steps
        if done % cfg.logger.wandb_log_frequency == 0 or done == last:
            self.check_finite()
            values = trainer.build_train_step_log_dict(
                output, trainer.n_training_samples * parallel.world_size
            )
            self._record(done, "train", parallel.mean_over_ranks(values), wandb_run)
        eval_due = done % cfg.eval_period == 0 or done == last
        if self.evaluator is not None and eval_due and parallel.is_main:
            # The other ranks wait for rank 0 in the next step's first collective.
            trainer.sae.eval()
            metrics = self.evaluator(trainer.sae, done, trainer.activation_scaler)
            self._record(done, "eval", metrics, wandb_run)
            trainer.sae.train()
        if done in self._checkpoint_steps:
            self._save_checkpoint()
        return output.loss.detach()

    def check_finite(self) -> None:
        """Raise ``TrainingDivergedError`` if any rank's loss so far, or the SAE's weights, is
        not finite: at every log step (the last step is one) and before every checkpoint, so
        no checkpoint or export is written from a diverged state. Every rank calls it at the
        same steps (it is a collective under data parallelism), so all of them stop together."""
        first = self.loss_watch.first()
        weights = [
            name
            for name, value in self.trainer.sae.named_parameters()
            if not torch.isfinite(value).all()
        ]
        flagged = {"loss": float(first is not None), "weights": float(bool(weights))}
        if not any(self.parallel.mean_over_ranks(flagged).values()):
            return
        step = self.trainer.n_training_steps
        if first is not None:
            what = f"the training loss is {first[1]} at step {first[0]}"
        elif weights:
            what = f"the SAE's {', '.join(weights)} hold NaN or inf at step {step}"
        else:
            what = f"another rank's training loss is not finite by step {step}"
        kept = self.checkpoint_steps()
        last = (
            f"the last good checkpoint, step {kept[-1]}, is kept"
            if kept
            else "no checkpoint was written"
        )
        lr = self.trainer.cfg.lr
        raise TrainingDivergedError(
            f"{self.run_dir}: training diverged: {what}; stopped without saving this state "
            f"({last}). Lower the learning rate (lr={lr:g}) or check the activations, and "
            "train into a new checkpoint_path (or delete this one)"
        )

    # -- checkpoints ----------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        self.check_finite()
        trainer = self.trainer
        consolidate_sparsity(self.parallel, trainer)
        if not self.parallel.is_main:
            return
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
        if not (checkpoint / RUNNER_STATE).exists():
            raise FileNotFoundError(
                f"rank {self.parallel.rank} cannot read the checkpoint {checkpoint} that rank 0 "
                "resumes from; the checkpoint_path must be on a filesystem every rank sees"
            )
        trainer.sae.load_state_dict(
            load_file(str(checkpoint / CHECKPOINT_STATE), device=self.device)
        )
        _load_trainer_state_weights_only(trainer, checkpoint)

    # -- logging --------------------------------------------------------------------------

    def _record(self, step: int, kind: str, values: dict[str, Any], wandb_run: Any) -> None:
        if not self.parallel.is_main:
            return
        self.log.write(step, kind, values)
        if wandb_run is not None:
            prefix = f"{self.name}/" if self.name else ""
            wandb_run.log({f"{prefix}{k}": v for k, v in values.items()}, step=step)

    # -- export ---------------------------------------------------------------------------

    def export(self) -> None:
        """Fold the input scaling in, record the metadata and save ``checkpoint_path/final``
        (rank 0)."""
        consolidate_sparsity(self.parallel, self.trainer)
        if self.parallel.is_main:
            self._save_inference_sae()
        self.parallel.barrier()

    def saved_sae(self) -> Any:
        """The inference SAE saved in ``checkpoint_path/final``."""
        from sae_lens import SAE

        return SAE.load_from_disk(self.run_dir / "final", device=self.device)

    def _save_inference_sae(self) -> None:
        from sae_vlm_plugin._version import __version__
        from sae_vlm_plugin.environment import library_versions

        trainer, cfg, source = self.trainer, self.cfg, self.source
        sae = trainer.sae
        scaling = trainer.activation_scaler.scaling_factor
        if scaling is not None:
            sae.fold_activation_norm_scaling_factor(scaling)
            trainer.activation_scaler.scaling_factor = None
        trainer.set_final_sae_metadata()
        metadata = sae.cfg.metadata
        # The registry's vocabulary (``pretrained.schema.VisionMetadata``) plus SAELens' own keys.
        metadata.model_name = source.model_name
        metadata.hook_name = source.hook_name
        metadata.family = source.family
        metadata.tokens = source.tokens
        metadata.training_architecture = cfg.architecture
        metadata.training_data = source.dataset
        metadata.dataset_path = source.dataset
        parsed = parse_block_hook(source.hook_name)
        metadata.layer = parsed[1] if parsed is not None else None
        metadata.k = cfg.k
        metadata.expansion_factor = sae.cfg.d_sae / sae.cfg.d_in
        widths = getattr(sae.cfg, "matryoshka_widths", None)  # cumulative, paper and built-in
        if widths:
            sizes = [b - a for a, b in itertools.pairwise([0, *widths])]
            metadata.group_fractions = [size / sae.cfg.d_sae for size in sizes]
        metadata.preset = cfg.preset
        metadata.training_steps = cfg.total_training_steps
        metadata.sae_vlm_plugin_version = __version__
        metadata.library_versions = library_versions()
        for key, value in cfg.extra_metadata.items():
            metadata[key] = value
        final = self.run_dir / "final"
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        sae.save_inference_model(tmp)
        tmp.rename(final)  # final/ appears complete or not at all: it marks the run finished


def _recorded_config(path: Path) -> dict[str, Any]:
    """The config a run directory recorded, in today's spelling (the plugin's earlier names
    converted as ``VisionSAERunnerConfig.from_dict`` does)."""
    try:
        return VisionSAERunnerConfig.from_dict(read_json(path)).to_dict()
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{path.parent} holds a run whose config.json cannot be read ({error}); resume it "
            "with the version that started it or choose another checkpoint_path"
        ) from error


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` has been exported (``final/`` is written last)."""
    return (Path(run_dir) / "final").is_dir()


def _check_cache_tokens(tokens: str, per_image: int, cache_path: str, held: str) -> None:
    """Refuse a token selection (``tokens``, ``per_image`` for random_k) that is not the one
    the cache at ``cache_path`` holds (``held``, as the cache describes it): the SAE would
    train on the cache's tokens while its config said otherwise. A cache's random_k seed is
    its own (the training seed picks no tokens of a cache), so only kind and k count."""
    from sae_vlm_plugin.tokens import TokenSelection

    wanted = TokenSelection.parse(tokens, k=per_image).describe().partition("@")[0]
    if wanted != held.partition("@")[0]:
        raise ValueError(
            f"tokens={tokens!r} asks for {wanted}, but the cache at {cache_path} holds {held}; "
            f"leave tokens unset to train on the cache's, or extract a cache of {wanted}"
        )


def _load_trainer_state_weights_only(trainer: Any, checkpoint: Path) -> None:
    """SAELens' ``load_trainer_state`` with its ``torch.load`` forced to ``weights_only=True``.

    SAELens calls ``torch.load`` without ``weights_only``, so torch's default decides, and
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns it into a full unpickle that runs whatever a
    crafted ``trainer_state.pt`` holds. An explicit ``weights_only=True`` overrides that
    variable. ``torch.load`` is replaced only for the call, so SAELens' own field handling
    stays in charge of what the state holds."""
    import pickle

    from sae_lens.constants import TRAINER_STATE_FILENAME

    plain_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        return plain_load(*args, **{**kwargs, "weights_only": True})

    torch.load = weights_only_load
    try:
        trainer.load_trainer_state(checkpoint)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{checkpoint / TRAINER_STATE_FILENAME}: refused by torch.load(weights_only=True): "
            "it holds objects other than tensors and plain data; delete this checkpoint"
        ) from error
    finally:
        torch.load = plain_load


def _is_sparsity_window_end(trainer: Any) -> bool:
    """Whether ``maybe_reset_sparsity`` is about to read (and reset) SAELens' sparsity window."""
    steps = trainer.n_training_steps
    return steps > 0 and steps % trainer.cfg.feature_sampling_window == 0
