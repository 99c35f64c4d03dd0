"""Steering on the tokens the language model reads, batched per-row edits and the census, on
the shipped toy LLaVA; checked against single ``generate`` calls and plain nnsight edits."""

from __future__ import annotations

import pytest
import torch
from nnsight import NNsight

from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.steering import steer, steer_direction
from sae_vlm_plugin.steering.activity import latent_activity
from sae_vlm_plugin.steering.answers import degenerate, gained, mentions, most_common_answer
from sae_vlm_plugin.steering.batched import RowEdit, generate_rows
from sae_vlm_plugin.steering.census import SteerabilityReport, neutral_images, steerability
from sae_vlm_plugin.steering.evaluation import format_prompt, generate_text
from sae_vlm_plugin.toy import load_toy_llava, world_images

HOOK = "vision.blocks.2.hook_resid_post"
PROMPT = "Write me a short love poem"


@pytest.fixture(scope="module")
def toy():
    module, processor = load_toy_llava()
    return module, processor, VisionModel(module)


def _random_sae(d_sae: int = 32, seed: int = 0):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=128, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)
    return sae.eval()


def _plain_generate(module, processor, image, edit) -> str:
    """Greedy answer with ``edit(hidden (B, T, d)) -> new hidden`` applied to the read tokens of
    vision block 2 by a plain nnsight edit on the bare transformers model."""
    net = NNsight(module)
    layer = net.model.vision_tower.vision_model.encoder.layers[2]
    inputs = processor(images=[image], text=[format_prompt(processor, PROMPT)], return_tensors="pt")
    with net.edit(inplace=True):
        hidden = layer.output[0]
        layer.output = (torch.cat([hidden[:, :1], edit(hidden[:, 1:])], dim=1),)
    with torch.no_grad():
        ids = net.trace(
            **inputs, fn=module.generate, trace=False, max_new_tokens=16, do_sample=False
        )
    net.clear_edits()
    new = ids[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=True)[0].strip()


def test_batched_rows_equal_one_generate_per_edit(toy):
    module, processor, llava = toy
    sae = _random_sae()
    images = neutral_images(48)
    direction = torch.randn(128, generator=torch.Generator().manual_seed(1)) * 8
    rows = [
        (0, RowEdit(through_sae=False)),
        (1, RowEdit(latent=3, value=30.0)),
        (0, RowEdit(direction=direction, through_sae=False)),
        (1, RowEdit(direction=direction)),
        (2, RowEdit()),
        (2, RowEdit(latent=5, value=12.0)),
    ]
    batched = generate_rows(llava, processor, sae, PROMPT, images, rows, HOOK, batch_size=4)

    def one(image, factory=None):
        return generate_text(llava, processor, PROMPT, images[image], factory, max_new_tokens=16)

    expected = [
        one(0),
        one(1, lambda: steer(llava, sae, {3: 30.0}, tokens="image", hook=HOOK)),
        one(0, lambda: steer_direction(llava, direction, HOOK, tokens="image")),
        _plain_generate(
            module, processor, images[1], lambda h: sae.decode(sae.encode(h)) + direction
        ),
        one(2, lambda: steer(llava, sae, {}, tokens="image", hook=HOOK)),
        one(2, lambda: steer(llava, sae, {5: 12.0}, tokens="image", hook=HOOK)),
    ]
    assert batched == expected
    assert len(set(batched)) > 2  # the edits changed the answers
    assert not llava._edits  # every batch's edit was removed


