"""Converters: the paper's checkpoints become SAELens SAEs that compute exactly what the reference
code computes; untrusted pickles are refused; registry metadata is merged, never dropped."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sae_lens import SAE
from safetensors.torch import save_file

from dictionary_learning_reference import (
    batchtopk_state,
    matryoshka_state,
    reference_decode,
    reference_encode,
    trainer_config,
    write_checkpoint,
)
from sae_vlm_plugin.pretrained import converters, files
from sae_vlm_plugin.pretrained.converters import (
    apply_overrides,
    dictionary_learning_loader,
    from_dictionary_learning,
)
from sae_vlm_plugin.pretrained.files import UnsafeCheckpointError

D_IN, D_SAE = 16, 64
STATES = {"batchtopk": batchtopk_state, "matryoshka": matryoshka_state}


def sae_from(cfg_dict, state_dict) -> SAE:
    sae = SAE.from_dict(cfg_dict)
    sae.load_state_dict(state_dict)
    return sae.eval()


def inputs(n: int = 256, seed: int = 1) -> torch.Tensor:
    return 2 * torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", sorted(STATES))
@pytest.mark.parametrize("threshold", [1.0, -1.0])
def test_reference_checkpoint_converts_to_an_sae_with_the_reference_encode_and_decode(
    tmp_path, variant, threshold
):
    state = STATES[variant](D_IN, D_SAE, threshold=threshold)
    write_checkpoint(tmp_path / "run" / "trainer_0", state, trainer_config(state))

    cfg, weights, log_sparsity = dictionary_learning_loader(
        str(tmp_path), "run/trainer_0/checkpoints/ae_100000.pt"
    )
    sae = sae_from(cfg, weights)

    x = inputs()
    expected_f = reference_encode(state, x)
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
        out = sae(x)
    assert 0 < (expected_f > 0).float().mean() < 1  # the threshold actually cuts (or is ReLU)
    torch.testing.assert_close(f, expected_f, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x_hat, reference_decode(state, expected_f), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(out, x_hat)
    assert log_sparsity is None
    assert cfg["architecture"] == "jumprelu"
    assert (cfg["d_in"], cfg["d_sae"]) == (D_IN, D_SAE)
    assert torch.equal(weights["threshold"], torch.full((D_SAE,), threshold))
    metadata = cfg["metadata"]
    assert metadata["k"] == 20
    assert metadata["source_format"] == "dictionary_learning"
    if variant == "matryoshka":
        assert metadata["dict_class"] == "MatroyshkaBatchTopKSAE"  # as the reference spells it
        assert metadata["group_sizes"] == [4, 8, 16, 36]
    else:
        assert metadata["dict_class"] == "BatchTopKSAE"


@settings(max_examples=25, deadline=None)
@given(
    variant=st.sampled_from(sorted(STATES)),
    d_in=st.integers(1, 12),
    expansion=st.integers(1, 6),
    threshold=st.floats(-1.0, 4.0),
    seed=st.integers(0, 2**16),
)
def test_conversion_matches_the_reference_for_any_shape(variant, d_in, expansion, threshold, seed):
    d_sae = d_in * expansion
    if variant == "matryoshka" and d_sae < 16:  # every Matryoshka group needs a latent
        d_sae = 16
    state = STATES[variant](d_in, d_sae, threshold=threshold, seed=seed)
    # In float64 a pre-activation lands within rounding error of theta with negligible odds.
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    cfg, weights = from_dictionary_learning(state)
    sae = sae_from({**cfg, "dtype": "float64"}, weights)
    x = 2 * torch.randn(8, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(f, reference_encode(state, x), atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(sae.decode(f), reference_decode(state, f))


def test_a_negative_threshold_means_plain_relu(tmp_path):
    """theta = -1 is what a checkpoint saved before step 1000 holds: f = ReLU(pre)."""
    state = batchtopk_state(D_IN, D_SAE, threshold=-1.0)
    write_checkpoint(tmp_path, state, None)
    sae = sae_from(*dictionary_learning_loader(str(tmp_path), "checkpoints/ae_100000.pt")[:2])
    x = inputs()
    pre = torch.nn.functional.linear(x - state["b_dec"], state["encoder.weight"])
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), torch.relu(pre + state["encoder.bias"]))


@pytest.mark.parametrize("variant", sorted(STATES))
def test_trainer_folder_safetensors_and_missing_config_all_load(tmp_path, variant):
    state = STATES[variant](D_IN, D_SAE)
    trainer = tmp_path / "trainer_0"
    trainer.mkdir()
    torch.save(state, trainer / "ae.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "ae.safetensors"))

    from_folder, weights = dictionary_learning_loader(str(tmp_path), "trainer_0")[:2]
    from_safetensors, weights_st = dictionary_learning_loader(str(tmp_path), "ae.safetensors")[:2]

    assert "dictionary_learning_config" not in from_folder["metadata"]  # no config.json: fine
    for name, tensor in weights.items():
        assert torch.equal(tensor, weights_st[name]), name
    assert from_folder["d_sae"] == from_safetensors["d_sae"] == D_SAE


@pytest.mark.parametrize(
    ("dict_class", "message"),
    [
        ("MatryoshkaBatchTopKSAE", None),  # upstream's later spelling reads too
        ("BatchTopKSAE", "says dict_class 'BatchTopKSAE' but the weights are a Matroyshka"),
        ("AutoEncoderTopK", "reads BatchTopKSAE, MatroyshkaBatchTopKSAE, MatryoshkaBatchTopKSAE"),
    ],
)
def test_config_json_must_describe_the_weights(tmp_path, dict_class, message):
    state = matryoshka_state(D_IN, D_SAE)
    write_checkpoint(tmp_path, state, trainer_config(state, dict_class=dict_class))
    if message is None:
        cfg = dictionary_learning_loader(str(tmp_path), "checkpoints/ae_100000.pt")[0]
        assert cfg["metadata"]["dictionary_learning_config"]["dict_class"] == dict_class
        return
    with pytest.raises(ValueError, match=message):
        dictionary_learning_loader(str(tmp_path), "checkpoints/ae_100000.pt")


def test_config_json_sizes_must_match(tmp_path):
    state = batchtopk_state(D_IN, D_SAE)
    write_checkpoint(tmp_path, state, {**trainer_config(state), "dict_size": 2 * D_SAE})
    with pytest.raises(ValueError, match=f"dict_size={2 * D_SAE} but the weights have {D_SAE}"):
        dictionary_learning_loader(str(tmp_path), "checkpoints/ae_100000.pt")


def test_an_unknown_state_dict_lists_the_expected_keys(tmp_path):
    state = batchtopk_state(D_IN, D_SAE)
    del state["threshold"]
    torch.save(state, tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"expected BatchTopKSAE keys \[.*'threshold'"):
        dictionary_learning_loader(str(tmp_path), "ae.pt")


class _RunsCodeWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: a file appears if the pickle is trusted."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_carrying_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "code_ran"
    state = {**batchtopk_state(D_IN, D_SAE), "extra": _RunsCodeWhenUnpickled(str(marker))}
    torch.save(state, tmp_path / "ae.pt")

    with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*ae\.pt.*could run code"):
        dictionary_learning_loader(str(tmp_path), "ae.pt")
    assert not marker.exists()

    torch.load(tmp_path / "ae.pt", weights_only=False)  # the payload is live: trusting it runs it
    assert marker.exists()


def test_a_truncated_safetensors_checkpoint_is_named(tmp_path):
    """#27 item 6, its sibling: a registry checkpoint that is a damaged safetensors file."""
    save_file(batchtopk_state(D_IN, D_SAE), str(tmp_path / "ae.safetensors"))
    data = (tmp_path / "ae.safetensors").read_bytes()
    (tmp_path / "ae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ae\.safetensors is not a sound safetensors file"):
        dictionary_learning_loader(str(tmp_path), "ae.safetensors")


