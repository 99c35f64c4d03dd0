"""Naming latents by text: vocabularies, the text towers, LatentLabels against a plain
re-implementation, the decoder scorer on hand-made directions, find, files, steering by word,
the CLI, and the labels in the dashboard and its exports."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.naming import (
    LatentLabels,
    check_labels,
    find_latents,
    load_text_tower,
    load_vocabulary,
    name_latents,
)
from sae_vlm_plugin.naming.labels import CSV_FILE, LABELS_FILE, VECTORS_FILE
from sae_vlm_plugin.toy import ATTRIBUTE_VALUES, ATTRIBUTES, load_toy_clip, world_images

F = torch.nn.functional
BLOCK_HOOK = "blocks.2.hook_resid_post"
WORDS = [v for values in ATTRIBUTE_VALUES.values() for v in values]


@pytest.fixture(scope="module")
def toy_clip():
    return VisionModel("toy-clip")


@pytest.fixture(scope="module")
def world():
    return world_images(400, seed=5)


def jumprelu_sae(w_enc, b_enc, w_dec, hook, tokens="cls"):
    d_in, d_sae = w_enc.shape
    cfg = JumpReLUSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        metadata=SAEMetadata(hook_name=hook, tokens=tokens, model_name="toy-clip"),
    )
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(w_dec)
    return sae


def image_folder(path, images):
    path.mkdir()
    for i, image in enumerate(images):
        image.save(path / f"{i:03d}.png")
    return path


def random_block_sae(d_sae=64, seed=0, tokens="cls"):
    g = torch.Generator().manual_seed(seed)
    return jumprelu_sae(
        torch.randn(128, d_sae, generator=g) / 128**0.5,
        torch.randn(d_sae, generator=g) * 0.3,
        F.normalize(torch.randn(d_sae, 128, generator=g), dim=1),
        BLOCK_HOOK,
        tokens,
    )


@pytest.fixture(scope="module")
def concept_sae(world):
    """One latent per world word on hook_image_embeds: a probe for it (the direction from the
    mean embedding to the mean embedding of the images that show it), firing above the midpoint
    of the two means' projections. Its top images all show the word."""
    model, processor = load_toy_clip()
    images, objects = world
    with torch.no_grad():
        embeds = model.get_image_features(**processor(images=images, return_tensors="pt"))
    columns, biases = [], []
    for a, attribute in enumerate(ATTRIBUTES):
        for value in ATTRIBUTE_VALUES[attribute]:
            shows = torch.tensor([o.attributes[a] == value for o in objects])
            direction = F.normalize(embeds[shows].mean(0) - embeds.mean(0), dim=0)
            middle = (embeds[shows] @ direction).mean() + (embeds[~shows] @ direction).mean()
            columns.append(direction)
            biases.append(-middle / 2)
    w_enc = torch.stack(columns, 1)
    return jumprelu_sae(w_enc, torch.stack(biases), w_enc.T.clone(), "hook_image_embeds")


# -- vocabularies -------------------------------------------------------------------------------


def test_default_vocabulary_is_imagenet_and_attributes_without_duplicates():
    imagenet, attributes = load_vocabulary("imagenet"), load_vocabulary("attributes")
    assert len(imagenet) == 998  # 1000 classes; 'missile' and 'sunglasses' name two each
    assert imagenet[:2] == ["tench", "goldfish"]
    assert "toilet paper" in imagenet
    assert len(attributes) == 255
    assert "red" in attributes
    assert "striped" in attributes
    default = load_vocabulary()
    assert default == list(dict.fromkeys(imagenet + attributes))
    assert load_vocabulary("imagenet+attributes") == default
    assert load_vocabulary("toy") == WORDS


