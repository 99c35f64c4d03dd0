"""Configs of the paper-faithful BatchTopK and Matryoshka-BatchTopK training SAEs.

They reproduce the trainers the paper used (saprmarks/dictionary_learning, January 2025, as
vendored in ExplainableML/sae-for-vlm): ``BatchTopKTrainer`` and ``MatroyshkaBatchTopKTrainer``.
Both are SAELens ``TrainingSAEConfig`` subclasses, so SAELens' ``SAETrainer`` and its
``TrainingSAE.from_dict`` / ``load_from_disk`` work with them, and both save for inference as
SAELens' plain ``jumprelu`` architecture (no plugin is needed to load the result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig
from typing_extensions import override

PAPER_BATCHTOPK_ARCHITECTURE = "paper_batchtopk"
PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE = "paper_matryoshka_batchtopk"

PAPER_GROUP_FRACTIONS: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5625)
"""The paper's Matryoshka levels (1/16, 1/8, 1/4, 9/16 of d_sae: cumulative 1/16, 3/16, 7/16, 1)."""

INATURALIST_GROUP_FRACTIONS: tuple[float, ...] = (0.002, 0.009, 0.035, 0.189, 0.765)
"""The paper's iNaturalist hierarchy SAE (appendix E.3): at d_sae = 1536 these give groups of
3, 13, 53, 290 and 1177 latents, the node counts of the first five levels of the taxonomy."""

TrainingDtype = Literal["float32", "float64"]


@dataclass(kw_only=True)
class PaperBatchTopKTrainingSAEConfig(TrainingSAEConfig):
    """BatchTopK SAE trained exactly as the paper's reference code trains it.

    Encoder ``pre = ReLU((x - b_dec) @ W_enc + b_enc)``; during training only the ``k * B``
    largest entries of the whole ``(B, d_sae)`` batch are kept; at inference
    ``f = pre * 1[pre > theta]`` with one scalar threshold ``theta``. Decoder
    ``x_hat = f @ W_dec + b_dec`` with unit-norm rows of ``W_dec``. Loss
    ``mean_b ||x_b - x_hat_b||^2 + auxk_alpha * L_aux`` (see ``PaperBatchTopKTrainingSAE``).

    The inherited SAELens fields keep their meaning, with these restrictions (checked):
    ``apply_b_dec_to_input`` must be True (the encoder subtracts ``b_dec``),
    ``normalize_activations`` and ``reshape_activations`` must be ``"none"`` (the paper's input
    scaling is a trainer-level step: see ``prepare_paper_trainer``), ``decoder_init_norm`` must
    be 1.0 (unit-norm decoder rows) and ``dtype`` float32 or float64 (the sparse kernels do not
    run in half precision; the paper trained in float32).
    """

    k: int = 20
    """Average number of active latents per input: a training step keeps the ``k * B`` largest
    pre-activations of the batch (B inputs)."""

    auxk_alpha: float = 1 / 32
    """Weight of the auxiliary dead-latent loss (dictionary_learning's default 1/32; the
    paper's scripts pass 0.03)."""

    dead_feature_threshold: int = 10_000_000
    """A latent is dead once it has not fired for at least this many training inputs (tokens)."""

    threshold_beta: float = 0.999
    """EMA coefficient of the inference threshold:
    ``theta <- beta * theta + (1 - beta) * min_positive_topk_activation``."""

    threshold_start_step: int = 1000
    """The threshold stays -1 (inactive) until the step index (0-based) exceeds this value; the
    first update sets it to the batch's minimum positive top-k activation, later ones take the
    EMA."""

    reference_logging_every: int | None = None
    """Opt-in: replay what the reference's logging does to its training state, for bit-level
    reproduction of the released checkpoints. With ``log_steps`` N (10000 in the paper's
    scripts; ``use_wandb`` is always on in ``sae_train.py``), ``log_stats`` runs
    ``trainer.loss()`` on the batch before ``update()`` at every step ``t`` with ``t % N == 0``,
    so at those steps the threshold gets a second EMA update (once ``t > threshold_start_step``)
    and every latent's inputs-since-fired count a second ``+B`` (reset where it fires), at step
    0 before ``b_dec`` is set. None (default): logging, here and in SAELens, changes nothing."""

    decoder_init_norm: float | None = 1.0
    """Norm of the initial decoder rows; the paper keeps rows at unit norm: only 1.0 is valid."""

    dtype: TrainingDtype = "float32"
    """Parameter dtype: float32 (the paper) or float64."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return PAPER_BATCHTOPK_ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUSAEConfig

    def __post_init__(self) -> None:
        self._check()
        super().__post_init__()

    def level_sizes(self) -> list[int]:
        """Latents per reconstruction level; a plain BatchTopK SAE has one level of ``d_sae``."""
        return [self.d_sae]

    def level_weights(self) -> list[float]:
        """Weight ``w_g`` of each level's MSE in ``mean_g w_g * MSE_g``; one level of weight 1."""
        return [1.0]

    def _check(self) -> None:
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(
                f"d_in and d_sae must be >= 1, got d_in={self.d_in}, d_sae={self.d_sae}"
            )
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be an integer in [1, d_sae={self.d_sae}], got k={self.k!r}")
        if self.auxk_alpha < 0:
            raise ValueError(f"auxk_alpha must be >= 0, got {self.auxk_alpha}")
        if self.dead_feature_threshold < 1:
            raise ValueError(
                f"dead_feature_threshold must be >= 1 token, got {self.dead_feature_threshold}"
            )
        if not 0.0 <= self.threshold_beta <= 1.0:
            raise ValueError(f"threshold_beta must be in [0, 1], got {self.threshold_beta}")
        if self.threshold_start_step < 0:
            raise ValueError(f"threshold_start_step must be >= 0, got {self.threshold_start_step}")
        if self.reference_logging_every is not None and self.reference_logging_every < 1:
            raise ValueError(
                f"reference_logging_every must be >= 1 or None, got {self.reference_logging_every}"
            )
        if self.decoder_init_norm != 1.0:
            raise ValueError(
                "decoder_init_norm must be 1.0: the paper keeps every decoder row at unit norm, "
                f"got {self.decoder_init_norm}"
            )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not self.apply_b_dec_to_input:
            raise ValueError("apply_b_dec_to_input must be True: the encoder reads x - b_dec")
        if self.normalize_activations != "none":
            raise ValueError(
                "normalize_activations must be 'none': the paper's input scaling "
                "(x / sqrt(mean ||x||^2)) is applied by the trainer, see prepare_paper_trainer, "
                f"got {self.normalize_activations!r}"
            )
        if self.reshape_activations != "none":
            raise ValueError(
                f"reshape_activations must be 'none', got {self.reshape_activations!r}"
            )