def test_apply_overrides_keeps_every_piece_of_metadata():
    cfg = {"d_in": 4, "d_sae": 16, "dtype": "float32", "metadata": {"hook_name": "h", "own": 1}}
    overrides = {
        "dtype": "float16",  # an SAEConfig field: top level
        "neuronpedia_id": None,  # SAELens sends None for SAEs without one: not recorded
        "dataset_path": "imagenet",  # a SAELens metadata key: into metadata
        "metadata": {"extra": True},
        converters.VISION_METADATA_KEY: {
            "sae/a": {
                "hook_name": "h",
                "family": "clip",
                "tokens": "cls",
                "training_architecture": "jumprelu",
                "expansion_factor": 4,
            },
            "sae/b": {"hook_name": "other"},
        },
    }
    merged = apply_overrides(cfg, overrides, "sae/a")
    assert merged["dtype"] == "float16"
    assert merged["metadata"] == {
        "hook_name": "h",
        "own": 1,
        "dataset_path": "imagenet",
        "extra": True,
        "family": "clip",
        "tokens": "cls",
        "training_architecture": "jumprelu",
        "expansion_factor": 4,
        "sae_lens_version": merged["metadata"]["sae_lens_version"],
    }
    with pytest.raises(ValueError, match="registry says hook_name='other' but the checkpoint"):
        apply_overrides({**cfg, "metadata": {"hook_name": "h"}}, overrides, "sae/b")
    overrides[converters.VISION_METADATA_KEY]["sae/a"]["expansion_factor"] = 8
    with pytest.raises(ValueError, match="expansion_factor=8 but the weights have d_sae=16"):
        apply_overrides({**cfg, "metadata": {}}, overrides, "sae/a")


