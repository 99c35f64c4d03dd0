"""One ``--sae`` syntax for every command (#18 item 20): a directory, ``RELEASE:SAE_ID`` or
``RELEASE/SAE_ID``; ``--registry FILE``; ``load_sae(directory)``; a missing directory is said to
be missing, not an unknown release. An SAE of another model of the same width is refused unless
forced (#18 item 12)."""

from __future__ import annotations

import pytest
import torch
import yaml
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_vlm_plugin import VisionModel
from sae_vlm_plugin.cli import main
from sae_vlm_plugin.pretrained import registry
from sae_vlm_plugin.pretrained.loading import check_attachable, load_sae
from sae_vlm_plugin.pretrained.sae_argument import load_sae_argument, parse_sae_spec
from sae_vlm_plugin.tiny import models as tm

HOOK = "blocks.1.hook_resid_post"
COMMANDS_WITH_SAE = {
    "evaluate": ["--images", "."],
    "dashboard": ["--images", ".", "--out", "dash"],
    "name": ["--images", ".", "--out", "labels"],
    "steer": ["--model", "toy-llava", "--latent", "0", "--values", "0", "--prompt", "hi"],
}


@pytest.fixture
def user_releases(monkeypatch):
    """Releases a test registers vanish afterwards."""
    monkeypatch.setattr(registry, "_RELEASES", dict(registry.list_releases()))


def clip_sae(model_name: str = "tiny/clip", family: str = "clip") -> JumpReLUSAE:
    """A small random SAE whose metadata says it was trained on ``model_name``."""
    metadata = SAEMetadata(hook_name=HOOK, model_name=model_name, family=family, tokens="all")
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=tm.WIDTH, d_sae=16, metadata=metadata))
    with torch.no_grad():
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(0))
    return sae


def saved_sae(directory, model_name: str = "tiny/clip") -> torch.Tensor:
    """Save a small SAE with vision metadata in SAELens format; returns its ``W_enc``."""
    sae = clip_sae(model_name)
    sae.save_model(directory)
    return sae.W_enc.detach().clone()


def registry_file(tmp_path, sae_dir):
    """A user's release YAML naming ``sae_dir`` as its one SAE ``layer_1``."""
    data = {
        "my-saes": {
            "repo_id": str(sae_dir.parent),
            "model": "tiny/clip",
            "conversion_func": "sae_vlm_sae_lens",
            "verified": True,
            "metadata": {
                "family": "clip",
                "tokens": "cls",
                "training_architecture": "jumprelu",
                "training_data": "random",
            },
            "saes": [{"id": "layer_1", "path": sae_dir.name, "metadata": {"hook_name": HOOK}}],
        }
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_load_sae_reads_a_directory(tmp_path):
    weights = saved_sae(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert torch.equal(loaded.sae.W_enc, weights)
    assert (loaded.hook_name, loaded.model_name, loaded.metadata.family) == (
        HOOK,
        "tiny/clip",
        "clip",
    )
    assert loaded.verified is False
    with pytest.raises(FileNotFoundError, match=r"no such SAE directory: .*missing"):
        load_sae(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"is a release, not a directory: pass sae_id, one of"):
        load_sae("pach2025-clip-vit-l14-336-steering")
    (tmp_path / "run" / "final").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"has no cfg.json .* did you mean .*final"):
        load_sae(tmp_path / "run")


def test_every_spelling_names_the_same_sae(tmp_path, user_releases):
    weights = saved_sae(tmp_path / "saes" / "sae")
    file = str(registry_file(tmp_path, tmp_path / "saes" / "sae"))
    for spec in ("my-saes:layer_1", "my-saes/layer_1", str(tmp_path / "saes" / "sae")):
        assert torch.equal(load_sae_argument(spec, "cpu", [file]).W_enc, weights), spec
    assert parse_sae_spec("my-saes/layer_1") == ("my-saes", "layer_1")
    assert parse_sae_spec("pach2025-clip-vit-l14-336-steering:blocks.22.hook_resid_post/x64") == (
        "pach2025-clip-vit-l14-336-steering",
        "blocks.22.hook_resid_post/x64",
    )
    with pytest.raises(ValueError, match="release 'my-saes' has no SAE 'layer_9'"):
        load_sae_argument("my-saes:layer_9", "cpu")


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_SAE))
@pytest.mark.parametrize("spec", ["runs/nonexist", "./runs/nonexist"])
def test_a_missing_directory_is_not_an_unknown_release(command, spec, capsys, tmp_path):
    code = main([command, "--sae", spec, *COMMANDS_WITH_SAE[command]])
    error = capsys.readouterr().err
    assert code == 2
    assert "no such SAE directory: " in error
    assert "runs/nonexist" in error
    assert "unknown release" not in error
    if not spec.startswith("."):
        assert "pach2025-clip-vit-l14-336-steering" in error  # the valid releases


@pytest.mark.parametrize("command", sorted(COMMANDS_WITH_SAE))
def test_registry_option_registers_the_users_releases(command, tmp_path, user_releases, capsys):
    saved_sae(tmp_path / "saes" / "sae")
    file = registry_file(tmp_path, tmp_path / "saes" / "sae")
    given = dict(
        zip(COMMANDS_WITH_SAE[command][::2], COMMANDS_WITH_SAE[command][1::2], strict=True)
    )
    given["--model"] = str(tmp_path / "no-model-here")  # fails only after the SAE loaded
    argv = [command, "--sae", "my-saes/layer_1", "--registry", str(file)]
    assert main(argv + [item for pair in given.items() for item in pair]) == 2
    error = capsys.readouterr().err
    assert "no-model-here" in error
    assert "my-saes" not in error


