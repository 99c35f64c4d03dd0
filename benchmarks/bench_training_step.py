"""Training step time: the plugin's paper Matryoshka-BatchTopK against SAELens' built-in
``matryoshka_batchtopk``, both driven by SAELens' ``SAETrainer.step`` (forward, backward, gradient
clipping, Adam step and the trainer's bookkeeping) on the same batch, side by side, and each
as a multiple of one dense ``(B, d_in) @ (d_in, d_sae)`` matmul, the floor of any BatchTopK step.
Each side runs as a user would: the plugin's trainer after ``prepare_paper_trainer`` (which
also switches Adam to PyTorch's fused kernel, worth about 0.2 matmul at d_sae = 6144), the
built-in with SAETrainer's own Adam.

Shapes: d_in = 768, B = 4096, k = 20, the paper's Matryoshka groups; d_sae = 6144 (x8, held to
the goals: at least 4x faster than the built-in, at most 3 matmuls) and 49152 (x64, reported).
``quick``: d_in = 64, d_sae = 512, B = 256, a smoke run without goals (at that size fixed
per-op costs dominate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from harness import Figure, time_side_by_side
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.training.sae_trainer import SAETrainer

from sae_vlm_plugin.training import (
    PaperMatryoshkaBatchTopKTrainingSAE,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
    paper_learning_rate,
    prepare_paper_trainer,
)

BENCHMARK = "training_step"
K = 20


def _trainer(sae: torch.nn.Module, batch_size: int, lr: float) -> SAETrainer:
    cfg = SAETrainerConfig(
        total_training_samples=10**6 * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    no_data: Iterator[torch.Tensor] = iter(())
    return SAETrainer(cfg, sae, no_data, evaluator=None)  # type: ignore[arg-type]


def _stepper(trainer: SAETrainer, batch: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        trainer.step(batch)
        trainer.n_training_steps += 1  # what fit() does after each step

    return step


def _figures(d_in: int, d_sae: int, batch_size: int, repeats: int, goals: bool) -> list[Figure]:
    torch.manual_seed(0)
    batch = torch.randn(batch_size, d_in)
    lr = paper_learning_rate(d_sae)

    paper_cfg = PaperMatryoshkaBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=K)
    paper = PaperMatryoshkaBatchTopKTrainingSAE(paper_cfg)
    paper_trainer = _trainer(paper, batch_size, lr)
    prepare_paper_trainer(paper_trainer, scaling_factor=None, warmup_steps=10)

    builtin_cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=K, matryoshka_widths=paper_cfg.matryoshka_widths
    )
    builtin = MatryoshkaBatchTopKTrainingSAE(builtin_cfg)
    builtin_trainer = _trainer(builtin, batch_size, lr)

    W_enc = paper.W_enc.detach().clone()
    times = time_side_by_side(
        {
            "paper": _stepper(paper_trainer, batch),
            "builtin": _stepper(builtin_trainer, batch),
            "matmul": lambda: batch @ W_enc,
        },
        repeats=repeats,
        warmup=1,
    )
    shape = f"d_in={d_in} d_sae={d_sae} B={batch_size} k={K}"
    ms = {name: f"{seconds * 1e3:.0f} ms" for name, seconds in times.items()}
    matmul = f"one dense {batch_size}x{d_in}x{d_sae} matmul"
    return [
        Figure(
            BENCHMARK,
            f"paper matryoshka step / built-in step (d_sae={d_sae})",
            times["paper"] / times["builtin"],
            "SAELens matryoshka_batchtopk step",
            goal_max=0.25 if goals else None,
            detail=f"{shape}: {ms['paper']} vs {ms['builtin']}",
        ),
        Figure(
            BENCHMARK,
            f"paper matryoshka step / matmul (d_sae={d_sae})",
            times["paper"] / times["matmul"],
            matmul,
            goal_max=3.0 if goals else None,
            detail=f"{ms['paper']} vs {ms['matmul']}",
        ),
        Figure(
            BENCHMARK,
            f"built-in step / matmul (d_sae={d_sae})",
            times["builtin"] / times["matmul"],
            matmul,
            detail=f"{ms['builtin']} vs {ms['matmul']}",
        ),
    ]


def run(quick: bool) -> list[Figure]:
    if quick:
        return _figures(d_in=64, d_sae=512, batch_size=256, repeats=3, goals=False)
    return [
        *_figures(d_in=768, d_sae=6144, batch_size=4096, repeats=5, goals=True),
        *_figures(d_in=768, d_sae=49152, batch_size=4096, repeats=2, goals=False),
    ]
