"""The trainer-level steps of the paper's recipe, installed on SAELens' own ``SAETrainer``.

``SAETrainer._train_step`` runs ``loss.backward()``, clips the gradient norm to 1, takes an Adam
step and steps its learning-rate scheduler; the SAE's ``training_forward_pass`` covers
everything before ``backward`` (including the decoder-gradient projection, which happens inside
the backward pass). Three steps of the recipe belong to the trainer, and ``prepare_paper_trainer``
puts them there (it also swaps the trainer's Adam for the same algorithm with PyTorch's fused
kernel, which on CPU is several times faster than the default per-tensor loop):

- the learning-rate schedule: dictionary_learning's warm-up ``t / warmup_steps`` (SAELens'
  scheduler is one step ahead of it, ``(t + 1) / warmup_steps``);
- the input scaling: ``x * scaling_factor`` with the paper's ``1 / sqrt(mean ||x||^2)``
  (``estimate_paper_scaling_factor``) in SAELens' ``ActivationScaler``, which ``fit()`` folds
  into the SAE after the last step (``fold_activation_norm_scaling_factor``);
- the decoder renormalisation right after each Adam step (an optimizer step post-hook; without
  it the SAE renormalises lazily before the decoder is next read, with the same result).
"""

from __future__ import annotations

import math
from typing import Any

from sae_lens.training.sae_trainer import SAETrainer
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR

from sae_vlm_plugin.training.architectures.sae import PaperBatchTopKTrainingSAE
from sae_vlm_plugin.training.schedule import paper_lr_factor


def prepare_paper_trainer(
    trainer: SAETrainer[Any, Any],
    *,
    scaling_factor: float | None,
    warmup_steps: int = 1000,
    decay_start: int | None = None,
) -> None:
    """Install the paper's trainer-level steps on a fresh ``SAETrainer`` of a paper SAE.

    Call it once, after constructing the trainer and before ``fit()`` (or the first ``step``).
    The trainer's own config must leave the schedule to this function (``lr_scheduler_name``
    "constant", ``lr_warm_up_steps = lr_decay_steps = 0``) and autocast off. The optimizer
    becomes ``Adam(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=True)``; the paper's
    base learning rate is ``paper_learning_rate(d_sae)`` and its betas (0.9, 0.999), SAELens'
    defaults. ``scaling_factor`` multiplies every batch (None: no scaling).
    """
    sae = trainer.sae
    if not isinstance(sae, PaperBatchTopKTrainingSAE):
        raise TypeError(
            f"prepare_paper_trainer needs a paper training SAE, got {type(sae).__name__}"
        )
    if trainer.n_training_steps != 0:
        raise ValueError(
            f"prepare_paper_trainer must run before training; the trainer is at step "
            f"{trainer.n_training_steps}"
        )
    cfg = trainer.cfg
    if cfg.lr_scheduler_name != "constant" or cfg.lr_warm_up_steps or cfg.lr_decay_steps:
        raise ValueError(
            "the trainer's own schedule must be constant (lr_scheduler_name='constant', "
            "lr_warm_up_steps=0, lr_decay_steps=0): prepare_paper_trainer installs the paper's, "
            f"got {cfg.lr_scheduler_name!r}, warm-up {cfg.lr_warm_up_steps}, "
            f"decay {cfg.lr_decay_steps}"
        )
    if cfg.autocast:
        raise ValueError("the paper trained in full precision; set SAETrainerConfig.autocast=False")
    if scaling_factor is not None and not (math.isfinite(scaling_factor) and scaling_factor > 0):
        raise ValueError(f"scaling_factor must be a positive finite number, got {scaling_factor}")

    trainer.optimizer = Adam(
        sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), fused=True
    )
    trainer.optimizer.register_step_post_hook(lambda *_: sae.renormalize_decoder())
    trainer.lr_scheduler = LambdaLR(
        trainer.optimizer,
        lr_lambda=paper_lr_factor(cfg.total_training_steps, warmup_steps, decay_start),
    )
    trainer.activation_scaler.scaling_factor = scaling_factor