def test_vocabulary_from_a_file_or_a_list(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# my concepts\npencil\n\n  red  \npencil\n")
    assert load_vocabulary(path) == ["pencil", "red"]
    assert load_vocabulary(str(path)) == ["pencil", "red"]
    assert load_vocabulary(["a", " b ", "a", ""]) == ["a", "b"]
    with pytest.raises(ValueError, match="shipped: imagenet, attributes, toy"):
        load_vocabulary("imagenett")
    with pytest.raises(ValueError, match="no words"):
        load_vocabulary(["", "  "])


# -- text towers --------------------------------------------------------------------------------


def test_toy_text_tower_embeds_like_clipmodel_and_ensembles_templates():
    model, processor = load_toy_clip()
    tower = load_text_tower("toy-clip", templates=["a {}", "a {} shape"])
    with torch.no_grad():

        def unit(texts):
            inputs = processor.tokenizer(texts, padding=True, return_tensors="pt")
            return F.normalize(model.get_text_features(**inputs), dim=-1)

        expected = F.normalize(
            unit(["a red", "a star"]) + unit(["a red shape", "a star shape"]), dim=-1
        )
    torch.testing.assert_close(tower.embed(["red", "star"]), expected, atol=1e-6, rtol=0)
    assert tower.image_hook == "hook_image_embeds"
    with pytest.raises(ValueError, match="has no"):
        load_text_tower("toy-clip", templates=["no slot"]).embed(["red"])


def test_a_text_longer_than_the_text_towers_context_is_named():
    """#27 item 16: a vocabulary entry or a ``find`` query (both embedded by ``TextTower.embed``)
    longer than the tower reads is named, not a bare sequence-length error."""
    long_entry = " ".join(["red"] * 30)  # the toy tower reads 16 tokens
    with pytest.raises(ValueError, match=re.escape(f"{long_entry!r} is 32 tokens long")):
        load_text_tower("toy-clip").embed(["blue", long_entry])


def test_models_without_a_text_tower_are_refused(tmp_path, world):
    from sae_vlm_plugin.tiny import models as tm

    path = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "vision_only")
    with pytest.raises(ValueError, match="has no text tower"):
        load_text_tower(str(path))
    aimv2 = VisionModel(tm.aimv2_vision_model())
    sae = jumprelu_sae(
        torch.ones(tm.WIDTH, 4),
        torch.zeros(4),
        torch.ones(4, tm.WIDTH),
        "blocks.1.hook_resid_post",
        "mean",
    )
    with pytest.raises(ValueError, match="aimv2 model, which has no text tower: pass text_model="):
        name_latents(sae, aimv2, world[0][:4], "toy")


# -- name_latents against a plain re-implementation ---------------------------------------------


def _reference_labels(sae, images, words, centre=True):
    """The module docstring's formulas, from CLIPModel directly (hidden_states, get_*_features)."""
    model, processor = load_toy_clip()
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        rows = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[3][
            :, 0
        ]
        codes = sae.encode(rows)
        embeds = model.get_image_features(pixel_values=pixels)
        text = F.normalize(
            model.get_text_features(
                **processor.tokenizer(words, padding=True, return_tensors="pt")
            ),
            dim=-1,
        )
    vectors = torch.zeros(codes.shape[1], embeds.shape[1])
    for j in range(codes.shape[1]):
        firing = (codes[:, j] > 0).nonzero().flatten()
        if firing.numel() == 0:
            continue
        order = codes[firing, j].argsort(descending=True, stable=True)[:16]
        mean = embeds[firing[order]].mean(0)
        vectors[j] = F.normalize(mean - embeds.mean(0) if centre else mean, dim=0)
    if centre:
        text = F.normalize(text - text.mean(0), dim=-1)
    return vectors, text


@pytest.mark.parametrize("centre", [True, False])
def test_top_image_labels_equal_a_plain_reimplementation(toy_clip, world, centre):
    images = world[0][:120]
    sae = random_block_sae()
    labels = name_latents(sae, toy_clip, images, "toy", centre=centre, progress=False)
    vectors, text = _reference_labels(sae, images, WORDS, centre)
    torch.testing.assert_close(labels.word_vectors, text, atol=2e-5, rtol=0)
    torch.testing.assert_close(labels.latent_vectors, vectors, atol=2e-5, rtol=0)
    assert labels.meta["scorer"] == "top_images"
    assert labels.meta["n_images"] == 120
    for latent in range(sae.cfg.d_sae):
        got = labels.labels(latent)
        if vectors[latent].abs().sum() == 0:
            assert got == []
            assert labels.best_label(latent) is None
            continue
        scores = vectors[latent] @ text.T
        best = scores.argsort(descending=True)[:5]
        assert [w for w, _ in got] == [WORDS[i] for i in best]
        assert [s for _, s in got] == pytest.approx(scores[best].tolist(), abs=2e-5)