# -- an SAE of another model (#18 item 12) ---------------------------------------------------


def test_an_sae_of_another_family_of_the_same_width_is_refused_unless_forced():
    siglip = VisionModel(tm.siglip_vision_model())
    with pytest.raises(
        ValueError, match=r"trained on tiny/clip \(clip\), but the model is .*siglip"
    ):
        check_attachable(clip_sae(), siglip)
    assert check_attachable(clip_sae(), siglip, force=True).d_model == tm.WIDTH


def test_models_are_compared_by_resolved_path(tmp_path, monkeypatch):
    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "models" / "clip")
    other = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "models" / "other")
    monkeypatch.chdir(tmp_path)
    model = VisionModel(str(checkpoint))
    assert check_attachable(clip_sae("models/clip"), model).name == HOOK  # relative = absolute
    assert check_attachable(clip_sae(str(checkpoint)), VisionModel("models/clip")).name == HOOK
    with pytest.raises(ValueError, match=r"trained on .*other \(clip\), but the model is .*clip"):
        check_attachable(clip_sae(str(other)), model)
    unnamed = VisionModel(tm.clip_vision_model())  # a module without a name: family only
    assert check_attachable(clip_sae(str(other)), unnamed).name == HOOK
    assert check_attachable(clip_sae(unnamed.model_name), model).name == HOOK  # trained on one


def test_a_clip_sae_steers_llava(tiny_llava):
    llava = VisionModel(tiny_llava.model, family="llava")
    sae = clip_sae("openai/clip-vit-large-patch14-336")
    sae.cfg.metadata.hook_name = "vision.blocks.1.hook_resid_post"
    assert check_attachable(sae, llava).d_model == tm.WIDTH
    sae.cfg.metadata.family = "siglip"
    with pytest.raises(ValueError, match="but the model is"):
        check_attachable(sae, llava)


def test_cli_refuses_an_sae_of_another_model_unless_forced(tmp_path, image_folder, capsys):
    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "clip")
    siglip = tmp_path / "siglip"
    tm.siglip_vision_model().save_pretrained(siglip)
    model = VisionModel(tm.siglip_vision_model())
    model.family.image_processor(tm.IMAGE_SIZE).save_pretrained(siglip)
    saved_sae(tmp_path / "sae", model_name=str(checkpoint))
    argv = ["evaluate", "--sae", str(tmp_path / "sae"), "--images", str(image_folder)]
    argv += ["--model", str(siglip), "--scoring-encoder", str(tmp_path / "no-scorer")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"trained on {checkpoint} (clip), but the model is {siglip} (siglip)" in error
    assert "--force" in error
    assert main([*argv, "--force"]) == 2
    assert "no-scorer" in capsys.readouterr().err  # past the check: fails on the next thing


# -- a corrupt or mismatched SAE folder (#27 item 6) -------------------------------------------


def _damaged(path, damage):
    """Apply ``(file, edit)`` to a saved SAE: ``edit`` maps the file's bytes to new bytes."""
    import json

    name, edit = damage
    target = path / name
    if name == "cfg.json" and isinstance(edit, dict):
        target.write_text(json.dumps({**json.loads(target.read_text()), **edit}))
    elif isinstance(edit, str):
        target.write_text(edit)
    else:
        target.write_bytes(edit(target.read_bytes()))


def _without_threshold(data: bytes) -> bytes:
    from safetensors.torch import load, save

    tensors = load(data)
    tensors.pop("threshold")
    return save(tensors)


DAMAGES = {
    "empty weights": (("sae_weights.safetensors", lambda b: b""), "sae_weights.safetensors"),
    "truncated weights": (
        ("sae_weights.safetensors", lambda b: b[: len(b) // 2]),
        "sae_weights.safetensors",
    ),
    "missing tensor": (("sae_weights.safetensors", _without_threshold), "threshold"),
    "other width": (("cfg.json", {"d_sae": 32}), "d_sae"),
    "other d_in": (("cfg.json", {"d_in": 4}), "d_in"),
    "other architecture": (("cfg.json", {"architecture": "standard"}), "threshold"),
    "unknown architecture": (("cfg.json", {"architecture": "banana"}), "jumprelu"),
    "a list": (("cfg.json", "[1, 2]"), "cfg.json"),
    "NaN width": (("cfg.json", '{"d_in": NaN, "d_sae": 16, "architecture": "jumprelu"}'), "d_in"),
    "truncated cfg": (("cfg.json", '{"d_in": 8, "d_sa'), "cfg.json"),
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_a_corrupt_or_mismatched_sae_folder_is_a_user_error_naming_it(case, tmp_path, capsys):
    damage, said = DAMAGES[case]
    path = tmp_path / "sae"
    saved_sae(path)
    _damaged(path, damage)
    with pytest.raises(ValueError, match=str(path)) as refused:
        load_sae(path)
    assert said in str(refused.value)
    assert main(["evaluate", "--sae", str(path), "--images", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert error[0].startswith(f"sae-vlm evaluate: error: {path}")
