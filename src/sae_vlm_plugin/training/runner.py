"""``VisionSAETrainingRunner``: a vision SAE trained by SAELens' own ``SAETrainer``.

The runner builds the training SAE (a paper architecture or a SAELens built-in) and the
activation stream (from a cache or from images) that its ``VisionSAERunnerConfig`` describes,
and trains it as a sweep of one (``sweep.VisionSAESweepRunner``; per-SAE work in
``job.TrainingJob``):

- a JSON-lines log (``checkpoint_path/log.jsonl``) of every logged step and evaluation,
  written whether or not wandb is on;
- checkpoints (``checkpoint_path/checkpoints/step_N``) and exact resume: the activation stream is a
  pure function of the seed, so a resumed run replays it to the checkpoint's position and ends
  with the same weights as an uninterrupted run;
- the export: ``checkpoint_path/final`` holds a SAELens inference SAE whose metadata records model,
  family, hook, tokens, dataset, preset and library versions;
- under ``torchrun``, data-parallel training over the ranks (``data_parallel``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sae_vlm_plugin.training.job import Evaluator
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig
from sae_vlm_plugin.training.sweep import VisionSAESweepRunner

if TYPE_CHECKING:
    from sae_vlm_plugin.model import VisionModel


class VisionSAETrainingRunner:
    """Train the SAE ``cfg`` describes; ``run()`` returns the exported inference SAE.

    ``model``: an already built ``VisionModel`` (training from images); ``evaluator``: run every
    ``cfg.eval_period`` steps (default: MS on ``cfg.eval_images`` if set)."""

    def __init__(
        self,
        cfg: VisionSAERunnerConfig,
        *,
        model: VisionModel | None = None,
        evaluator: Evaluator | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self._sweep = VisionSAESweepRunner(
            [cfg], model=model, evaluator=evaluator, progress=progress
        )

    def run(self) -> Any:
        return self._sweep.run()[0]
