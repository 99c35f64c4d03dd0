"""The paper training SAEs: configs, bad input, registration, export to plain SAELens, helpers."""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import SAE, JumpReLUSAE
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, get_sae_training_class
from sae_lens.saes.sae import TrainingSAE, TrainStepInput

from sae_vlm_plugin.training import (
    INATURALIST_GROUP_FRACTIONS,
    PaperBatchTopKTrainingSAE,
    PaperBatchTopKTrainingSAEConfig,
    PaperMatryoshkaBatchTopKTrainingSAE,
    PaperMatryoshkaBatchTopKTrainingSAEConfig,
    estimate_paper_scaling_factor,
    group_sizes_from_fractions,
    paper_learning_rate,
    paper_lr_factor,
    prepare_paper_trainer,
    register_training_architectures,
)
from sae_vlm_plugin.training.geometric_median import geometric_median
from training_helpers import (
    make_trainer,
    one_torch_thread,  # noqa: F401
    paper_sae,
    synthetic_activations,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def step_input(x: torch.Tensor, step: int = 1) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x,
        coefficients={},
        dead_neuron_mask=None,
        n_training_steps=step,
        is_logging_step=False,
    )


# --- configs ---------------------------------------------------------------------------------


def test_matryoshka_groups_follow_dictionary_learning():
    default = PaperMatryoshkaBatchTopKTrainingSAEConfig(d_in=768, d_sae=6144)
    assert default.level_sizes() == [384, 768, 1536, 3456]
    assert default.matryoshka_widths == [384, 1152, 2688, 6144]
    assert default.level_weights() == [0.25] * 4
    inat = PaperMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=768, d_sae=1536, group_fractions=list(INATURALIST_GROUP_FRACTIONS)
    )
    assert inat.level_sizes() == [3, 13, 53, 290, 1177]
    explicit = PaperMatryoshkaBatchTopKTrainingSAEConfig(
        d_in=8, d_sae=10, k=2, group_sizes=[1, 2, 7], group_weights=[1.0, 0.0, 2.0]
    )
    assert explicit.matryoshka_widths == [1, 3, 10]
    assert explicit.level_weights() == [1.0, 0.0, 2.0]
    assert PaperBatchTopKTrainingSAEConfig(d_in=8, d_sae=10, k=2).level_sizes() == [10]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"k": 65}, "k must be an integer in \\[1, d_sae=64\\]"),
        ({"k": 0}, "k must be an integer"),
        ({"group_sizes": [16, 16, 16]}, "must sum to d_sae=64"),
        ({"group_sizes": [0, 64]}, "at least one latent"),
        ({"group_sizes": [32, 32], "group_fractions": [0.5, 0.5]}, "not both"),
        ({"group_fractions": [0.5, 0.4]}, "must sum to 1"),
        ({"group_fractions": [0.001, 0.999]}, "leave group\\(s\\) \\[0\\] empty at d_sae=64"),
        ({"group_fractions": [-0.5, 1.5]}, "positive"),
        ({"group_sizes": [32, 32], "group_weights": [1.0]}, "one weight per group \\(2\\)"),
        ({"group_sizes": [32, 32], "group_weights": [1.0, -1.0]}, ">= 0"),
        ({"decoder_init_norm": 0.1}, "unit norm"),
        ({"normalize_activations": "expected_average_only_in"}, "prepare_paper_trainer"),
        ({"apply_b_dec_to_input": False}, "x - b_dec"),
        ({"dtype": "bfloat16"}, "float32"),
        ({"dead_feature_threshold": 0}, "dead_feature_threshold"),
        ({"threshold_beta": 1.5}, "threshold_beta"),
    ],
)
def test_invalid_configs_raise_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        PaperMatryoshkaBatchTopKTrainingSAEConfig(d_in=8, d_sae=64, **fields)


def test_inaturalist_fractions_need_a_wide_enough_sae():
    assert group_sizes_from_fractions(INATURALIST_GROUP_FRACTIONS, 1000)[0] == 2
    with pytest.raises(ValueError, match="empty"):
        group_sizes_from_fractions(INATURALIST_GROUP_FRACTIONS, 400)


# --- bad batches -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_activations_name_the_step(bad):
    sae = paper_sae("paper_batchtopk", d_in=8, d_sae=32, k=2)
    x = torch.randn(16, 8)
    x[3, 5] = bad
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    with pytest.raises(ValueError, match="training step 7: the activation batch holds 1 NaN/inf"):
        sae.training_forward_pass(step_input(x, step=7))
    for name, p in sae.named_parameters():
        assert torch.equal(p, before[name])


@pytest.mark.parametrize("shape", [(16, 9), (16,), (2, 16, 8)])
def test_wrong_activation_shape_is_rejected(shape):
    sae = paper_sae("paper_batchtopk", d_in=8, d_sae=32, k=2)
    with pytest.raises(
        ValueError, match="training step 1: expected activations of shape \\(batch, d_in=8\\)"
    ):
        sae.training_forward_pass(step_input(torch.randn(*shape)))


