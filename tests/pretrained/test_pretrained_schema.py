"""The registry YAML schema: every shipped file passes it; a malformed file is refused by name."""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path

import pytest

from sae_vlm_plugin.families import list_families
from sae_vlm_plugin.pretrained.schema import (
    CONVERSION_FUNCS,
    SchemaError,
    load_yaml_text,
    parse_releases,
)

SHIPPED = sorted(
    (f for f in files("sae_vlm_plugin").joinpath("pretrained_yaml").iterdir()),
    key=lambda f: f.name,
)

VALID = {
    "my-release": {
        "repo_id": "someone/vision-saes",
        "model": "openai/clip-vit-base-patch32",
        "conversion_func": "sae_vlm_sae_lens",
        "verified": True,
        "metadata": {
            "family": "clip",
            "tokens": "cls",
            "training_architecture": "batchtopk",
            "k": 20,
            "training_data": "ImageNet-1k train, CLS",
        },
        "saes": [
            {
                "id": "blocks.10.hook_resid_post/x4",
                "path": "layer_10",
                "metadata": {"hook_name": "blocks.10.hook_resid_post", "expansion_factor": 4},
            }
        ],
    }
}


def edited(edit) -> dict:
    data = copy.deepcopy(VALID)
    edit(data["my-release"])
    return data


def test_shipped_yaml_files_follow_the_schema():
    assert [f.name for f in SHIPPED], "no shipped registry file"
    names: set[str] = set()
    for file in SHIPPED:
        assert file.name.endswith(".yaml"), f"{file.name}: only .yaml files belong here"
        releases = parse_releases(load_yaml_text(file.read_text(), file.name), file.name)
        assert not names & set(releases), "a release is defined in two shipped files"
        names |= set(releases)
        for release in releases.values():
            assert not Path(release.repo_id).is_absolute(), "shipped releases name hub repos"
            assert release.verified or release.note
            for sae in release.saes:
                assert sae.metadata.family in list_families()


def test_paper_release_entries_match_the_reference_layout():
    text = next(f for f in SHIPPED if f.name == "pach2025_sae_for_vlm.yaml").read_text()
    releases = parse_releases(load_yaml_text(text, "paper"), "paper")
    clip = releases["pach2025-clip-vit-l14-336-matryoshka"]
    assert len(clip.saes) == 5 * 6  # layers 11, 17, 22, 23 and the projection, x1..x64
    sae = clip.sae("blocks.22.hook_resid_post/x8")
    assert sae.path == (
        "matroyshka_batch_top_k_20_x8/imagenet_train_activations_clip-vit-large-patch14-336_22_"
        "post_mlp_residual_matroyshka_batch_top_k_20_x8/trainer_0/checkpoints/ae_100000.pt"
    )
    assert (sae.metadata.layer, sae.metadata.k, sae.metadata.expansion_factor) == (22, 20, 8)
    assert sae.metadata.group_fractions == (0.0625, 0.125, 0.25, 0.5625)
    last = clip.sae("hook_image_embeds/x4")
    assert last.metadata.layer is None
    assert "_-1_post_projection_" in last.path
    steering = releases["pach2025-clip-vit-l14-336-steering"].sae("blocks.22.hook_resid_post/x64")
    assert steering.metadata.tokens == "random_2+replacement"
    assert "/random_k_2/" in steering.path
    assert all(not release.verified for release in releases.values())