@dataclass(kw_only=True)
class PaperMatryoshkaBatchTopKTrainingSAEConfig(PaperBatchTopKTrainingSAEConfig):
    """Matryoshka-BatchTopK SAE trained exactly as the paper's reference code trains it.

    The latents are split into G consecutive groups; level g reconstructs from the first
    ``w_1 + ... + w_g`` latents only, ``x_hat_g = b_dec + sum_{h <= g} f_h @ W_dec,h``, and the
    reconstruction loss is ``mean_g (w_g * mean_b ||x_b - x_hat_g,b||^2)``. With the default
    ``w_g = 1/G`` the effective weight of each level is ``1/G^2`` (SAELens' built-in
    ``matryoshka_batchtopk`` adds the levels with weight 1: a different objective).

    Give the groups either as ``group_fractions`` (dictionary_learning's rule: group g has
    ``int(fraction_g * d_sae)`` latents, the last group takes the remainder) or as explicit
    ``group_sizes``, not both; with neither, the paper's ``PAPER_GROUP_FRACTIONS`` are used.
    """

    group_fractions: list[float] | None = None
    """Fraction of d_sae in each group, summing to 1 (None: see the class docstring)."""

    group_sizes: list[int] | None = None
    """Explicit number of latents in each group, positive and summing to d_sae."""

    group_weights: list[float] | None = None
    """Weight ``w_g`` of each level (one per group, >= 0); None means ``1/G`` each."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return PAPER_MATRYOSHKA_BATCHTOPK_ARCHITECTURE

    @override
    def level_sizes(self) -> list[int]:
        if self.group_sizes is not None:
            return list(self.group_sizes)
        fractions = PAPER_GROUP_FRACTIONS if self.group_fractions is None else self.group_fractions
        return group_sizes_from_fractions(fractions, self.d_sae)

    @override
    def level_weights(self) -> list[float]:
        if self.group_weights is not None:
            return list(self.group_weights)
        n_groups = len(self.level_sizes())
        return [1.0 / n_groups] * n_groups

    @override
    def get_training_architecture_details(self) -> dict[str, Any]:
        """The training fields, plus the resolved cumulative ``matryoshka_widths``, which saved
        SAEs carry in ``metadata.training_architecture_details`` for per-level analyses."""
        return {
            **super().get_training_architecture_details(),
            "matryoshka_widths": self.matryoshka_widths,
        }

    @property
    def matryoshka_widths(self) -> list[int]:
        """Cumulative widths of the levels (SAELens' ``matryoshka_widths`` convention)."""
        widths, total = [], 0
        for size in self.level_sizes():
            total += size
            widths.append(total)
        return widths

    @override
    def _check(self) -> None:
        super()._check()
        if self.group_fractions is not None and self.group_sizes is not None:
            raise ValueError("give group_fractions or group_sizes, not both")
        if self.group_sizes is not None:
            sizes = self.group_sizes
            if not sizes or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
                raise ValueError(f"group_sizes must be a non-empty list of integers, got {sizes!r}")
            if any(s < 1 for s in sizes):
                raise ValueError(f"every group needs at least one latent, got group_sizes={sizes}")
            if sum(sizes) != self.d_sae:
                raise ValueError(
                    f"group_sizes must sum to d_sae={self.d_sae}, got {sizes} (sum {sum(sizes)})"
                )
        n_groups = len(self.level_sizes())  # validates group_fractions
        if self.group_weights is not None:
            if len(self.group_weights) != n_groups:
                raise ValueError(
                    f"group_weights needs one weight per group ({n_groups}), "
                    f"got {self.group_weights}"
                )
            if any(not math.isfinite(w) or w < 0 for w in self.group_weights):
                raise ValueError(f"group_weights must be finite and >= 0, got {self.group_weights}")


def group_sizes_from_fractions(fractions: list[float] | tuple[float, ...], d_sae: int) -> list[int]:
    """dictionary_learning's rule: ``int(f_g * d_sae)`` latents for every group but the last,
    which takes the remainder. Raises ValueError if the fractions do not sum to 1 or a group
    would be empty."""
    fractions = list(fractions)
    if not fractions or any(not math.isfinite(f) or f <= 0 for f in fractions):
        raise ValueError(f"group_fractions must be positive numbers, got {fractions}")
    if not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"group_fractions must sum to 1, got {fractions} (sum {sum(fractions)})")
    sizes = [int(f * d_sae) for f in fractions[:-1]]
    sizes.append(d_sae - sum(sizes))
    empty = [g for g, size in enumerate(sizes) if size < 1]
    if empty:
        raise ValueError(
            f"group_fractions {fractions} leave group(s) {empty} empty at d_sae={d_sae} "
            f"(sizes {sizes}); use a wider SAE or explicit group_sizes"
        )
    return sizes