def test_decoder_scorer_names_hand_made_directions(toy_clip):
    tower = load_text_tower("toy-clip")
    raw = tower.embed(WORDS)
    directions = raw - raw.mean(0)  # each latent decodes into one word's centred embedding
    sae = jumprelu_sae(
        directions.T.clone(), torch.zeros(len(WORDS)), directions, "hook_image_embeds"
    )
    labels = name_latents(sae, toy_clip, vocabulary="toy", scorer="decoder")
    assert [labels.best_label(j) for j in range(len(WORDS))] == WORDS
    assert labels.labels(3)[0][1] == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(labels.latent_vectors, F.normalize(directions, dim=-1))
    with pytest.raises(ValueError, match="use scorer='top_images'"):
        name_latents(random_block_sae(), toy_clip, vocabulary="toy", scorer="decoder")
    with pytest.raises(ValueError, match="needs images"):
        name_latents(random_block_sae(), toy_clip, vocabulary="toy")
    with pytest.raises(ValueError, match="top_images, decoder"):
        name_latents(sae, toy_clip, vocabulary="toy", scorer="clip")


# -- on the trained world: each concept's latent gets its word, and find returns it ------------


def test_concept_probes_on_the_toy_clip_are_named_and_found(toy_clip, world, concept_sae):
    images, objects = world
    labels = name_latents(concept_sae, toy_clip, images, "toy", progress=False)
    from sae_vlm_plugin.demo.naming import concept_masks
    from sae_vlm_plugin.metrics.sae_activations import encode_rows, hook_rows, pool_codes

    rows = hook_rows(toy_clip, images, "hook_image_embeds", "cls", progress=False)
    codes = pool_codes(encode_rows(concept_sae.encode, rows.rows), rows.image_index, rows.n_images)
    checks = check_labels(labels, codes, concept_masks(objects, [int(i) for i in rows.image_ids]))
    with_latent = [c for c in checks if c.latent is not None]
    named = [c.concept for c in with_latent if c.named_right]
    found = [c.concept for c in with_latent if c.found_right]
    # Probe j is word j's latent; each failure says what the text tower got right.
    summary = f"probes: {len(with_latent)}/23 pure, named {len(named)}, found {len(found)}"
    assert len(with_latent) >= 18, summary
    assert len(named) >= 0.8 * len(with_latent), summary
    assert len(found) >= 0.8 * len(with_latent), summary
    red = WORDS.index("red")
    assert labels.best_label(red) == "red"
    assert find_latents(concept_sae, "red", labels=labels)[0].latent == red


def test_find_embeds_queries_outside_the_vocabulary(concept_sae, toy_clip, world):
    labels = name_latents(concept_sae, toy_clip, world[0], "toy", progress=False)
    tower = load_text_tower("toy-clip")
    query = F.normalize(tower.embed(["red shape"])[0] - labels.text_centre, dim=0)
    expected = (labels.latent_vectors @ query).argsort(descending=True)[:3].tolist()
    found = find_latents(concept_sae, "red shape", labels=labels, top=3)
    assert [m.latent for m in found] == expected
    assert found[0].labels == labels.labels(found[0].latent)
    with pytest.raises(ValueError, match="empty"):
        find_latents(concept_sae, "  ", labels=labels)
    with pytest.raises(ValueError, match="another SAE"):
        find_latents(random_block_sae(d_sae=8), "red", labels=labels)
    with pytest.raises(ValueError, match="labels="):
        find_latents(concept_sae, "red")


# -- files --------------------------------------------------------------------------------------


def test_labels_round_trip_through_their_files(tmp_path, toy_clip, world):
    sae = random_block_sae(d_sae=96)
    labels = name_latents(sae, toy_clip, world[0][:60], "toy", n_labels=3, progress=False)
    assert not bool(labels.named.all())  # some random latents never fire: no labels
    path = labels.save(tmp_path)
    assert path == tmp_path / LABELS_FILE
    assert {p.name for p in tmp_path.iterdir()} == {LABELS_FILE, CSV_FILE, VECTORS_FILE}
    record = json.loads(path.read_text())
    assert set(record["labels"]) == {str(j) for j in range(96) if bool(labels.named[j])}
    back = LatentLabels.load(tmp_path)
    assert LatentLabels.load(path).vocabulary == back.vocabulary == WORDS
    for j in range(96):
        assert back.labels(j) == labels.labels(j)
    lines = (tmp_path / CSV_FILE).read_text().splitlines()
    assert lines[0] == "latent,rank,label,score"
    assert len(lines) == 1 + 3 * int(labels.named.sum())
    with pytest.raises(ValueError, match="out of range"):
        labels.labels(96)
    (tmp_path / "other.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a latent labels file"):
        LatentLabels.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="sae-vlm name"):
        LatentLabels.load(tmp_path / "nowhere")


