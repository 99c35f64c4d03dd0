"""BatchTopK and Matryoshka-BatchTopK training SAEs that reproduce the paper's trainer exactly.

One training step (``training_forward_pass``, step index ``t`` = SAELens' ``n_training_steps``)
does what dictionary_learning's ``BatchTopKTrainer.update`` / ``MatroyshkaBatchTopKTrainer.update``
do before ``loss.backward()``, on the (already scaled) batch ``x`` of B inputs:

1. ``t == 0``: ``b_dec <- geometric_median(x)``.
2. ``pre = ReLU((x - b_dec) @ W_enc + b_enc)``; keep the ``k * B`` largest entries of the batch.
3. ``t > threshold_start_step``: ``theta <- m`` on the first update, then
   ``theta <- beta * theta + (1 - beta) * m``; ``m`` = smallest kept positive activation
   (0 if none).
4. Every latent's count of inputs since it last fired grows by B, and resets to 0 if the latent
   has a kept positive activation; latents with count ``>= dead_feature_threshold`` are dead.
5. Level g reconstructs from its prefix of latents, ``x_hat_g = b_dec + sum_{h <= g} f_h W_dec,h``
   (plain BatchTopK: one level, the whole SAE); ``L_mse = mean_g w_g mean_b ||x_b - x_hat_g,b||^2``.
6. With ``n_dead > 0`` dead latents and ``e = x - x_hat_G`` (detached): each input's
   ``k_aux = min(d_in // 2, n_dead)`` largest dead pre-activations ``a`` reconstruct ``e``:
   ``L_aux = mean_b ||e_b - a_b W_dec||^2 / mean_b ||e_b - mean(e)||^2`` (0 if the
   denominator is 0).
7. ``loss = L_mse + auxk_alpha * L_aux``; the gradient reaching ``W_dec`` has each row's
   component along that row removed (done inside the backward pass).

The trainer then clips the gradient norm to 1 and takes an Adam step (SAELens' ``SAETrainer``
does both), and the decoder rows are renormalised, ``W_j <- W_j / (||W_j|| + eps)``: eagerly by
the optimizer hook that ``prepare_paper_trainer`` installs, otherwise lazily before the decoder
is next read (the next step, ``encode``/``decode``, saving, folding), which gives the same values.

Inference: ``f = ReLU(pre) * 1[pre > theta]`` - SAELens' JumpReLU with ``theta`` on every latent,
which is how ``save_inference_model`` saves the SAE (architecture ``jumprelu``). It equals the
reference's ``ReLU(pre) * 1[ReLU(pre) > theta]`` for every theta: for theta >= 0 the two masks
agree wherever ``ReLU(pre) > 0``, and for theta = -1 (threshold not started) both are ``ReLU(pre)``.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from numpy.typing import NDArray
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput
from torch import nn
from typing_extensions import override

from sae_vlm_plugin.training.architectures.config import (
    PaperBatchTopKTrainingSAEConfig,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_vlm_plugin.training.batch_reduction import LocalBatch, ShardedBatch
from sae_vlm_plugin.training.selection import auxiliary_entries, batch_topk
from sae_vlm_plugin.training.sparse_ops import (
    ActivePattern,
    active_values,
    decode_active,
    level_errors,
    tangent_to_unit_rows,
)


class PaperBatchTopKTrainingSAE(TrainingSAE[PaperBatchTopKTrainingSAEConfig]):
    """The paper's BatchTopK SAE (see the module docstring for one step's semantics).

    Buffers: ``threshold`` (scalar theta, -1 until the threshold starts) and
    ``n_tokens_since_fired`` (``(d_sae,)`` inputs since each latent last fired). The SAE tracks
    dead latents itself, in inputs as the reference does, and ignores the trainer's
    ``dead_neuron_mask`` (SAELens counts forward passes and updates it after the step).

    ``training_forward_pass`` returns ``feature_acts`` as a sparse COO ``(B, d_sae)`` tensor of
    the kept activations (SAELens' trainer supports sparse codes) and ``hidden_pre`` as the dense
    pre-activations ``(x - b_dec) @ W_enc + b_enc`` before the ReLU (SAELens' convention). Its
    hot path does one dense matmul; everything after the top-k is sparse (``sparse_ops``).
    Training skips the SAE's hook points.
    """

    cfg: PaperBatchTopKTrainingSAEConfig
    b_enc: nn.Parameter
    threshold: torch.Tensor
    n_tokens_since_fired: torch.Tensor

    def __init__(self, cfg: PaperBatchTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=self.dtype, device=self.device))
        self.register_buffer(
            "n_tokens_since_fired", torch.zeros(cfg.d_sae, dtype=torch.long, device=self.device)
        )
        self._level_widths = list(itertools.accumulate(cfg.level_sizes()))
        self._level_weights = cfg.level_weights()
        self._decoder_renorm_pending = False
        self._batch: LocalBatch = LocalBatch()

    def shard_batches_over(self, group: Any = None) -> None:
        """Train data-parallel: from now on each training batch is this rank's equal share of a
        global batch split over the ranks of the ``torch.distributed`` ``group`` (None: the
        default group), and every batch-wide step (BatchTopK over ``k * B_global`` entries, dead
        latents, ``b_dec``'s geometric median, the auxiliary loss' denominator) is taken over the
        global batch (``batch_reduction.ShardedBatch``). Gradients must be averaged over the
        ranks (DistributedDataParallel does it); the SAE then trains as one process with the
        global batch would."""
        self._batch = ShardedBatch(group)

    @override
    def initialize_weights(self) -> None:
        """Unit-norm decoder rows (Kaiming-uniform directions), ``W_enc = W_dec^T``, zero biases."""
        W_dec = torch.empty(self.cfg.d_sae, self.cfg.d_in, dtype=self.dtype, device=self.device)
        nn.init.kaiming_uniform_(W_dec)
        W_dec /= torch.linalg.vector_norm(W_dec, dim=1, keepdim=True) + torch.finfo(self.dtype).eps
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        self.b_dec = nn.Parameter(torch.zeros(self.cfg.d_in, dtype=self.dtype, device=self.device))

    @override
    def get_coefficients(self) -> dict[str, Any]:
        return {}

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference code ``ReLU(pre) * 1[pre > theta]``, exactly SAELens' JumpReLU encode."""
        sae_in = self.process_sae_in(x)
        hidden_pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        base_acts = self.activation_fn(hidden_pre)
        return self.hook_sae_acts_post(
            base_acts * (hidden_pre > self.threshold).to(base_acts.dtype)
        )

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """``feature_acts @ W_dec + b_dec``, renormalising the decoder if a step is pending."""
        self._apply_pending_decoder_renorm()
        return super().decode(feature_acts)

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training-time code as a dense tensor, with the pre-activations: the ``k * B``
        largest entries of ``ReLU(pre)`` over the batch ``x`` (2-D), zeros elsewhere."""
        hidden_pre = self.process_sae_in(x) @ self.W_enc + self.b_enc
        flat = hidden_pre.flatten()
        kept, _ = batch_topk(flat.detach(), self.cfg.k * x.shape[0], self.cfg.d_sae)
        feature_acts = torch.zeros_like(flat).index_put((kept,), flat[kept]).view_as(hidden_pre)
        return feature_acts, hidden_pre

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} computes its auxiliary loss inside training_forward_pass"
        )

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        step = step_input.n_training_steps
        x = self._checked_batch(step_input.sae_in, step)
        n_rows, d_sae = x.shape[0], self.cfg.d_sae
        n_rows_global = n_rows * self._batch.world_size
        self._apply_pending_decoder_renorm()
        with torch.no_grad():
            every = self.cfg.reference_logging_every
            if every is not None and step % every == 0:
                self._replay_reference_logging(x, step, n_rows_global)
            if step == 0:
                self.b_dec.copy_(self._batch.geometric_median(x))
            x_centered = x - self.b_dec
            pre = torch.addmm(self.b_enc, x_centered, self.W_enc)
            kept, kept_values, smallest_kept = self._batch.topk(
                pre.view(-1), self.cfg.k * n_rows_global, d_sae
            )
            self._track(kept, smallest_kept, step, n_rows_global)
            dead = self.n_tokens_since_fired >= self.cfg.dead_feature_threshold
            n_dead = int(dead.sum())
            if n_dead > 0:
                aux_rows, aux_latents, aux_values = auxiliary_entries(
                    pre, dead, min(self.cfg.d_in // 2, n_dead)
                )
            else:
                aux_rows, aux_latents, aux_values = kept[:0], kept[:0], kept_values[:0]
            pattern = ActivePattern.build(
                kept, aux_rows, aux_latents, self._level_widths, n_rows, d_sae, n_dead > 0
            )

        values = active_values(
            self.b_dec,
            self.W_enc,
            self.b_enc,
            torch.cat([kept_values, aux_values]),
            x_centered,
            pattern,
        )
        contributions, aux_reconstruction = decode_active(
            values, tangent_to_unit_rows(self.W_dec), pattern, len(self._level_widths)
        )
        mse_loss, level_mse, residual = level_errors(
            self.b_dec, contributions, x, self._level_weights
        )
        auxk_loss = self._auxk_loss(residual, aux_reconstruction[0] if n_dead else None)
        weighted_auxk_loss = self.cfg.auxk_alpha * auxk_loss
        self._decoder_renorm_pending = True

        feature_acts = torch.sparse_coo_tensor(
            torch.stack([kept // d_sae, kept % d_sae]),
            kept_values,
            (n_rows, d_sae),
            is_coalesced=True,
            check_invariants=False,
        )
        metrics: dict[str, Any] = {
            "threshold": self.threshold.detach().clone(),
            "dead_latents": n_dead,
            "auxk_loss_unweighted": auxk_loss.detach(),
        }
        if len(self._level_widths) > 1:
            for level, value in enumerate(level_mse):
                metrics[f"level_{level}_mse_loss"] = value
        return TrainStepOutput(
            sae_in=x,
            sae_out=x - residual,
            feature_acts=feature_acts,
            hidden_pre=pre,
            loss=mse_loss + weighted_auxk_loss,
            losses={"mse_loss": mse_loss, "auxiliary_reconstruction_loss": weighted_auxk_loss},
            metrics=metrics,
        )

    @torch.no_grad()
    def renormalize_decoder(self) -> None:
        """Finish the pending optimizer step's decoder update: ``W_j <- W_j / (||W_j|| + eps)``
        for every row, as the reference does right after each Adam step (no-op otherwise)."""
        self._apply_pending_decoder_renorm()

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold the training input scaling ``x_train = scaling_factor * x`` into the SAE, the way
        dictionary_learning's ``scale_biases(1 / scaling_factor)`` does: ``b_enc``, ``b_dec`` and
        ``theta`` (once it is active) are divided by ``scaling_factor`` and the weights are kept.
        Then ``pre(x) = pre_train(x_train) / scaling_factor`` and the reconstruction comes out in
        raw units: the SAE reads raw activations, its latents are in raw units and its decoder
        rows stay unit-norm, as in the paper's saved SAEs."""
        self._apply_pending_decoder_renorm()
        norm_factor = 1.0 / scaling_factor
        self.b_enc.mul_(norm_factor)
        self.b_dec.mul_(norm_factor)
        if self.threshold >= 0:
            self.threshold.mul_(norm_factor)
        self.cfg.normalize_activations = "none"

    @override
    def process_state_dict_for_saving(self, state_dict: dict[str, Any]) -> None:
        self._apply_pending_decoder_renorm()
        state_dict["W_dec"] = self.W_dec.detach()

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        """SAELens' disk loader casts every tensor to the config dtype; the counter is integral
        (exact through float32 up to 2^24 inputs, beyond any sensible dead_feature_threshold)."""
        state_dict["n_tokens_since_fired"] = state_dict["n_tokens_since_fired"].long()

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        """The JumpReLU inference weights: ``threshold`` becomes theta on every latent and the
        dead-latent counter is dropped."""
        super().process_state_dict_for_saving_inference(state_dict)
        del state_dict["n_tokens_since_fired"]
        state_dict["threshold"] = state_dict["threshold"].expand(self.cfg.d_sae).clone()

    @override
    def log_histograms(self) -> dict[str, NDArray[Any]]:
        self._apply_pending_decoder_renorm()
        return super().log_histograms()

    def _checked_batch(self, sae_in: torch.Tensor, step: int) -> torch.Tensor:
        if sae_in.ndim != 2 or sae_in.shape[1] != self.cfg.d_in:
            raise ValueError(
                f"training step {step}: expected activations of shape "
                f"(batch, d_in={self.cfg.d_in}), got {tuple(sae_in.shape)}"
            )
        if sae_in.shape[0] == 0:
            raise ValueError(f"training step {step}: the activation batch is empty")
        if torch.is_autocast_enabled(sae_in.device.type):
            raise ValueError(
                f"training step {step}: {self.cfg.architecture()} trains in float32/float64 as the "
                "paper did; turn autocast off (SAETrainerConfig.autocast=False)"
            )
        x = sae_in.detach().to(self.dtype)
        if not torch.isfinite(x).all():
            n_bad = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"training step {step}: the activation batch holds {n_bad} NaN/inf values "
                f"(after casting to {self.cfg.dtype}); the SAE was not updated"
            )
        return x

    def _track(
        self, kept: torch.Tensor, smallest_kept: torch.Tensor, step: int, n_rows_global: int
    ) -> None:
        """Steps 3 and 4 of the module docstring: the threshold EMA and the dead-latent counts,
        from the kept entries (flat indices into the ``(B, d_sae)`` batch) of one batch."""
        d_sae = self.cfg.d_sae
        if step > self.cfg.threshold_start_step:
            self._update_threshold(smallest_kept)
        fired = torch.zeros(d_sae, dtype=torch.bool, device=kept.device)
        fired[kept % d_sae] = True
        self.n_tokens_since_fired += n_rows_global
        self.n_tokens_since_fired[self._batch.fired(fired)] = 0

    def _replay_reference_logging(self, x: torch.Tensor, step: int, n_rows_global: int) -> None:
        """What the reference's ``log_stats`` -> ``trainer.loss()`` does to the training state
        before this step's update (``cfg.reference_logging_every``): the same batch-top-k on
        the current weights, then ``_track``. Nothing else it computes is kept."""
        pre = torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)
        kept, _, smallest_kept = self._batch.topk(
            pre.view(-1), self.cfg.k * n_rows_global, self.cfg.d_sae
        )
        self._track(kept, smallest_kept, step, n_rows_global)

    def _update_threshold(self, smallest: torch.Tensor) -> None:
        """``smallest``: the smallest kept (positive) BatchTopK activation, 0 if none."""
        if self.threshold < 0:
            self.threshold.copy_(smallest)
        else:
            beta = self.cfg.threshold_beta
            self.threshold.copy_(beta * self.threshold + (1 - beta) * smallest)

    def _auxk_loss(
        self, residual: torch.Tensor, aux_reconstruction: torch.Tensor | None
    ) -> torch.Tensor:
        if aux_reconstruction is None:
            return residual.new_zeros(())
        denominator = self._batch.residual_variance(residual)
        if denominator <= 0:
            return residual.new_zeros(())
        return (residual - aux_reconstruction).pow(2).sum(dim=-1).mean() / denominator

    @torch.no_grad()
    def _apply_pending_decoder_renorm(self) -> None:
        if self._decoder_renorm_pending:
            eps = torch.finfo(self.W_dec.dtype).eps
            self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True) + eps)
            self._decoder_renorm_pending = False


class PaperMatryoshkaBatchTopKTrainingSAE(PaperBatchTopKTrainingSAE):
    """The paper's Matryoshka-BatchTopK SAE: the BatchTopK step with one reconstruction level per
    group of latents, ``L_mse = mean_g w_g mean_b ||x_b - x_hat_g,b||^2`` (``w_g = 1/G`` by
    default). Each group's contribution is decoded once from its active latents and the levels
    are its cumulative sums. Per-level MSEs are reported as ``level_{g}_mse_loss`` metrics."""

    cfg: PaperMatryoshkaBatchTopKTrainingSAEConfig
