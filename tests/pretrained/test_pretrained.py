"""The registry inside SAELens: releases reach SAE.from_pretrained with their vision metadata, from
local folders, file:// URLs and the offline HF cache; misfits and name clashes are refused."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import huggingface_hub.constants
import pytest
import torch
import yaml
from sae_lens import SAE
from sae_lens.loading import pretrained_sae_loaders, pretrained_saes_directory
from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup
from sae_lens.saes import sae as sae_module
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import save_file

from dictionary_learning_reference import (
    GROUP_FRACTIONS,
    batchtopk_state,
    matryoshka_state,
    reference_encode,
    trainer_config,
    write_checkpoint,
)
from sae_vlm_plugin.model import VisionModel
from sae_vlm_plugin.pretrained import registry
from sae_vlm_plugin.pretrained.commands import add_commands
from sae_vlm_plugin.pretrained.loading import check_attachable, export_sae, load_sae
from sae_vlm_plugin.pretrained.registry import register_releases
from sae_vlm_plugin.pretrained.sae_lens_bridge import is_plugin_lookup
from sae_vlm_plugin.tiny import models as tiny_models
from sae_vlm_plugin.tokens import TokenSelection

HOOK = "blocks.1.hook_resid_post"
MODEL = "tiny/clip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def sandbox(monkeypatch):
    """The registry connected to SAELens; releases registered by the test vanish afterwards.

    SAELens' cached directory is restored in place rather than cleared: re-reading SAELens'
    YAML takes seconds."""
    registry.connect_sae_lens()
    monkeypatch.setattr(registry, "_RELEASES", dict(registry.list_releases()))
    saved = dict(sae_lens_cached_directory())
    yield registry
    cached = sae_lens_cached_directory()
    cached.clear()
    cached.update(saved)


def sae_lens_cached_directory() -> dict[str, PretrainedSAELookup]:
    """The dict SAELens' cached directory function returns (the bridge adds to it in place)."""
    return pretrained_saes_directory.get_pretrained_saes_directory.original()


def directory() -> dict[str, PretrainedSAELookup]:
    return pretrained_saes_directory.get_pretrained_saes_directory()


