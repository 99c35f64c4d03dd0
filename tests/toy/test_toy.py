"""The toy world (images, taxonomy, captions) and the shipped toy CLIP trained on it."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from sae_vlm_plugin.toy import (
    ATTRIBUTES,
    IMAGE_SIZE,
    SHAPES,
    WorldObject,
    all_objects,
    attribute_prompt,
    caption,
    taxonomy,
    toy_model_path,
    world_images,
)
from sae_vlm_plugin.toy.clip_training import (
    ToyClipTraining,
    caption_truth,
    multi_positive_clip_loss,
    zero_shot_accuracy,
)
from sae_vlm_plugin.toy.llava_training import ToyLlavaTraining
from sae_vlm_plugin.toy.recipe import RECIPE_SOURCES, RETRAIN_COMMAND, recipe_sha256

RETRAIN_SWITCH = "SAE_VLM_RETRAIN_TOY"
"""``SAE_VLM_RETRAIN_TOY=1 pytest -m slow tests/test_toy.py`` retrains even when the shipped
weights are up to date (e.g. to check the recipe on a new torch)."""


def test_world_images_are_deterministic_and_sized():
    a, objects_a = world_images(12, seed=3)
    b, objects_b = world_images(12, seed=3)
    c, _ = world_images(12, seed=4)
    assert objects_a == objects_b
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c, strict=True))
    assert {im.size for im in a} == {(IMAGE_SIZE, IMAGE_SIZE)}
    assert len(all_objects()) == 9 * 8 * 4 * 2


def test_unknown_attribute_values_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown colour 'teal'; valid: red, orange"):
        WorldObject("circle", "teal", "solid", "small")


def test_captions_name_the_mentioned_attributes_in_a_fixed_order():
    obj = WorldObject("ring", "red", "striped", "large")
    assert caption(obj) == "a large red striped ring"
    assert caption(obj, ("colour",)) == "a red shape"
    assert caption(obj, ("shape", "size")) == "a large ring"
    assert attribute_prompt("texture", "dotted") == "a dotted shape"
    with pytest.raises(ValueError, match="non-empty subset"):
        caption(obj, ())


def test_taxonomy_depth_is_family_shape_colour_texture():
    tree = taxonomy()
    index = {label: i for i, label in enumerate(tree.classes)}

    def depth(a: WorldObject, b: WorldObject) -> int:
        return tree.lca_depth(index[a.label], index[b.label])

    red_circle = WorldObject("circle", "red", "solid", "small")
    assert depth(red_circle, WorldObject("circle", "red", "solid", "large")) == 4
    assert depth(red_circle, WorldObject("circle", "red", "dotted", "small")) == 3
    assert depth(red_circle, WorldObject("circle", "blue", "solid", "small")) == 2
    assert depth(red_circle, WorldObject("ring", "red", "solid", "small")) == 1
    assert depth(red_circle, WorldObject("star", "red", "solid", "small")) == 0
    assert len(tree.classes) == len(SHAPES) * 8 * 4


def test_caption_truth_marks_every_caption_true_of_an_image():
    objects = [
        WorldObject("circle", "red", "solid", "small"),
        WorldObject("square", "red", "dotted", "large"),
    ]
    mentions = [("colour",), ATTRIBUTES]
    # "a red shape" is true of both; "a large red dotted square" only of the square.
    expected = torch.tensor([[True, False], [True, True]])
    assert torch.equal(caption_truth(objects, mentions), expected)


def test_multi_positive_loss_is_clip_loss_for_one_positive_and_a_hand_case_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(5, 5)
    plain = (
        torch.nn.functional.cross_entropy(logits, torch.arange(5))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(5))
    ) / 2
    assert torch.allclose(multi_positive_clip_loss(logits, torch.eye(5, dtype=torch.bool)), plain)
    truth = torch.tensor([[True, True], [False, True]])
    z = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    rows = [
        -(0.5 * torch.log_softmax(z[0], 0)[0] + 0.5 * torch.log_softmax(z[0], 0)[1]),
        -torch.log_softmax(z[1], 0)[1],
    ]
    columns = [
        -torch.log_softmax(z[:, 0], 0)[0],
        -(0.5 * torch.log_softmax(z[:, 1], 0)[0] + 0.5 * torch.log_softmax(z[:, 1], 0)[1]),
    ]
    expected = (sum(rows) / 2 + sum(columns) / 2) / 2
    assert torch.allclose(multi_positive_clip_loss(z, truth), expected)


def test_the_shipped_clip_loads_like_a_hub_checkpoint():
    from transformers import AutoProcessor, CLIPModel

    from sae_vlm_plugin import VisionModel

    path = toy_model_path("toy-clip")
    model = CLIPModel.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    images, _ = world_images(4, seed=5)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    by_name = VisionModel("toy-clip")
    by_dir = VisionModel(str(path))
    assert by_name.family.name == by_dir.family.name == "clip"
    assert torch.equal(by_name.preprocess(images), pixels)
    n_layers = model.config.vision_config.num_hidden_layers
    hook = f"blocks.{n_layers - 2}.hook_resid_post"
    captured = by_name.capture(pixels, [hook, "hook_image_embeds"])
    with torch.no_grad():
        hidden = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        embeds = model.get_image_features(pixel_values=pixels)
    assert torch.allclose(captured[hook], hidden[n_layers - 1], atol=1e-5)
    assert torch.allclose(captured["hook_image_embeds"], embeds, atol=1e-5)
    training = json.loads((path / "training.json").read_text())
    assert min(training["zero_shot_accuracy"].values()) >= 0.9


def test_the_shipped_clip_classifies_every_attribute_zero_shot_on_heldout_images():
    from sae_vlm_plugin.toy import load_toy_clip
    from sae_vlm_plugin.toy.clip_training import pixel_tensor

    model, processor = load_toy_clip()
    images, objects = world_images(1000, seed=1)  # the held-out seed; training used seed 0
    accuracy = zero_shot_accuracy(model, processor.tokenizer, pixel_tensor(images), objects)
    assert set(accuracy) == set(ATTRIBUTES)
    assert min(accuracy.values()) >= 0.9, accuracy


def _shipped_record(model: str) -> dict:
    return json.loads((toy_model_path(f"toy-{model}") / "training.json").read_text())


def _stale_models() -> list[str]:
    """The shipped toy models whose recorded recipe hash is not the current one."""
    return [
        model
        for model in RECIPE_SOURCES
        if _shipped_record(model).get("recipe_sha256") != recipe_sha256(model)
    ]


@pytest.mark.parametrize(
    ("model", "training"), [("clip", ToyClipTraining()), ("llava", ToyLlavaTraining())]
)
def test_the_shipped_weights_were_trained_by_the_current_recipe(model, training):
    record = _shipped_record(model)
    recorded, current = record.get("recipe_sha256"), recipe_sha256(model)
    retrain = "clip" if "clip" in _stale_models() else model  # the LLaVA is trained on the CLIP
    minutes = {"clip": "about 12 + 5 minutes", "llava": "about 5 minutes"}[retrain]
    changed = ", ".join(RECIPE_SOURCES[model]) + " (under src/sae_vlm_plugin/)"
    if model == "llava":
        changed += " or the steering.evaluation values that toy/recipe.py lists"
    assert recorded == current, (
        f"the shipped toy-{model} was trained by another recipe than the current one "
        f"(training.json's recipe_sha256 {recorded}, now {current}): one of {changed} changed. "
        f"Retrain with `{RETRAIN_COMMAND[retrain]}` ({minutes} on 2 cores), check the quality "
        "it prints, and commit src/sae_vlm_plugin/toy/weights/ with the change."
    )
    assert record["settings"] == dataclasses.asdict(training), (
        f"the shipped toy-{model} was trained with other settings than the recipe's defaults; "
        f"retrain with `{RETRAIN_COMMAND['clip']}` and commit src/sae_vlm_plugin/toy/weights/"
    )


@pytest.mark.slow
def test_retraining_reproduces_the_shipped_quality(tmp_path):
    if not _stale_models() and os.environ.get(RETRAIN_SWITCH) != "1":
        pytest.skip(
            "the shipped toy weights were trained by the current recipe (training.json's "
            "recipe_sha256 is toy/recipe.py's hash of the training code, world and settings), "
            "and the shipped-model tests check their quality; retraining runs when the recipe "
            f"changes, or with {RETRAIN_SWITCH}=1"
        )
    from sae_vlm_plugin.toy.train import main

    assert main(["--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "clip" / "training.json").read_text())
    shipped = json.loads((toy_model_path("toy-clip") / "training.json").read_text())
    assert record["settings"] == shipped["settings"]
    assert record["recipe_sha256"] == recipe_sha256("clip")
    assert min(record["zero_shot_accuracy"].values()) >= 0.9, record["zero_shot_accuracy"]
    record = json.loads((tmp_path / "llava" / "training.json").read_text())
    shipped = json.loads((toy_model_path("toy-llava") / "training.json").read_text())
    assert record["settings"] == shipped["settings"]
    assert record["recipe_sha256"] == recipe_sha256("llava")
    assert record["describe_accuracy"]["colour_and_shape"] >= 0.9, record["describe_accuracy"]


def test_llava_answers_are_templated_from_the_object_and_refuse_unknown_prompts():
    from sae_vlm_plugin.steering.evaluation import DESCRIBE_PROMPT, INSERTION_PROMPTS
    from sae_vlm_plugin.toy.llava_training import ATTRIBUTE_QUESTIONS, answer, prompts

    obj = WorldObject("ring", "red", "striped", "large")
    assert answer(DESCRIBE_PROMPT, obj) == "a large red striped ring ."
    assert answer(DESCRIBE_PROMPT, None) == "a blank white image ."
    assert answer(ATTRIBUTE_QUESTIONS["colour"], obj) == "red ."
    assert answer(ATTRIBUTE_QUESTIONS["colour"], None) == "white ."
    assert answer(INSERTION_PROMPTS[0], obj) == "roses for my love , the large red striped ring ."
    for prompt in prompts():  # every answer names something of the object
        assert set(obj.attributes) & set(answer(prompt, obj).split()), prompt
    with pytest.raises(ValueError, match="no answer template for 'Sing'; known prompts"):
        answer("Sing", obj)


def test_llava_training_labels_are_the_answer_tokens_only():
    from transformers import CLIPConfig

    from sae_vlm_plugin.toy.llava_training import (
        _batch,
        _head_lengths,
        llava_processor,
        llava_tokenizer,
    )

    tokenizer = llava_tokenizer()
    processor = llava_processor(tokenizer, CLIPConfig.from_pretrained(toy_model_path("toy-clip")))
    obj = WorldObject("ring", "red", "striped", "large")
    asked = ["What colour is the shape?", "Describe the image."]
    batch = _batch(
        processor, torch.zeros(2, 3, 48, 48), [obj, None], asked, _head_lengths(processor)
    )
    answers = [tokenizer.decode(row[row != -100]) for row in batch["labels"]]
    assert answers == ["red . </s>", "a blank white image . </s>"]
    assert "<unk>" not in tokenizer.decode(batch["input_ids"].flatten())


def test_the_shipped_llava_loads_like_a_hub_checkpoint_and_reads_the_clip_tower():
    from transformers import CLIPModel, LlavaForConditionalGeneration, LlavaProcessor

    from sae_vlm_plugin import VisionModel

    path = toy_model_path("toy-llava")
    llava = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = LlavaProcessor.from_pretrained(path)
    clip = CLIPModel.from_pretrained(toy_model_path("toy-clip")).eval()
    assert llava.config.vision_feature_layer == -2
    assert llava.config.vision_feature_select_strategy == "default"
    tower = llava.model.vision_tower.vision_model.state_dict()
    for name, tensor in clip.vision_model.state_dict().items():
        assert torch.equal(tower[name], tensor), name
    model = VisionModel("toy-llava")
    assert model.family.name == "llava"
    images, _ = world_images(2, seed=5)
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    hook = f"vision.blocks.{clip.config.vision_config.num_hidden_layers - 2}.hook_resid_post"
    captured = model.capture(pixels, [hook])[hook]
    with torch.no_grad():
        hidden = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.allclose(captured, hidden[-2], atol=1e-5)
    assert processor.chat_template
    training = json.loads((path / "training.json").read_text())
    assert training["describe_accuracy"]["colour_and_shape"] >= 0.9


def test_the_shipped_llava_describes_heldout_images():
    from sae_vlm_plugin.toy import load_toy_llava
    from sae_vlm_plugin.toy.llava_training import describe_accuracy

    model, processor = load_toy_llava()
    images, objects = world_images(200, seed=3)  # the held-out seed; training used seed 2
    accuracy = describe_accuracy(model, processor, images, objects)
    assert accuracy["colour_and_shape"] >= 0.9, accuracy