def test_labels_csv_keeps_formulas_as_text(tmp_path):
    """A vocabulary word a spreadsheet would run as a formula is written as text."""
    words = ['=HYPERLINK("http://x","y")', "+1", "-2", "@SUM(A1)", "cat"]
    labels = LatentLabels(
        vocabulary=words,
        word_vectors=torch.eye(5),
        latent_vectors=torch.eye(5),
        text_centre=torch.zeros(5),
        n_labels=1,
    )
    labels.save(tmp_path)
    with (tmp_path / CSV_FILE).open(newline="") as f:
        cells = [row["label"] for row in csv.DictReader(f)]
    assert cells == ["'" + w for w in words[:4]] + ["cat"]
    assert LatentLabels.load(tmp_path).vocabulary == words


def test_a_truncated_labels_file_is_named_in_the_error(tmp_path):
    """Issue 27 item 20."""
    labels = LatentLabels(
        vocabulary=["cat", "dog"],
        word_vectors=torch.eye(2),
        latent_vectors=torch.eye(2),
        text_centre=torch.zeros(2),
        n_labels=1,
    )
    path = labels.save(tmp_path)
    path.write_text(path.read_text()[:40])
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        LatentLabels.load(tmp_path)


# -- steering by word ---------------------------------------------------------------------------


def test_a_concept_word_steers_the_toy_llava_as_its_latent_does(toy_clip, world):
    from sae_vlm_plugin.steering.edits import steer
    from sae_vlm_plugin.steering.evaluation import generate_text, white_image
    from sae_vlm_plugin.toy import IMAGE_SIZE, load_toy_llava

    sae = random_block_sae(tokens="all")
    labels = name_latents(sae, toy_clip, world[0][:80], "toy", tokens="all", progress=False)
    latent = find_latents(sae, "red", labels=labels)[0].latent
    module, processor = load_toy_llava()
    llava = VisionModel(module)
    image = white_image(IMAGE_SIZE)

    def answer(latents, **kw):
        handles = []

        def steering():
            handles.append(steer(llava, sae, latents, **kw))
            return handles[-1]

        text = generate_text(
            llava, processor, "Describe the image.", image, steering, max_new_tokens=8
        )
        return text, handles[-1]

    by_word, handle = answer({"red": 20.0}, labels=labels)
    by_index, _ = answer({latent: 20.0})
    assert by_word == by_index
    assert handle.concepts == {"red": latent}
    assert f"'red' -> latent {latent}" in repr(handle)
    with pytest.raises(ValueError, match="concept word: pass labels="):
        steer(llava, sae, {"red": 20.0})


# -- command line -------------------------------------------------------------------------------


