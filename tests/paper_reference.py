"""An independent, deliberately plain re-implementation of the paper's SAE training step.

It follows the formulas of the paper's trainer (dictionary_learning's BatchTopKTrainer and
MatroyshkaBatchTopKTrainer, January 2025) with dense tensors and ordinary autograd, and shares
no code with ``sae_vlm_plugin.training``. A plain BatchTopK SAE is the one-group case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReferenceStep:
    """What one reference training step computed."""

    loss: float
    mse_loss: float
    level_mse: list[float]
    auxk_loss: float
    n_dead: int
    threshold: float


def reference_geometric_median(points: torch.Tensor) -> torch.Tensor:
    guess = points.mean(dim=0)
    for _ in range(100):
        previous = guess
        weights = 1 / torch.norm(points - guess, dim=1)
        weights = weights / weights.sum()
        guess = (weights[:, None] * points).sum(dim=0)
        if torch.norm(guess - previous) < 1e-5:
            break
    return guess


def reference_norm_factor(batches: list[torch.Tensor]) -> float:
    """sqrt of the mean over batches of the batch-mean squared norm."""
    means = [(b.double() ** 2).sum(dim=1).mean().item() for b in batches]
    return (sum(means) / len(means)) ** 0.5


def dense_paper_loss(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    *,
    k: int,
    group_sizes: list[int],
    group_weights: list[float],
    auxk_alpha: float,
    dead: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(loss, mse_loss, per-level unweighted MSE, unweighted aux loss, batch-topk code f) of one
    step, dense, given the dead-latent mask that holds *after* this batch's firing is counted."""
    batch = x.shape[0]
    pre = torch.relu((x - b_dec) @ W_enc + b_enc)
    flat = pre.flatten()
    top = flat.topk(k * batch)
    f = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)

    reconstruction = b_dec + torch.zeros_like(x)
    level_mse, weighted = [], []
    start = 0
    for size, weight in zip(group_sizes, group_weights, strict=True):
        reconstruction = reconstruction + f[:, start : start + size] @ W_dec[start : start + size]
        mse = ((x - reconstruction) ** 2).sum(dim=-1).mean()
        level_mse.append(mse)
        weighted.append(mse * weight)
        start += size
    mse_loss = torch.stack(weighted).mean()

    n_dead = int(dead.sum())
    aux = torch.zeros((), dtype=x.dtype)
    if n_dead > 0:
        k_aux = min(x.shape[1] // 2, n_dead)
        candidates = torch.where(dead[None], pre, -torch.inf)
        values, indices = candidates.topk(k_aux, dim=-1)
        aux_code = torch.zeros_like(pre).scatter(-1, indices, values)
        residual = (x - reconstruction).detach()
        numerator = ((residual - aux_code @ W_dec) ** 2).sum(dim=-1).mean()
        denominator = ((residual - residual.mean(dim=0)) ** 2).sum(dim=-1).mean()
        if denominator > 0:
            aux = numerator / denominator
    return mse_loss + auxk_alpha * aux, mse_loss, level_mse, aux, f


def project_decoder_grad(W_dec: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    unit = W_dec / (W_dec.norm(dim=1, keepdim=True) + 1e-6)
    return grad - (grad * unit).sum(dim=1, keepdim=True) * unit


class ReferencePaperTrainer:
    """The paper's trainer: its SAE, Adam, warm-up schedule, threshold and dead-latent tracking."""

    def __init__(
        self,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
        *,
        k: int,
        group_sizes: list[int],
        auxk_alpha: float,
        dead_feature_threshold: int,
        threshold_beta: float,
        threshold_start_step: int,
        lr: float,
        warmup_steps: int,
    ):
        self.W_enc = W_enc.clone().requires_grad_(True)
        self.b_enc = b_enc.clone().requires_grad_(True)
        self.W_dec = W_dec.clone().requires_grad_(True)
        self.b_dec = b_dec.clone().requires_grad_(True)
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.k = k
        self.group_sizes = group_sizes
        self.group_weights = [1 / len(group_sizes)] * len(group_sizes)
        self.auxk_alpha = auxk_alpha
        self.dead_feature_threshold = dead_feature_threshold
        self.threshold_beta = threshold_beta
        self.threshold_start_step = threshold_start_step
        self.threshold = torch.tensor(-1.0, dtype=W_enc.dtype)
        self.tokens_since_fired = torch.zeros(W_dec.shape[0], dtype=torch.long)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: s / warmup_steps if s < warmup_steps else 1.0
        )

    def _count(self, step: int, x: torch.Tensor) -> None:
        """The state ``loss()`` changes: the threshold EMA and the inputs-since-fired counts."""
        with torch.no_grad():
            pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
            flat = pre.flatten()
            top = flat.topk(self.k * x.shape[0])
            f = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
            if step > self.threshold_start_step:
                active = f[f > 0]
                smallest = active.min() if active.numel() else torch.zeros((), dtype=f.dtype)
                if self.threshold < 0:
                    self.threshold = smallest.clone()
                else:
                    self.threshold = (
                        self.threshold_beta * self.threshold + (1 - self.threshold_beta) * smallest
                    )
            self.tokens_since_fired += x.shape[0]
            self.tokens_since_fired[f.sum(dim=0) > 0] = 0

    def log_stats(self, step: int, x: torch.Tensor) -> None:
        """The reference's ``log_stats``, which calls ``trainer.loss(x, step, logging=True)``
        before ``update`` at every logged step: its only lasting effect is ``_count``."""
        self._count(step, x)

    def update(self, step: int, x: torch.Tensor) -> ReferenceStep:
        if step == 0:
            self.b_dec.data = reference_geometric_median(x)
        self._count(step, x)
        dead = self.tokens_since_fired >= self.dead_feature_threshold

        loss, mse_loss, level_mse, aux, _ = dense_paper_loss(
            x,
            self.W_enc,
            self.b_enc,
            self.W_dec,
            self.b_dec,
            k=self.k,
            group_sizes=self.group_sizes,
            group_weights=self.group_weights,
            auxk_alpha=self.auxk_alpha,
            dead=dead,
        )
        loss.backward()
        assert self.W_dec.grad is not None
        self.W_dec.grad = project_decoder_grad(self.W_dec.detach(), self.W_dec.grad)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.scheduler.step()
        with torch.no_grad():
            eps = torch.finfo(self.W_dec.dtype).eps
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True) + eps
        return ReferenceStep(
            loss=loss.item(),
            mse_loss=mse_loss.item(),
            level_mse=[m.item() for m in level_mse],
            auxk_loss=aux.item(),
            n_dead=int(dead.sum()),
            threshold=float(self.threshold),
        )

    def inference_code(self, x: torch.Tensor) -> torch.Tensor:
        """The reference SAE's inference code on already scaled inputs."""
        with torch.no_grad():
            pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
            return pre * (pre > self.threshold)
