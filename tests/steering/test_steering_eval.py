"""The paper's steering evaluation helpers and the ``sae-vlm steer`` command, offline."""

from __future__ import annotations

import argparse
import pathlib

import pytest
import torch

from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.steering import steer
from sae_vlm_plugin.steering.commands import add_commands
from sae_vlm_plugin.steering.evaluation import (
    INSERTION_PROMPTS,
    ONE_WORD_PROMPT,
    generate_text,
    reference_bounds,
    relative_gain,
    run_insertion,
    run_suppression,
    steering_score,
    sweep,
    white_image,
)
from sae_vlm_plugin.tiny import models as tiny_models

PAPER = pathlib.Path("/work/shared/reference/paper-pach2025-sae-vlm.txt")


def _sae(d_in: int = tiny_models.WIDTH, d_sae: int = 64):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)
    return sae.eval()


def _format(processor, prompt: str) -> str:
    return f"<image> {prompt}"


@pytest.mark.skipif(not PAPER.exists(), reason="paper text not available")
def test_prompts_are_the_papers():
    text = PAPER.read_text()
    assert len(INSERTION_PROMPTS) == 10
    for prompt in [*INSERTION_PROMPTS, ONE_WORD_PROMPT]:
        assert prompt in text


def test_steering_score_is_the_references_rule():
    """#15 item 6: steering_score.py averages the top images' embeddings, then takes one cosine
    with the label's text embedding (F.cosine_similarity on the raw vectors)."""
    generator = torch.Generator().manual_seed(0)
    top = torch.randn(16, 12, generator=generator) * torch.rand(16, 1, generator=generator) * 5
    label = torch.randn(1, 12, generator=generator)
    reference = torch.nn.functional.cosine_similarity(top.mean(dim=0, keepdim=True), label)
    assert steering_score("x", top, lambda texts: label) == pytest.approx(float(reference))


def test_scores_by_hand():
    def embed_text(texts):
        assert texts == ["pencil"]
        return torch.tensor([[1.0, 0.0]])

    images = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    # steering_score.py: the cosine with the mean raw embedding (1, 4/3) -> 1 / (5/3)
    assert steering_score("pencil", images, embed_text) == pytest.approx(0.6)
    expected = (1.0 + 0.0 + 2**-0.5) / 3
    assert steering_score("pencil", images, embed_text, average="cosines") == pytest.approx(
        expected
    )
    with pytest.raises(ValueError, match="'embeddings' or 'cosines'"):
        steering_score("pencil", images, embed_text, average="median")

    image_embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    lower, upper = reference_bounds(image_embeds, torch.tensor([0, 1]), classes)
    assert upper == pytest.approx(1.0)
    assert lower == pytest.approx((0.0 + 2**-0.5) / 2)
    assert relative_gain(0.259, 0.212, 0.2, 0.3) == pytest.approx(0.47)
    with pytest.raises(ValueError, match="must exceed"):
        relative_gain(0.3, 0.2, 0.3, 0.2)


def test_sweep_insertion_suppression_with_a_judge():
    tiny = tiny_models.llava_model()
    model = VisionModel(tiny.model)
    sae = _sae()
    image = white_image(tiny_models.IMAGE_SIZE)
    kwargs = {"max_new_tokens": 4, "prompt_format": _format}
    clean = generate_text(model, tiny.processor, "write a poem", image, **kwargs)

    answers = sweep(
        model,
        tiny.processor,
        "write a poem",
        image,
        lambda value: steer(model, sae, {3: value}),
        [0, 40],
        **kwargs,
    )
    assert list(answers) == ["no steer", "0", "40"]
    assert answers["no steer"] == clean
    assert answers["40"] != clean
    assert not model._edits

    calls = []

    def judge(prompt, output):
        calls.append((prompt, output))
        return len(output)

    records = run_insertion(
        model,
        tiny.processor,
        lambda: steer(model, sae, {3: 40.0}),
        prompts=["write a poem", "describe the image"],
        image=image,
        judge=judge,
        **kwargs,
    )
    assert [r.prompt for r in records] == ["write a poem", "describe the image"]
    assert records[0].unsteered == clean
    assert records[0].steered == answers["40"]
    assert records[0].verdict_steered == len(records[0].steered)
    assert len(calls) == 4

    images = [image, tiny_models.synthetic_image("square", "blue")]
    suppressed = run_suppression(
        model, tiny.processor, lambda: steer(model, sae, {3: -40.0}), images, **kwargs
    )
    assert [r.image_index for r in suppressed] == [0, 1]
    assert suppressed[0].verdict_steered is None
    assert not model._edits


def test_steer_command(tmp_path, capsys):
    tiny = tiny_models.llava_model()
    tiny.model.save_pretrained(tmp_path / "llava")
    tiny.processor.save_pretrained(tmp_path / "llava")
    _sae().save_model(tmp_path / "sae")

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    base = ["steer", "--model", str(tmp_path / "llava"), "--sae", str(tmp_path / "sae")]
    args = parser.parse_args(
        [
            *base,
            "--latent",
            "3",
            "--values",
            "0,40",
            "--prompt",
            "describe",
            "--max-new-tokens",
            "3",
        ]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert out[0].startswith("[no steer")
    assert out[2].startswith("[latent 3 = 40")

    args = parser.parse_args([*base, "--latent", "64", "--values", "1", "--prompt", "x"])
    with pytest.raises(ValueError, match="out of range"):
        args.handler(args)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--latent", "1", "--values", "a,b", "--prompt", "x"])


@pytest.mark.parametrize(
    ("latent", "values"),
    [("", "1"), (" ", "1"), ("1.5", "1"), ("3", ""), ("3", "1,,2"), ("3", "1,nan")],
)
def test_steer_refuses_blank_latents_and_empty_values(latent, values, capsys):
    from sae_vlm_plugin.cli import main

    args = ["steer", "--model", "toy-llava", "--sae", ".", "--prompt", "x"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--latent", latent, "--values", values])
    assert exit_.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_an_sae_of_another_encoder_does_not_steer_llava_without_force():
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from sae_vlm_plugin.toy import toy_model_path

    llava = VisionModel("toy-llava")

    def sae(model_name):
        meta = SAEMetadata(hook_name="blocks.2.hook_resid_post", model_name=model_name)
        return JumpReLUSAE(JumpReLUSAEConfig(d_in=128, d_sae=8, metadata=meta)).eval()

    sae_of_clip_b32 = sae("openai/clip-vit-base-patch32")
    sae_of_clip_b32.cfg.metadata.family = "clip"
    with pytest.raises(ValueError, match="trained on openai/clip-vit-base-patch32"):
        steer(llava, sae_of_clip_b32, {0: 1.0})
    steer(llava, sae_of_clip_b32, {0: 1.0}, force=True).remove()
    by_path = VisionModel(str(toy_model_path("toy-llava")))  # the same LLaVA, named by its folder
    for model in (llava, by_path):
        for name in ("toy-clip", str(toy_model_path("toy-clip")), "toy-llava"):  # its own tower
            steer(model, sae(name), {0: 1.0}).remove()