def saelens_sae(d_in: int = 32, d_sae: int = 64, seed: int = 0) -> JumpReLUSAE:
    """A SAELens SAE with random weights, as the plugin's trainer would export one."""
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=HOOK))
    sae = JumpReLUSAE(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return sae


def release(
    repo_id: str,
    path: str,
    *,
    name: str = "tiny-clip-saes",
    sae_id: str = "layer_1",
    conversion_func: str = "sae_vlm_sae_lens",
    **metadata,
) -> dict:
    """A one-SAE registry mapping (what a user's YAML file holds)."""
    vision = {"family": "clip", "tokens": "cls", "training_architecture": "jumprelu"}
    vision |= {"training_data": "synthetic shapes, CLS token", **metadata}
    return {
        name: {
            "repo_id": repo_id,
            "model": MODEL,
            "conversion_func": conversion_func,
            "verified": True,
            "metadata": vision,
            "saes": [{"id": sae_id, "path": path, "metadata": {"hook_name": HOOK}}],
        }
    }


def vision_metadata(**extra) -> dict:
    """What the release above adds to ``sae.cfg.metadata``."""
    return {
        "model_name": MODEL,
        "family": "clip",
        "hook_name": HOOK,
        "tokens": "cls",
        "training_architecture": "jumprelu",
        "training_data": "synthetic shapes, CLS token",
        "layer": 1,
        **extra,
    }


def assert_same_weights(a: SAE, b: SAE) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for name, tensor in a_state.items():
        assert torch.equal(tensor, b_state[name]), name


def paper_release(tmp_path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """A Matryoshka checkpoint in the reference layout and a release naming it."""
    state = matryoshka_state(32, 64)
    write_checkpoint(tmp_path / "mirror" / "run" / "trainer_0", state, trainer_config(state))
    data = release(
        str(tmp_path / "mirror"),
        "run/trainer_0/checkpoints/ae_100000.pt",
        name="tiny-paper",
        conversion_func="sae_vlm_dictionary_learning",
        training_architecture="matryoshka_batchtopk",
        tokens="random_2",
        k=20,
        group_fractions=GROUP_FRACTIONS,
        expansion_factor=2,
    )
    return data, state


def hf_cache(root: Path, repo_id: str = "someone/vision-saes") -> Path:
    """An HF hub cache holding ``repo_id`` at ``COMMIT`` (refs/main); returns the snapshot."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def go_offline(monkeypatch, cache: Path) -> None:
    """HF_HUB_OFFLINE=1 with ``cache`` as HF_HUB_CACHE. huggingface_hub reads both variables
    when it is imported, so its constants are set too."""
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["relative", "absolute", "file_url"])
def test_saelens_format_sae_round_trips_through_a_yaml_entry(tmp_path, sandbox, style):
    sae = saelens_sae()
    sae.save_model(tmp_path / "saes" / "layer_1")
    sparsity = torch.randn(64)
    save_file({"sparsity": sparsity}, str(tmp_path / "saes" / "layer_1" / "sparsity.safetensors"))
    repo_id = {
        "relative": "./saes",
        "absolute": str(tmp_path / "saes"),
        "file_url": (tmp_path / "saes").as_uri(),
    }[style]
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(yaml.safe_dump(release(repo_id, "layer_1", expansion_factor=2)))

    assert register_releases(registry_file) == ["tiny-clip-saes"]
    loaded, cfg_dict, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(
        "tiny-clip-saes", "layer_1"
    )

    assert_same_weights(loaded, sae)
    assert type(loaded) is JumpReLUSAE
    expected = {**sae.cfg.metadata.to_dict(), **vision_metadata(expansion_factor=2)}
    assert loaded.cfg.metadata.to_dict() == expected
    assert cfg_dict["metadata"] == expected
    assert torch.equal(log_sparsity, sparsity)
    assert_same_weights(SAE.from_pretrained("tiny-clip-saes", "layer_1"), sae)
    assert "tiny-clip-saes" in directory()
    config = pretrained_sae_loaders.load_sae_config_from_huggingface("tiny-clip-saes", "layer_1")
    assert config["metadata"] == expected


def test_loading_from_the_offline_hugging_face_cache(tmp_path, sandbox, monkeypatch):
    cache = tmp_path / "hf"
    sae = saelens_sae()
    sae.save_model(hf_cache(cache) / "layer_1")
    go_offline(monkeypatch, cache)
    register_releases(release("someone/vision-saes", "layer_1"))
    register_releases(release("someone/vision-saes", "layer_2", name="not-downloaded"))

    loaded = load_sae("tiny-clip-saes", "layer_1")

    assert_same_weights(loaded.sae, sae)
    assert loaded.sae.cfg.metadata.family == "clip"
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        load_sae("not-downloaded", "layer_1")


def test_paper_checkpoint_loads_with_what_it_needs_to_attach(tmp_path, sandbox):
    data, state = paper_release(tmp_path)
    register_releases(data)

    loaded = load_sae("tiny-paper", "layer_1")

    assert (loaded.model_name, loaded.hook_name) == (MODEL, HOOK)
    assert loaded.tokens == TokenSelection("random_k", k=2)
    assert loaded.verified
    metadata = loaded.sae.cfg.metadata
    assert (metadata.family, metadata.k, metadata.tokens) == ("clip", 20, "random_2")
    assert metadata.dict_class == "MatroyshkaBatchTopKSAE"
    assert metadata.group_sizes == [4, 8, 16, 36]
    x = torch.randn(64, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.sae.encode(x), reference_encode(state, x), atol=1e-6, rtol=0
        )


def minimal_release(repo_id: str, path: str, model: str, conversion_func: str, **metadata) -> dict:
    """A user's one-SAE entry giving only what a checkpoint cannot tell (#18 item 23)."""
    entry = {
        "repo_id": repo_id,
        "model": model,
        "conversion_func": conversion_func,
        "saes": [{"id": "sae", "path": path}],
    }
    return {"minimal": {**entry, "metadata": metadata} if metadata else entry}


def test_a_minimal_user_entry_is_completed_from_the_checkpoint_and_the_model(tmp_path, sandbox):
    """#18 item 23: hook, layer, k and architecture come from the dictionary_learning
    config.json and weights, the family from the model's config; tokens must be given."""
    model = tiny_models.save_clip_checkpoint(tiny_models.clip_vision_model(), tmp_path / "clip")
    state = matryoshka_state(32, 64)
    config = {**trainer_config(state), "layer": 1}
    write_checkpoint(tmp_path / "mirror" / "trainer_0", state, config)
    path = "trainer_0/checkpoints/ae_100000.pt"
    kind = "sae_vlm_dictionary_learning"
    register_releases(
        minimal_release(str(tmp_path / "mirror"), path, str(model), kind, tokens="random_2")
    )

    loaded = load_sae("minimal", "sae")

    assert (loaded.hook_name, loaded.tokens) == (HOOK, TokenSelection("random_k", k=2))
    meta = loaded.metadata
    assert (meta.family, meta.layer, meta.k) == ("clip", 1, int(state["k"]))
    assert meta.training_architecture == "paper_matryoshka_batchtopk"
    assert not loaded.verified
    assert loaded.check_attachable(VisionModel(str(model))).name == HOOK

    register_releases(
        minimal_release(str(tmp_path / "mirror"), path, str(model), kind), overwrite=True
    )
    with pytest.raises(ValueError, match=r"checkpoint says tokens; add metadata.tokens"):
        load_sae("minimal", "sae")


def test_a_minimal_entry_for_a_sae_lens_export_takes_its_cfg_metadata(tmp_path, sandbox):
    model = tiny_models.save_clip_checkpoint(tiny_models.clip_vision_model(), tmp_path / "clip")
    sae = saelens_sae()
    sae.cfg.metadata.tokens = "cls"
    sae.save_model(tmp_path / "saes" / "layer_1")
    register_releases(
        minimal_release(str(tmp_path / "saes"), "layer_1", str(model), "sae_vlm_sae_lens")
    )
    meta = load_sae("minimal", "sae").metadata
    assert (meta.family, meta.hook_name, meta.tokens, meta.layer) == ("clip", HOOK, "cls", 1)
    assert meta.training_architecture == "jumprelu"


def test_registry_and_checkpoint_must_agree(tmp_path, sandbox):
    data, _ = paper_release(tmp_path)
    data["tiny-paper"]["metadata"]["k"] = 32
    register_releases(data)
    with pytest.raises(ValueError, match="registry says k=32 but the checkpoint records k=20"):
        load_sae("tiny-paper", "layer_1")


@pytest.mark.parametrize(
    ("name", "sae_id"),
    [
        ("pach2025-clip-vit-l14-336-batchtopk", "blocks.22.hook_resid_post/x2"),
        ("pach2025-clip-vit-l14-336-matryoshka", "hook_image_embeds/x1"),
        ("pach2025-clip-vit-l14-336-steering", "blocks.22.hook_resid_post/x64"),
        ("pach2025-siglip-so400m-14-384-matryoshka", "hook_pooled/x4"),
    ],
)
def test_shipped_entries_load_from_a_local_copy_of_the_hub_layout(tmp_path, sandbox, name, sae_id):
    spec = registry.get_release(name)
    entry = spec.sae(sae_id)
    d_in = 8
    d_sae = int(entry.metadata.expansion_factor * d_in)
    matryoshka = entry.metadata.training_architecture.endswith("matryoshka_batchtopk")
    state = (matryoshka_state if matryoshka else batchtopk_state)(d_in, d_sae)
    trainer_dir = tmp_path.joinpath(*PurePosixPath(entry.path).parent.parent.parts)
    assert write_checkpoint(trainer_dir, state, None) == tmp_path / entry.path
    registry._RELEASES[name] = dataclasses.replace(spec, repo_id=str(tmp_path))

    loaded = load_sae(name, sae_id)

    assert (loaded.sae.cfg.d_in, loaded.sae.cfg.d_sae) == (d_in, d_sae)
    metadata = loaded.sae.cfg.metadata.to_dict()
    assert metadata | entry.metadata.to_dict() == metadata
    assert metadata["model_name"] == spec.model


# -- SAELens integration ----------------------------------------------------------------------


def test_releases_survive_sae_lens_clearing_its_cache(sandbox):
    wrapper = pretrained_saes_directory.get_pretrained_saes_directory
    for module in (sae_module, pretrained_sae_loaders):
        assert module.get_pretrained_saes_directory is wrapper
    assert "sae_vlm_dictionary_learning" in pretrained_sae_loaders.NAMED_PRETRAINED_SAE_LOADERS

    wrapper.cache_clear()
    assert wrapper.cache_info().currsize == 0
    fresh = directory()

    assert is_plugin_lookup(fresh["pach2025-clip-vit-l14-336-steering"])
    assert "gpt2-small-res-jb" in fresh
    assert (
        pretrained_saes_directory.get_repo_id_and_folder_name(
            "pach2025-clip-vit-l14-336-steering", "blocks.22.hook_resid_post/x64"
        )[0]
        == "mateuszpach/sae-for-vlm"
    )


def test_plugin_directory_entries_are_plain_sae_lens_lookups(sandbox):
    """#18 item 19: the common ``DataFrame.from_records({k: v.__dict__ ...})`` recipe sees the
    same columns for the plugin's entries as for SAELens' own."""
    entries = directory()
    plugin = entries["pach2025-clip-vit-l14-336-steering"]
    assert type(plugin) is type(entries["gpt2-small-res-jb"])
    assert set(plugin.__dict__) == set(entries["gpt2-small-res-jb"].__dict__)
    assert is_plugin_lookup(plugin)
    assert not is_plugin_lookup(dataclasses.replace(plugin))


def test_a_release_named_like_a_sae_lens_release_is_refused(sandbox):
    data = release("someone/vision-saes", "layer_1", name="gpt2-small-res-jb")
    with pytest.raises(ValueError, match="has the name of one of SAELens' own pretrained releases"):
        register_releases(data)
    assert not is_plugin_lookup(directory()["gpt2-small-res-jb"])

    # The bridge itself refuses too, whatever reaches the registry.
    steering = registry.get_release("pach2025-clip-vit-l14-336-steering")
    registry._RELEASES["gpt2-small-res-jb"] = dataclasses.replace(
        steering, name="gpt2-small-res-jb"
    )
    with pytest.raises(ValueError, match="refuses to shadow it"):
        directory()
    del registry._RELEASES["gpt2-small-res-jb"]


def test_unknown_release_or_sae_id_lists_the_valid_ones_closest_first(sandbox):
    with pytest.raises(
        ValueError,
        match=r"unknown release 'pach2025-clip-vit-l14-336-batchtop'; registered releases "
        r"\(closest first\): pach2025-clip-vit-l14-336-batchtopk, ",
    ):
        load_sae("pach2025-clip-vit-l14-336-batchtop", "blocks.22.hook_resid_post/x2")
    with pytest.raises(
        ValueError,
        match=r"has no SAE 'blocks\.22\.hook_resid_post/x3'; valid ids \(closest first\): "
        r"blocks\.22\.hook_resid_post/x1, blocks\.22\.hook_resid_post/x2, ",
    ):
        load_sae("pach2025-clip-vit-l14-336-batchtopk", "blocks.22.hook_resid_post/x3")


def test_registering_again_is_a_no_op_and_a_different_release_needs_overwrite(tmp_path, sandbox):
    saelens_sae().save_model(tmp_path / "layer_1")
    data = release(str(tmp_path), "layer_1")
    assert register_releases(data) == register_releases(data) == ["tiny-clip-saes"]
    changed = release(str(tmp_path), "layer_1", tokens="mean")
    with pytest.raises(ValueError, match=r"already registered .* pass overwrite=True"):
        register_releases(changed)
    register_releases(changed, overwrite=True)
    assert SAE.from_pretrained("tiny-clip-saes", "layer_1").cfg.metadata.tokens == "mean"


def test_sae_lens_own_loader_loses_release_metadata(tmp_path, sandbox, monkeypatch):
    """Why converters.apply_overrides exists (if this fails, SAELens changed its behaviour)."""
    cache = tmp_path / "hf"
    saelens_sae().save_model(hf_cache(cache) / "layer_1")
    go_offline(monkeypatch, cache)

    def load_with(config_overrides: dict) -> SAEMetadata:
        plain = PretrainedSAELookup(
            release="plain",
            repo_id="someone/vision-saes",
            model=MODEL,
            conversion_func=None,
            saes_map={"layer_1": "layer_1"},
            expected_var_explained={"layer_1": 1.0},
            expected_l0={"layer_1": 0.0},
            neuronpedia_id={},
            norm_scaling_factor={},
            config_overrides=config_overrides,
        )
        monkeypatch.setitem(directory(), "plain", plain)
        return SAE.from_pretrained("plain", "layer_1").cfg.metadata

    top_level = load_with({"model_name": MODEL})
    assert (top_level.model_name, top_level.hook_name) == (None, HOOK)  # override dropped
    nested = load_with({"metadata": {"family": "clip"}})
    assert (nested.family, nested.hook_name) == (None, None)  # override and file's metadata lost


# -- attaching, exporting, the command line ---------------------------------------------------


def test_attaching_checks_hook_and_width_before_anything_runs(tmp_path, sandbox):
    model = VisionModel(tiny_models.clip_vision_model())
    calls: list[str] = []
    for module in model.source_module.modules():
        module.register_forward_pre_hook(lambda *_: calls.append("ran"))
    saelens_sae(d_in=tiny_models.WIDTH).save_model(tmp_path / "fits")
    saelens_sae(d_in=16).save_model(tmp_path / "narrow")
    register_releases(release(str(tmp_path), "fits"))
    register_releases(release(str(tmp_path), "narrow", name="narrow"))

    point = load_sae("tiny-clip-saes", "layer_1").check_attachable(model)
    assert (point.name, point.d_model) == (HOOK, tiny_models.WIDTH)
    narrow = load_sae("narrow", "layer_1")
    with pytest.raises(ValueError, match=f"d_in=16, but .* hook '{HOOK}' has width 32"):
        narrow.check_attachable(model)
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        check_attachable(narrow.sae, model, "blocks.7.hook_resid_post")
    with pytest.raises(ValueError, match="has no hook 'hook_vision_features'"):
        check_attachable(narrow.sae, model, "hook_vision_features")
    siglip = VisionModel(tiny_models.siglip_vision_model())
    with pytest.raises(ValueError, match="tokens='cls' needs a CLS token"):
        load_sae("tiny-clip-saes", "layer_1").check_attachable(siglip)
    assert calls == []


def test_export_writes_a_folder_plain_sae_lens_loads(tmp_path, sandbox):
    data, _ = paper_release(tmp_path)
    register_releases(data)

    out = export_sae("tiny-paper", "layer_1", tmp_path / "export")
    exported = SAE.load_from_disk(out)

    original = load_sae("tiny-paper", "layer_1").sae
    assert_same_weights(exported, original)
    assert exported.cfg.metadata.to_dict() == original.cfg.metadata.to_dict()
    assert exported.cfg.metadata.hook_name == HOOK
    again = release(str(tmp_path / "export"), ".", name="re-registered", tokens="random_2")
    register_releases(again)
    reloaded = load_sae("re-registered", "layer_1").sae
    assert_same_weights(reloaded, original)
    assert reloaded.cfg.metadata.dict_class == "MatroyshkaBatchTopKSAE"


def test_command_line_lists_validates_and_exports(tmp_path, sandbox, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())

    def run(*argv: str) -> str:
        args = parser.parse_args(argv)
        assert args.handler(args) == 0
        return capsys.readouterr().out

    assert "pach2025-clip-vit-l14-336-steering  openai/clip" in run("pretrained", "list")
    listing = run("pretrained", "list", "pach2025-clip-vit-l14-336-steering")
    assert (
        "blocks.22.hook_resid_post/x64  blocks.22.hook_resid_post  tokens=random_2+replacement"
        in (listing)
    )
    data, _ = paper_release(tmp_path)
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(yaml.safe_dump(data))
    assert "OK, 1 releases, 1 SAEs" in run("pretrained", "validate", str(registry_file))
    out = tmp_path / "exported"
    run("pretrained", "export", "tiny-paper", "layer_1", str(out), "--registry", str(registry_file))
    assert json.loads((out / "cfg.json").read_text())["metadata"]["family"] == "clip"


@pytest.mark.slow
def test_registration_waits_for_sae_lens_and_imports_nothing_itself():
    script = textwrap.dedent(
        """
        import json, sys
        import sae_vlm_plugin
        from sae_vlm_plugin.pretrained.registry import register_pretrained
        register_pretrained()
        register_pretrained()
        before = [m for m in ("sae_lens", "torch") if m in sys.modules]
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
        print(json.dumps({
            "before": before,
            "registered": "pach2025-clip-vit-l14-336-steering" in get_pretrained_saes_directory(),
        }))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"before": [], "registered": True}


@pytest.mark.real_weights
def test_a_paper_sae_loads_from_the_hub():
    loaded = load_sae("pach2025-clip-vit-l14-336-batchtopk", "blocks.22.hook_resid_post/x1")
    assert (loaded.sae.cfg.d_in, loaded.sae.cfg.d_sae) == (1024, 1024)
    assert loaded.sae.cfg.metadata.k == 20
    assert loaded.sae.threshold.unique().numel() == 1