def test_local_roots(tmp_path):
    assert files.local_root(f"file://{tmp_path}") == tmp_path
    assert files.local_root(str(tmp_path)) == tmp_path
    assert files.local_root("someone/vision-saes") is None
    with pytest.raises(FileNotFoundError, match=r"has no file missing/cfg\.json"):
        files.fetch(str(tmp_path), "missing/cfg.json")
    assert files.fetch_optional(str(tmp_path), "missing/cfg.json") is None
    (tmp_path / "cfg.json").write_text(json.dumps({}))
    assert files.fetch(str(tmp_path), files.repo_file(".", "cfg.json")).is_file()


def test_a_file_outside_the_repo_is_never_fetched(tmp_path):
    """#18 item 16: whatever reaches ``fetch`` (a registry path, a converter's derived name), a
    file outside ``repo_id`` is refused before any read or download."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "secret.json").write_text("{}")
    for name in ("../secret.json", str(tmp_path / "secret.json"), "a/../../secret.json"):
        with pytest.raises(ValueError, match=r"absolute|climbs out"):
            files.fetch(str(repo), name)
    with pytest.raises(ValueError, match="climbs out"):
        files.fetch("someone/vision-saes", "../../etc/passwd")


STEPS_FOLDER = "x64/random_k_2/run/trainer_0/checkpoints"


def test_a_missing_step_checkpoint_names_the_steps_the_repo_has(tmp_path, monkeypatch):
    """#15 item 9: the released steering SAE may be ae_200000.pt, not the registered
    ae_100000.pt; a missing file says what the folder has instead of a bare 404."""
    from huggingface_hub.utils import EntryNotFoundError

    folder = tmp_path / STEPS_FOLDER
    folder.mkdir(parents=True)
    for step in (150000, 200000):
        (folder / f"ae_{step}.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"training steps ae_150000.pt, ae_200000.pt"):
        files.fetch(str(tmp_path), f"{STEPS_FOLDER}/ae_100000.pt")

    def not_on_the_hub(**kwargs):
        raise EntryNotFoundError("404 Client Error: Entry Not Found")

    listing = [f"{STEPS_FOLDER}/ae_200000.pt", f"{STEPS_FOLDER}/../config.json", "README.md"]
    monkeypatch.setattr(files, "hf_hub_download", not_on_the_hub)
    monkeypatch.setattr(files, "list_repo_files", lambda repo_id: listing)
    with pytest.raises(FileNotFoundError, match=r"has the training steps ae_200000.pt: point"):
        files.fetch("mateuszpach/sae-for-vlm", f"{STEPS_FOLDER}/ae_100000.pt")
    with pytest.raises(FileNotFoundError, match=r"did you mean README.md\?"):
        files.fetch("mateuszpach/sae-for-vlm", "docs/README.md")
    assert files.fetch_optional("mateuszpach/sae-for-vlm", "config.json") is None

    def unreachable(repo_id):
        raise OSError("no network")

    monkeypatch.setattr(files, "list_repo_files", unreachable)
    with pytest.raises(FileNotFoundError, match=r"its file list could not be read"):
        files.fetch("mateuszpach/sae-for-vlm", f"{STEPS_FOLDER}/ae_100000.pt")