def test_a_valid_file_parses_into_merged_metadata():
    release = parse_releases(VALID, "valid.yaml")["my-release"]
    sae = release.sae("blocks.10.hook_resid_post/x4")
    assert sae.metadata.to_dict() == {
        "family": "clip",
        "hook_name": "blocks.10.hook_resid_post",
        "tokens": "cls",
        "training_architecture": "batchtopk",
        "training_data": "ImageNet-1k train, CLS",
        "layer": 10,
        "k": 20,
        "expansion_factor": 4,
    }
    assert sae.verified


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # unknown keys, at every level, with a suggestion
        (lambda r: r.update(repo=1), r"unknown key 'repo' \(did you mean 'repo_id'\?\)"),
        (lambda r: r["saes"][0].update(pth="x"), r"saes\[0\].*unknown key 'pth'"),
        (lambda r: r["metadata"].update(famly="clip"), r"unknown key 'famly'.*'family'"),
        (lambda r: r.update(config_overrides={"hook_name": "x"}), r"unknown key 'hook_name'"),
        # missing keys
        (lambda r: r.pop("model"), r"missing key 'model'"),
        (lambda r: r["saes"][0].pop("path"), r"saes\[0\]: missing key 'path'"),
        # wrong types
        (lambda r: r["metadata"].update(k="twenty"), r"key 'k' must be an integer, got str"),
        (lambda r: r["metadata"].update(k=True), r"key 'k' must be an integer, got bool"),
        (lambda r: r.update(verified="yes"), r"key 'verified' must be true or false"),
        (lambda r: r["saes"][0].update(id=10), r"key 'id' must be a string, got int"),
        (lambda r: r.update(saes={"id": "x"}), r"key 'saes' must be a list"),
        # values
        (lambda r: r.update(conversion_func="gemma_2"), r"conversion_func 'gemma_2' is not one"),
        (lambda r: r.update(verified=False), r"verified is false, so a 'note' must say"),
        (lambda r: r.update(repo_id="local_dir"), r"repo_id 'local_dir' is neither"),
        (lambda r: r["metadata"].update(tokens="cls_only"), r"tokens: unknown token selection"),
        (lambda r: r["metadata"].update(layer=11), r"layer 11 disagrees with hook_name"),
        (lambda r: r["saes"][0]["metadata"].update(hook_name="resid22"), r"not a canonical hook"),
        (lambda r: r["metadata"].update(group_fractions=[0.5, 0.5]), r"only applies to Matryoshka"),
        (lambda r: r["saes"].append(dict(r["saes"][0])), r"ids must be unique"),
        # paths that would leave repo_id (#18 item 16)
        (lambda r: r["saes"][0].update(path="../../.."), r"path '../../..' climbs out"),
        (lambda r: r["saes"][0].update(path="a/../../b"), r"climbs out of repo_id"),
        (lambda r: r["saes"][0].update(path="/etc/passwd"), r"path '/etc/passwd' is absolute"),
        (lambda r: r["saes"][0].update(path="C:/saes"), r"is absolute"),
        (lambda r: r["saes"][0].update(path="a\\..\\..\\b"), r"contains a backslash"),
    ],
)
def test_malformed_release_is_refused_naming_the_key(edit, message):
    with pytest.raises(SchemaError, match=message):
        parse_releases(edited(edit), "user.yaml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("verified"), r"missing key 'verified' \(required in shipped files\)"),
        (lambda r: r["metadata"].pop("tokens"), r"metadata: missing key 'tokens' \(required in"),
        (lambda r: r["metadata"].pop("family"), r"metadata: missing key 'family'"),
        (lambda r: r["metadata"].pop("training_data"), r"missing key 'training_data'"),
        (lambda r: r["metadata"].pop("k"), r"missing key 'k' \(required for batchtopk\)"),
    ],
)
def test_a_shipped_file_states_every_sae_fully(edit, message):
    with pytest.raises(SchemaError, match=message):
        parse_releases(edited(edit), "shipped.yaml", shipped=True)


def test_a_user_file_needs_only_what_the_checkpoint_cannot_tell():
    """#18 item 23: family, hook, tokens, architecture, k and training data may be left to the
    checkpoint and the model's config (completed when the SAE loads); verified defaults to
    false, without a note."""
    minimal = {
        "mine": {
            "repo_id": "someone/vision-saes",
            "model": "openai/clip-vit-base-patch32",
            "conversion_func": "sae_vlm_sae_lens",
            "saes": [{"id": "layer_10", "path": "layer_10"}],
        }
    }
    release = parse_releases(minimal, "user.yaml")["mine"]
    assert not release.verified
    assert release.sae("layer_10").metadata.to_dict() == {}
    # What is given is still checked.
    minimal["mine"]["metadata"] = {"tokens": "cls_only"}
    with pytest.raises(SchemaError, match="tokens: unknown token selection"):
        parse_releases(minimal, "user.yaml")


def test_matryoshka_group_fractions_must_sum_to_one():
    def edit(release):
        release["metadata"].update(training_architecture="matryoshka_batchtopk")
        release["metadata"]["group_fractions"] = [0.25, 0.25]

    with pytest.raises(SchemaError, match="sum to 1"):
        parse_releases(edited(edit), "user.yaml")


def test_duplicate_yaml_keys_are_refused_not_resolved_silently():
    text = "a:\n  repo_id: x/y\n  repo_id: z/w\n"
    with pytest.raises(SchemaError, match=r"user.yaml: line 3: duplicate key 'repo_id'"):
        load_yaml_text(text, "user.yaml")


def test_yaml_that_is_not_plain_data_is_refused():
    with pytest.raises(SchemaError, match="not valid YAML"):
        load_yaml_text("a: !!python/object/apply:os.system ['true']\n", "user.yaml")


def test_relative_repo_id_resolves_against_the_yaml_folder(tmp_path):
    data = edited(lambda r: r.update(repo_id="./saes"))
    release = parse_releases(data, "user.yaml", base_dir=tmp_path)["my-release"]
    assert release.repo_id == str(tmp_path / "saes")


def test_conversion_funcs_are_the_registered_converters():
    from sae_vlm_plugin.pretrained import converters

    assert set(CONVERSION_FUNCS) == set(converters.LOADERS) == set(converters.CONFIG_GETTERS)