def test_autocast_is_rejected():
    sae = paper_sae("paper_batchtopk", d_in=8, d_sae=32, k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="autocast"):
        sae.training_forward_pass(step_input(torch.randn(4, 8)))


# --- trainer-level steps ---------------------------------------------------------------------


def test_prepare_paper_trainer_rejects_what_it_cannot_make_faithful():
    batches = iter(synthetic_activations(4, 8, 8, dtype=torch.float32))
    builtin = get_sae_training_class("batchtopk")[0](
        get_sae_training_class("batchtopk")[1](d_in=8, d_sae=32, k=2)
    )
    with pytest.raises(TypeError, match="paper training SAE"):
        prepare_paper_trainer(
            make_trainer(builtin, batches, n_steps=4, batch_size=8, lr=1e-3), scaling_factor=None
        )
    sae = paper_sae("paper_batchtopk", d_in=8, d_sae=32, k=2)
    trainer = make_trainer(sae, batches, n_steps=4, batch_size=8, lr=1e-3)
    with pytest.raises(ValueError, match="positive finite"):
        prepare_paper_trainer(trainer, scaling_factor=0.0)
    trainer.cfg.lr_warm_up_steps = 2
    with pytest.raises(ValueError, match="schedule must be constant"):
        prepare_paper_trainer(trainer, scaling_factor=None)
    trainer.cfg.lr_warm_up_steps = 0
    trainer.n_training_steps = 1
    with pytest.raises(ValueError, match="before training"):
        prepare_paper_trainer(trainer, scaling_factor=None)


def test_decoder_renormalisation_without_the_hook_gives_the_same_training():
    """A plain SAELens-style loop (no prepare_paper_trainer) renormalises lazily: same weights."""
    batches = synthetic_activations(6, 16, 8)
    trajectories = []
    for use_hook in (True, False):
        torch.manual_seed(0)
        sae = paper_sae("paper_matryoshka_batchtopk", d_in=8, d_sae=32, k=2, dtype="float64")
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
        if use_hook:
            optimizer.register_step_post_hook(lambda *_, s=sae: s.renormalize_decoder())
        seen = []
        for step, x in enumerate(batches):
            output = sae.training_forward_pass(step_input(x, step))
            seen.append(sae.W_dec.detach().clone())
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        code = sae.decode(torch.eye(32, dtype=torch.float64))  # reads the renormalised decoder
        seen.append(code - sae.b_dec.detach())
        trajectories.append(seen)
    for hooked, lazy in zip(*trajectories, strict=True):
        torch.testing.assert_close(hooked, lazy, rtol=0, atol=0)
    torch.testing.assert_close(trajectories[1][-1].norm(dim=1), torch.ones(32, dtype=torch.float64))


def test_paper_learning_rate_and_schedule():
    assert paper_learning_rate(2**14) == pytest.approx(2e-4)
    assert paper_learning_rate(6144) == pytest.approx(2e-4 / math.sqrt(6144 / 2**14))
    # CLIP ViT-L (d_in = 1024) at expansion factor w: 8e-4 / sqrt(w)
    assert paper_learning_rate(1024 * 64) == pytest.approx(8e-4 / math.sqrt(64))
    factor = paper_lr_factor(total_steps=110_000, warmup_steps=1000, decay_start=109_999)
    assert [factor(t) for t in (0, 1, 999, 1000, 109_998, 109_999)] == [
        0.0,
        0.001,
        0.999,
        1.0,
        1.0,
        1.0,
    ]
    with pytest.raises(ValueError, match="warmup_steps"):
        paper_lr_factor(total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="decay_start"):
        paper_lr_factor(total_steps=10, warmup_steps=5, decay_start=3)
    with pytest.raises(ValueError, match="d_sae"):
        paper_learning_rate(0)


def test_paper_scaling_factor():
    batches = [torch.full((4, 3), 2.0), torch.full((4, 3), 1.0)]
    # mean squared norms 12 and 3: factor 1 / sqrt(7.5)
    assert estimate_paper_scaling_factor(iter(batches), n_batches=2) == pytest.approx(
        1 / math.sqrt(7.5)
    )
    with pytest.raises(ValueError, match="batch 1 of the scaling estimate holds NaN/inf"):
        estimate_paper_scaling_factor(iter([torch.ones(2, 3), torch.full((2, 3), math.nan)]), 2)


def test_geometric_median():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]], dtype=torch.float64)
    median = geometric_median(points, tol=1e-12, max_iter=10_000)

    def total_distance(m: torch.Tensor) -> float:
        return (points - m).norm(dim=1).sum().item()

    for direction in torch.eye(2, dtype=torch.float64):
        assert total_distance(median) <= total_distance(median + 1e-4 * direction)
        assert total_distance(median) <= total_distance(median - 1e-4 * direction)
    duplicates = torch.ones(5, 3)
    torch.testing.assert_close(geometric_median(duplicates), torch.ones(3))


