"""Training step time: the plugin's paper Matryoshka-BatchTopK against SAELens' built-in
``matryoshka_batchtopk``, both driven by SAELens' ``SAETrainer.step`` (forward, backward, gradient
clipping, Adam step and the trainer's bookkeeping) on the same batch, side by side, and each
as a multiple of one dense ``(B, d_in) @ (d_in, d_sae)`` matmul, the floor of any BatchTopK step.
Each side runs as a user would: the plugin's trainer after ``prepare_paper_trainer`` (which
also switches Adam to PyTorch's fused kernel, worth about 0.2 matmul at d_sae = 6144), the
built-in with SAETrainer's own Adam.

Peers (issue #28): every installed peer's own step on the same batch and shape, interleaved with
the rest (``peers.py`` says which release and API each measures): dictionary_learning's
BatchTopK and Matryoshka-BatchTopK trainers' ``update``, eai-sparsify's ``SparseCoder`` (TopK),
overcomplete's ``BatchTopKSAE`` through its ``train_sae``. Each is reported against the matmul
and as the paper step / peer step; a peer that is not installed is skipped with a line on
stderr (``pip install -e ".[bench]"`` installs those that co-install with the project).

Shapes: d_in = 768, B = 4096, k = 20, the paper's Matryoshka groups; d_sae = 6144 (x8, held to
the goals of issue #16: at least 4x faster than the built-in, at most 1.25 matmuls) and 49152
(x64: at most 1.15 matmuls); at both, the paper step at most as long as every peer's (#28).
``quick``: d_in = 64, d_sae = 512, B = 256, a smoke run without goals (at that size fixed
per-op costs dominate), peers included. The warm-up call of each candidate also measures the
memory a step needs above what it already holds.

    python benchmarks/run.py --only training_step [--quick] [--device cuda]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import torch
from harness import (
    Figure,
    current_memory_gib,
    peak_memory_gib,
    reset_peak_memory,
    time_side_by_side,
)
from peers import peer_steps
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

DEVICES = ("cpu", "cuda")
BENCHMARK = "training_step"
K = 20


def _trainer(sae: torch.nn.Module, batch_size: int, lr: float, device: str = "cpu") -> SAETrainer:
    cfg = SAETrainerConfig(
        total_training_samples=10**6 * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,
        device=device,
        logger=LoggingConfig(log_to_wandb=False),
    )
    no_data: Iterator[torch.Tensor] = iter(())
    return SAETrainer(cfg, sae, no_data, evaluator=None)  # type: ignore[arg-type]


def _stepper(trainer: SAETrainer, batch: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        trainer.step(batch)
        trainer.n_training_steps += 1  # what fit() does after each step

    return step


def _peak_growth_gib(fn: Callable[[], object], device: str) -> float:
    """Memory one call of ``fn`` needs above what is held before it (GiB)."""
    before = current_memory_gib(device)
    reset_peak_memory(device)
    fn()
    return peak_memory_gib(device) - before


def step_figures(
    d_in: int,
    d_sae: int,
    batch_size: int,
    repeats: int,
    device: str = "cpu",
    benchmark: str = BENCHMARK,
    goal_vs_builtin: float | None = None,
    goal_vs_matmul: float | None = None,
    goal_vs_peers: float | None = None,
    with_peers: bool = False,
) -> list[Figure]:
    """The paper's step, the built-in step and (``with_peers``) every installed peer's step,
    each against the matmul, and the paper's against each of the others; the first call of each
    is the warm-up and measures its peak memory."""
    torch.manual_seed(0)
    batch = torch.randn(batch_size, d_in, device=device)
    lr = paper_learning_rate(d_sae)

    paper_cfg = PaperMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=K, device=device
    )
    paper = PaperMatryoshkaBatchTopKTrainingSAE(paper_cfg)
    paper_trainer = _trainer(paper, batch_size, lr, device)
    prepare_paper_trainer(paper_trainer, scaling_factor=None, warmup_steps=10)

    builtin_cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in, d_sae=d_sae, k=K, matryoshka_widths=paper_cfg.matryoshka_widths, device=device
    )
    builtin = MatryoshkaBatchTopKTrainingSAE(builtin_cfg)
    builtin_trainer = _trainer(builtin, batch_size, lr, device)

    peers, missing = peer_steps(batch, d_sae, K, device) if with_peers else ({}, [])
    for line in missing:
        print(f"{benchmark}: skipping peer {line}", file=sys.stderr)

    W_enc = paper.W_enc.detach().clone()
    candidates = {
        "paper": _stepper(paper_trainer, batch),
        "builtin": _stepper(builtin_trainer, batch),
        **{name: peer.step for name, peer in peers.items()},
        "matmul": lambda: batch @ W_enc,
    }
    peak = {name: _peak_growth_gib(fn, device) for name, fn in candidates.items()}
    times = time_side_by_side(candidates, repeats=repeats, warmup=0, device=device)
    shape = f"d_in={d_in} d_sae={d_sae} B={batch_size} k={K}"
    ms = {name: f"{seconds * 1e3:.0f} ms" for name, seconds in times.items()}
    memory = {name: f"{gib:.2f} GiB" for name, gib in peak.items()}
    matmul = f"one dense {batch_size}x{d_in}x{d_sae} matmul"
    figures = [
        Figure(
            benchmark,
            f"paper matryoshka step / built-in step (d_sae={d_sae})",
            times["paper"] / times["builtin"],
            "SAELens matryoshka_batchtopk step",
            goal_max=goal_vs_builtin,
            detail=f"{shape}: {ms['paper']} vs {ms['builtin']}; "
            f"memory a step needs {memory['paper']} vs {memory['builtin']}",
        ),
        Figure(
            benchmark,
            f"paper matryoshka step / matmul (d_sae={d_sae})",
            times["paper"] / times["matmul"],
            matmul,
            goal_max=goal_vs_matmul,
            detail=f"{ms['paper']} vs {ms['matmul']}",
        ),
        Figure(
            benchmark,
            f"built-in step / matmul (d_sae={d_sae})",
            times["builtin"] / times["matmul"],
            matmul,
            detail=f"{ms['builtin']} vs {ms['matmul']}",
        ),
    ]
    for name, peer in peers.items():
        figures += [
            Figure(
                benchmark,
                f"paper matryoshka step / {name} step (d_sae={d_sae})",
                times["paper"] / times[name],
                peer.label,
                goal_max=goal_vs_peers,
                detail=f"{shape}: {ms['paper']} vs {ms[name]}; "
                f"memory a step needs {memory['paper']} vs {memory[name]}",
            ),
            Figure(
                benchmark,
                f"{name} step / matmul (d_sae={d_sae})",
                times[name] / times["matmul"],
                matmul,
                detail=f"{ms[name]} vs {ms['matmul']}",
            ),
        ]
    return figures


def run(quick: bool, device: str = "cpu") -> list[Figure]:
    if quick:
        return step_figures(64, 512, 256, repeats=3, device=device, with_peers=True)
    return [
        *step_figures(
            768,
            6144,
            4096,
            repeats=5,
            device=device,
            goal_vs_builtin=0.25,
            goal_vs_matmul=1.25,
            goal_vs_peers=1.0,
            with_peers=True,
        ),
        *step_figures(
            768,
            49152,
            4096,
            repeats=2,
            device=device,
            goal_vs_matmul=1.15,
            goal_vs_peers=1.0,
            with_peers=True,
        ),
    ]
