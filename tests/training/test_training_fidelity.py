"""The paper SAEs trained by SAELens' real SAETrainer follow the paper's trainer step by step.

The plugin runs inside ``SAETrainer.fit()`` (with ``prepare_paper_trainer``); the reference is
the plain dense re-implementation in ``paper_reference.py``, started from the same weights and
fed the same batches. The schedule constants are shrunk (threshold from step 20, warm-up of 10
steps, latents dead after 3 batches without firing) so that 60 steps exercise all of them.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput

from paper_reference import ReferencePaperTrainer, reference_norm_factor
from sae_vlm_plugin.training import estimate_paper_scaling_factor, prepare_paper_trainer
from training_helpers import (
    make_trainer,
    one_torch_thread,  # noqa: F401
    paper_sae,
    synthetic_activations,
)

N_STEPS, BATCH, D_IN, D_SAE, K = 60, 32, 16, 128, 4
WARMUP, THRESHOLD_START, LR = 10, 20, 1e-2
SCHEDULE = {
    "dead_feature_threshold": 3 * BATCH,
    "threshold_start_step": THRESHOLD_START,
    "threshold_beta": 0.9,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def close(actual: float, expected: float, what: str, step: int) -> None:
    assert actual == pytest.approx(expected, rel=1e-8, abs=1e-12), f"{what} at step {step}"


@pytest.mark.parametrize(
    ("architecture", "log_every"),
    [
        ("paper_batchtopk", None),
        ("paper_matryoshka_batchtopk", None),
        # #15 item 4: the reference's logging side effects, replayed on request
        ("paper_matryoshka_batchtopk", 7),
    ],
)
def test_saetrainer_fit_matches_reference_step_by_step(architecture, log_every, tmp_path):
    torch.manual_seed(0)
    sae = paper_sae(
        architecture,
        d_in=D_IN,
        d_sae=D_SAE,
        k=K,
        dtype="float64",
        reference_logging_every=log_every,
        **SCHEDULE,
    )
    group_sizes = sae.cfg.level_sizes()
    reference = ReferencePaperTrainer(
        sae.W_enc.detach(),
        sae.b_enc.detach(),
        sae.W_dec.detach(),
        sae.b_dec.detach(),
        k=K,
        group_sizes=group_sizes,
        auxk_alpha=1 / 32,
        lr=LR,
        warmup_steps=WARMUP,
        **SCHEDULE,
    )
    batches = synthetic_activations(N_STEPS, BATCH, D_IN)
    scaling_factor = estimate_paper_scaling_factor(iter(batches), n_batches=N_STEPS)
    trainer = make_trainer(sae, iter(batches), n_steps=N_STEPS, batch_size=BATCH, lr=LR)
    prepare_paper_trainer(trainer, scaling_factor=scaling_factor, warmup_steps=WARMUP)

    records: list[tuple[dict[str, torch.Tensor], TrainStepOutput]] = []
    forward = sae.training_forward_pass

    def recording_forward(step_input: TrainStepInput) -> TrainStepOutput:
        weights = {name: p.detach().clone() for name, p in sae.named_parameters()}
        output = forward(step_input)
        records.append((weights, output))
        return output

    sae.training_forward_pass = recording_forward  # type: ignore[method-assign]
    trainer.fit()
    assert len(records) == N_STEPS

    norm_factor = reference_norm_factor(batches)
    saw_aux = False
    for step, batch in enumerate(batches):
        weights, output = records[step]
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(
                weights[name],
                getattr(reference, name).detach(),
                rtol=1e-8,
                atol=1e-12,
                msg=lambda m, n=name, s=step: f"{n} before step {s}: {m}",
            )
        if log_every is not None and step % log_every == 0:
            reference.log_stats(step, batch / norm_factor)
        expected = reference.update(step, batch / norm_factor)
        close(output.loss.item(), expected.loss, "loss", step)
        close(output.losses["mse_loss"].item(), expected.mse_loss, "mse loss", step)
        close(float(output.metrics["auxk_loss_unweighted"]), expected.auxk_loss, "aux loss", step)
        assert output.metrics["dead_latents"] == expected.n_dead, f"dead latents at step {step}"
        close(float(output.metrics["threshold"]), expected.threshold, "threshold", step)
        if len(group_sizes) > 1:
            for level, mse in enumerate(expected.level_mse):
                close(float(output.metrics[f"level_{level}_mse_loss"]), mse, "level mse", step)
        assert (expected.threshold == -1.0) == (step <= THRESHOLD_START)
        saw_aux |= expected.auxk_loss > 0
    assert saw_aux, "the schedule never made a latent dead; the test lost its aux-loss coverage"

    # fit() folded the input scaling into the SAE: dictionary_learning's scale_biases(norm_factor)
    for name, scale in (
        ("W_enc", 1.0),
        ("W_dec", 1.0),
        ("b_enc", norm_factor),
        ("b_dec", norm_factor),
    ):
        torch.testing.assert_close(
            getattr(sae, name).detach(),
            getattr(reference, name).detach() * scale,
            rtol=1e-8,
            atol=1e-12,
        )
    close(
        float(sae.threshold), float(reference.threshold) * norm_factor, "folded threshold", N_STEPS
    )

    # ... and the saved inference SAE is plain SAELens JumpReLU, exact on raw activations
    sae.save_inference_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.architecture() == "jumprelu"
    raw = synthetic_activations(1, 64, D_IN, seed=1)[0]
    expected_code = reference.inference_code(raw / norm_factor) * norm_factor
    code = loaded.encode(raw)
    torch.testing.assert_close(code, expected_code, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(code, sae.encode(raw), rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode(code), sae.decode(code), rtol=0, atol=0)