def _cls_and_patch_sae(llava):
    """A ReLU SAE with latent 0 firing only on the CLS token of red images (above every patch
    token's projection) and latent 1 on red patches; the others are dead."""
    from sae_lens import StandardSAE, StandardSAEConfig

    images, objects = world_images(96, seed=5)
    red = torch.tensor([o.colour == "red" for o in objects])
    hidden = llava.capture(llava.preprocess(images), [HOOK])[HOOK]
    cls, patches = hidden[:, 0], hidden[:, 1:]
    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.b_enc.fill_(-1.0)
        u = torch.nn.functional.normalize(cls[red].mean(0) - cls[~red].mean(0), dim=0)
        cls_threshold = torch.maximum((patches @ u).max(), (cls[~red] @ u).max())
        sae.W_enc[:, 0], sae.b_enc[0] = u, -cls_threshold
        v = torch.nn.functional.normalize(
            patches[red].mean((0, 1)) - patches[~red].mean((0, 1)), dim=0
        )
        sae.W_enc[:, 1], sae.b_enc[1] = v, -(patches[red] @ v).median()
        sae.W_dec[0], sae.W_dec[1] = u, v
    return sae.eval(), images, red


def test_a_cls_only_latent_is_refused_and_never_chosen(toy):
    from sae_vlm_plugin.demo.steering import concept_latent, paper_rule_latent
    from sae_vlm_plugin.metrics.sae_activations import encode_rows, hook_rows, pool_codes

    _, _, llava = toy
    sae, images, red = _cls_and_patch_sae(llava)
    activity = latent_activity(sae, llava, images, HOOK)
    assert int(activity.unread_images[0]) > 0
    assert int(activity.read_images[0]) == 0
    assert activity.steerable.tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match=r"latent 0 cannot be used for steering.*CLS token of"):
        activity.check_steerable(0)
    with pytest.raises(ValueError, match="latent 0 cannot be used for steering"):
        steer(llava, sae, {0: 5.0}, hook=HOOK, activity=activity)
    assert not llava._edits
    steer(llava, sae, {1: 5.0}, hook=HOOK, activity=activity).remove()
    # The old rule (codes of every token, CLS included, mean-pooled) falls for the CLS latent...
    rows = hook_rows(llava, images, HOOK, "all", progress=False)
    codes = pool_codes(encode_rows(sae.encode, rows.rows), rows.image_index, rows.n_images)
    assert concept_latent(codes, red)[0] == 0
    # ... the demo's rule reads what LLaVA reads.
    assert paper_rule_latent(activity, red)[0] == 1


def test_steer_command_refuses_a_cls_only_latent(toy, tmp_path, capsys):
    from sae_vlm_plugin.cli import main
    from sae_vlm_plugin.toy import toy_model_path

    _, _, llava = toy
    sae, images, _ = _cls_and_patch_sae(llava)
    sae.save_model(tmp_path / "sae")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images[:32]):
        image.save(folder / f"{i}.png")
    base = ["steer", "--model", str(toy_model_path("toy-llava")), "--sae", str(tmp_path / "sae")]
    base += ["--hook", HOOK, "--prompt", PROMPT, "--images", str(folder), "--multiples", "2"]
    assert main([*base, "--latent", "0"]) == 2
    assert "latent 0 cannot be used for steering" in capsys.readouterr().err
    assert main([*base, "--latent", "1", "--max-new-tokens", "4"]) == 0
    assert "1x = " in capsys.readouterr().out

    (tmp_path / "prompts.txt").write_text(f"{PROMPT}\n\n")
    census = ["steerability", "--model", "toy-llava", "--sae", str(tmp_path / "sae")]
    census += ["--images", str(folder), "--hook", HOOK, "--prompts", str(tmp_path / "prompts.txt")]
    census += ["--random-directions", "3", "--max-new-tokens", "6", "--vocabulary", "toy"]
    assert main(census) == 0
    printed = capsys.readouterr().out
    assert "1 of 4 latents fire on the tokens the language model reads" in printed
    report = SteerabilityReport.load(tmp_path / "sae")
    assert [u.name for u in report.measured_latents()] == ["1"]
    assert "CLS token" in report.latent(0).note
    assert len(report.unsteered) == 3  # one prompt x three neutral images
    # with the census beside the SAE, --multiples needs no --images, and latent 0 is refused
    steer = [*base[: base.index("--images")], "--multiples", "2", "--max-new-tokens", "4"]
    assert main([*steer, "--latent", "0"]) == 2
    assert "CLS token" in capsys.readouterr().err
    assert main([*steer, "--latent", "1"]) == 0