def test_name_and_find_commands(tmp_path, world, capsys):
    sae = random_block_sae(tokens="all")
    sae_dir = tmp_path / "sae"
    sae.save_model(str(sae_dir))
    images = image_folder(tmp_path / "images", world[0][:40])
    assert (
        cli_main(["name", "--sae", str(sae_dir), "--images", str(images), "--vocabulary", "toy"])
        == 0
    )
    assert "latents named with 23 words" in capsys.readouterr().out
    labels = LatentLabels.load(sae_dir)
    assert cli_main(["find", "--sae", str(sae_dir), "red", "--top", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    best = find_latents(sae, "red", labels=labels, top=2)
    assert [int(line.split()[1]) for line in printed] == [m.latent for m in best]
    assert (
        cli_main(
            [
                "steer",
                "--model",
                "toy-llava",
                "--sae",
                str(sae_dir),
                "--latent",
                "red",
                "--values",
                "0",
                "--prompt",
                "Describe the image.",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )
    assert f"'red' -> latent {best[0].latent}" in capsys.readouterr().out


# -- dashboard and exports ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled_dashboard(tmp_path_factory, toy_clip, world, concept_sae):
    from sae_vlm_plugin.dashboard import collect_dashboard, write_from_data
    from sae_vlm_plugin.metrics.embeddings import image_embeddings

    images = world[0][:200]
    labels = name_latents(concept_sae, toy_clip, images, "toy", progress=False)
    embeddings = image_embeddings(images, toy_clip, hook="hook_image_embeds", progress=False)
    found = collect_dashboard(
        concept_sae, toy_clip, images, embeddings=embeddings.embeddings, concept_labels=labels
    )
    out = tmp_path_factory.mktemp("labelled_dashboard")
    index = write_from_data(found.data, found.source, out, positions=found.positions)
    return found, labels, index


def test_dashboard_carries_the_concept_labels(labelled_dashboard):
    found, labels, index = labelled_dashboard
    red = WORDS.index("red")
    assert found.data.concepts[red] == labels.labels(red)
    page_data = (index.parent / "data" / "index.js").read_text()
    columns = json.loads(page_data.split("=", 1)[1].rstrip().rstrip(";"))["columns"]
    assert columns["concept"][red] == "red"
    assert columns["concept_score"][red] == pytest.approx(labels.labels(red)[0][1], abs=1e-4)
    assert columns["concepts"][red] == [w for w, _ in labels.labels(red)]


def test_chromium_finds_a_latent_by_its_concept_label(labelled_dashboard):
    from dashboard_helpers import chromium, status

    _, labels, index = labelled_dashboard
    red = WORDS.index("red")
    dom = chromium(index.as_uri() + "#q=red&sort=concept_score&dir=desc")
    assert status(dom)["view"] == "index"
    assert f'data-latent="{red}"' in dom
    listed = [int(x) for x in re.findall(r'class="latent-row" data-latent="(\d+)"', dom)]
    assert all("red" in [w for w, _ in labels.labels(j)] for j in listed)
    page = chromium(index.as_uri() + f"#latent={red}")
    assert '<ol id="concepts">' in page
    assert "<li>red \u00b7" in page


def test_exports_carry_the_concept_labels(labelled_dashboard, tmp_path):
    from sae_vlm_plugin.dashboard import export_neuronpedia, saedashboard_data

    found, labels, _ = labelled_dashboard
    red = WORDS.index("red")
    paths = export_neuronpedia(
        found.data,
        found.source,
        tmp_path / "np",
        model_id="toy-clip",
        source_set="probes",
        layer=0,
        positions=found.positions,
    )
    explanations = json.loads(paths[-1].read_text())
    entry = next(e for e in explanations if e["index"] == str(red))
    assert entry["description"] == ", ".join(w for w, _ in labels.labels(red))
    assert entry["source"] == entry["layer"] == "0-probes"
    assert entry["modelId"] == "toy-clip"
    vis = saedashboard_data(
        found.data,
        found.source,
        tmp_path / "sd",
        hook_point="hook_image_embeds",
        positions=found.positions,
    )
    assert "CONCEPTS: red" in vis.feature_data_dict[red].acts_histogram_data.title


@pytest.mark.real_weights
def test_real_clip_names_decoder_directions_and_the_commands_run(tmp_path, world):
    """openai/clip-vit-base-patch32: latents decoding into the centred text embeddings of
    ImageNet classes are named by them; ``sae-vlm name`` / ``find`` run unchanged."""
    clip = VisionModel("openai/clip-vit-base-patch32")
    words = ["pencil", "goldfish", "school bus", "red", "striped"]
    vocabulary = load_vocabulary()
    tower = load_text_tower("openai/clip-vit-base-patch32")
    raw = tower.embed(vocabulary)
    directions = raw[[vocabulary.index(w) for w in words]] - raw.mean(0)
    sae = jumprelu_sae(
        directions.T.clone(), torch.zeros(len(words)), directions, "hook_image_embeds"
    )
    sae.cfg.metadata.model_name = "openai/clip-vit-base-patch32"
    labels = name_latents(sae, clip, scorer="decoder", text_model=tower)
    assert [labels.best_label(j) for j in range(len(words))] == words
    assert find_latents(sae, "pencil", labels=labels)[0].latent == 0
    sae_dir = tmp_path / "sae"
    sae.save_model(str(sae_dir))
    images = image_folder(tmp_path / "images", world[0][:20])
    assert cli_main(["name", "--sae", str(sae_dir), "--images", str(images)]) == 0
    assert cli_main(["find", "--sae", str(sae_dir), "a yellow pencil"]) == 0