# --- registration and export -----------------------------------------------------------------


def test_registration_is_idempotent_and_keeps_the_builtins(monkeypatch):
    register_training_architectures()
    register_training_architectures()
    assert get_sae_training_class("paper_batchtopk") == (
        PaperBatchTopKTrainingSAE,
        PaperBatchTopKTrainingSAEConfig,
    )
    assert get_sae_training_class("paper_matryoshka_batchtopk") == (
        PaperMatryoshkaBatchTopKTrainingSAE,
        PaperMatryoshkaBatchTopKTrainingSAEConfig,
    )
    for builtin in ("batchtopk", "matryoshka_batchtopk"):
        assert get_sae_training_class(builtin)[0].__module__.startswith("sae_lens.")
    monkeypatch.setitem(
        SAE_TRAINING_CLASS_REGISTRY, "paper_batchtopk", get_sae_training_class("batchtopk")
    )
    with pytest.raises(ValueError, match="'paper_batchtopk' is already registered to sae_lens"):
        register_training_architectures()


def test_training_checkpoint_round_trips_through_saelens(tmp_path):
    register_training_architectures()
    sae = paper_sae("paper_matryoshka_batchtopk", d_in=8, d_sae=32, k=2, group_sizes=[4, 28])
    for step, x in enumerate(synthetic_activations(3, 16, 8, dtype=torch.float32)):
        sae.training_forward_pass(step_input(x, step)).loss.backward()
    sae.threshold.fill_(0.25)
    sae.save_model(tmp_path / "checkpoint")
    loaded = TrainingSAE.load_from_disk(tmp_path / "checkpoint")
    assert type(loaded) is PaperMatryoshkaBatchTopKTrainingSAE
    assert loaded.cfg.level_sizes() == [4, 28]
    for name, tensor in sae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    rebuilt = TrainingSAE.from_dict(sae.cfg.to_dict())
    assert type(rebuilt) is PaperMatryoshkaBatchTopKTrainingSAE


@pytest.mark.parametrize("architecture", ["paper_batchtopk", "paper_matryoshka_batchtopk"])
def test_trained_sae_exports_to_plain_jumprelu_with_inference_l0_near_k(architecture, tmp_path):
    torch.manual_seed(0)
    d_in, d_sae, k, batch, n_steps = 16, 64, 4, 128, 150
    sae = paper_sae(
        architecture,
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        threshold_start_step=20,
        threshold_beta=0.99,
        dead_feature_threshold=5 * batch,
    )
    batches = synthetic_activations(n_steps + 1, batch, d_in, dtype=torch.float32)
    held_out = batches.pop()
    scaling_factor = estimate_paper_scaling_factor(iter(batches), n_batches=20)
    trainer = make_trainer(sae, iter(batches), n_steps=n_steps, batch_size=batch, lr=5e-3)
    prepare_paper_trainer(trainer, scaling_factor=scaling_factor, warmup_steps=10)
    trainer.fit()
    sae.save_inference_model(tmp_path / "inference")

    loaded = SAE.load_from_disk(tmp_path / "inference")
    assert isinstance(loaded, JumpReLUSAE)
    assert loaded.cfg.metadata.training_architecture == architecture
    if architecture == "paper_matryoshka_batchtopk":
        details = loaded.cfg.metadata.training_architecture_details
        assert details["matryoshka_widths"] == [4, 12, 28, 64]
    torch.testing.assert_close(loaded.threshold, sae.threshold.expand(d_sae), rtol=0, atol=0)
    code = loaded.encode(held_out)
    torch.testing.assert_close(code, sae.encode(held_out), rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode(code), sae.decode(code), rtol=0, atol=0)
    torch.testing.assert_close(loaded.W_dec.norm(dim=1), torch.ones(d_sae))
    l0 = (code > 0).float().sum(dim=1).mean().item()
    assert 0.7 * k <= l0 <= 1.3 * k
    variance_explained = (
        1 - (held_out - loaded(held_out)).pow(2).sum() / (held_out - held_out.mean(0)).pow(2).sum()
    )
    assert variance_explained > 0.5


def test_dense_training_code_matches_the_sparse_step():
    torch.manual_seed(0)
    sae = paper_sae("paper_matryoshka_batchtopk", d_in=8, d_sae=32, k=3)
    x = synthetic_activations(1, 16, 8, dtype=torch.float32)[0]
    feature_acts, hidden_pre = sae.encode_with_hidden_pre(x)
    output = sae.training_forward_pass(step_input(x, step=1))
    torch.testing.assert_close(feature_acts, output.feature_acts.to_dense())
    torch.testing.assert_close(hidden_pre, output.hidden_pre)
    assert (feature_acts > 0).sum() == 3 * 16
    with pytest.raises(NotImplementedError, match="inside training_forward_pass"):
        sae.calculate_aux_loss(step_input(x), feature_acts, hidden_pre, x)