def test_answer_reading():
    assert mentions("A small RED star.", "red")
    assert not mentions("redder", "red")
    assert mentions("a golden retriever runs", "golden retriever")
    assert gained(["a red star", "red"], ["a star", "red"]) == {"red": 1}
    assert gained(["a red star"], ["a star"], vocabulary=["star", "red"]) == {"red": 1}
    assert degenerate("pink pink pink")
    assert degenerate("the star the star the star")
    assert not degenerate("roses for my love , the red star .")
    assert most_common_answer(["red", "Red.", "blue"], exclude=["blue"]) == "red"


@pytest.mark.slow
def test_census_best_red_latent_inserts_red_through_a_plain_nnsight_edit(toy, tmp_path):
    from sae_vlm_plugin.demo.shared import DemoConfig, train_demo_sae
    from sae_vlm_plugin.toy import ATTRIBUTE_VALUES, ATTRIBUTES

    module, processor, llava = toy
    clip = VisionModel("toy-clip")
    train, _ = world_images(3000, seed=10)
    config = DemoConfig(out_dir=tmp_path, expansion_factor=2, progress=False)
    sae, _ = train_demo_sae(
        clip, train, "blocks.2.hook_resid_post", tmp_path, config, "random_2", 2000
    )
    measure, _ = world_images(500, seed=11)
    activity = latent_activity(sae, llava, measure, HOOK)
    vocabulary = [v for a in ATTRIBUTES for v in ATTRIBUTE_VALUES[a]]
    white, grey, black = neutral_images(48)
    report = steerability(
        llava, processor, sae, activity, base_images=[white, grey], vocabulary=vocabulary,
        batch_size=1024, progress=False,
    )  # fmt: skip
    assert len(report.measured_latents()) == int(activity.steerable.sum())
    best = report.best_for("red")
    assert best is not None
    assert best.word_score("red") >= 0.5
    assert len(report.null_scores("red")) == 32
    latent, value = int(best.name), float(best.best_multiple or 0) * best.unit

    def clamp(hidden):
        codes = sae.encode(hidden)
        codes[..., latent] = value
        return sae.decode(codes)

    assert mentions(_plain_generate(module, processor, black, clamp), "red")  # a new image
    path = report.save(tmp_path)
    again = SteerabilityReport.load(path)
    assert again.best_for("red").name == best.name
    assert again.to_dict() == report.to_dict()


def test_label_gain_is_the_mean_cosine_change_towards_the_label():
    from sae_vlm_plugin.steering.census import UnitSteering, _label_gains

    vocabulary = ["red", "star", "blue"]

    class Tower:  # bag of words over the vocabulary: cos = shared-word overlap
        def encode(self, texts):
            return torch.tensor([[float(w in t.split()) + 1e-3 for w in vocabulary] for t in texts])

        def embed(self, words):
            return torch.nn.functional.normalize(self.encode(words), dim=-1)

    class Labels:
        def best_label(self, latent):
            return {0: "red", 1: None}[latent]

    unsteered = ["a star", "a blue star"]
    unit = UnitSteering("latent", "0", 1.0, answers={"8": ["a red star", "red"]}, best_multiple="8")
    unlabelled = UnitSteering("latent", "1", 1.0, answers={"8": ["a star", "a star"]})
    _label_gains([unit, unlabelled], Labels(), Tower(), unsteered)
    tower = Tower()

    def cos(text):
        return float(
            torch.nn.functional.normalize(tower.encode([text]), dim=-1)[0] @ tower.embed(["red"])[0]
        )

    expected = (cos("a red star") + cos("red")) / 2 - (cos("a star") + cos("a blue star")) / 2
    assert unit.label == "red"
    assert unit.label_gain == pytest.approx(expected, abs=1e-6)
    assert unit.label_gain > 0.5
    assert unlabelled.label is None
    assert unlabelled.label_gain is None
