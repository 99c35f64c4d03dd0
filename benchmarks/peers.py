"""Other libraries' SAE training steps, one adapter each, for ``bench_training_step`` (issue #28).

Each adapter builds a peer's SAE for ``d_in -> d_sae`` with ``k`` active latents per input and
returns a callable that takes one training step on a fixed batch: forward, loss, backward,
optimizer step, and whatever the peer does around them each step. Where the peer has its own
per-step trainer function, the callable is that function; otherwise it is the peer's own
trainer loop body, written out. Each callable's ``label`` names the release and the API measured.

- ``dictionary_learning`` 0.1.0 (the paper's reference trainer; ExplainableML/sae-for-vlm
  vendors a copy of it): ``trainers.batch_top_k.BatchTopKTrainer.update(step, x)``, and
  ``trainers.matryoshka_batch_top_k.MatryoshkaBatchTopKTrainer.update(step, x)`` with the
  paper's group fractions (the algorithm the plugin's paper step reproduces). Its own trainer:
  BatchTopK over the batch's ``k * B`` entries, the dead-latent count and AuxK, backward,
  decoder-parallel gradient removal, grad-norm clip 1.0, Adam, LR schedule, decoder
  renormalisation, ``loss.item()``. It cannot be co-installed with this project (it pins
  ``nnsight>=0.3,<0.4``; the project needs ``nnsight>=0.8.1``), so it is not in the ``bench``
  extra; ``pip install --no-deps dictionary-learning==0.1.0`` adds it by hand (its trainers
  import only torch and einops) and this module then measures it.
- ``eai-sparsify`` (the ``bench`` extra): ``SparseCoder(d_in, SparseCoderConfig(num_latents=,
  k=))`` (per-input TopK with its fused sparse-backward encoder). Its ``Trainer`` has no
  per-step function (the step lives inside ``fit()``, driven by forward hooks on a language
  model), so the callable is ``fit()``'s per-batch body for ``loss_fn="fvu"``,
  ``optimizer="adam"`` written out: ``set_decoder_norm_to_unit_norm``, ``forward(x,
  dead_mask=)``, ``loss = fvu + auxk_alpha * auxk_loss`` (auxk_alpha = 0.03, the paper's, so
  the dead-latent bookkeeping is done as the plugin does it), ``backward``,
  ``remove_gradient_parallel_to_decoder_directions``, ``torch.optim.Adam`` (what it falls back
  to without bitsandbytes) with its LR rule, its warm-up schedule, the fired-latent counts.
  Its ``forward`` runs under CUDA bf16 autocast where the GPU supports it, as shipped; its
  decoder is its Triton kernel on CUDA and its eager ``embedding_bag`` on the CPU
  (``SPARSIFY_DISABLE_TRITON=1``, its switch; the Triton kernel cannot run there).
- ``overcomplete`` (the ``bench`` extra): ``sae.BatchTopKSAE(d_in, nb_concepts=d_sae,
  top_k=k * B)`` (its ``top_k`` counts the whole batch's kept entries) trained by its own
  ``sae.train_sae(model, [x], criterion, optimizer, nb_epochs=1, clip_grad=1.0,
  monitoring=0)``: one epoch over one batch is one step (zero_grad, forward, criterion,
  dead-code tracker, backward, grad-norm clip, Adam step), with the README's MSE criterion
  and ``torch.optim.Adam``; ``monitoring=0`` skips its per-step logging (the peer's fastest).
  Its import needs ``matplotlib.cm.get_cmap``, gone since matplotlib 3.9; the adapter restores
  it (see ``_matplotlib_cm_get_cmap``).

``saev`` is not measured: it cannot be co-installed (it needs ``beartype>=0.19``;
transformer-lens 2.x, which sae-dashboard pins, needs ``beartype<0.15``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sae_vlm_plugin.training import paper_learning_rate

PAPER_GROUP_FRACTIONS = [0.0625, 0.125, 0.25, 0.5625]
AUXK_ALPHA = 0.03


@dataclass(frozen=True)
class PeerStep:
    """One training step of a peer (``step()``), and what it measures (``label``)."""

    step: Callable[[], object]
    label: str


def _version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def _dictionary_learning_update(trainer: object, batch: torch.Tensor) -> Callable[[], object]:
    """``trainer.update(step, x)`` with a growing step index; the first call (step 0, which
    also sets ``b_dec`` to the batch's geometric median) is each candidate's warm-up call."""
    steps = iter(range(10**9))

    def step() -> object:
        return trainer.update(next(steps), batch)  # type: ignore[attr-defined]

    return step


def dictionary_learning_batchtopk(batch: torch.Tensor, d_sae: int, k: int, device: str) -> PeerStep:
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer

    trainer = BatchTopKTrainer(
        steps=10**6,
        activation_dim=batch.shape[1],
        dict_size=d_sae,
        k=k,
        layer=0,
        lm_name="benchmark",
        auxk_alpha=AUXK_ALPHA,
        device=device,
    )
    return PeerStep(
        _dictionary_learning_update(trainer, batch),
        f"dictionary_learning {_version('dictionary-learning')} BatchTopKTrainer.update",
    )


def dictionary_learning_matryoshka(
    batch: torch.Tensor, d_sae: int, k: int, device: str
) -> PeerStep:
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

    trainer = MatryoshkaBatchTopKTrainer(
        steps=10**6,
        activation_dim=batch.shape[1],
        dict_size=d_sae,
        k=k,
        layer=0,
        lm_name="benchmark",
        group_fractions=PAPER_GROUP_FRACTIONS,
        auxk_alpha=AUXK_ALPHA,
        device=device,
    )
    return PeerStep(
        _dictionary_learning_update(trainer, batch),
        f"dictionary_learning {_version('dictionary-learning')} MatryoshkaBatchTopKTrainer.update",
    )


def sparsify_topk(batch: torch.Tensor, d_sae: int, k: int, device: str) -> PeerStep:
    if not device.startswith("cuda"):
        # Its Triton decoder runs on GPUs only; on the CPU its eager decoder, chosen at import
        # by its own switch (which prints the choice: kept off the figures table on stdout).
        os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    with contextlib.redirect_stdout(sys.stderr):
        from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    d_in = batch.shape[1]
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=paper_learning_rate(d_sae))
    scheduler = get_linear_schedule_with_warmup(optimizer, 1000, 10**6)
    dead_feature_threshold = 10_000_000  # sparsify's TrainConfig default
    tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
    did_fire = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def step() -> object:
        total_variance = (batch - batch.mean(0)).pow(2).sum()
        sae.set_decoder_norm_to_unit_norm()
        out = sae(
            batch,
            dead_mask=tokens_since_fired > dead_feature_threshold,
            total_variance=total_variance,
        )
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + AUXK_ALPHA * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        with torch.no_grad():
            tokens_since_fired.add_(batch.shape[0])
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        return loss

    return PeerStep(
        step,
        f"eai-sparsify {_version('eai-sparsify')} SparseCoder (TopK), Trainer.fit's step with "
        "torch Adam",
    )


def _matplotlib_cm_get_cmap() -> None:
    """overcomplete (0.3.0 and earlier) calls ``plt.cm.get_cmap`` at import, which matplotlib
    3.9 removed (``AttributeError: module 'matplotlib.cm' has no attribute 'get_cmap'``); give
    it the registry's ``get_cmap``, the documented replacement. Only its colormaps use it."""
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap  # type: ignore[attr-defined]


def overcomplete_batchtopk(batch: torch.Tensor, d_sae: int, k: int, device: str) -> PeerStep:
    _matplotlib_cm_get_cmap()
    from overcomplete.sae import BatchTopKSAE, train_sae

    sae = BatchTopKSAE(batch.shape[1], nb_concepts=d_sae, top_k=k * batch.shape[0], device=device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=paper_learning_rate(d_sae))

    def criterion(x, x_hat, pre_codes, codes, dictionary):  # type: ignore[no-untyped-def]
        return (x - x_hat).square().mean()

    def step() -> object:
        return train_sae(
            sae,
            [batch],
            criterion,
            optimizer,
            nb_epochs=1,
            clip_grad=1.0,
            monitoring=0,
            device=device,
        )

    return PeerStep(
        step,
        f"overcomplete {_version('overcomplete')} BatchTopKSAE + train_sae (one batch, "
        "monitoring=0)",
    )


# name -> (adapter, the distribution that provides it)
PEERS: dict[str, tuple[Callable[[torch.Tensor, int, int, str], PeerStep], str]] = {
    "dl_batchtopk": (dictionary_learning_batchtopk, "dictionary-learning"),
    "dl_matryoshka": (dictionary_learning_matryoshka, "dictionary-learning"),
    "sparsify": (sparsify_topk, "eai-sparsify"),
    "overcomplete": (overcomplete_batchtopk, "overcomplete"),
}

HOW_TO_INSTALL = {
    "dictionary-learning": "pip install --no-deps dictionary-learning==0.1.0, as it pins nnsight<0.4",
    "eai-sparsify": 'pip install -e ".[bench]"',
    "overcomplete": 'pip install -e ".[bench]"',
}


def peer_steps(
    batch: torch.Tensor, d_sae: int, k: int, device: str
) -> tuple[dict[str, PeerStep], list[str]]:
    """Every installed peer's step on ``batch``, and a line for each peer that is not installed."""
    steps: dict[str, PeerStep] = {}
    missing: list[str] = []
    for name, (adapter, distribution) in PEERS.items():
        try:
            _version(distribution)
        except importlib.metadata.PackageNotFoundError:
            missing.append(
                f"{name}: {distribution} is not installed; {HOW_TO_INSTALL[distribution]}"
            )
            continue
        torch.manual_seed(0)
        steps[name] = adapter(batch, d_sae, k, device)
    return steps, missing
