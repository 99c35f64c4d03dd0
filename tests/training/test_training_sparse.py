"""The sparse hot path equals the dense computation: losses and gradients within 1e-5 relative."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sae_lens.saes.sae import TrainStepInput

from paper_reference import dense_paper_loss, project_decoder_grad
from sae_vlm_plugin.training import (
    PaperMatryoshkaBatchTopKTrainingSAE,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_vlm_plugin.training.selection import (
    _SAMPLE_SIZE,
    _coprime_stride,
    batch_topk,
)
from training_helpers import one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = max(expected.norm().item(), 1e-12)
    return (actual - expected).norm().item() / scale


@st.composite
def step_cases(draw):
    batch = draw(st.integers(1, 8))
    d_in = draw(st.integers(2, 8))
    d_sae = draw(st.integers(2, 24))
    k = draw(st.integers(1, d_sae))
    n_groups = draw(st.integers(1, min(4, d_sae)))
    cuts = sorted(
        draw(st.sets(st.integers(1, d_sae - 1), min_size=n_groups - 1, max_size=n_groups - 1))
    )
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, d_sae], strict=True)]
    weights = draw(st.lists(st.floats(0.0, 2.0), min_size=len(sizes), max_size=len(sizes)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    return batch, d_in, d_sae, k, sizes, weights, dtype, seed


@settings(max_examples=60, deadline=None)
@given(step_cases())
# One row, one latent kept, d_in 2: removing the gradient's component along that decoder row
# leaves a small difference of float32 numbers (cancellation), ~100 ulp apart in both paths.
@example((1, 2, 10, 1, [10], [1.0], torch.float32, 0))
def test_sparse_training_step_equals_dense(case):
    batch, d_in, d_sae, k, sizes, weights, dtype, seed = case
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    generator = torch.Generator().manual_seed(seed)
    dead_after = 2 * batch
    cfg = PaperMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        group_sizes=sizes,
        group_weights=weights,
        dead_feature_threshold=dead_after,
        threshold_start_step=10**9,
        auxk_alpha=0.5,
        dtype="float64" if dtype == torch.float64 else "float32",
    )
    sae = PaperMatryoshkaBatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator, dtype=dtype))
        sae.b_enc.copy_(0.5 * torch.randn(d_sae, generator=generator, dtype=dtype))
        sae.b_dec.copy_(0.3 * torch.randn(d_in, generator=generator, dtype=dtype))
        W_dec = torch.randn(d_sae, d_in, generator=generator, dtype=dtype)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        counts = torch.randint(0, 2 * dead_after, (d_sae,), generator=generator)
        sae.n_tokens_since_fired.copy_(counts)
    x = torch.randn(batch, d_in, generator=generator, dtype=dtype)
    reference = {
        name: p.detach().clone().requires_grad_(True) for name, p in sae.named_parameters()
    }

    output = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=1,
            is_logging_step=False,
        )
    )
    output.loss.backward()

    with torch.no_grad():
        pre = torch.relu((x - reference["b_dec"]) @ reference["W_enc"] + reference["b_enc"])
        top = pre.flatten().topk(k * batch)
        fired = torch.zeros(batch * d_sae, dtype=torch.bool)
        fired[top.indices[top.values > 0]] = True
        fired = fired.view(batch, d_sae).any(dim=0)
        dead = torch.where(fired, 0, counts + batch) >= dead_after
    loss, mse_loss, level_mse, aux, f = dense_paper_loss(
        x,
        reference["W_enc"],
        reference["b_enc"],
        reference["W_dec"],
        reference["b_dec"],
        k=k,
        group_sizes=sizes,
        group_weights=weights,
        auxk_alpha=0.5,
        dead=dead,
    )
    loss.backward()

    assert output.metrics["dead_latents"] == int(dead.sum())
    for actual, expected in (
        (output.loss, loss),
        (output.losses["mse_loss"], mse_loss),
        (output.metrics["auxk_loss_unweighted"], aux),
    ):
        assert relative_error(actual.detach(), expected.detach()) <= tolerance
    if len(sizes) > 1:
        for level, expected in enumerate(level_mse):
            assert (
                relative_error(output.metrics[f"level_{level}_mse_loss"], expected.detach())
                <= tolerance
            )
    torch.testing.assert_close(output.feature_acts.to_dense(), f, rtol=1e-5, atol=1e-6)
    expected_grads = {name: p.grad for name, p in reference.items()}
    expected_grads["W_dec"] = project_decoder_grad(
        reference["W_dec"].detach(), expected_grads["W_dec"]
    )
    for name, p in sae.named_parameters():
        assert relative_error(p.grad, expected_grads[name]) <= tolerance, name


def test_batch_topk_selection_is_exact_on_the_sampled_path():
    generator = torch.Generator().manual_seed(0)
    batch, d_sae, k = 64, 8 * _SAMPLE_SIZE // 64, 20
    pre = torch.randn(batch * d_sae, generator=generator).relu_()
    kept, values = batch_topk(pre, k * batch, d_sae)
    assert torch.equal(values, pre[kept])
    expected = pre.topk(k * batch).indices.sort().values
    assert torch.equal(kept, expected)


def test_batch_topk_selection_falls_back_when_the_sample_misleads():
    generator = torch.Generator().manual_seed(0)
    batch, d_sae, k = 64, 8 * _SAMPLE_SIZE // 64, 20
    pre = torch.rand(batch * d_sae, generator=generator)
    # the sampled entries are the largest ones: the cut-off admits too few candidates
    stride = _coprime_stride(pre.numel() // _SAMPLE_SIZE, d_sae)
    pre[::stride] = 5.0 + torch.rand(pre[::stride].numel(), generator=generator)
    kept, values = batch_topk(pre, k * batch, d_sae)
    assert torch.equal(values, pre[kept])
    assert torch.equal(kept, pre.topk(k * batch).indices.sort().values)


def test_batch_topk_selection_keeps_only_positive_entries():
    pre = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.0, 0.0])
    assert batch_topk(pre, 4, 3)[0].tolist() == [1, 3]
    assert batch_topk(pre, 1, 3)[0].tolist() == [1]
