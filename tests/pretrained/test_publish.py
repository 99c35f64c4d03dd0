"""Publishing: a hub-ready release folder that SAELens' ``SAE.from_pretrained`` loads by name
once its release file is registered, and the upload through ``huggingface_hub``."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from sae_lens import SAE

from sae_vlm_plugin import VisionModel, evaluate_sae, publish_saes, register_releases
from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def trained(tmp_path, image_folder):
    """Two SAEs on a saved tiny CLIP (x2 and x4), the x4 one evaluated."""
    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "ckpt")
    runs = {}
    for width in (2, 4):
        cfg = VisionSAERunnerConfig(
            model=str(checkpoint), images=str(image_folder), hook_name=HOOK,
            architecture="batchtopk", expansion_factor=width, k=4, batch_size=16,
            training_steps=8, warmup_steps=1, n_batches_for_scaling=2, checkpoint_every_steps=0,
            run_dir=str(tmp_path / f"run-x{width}"),
        )  # fmt: skip
        VisionSAETrainingRunner(cfg, progress=False).run()
        runs[f"{HOOK}/x{width}"] = tmp_path / f"run-x{width}" / "final"
    sae = SAE.load_from_disk(runs[f"{HOOK}/x4"])
    n_images = sum(1 for _ in image_folder.rglob("*.png"))
    embeddings = torch.randn(n_images, 8, generator=torch.Generator().manual_seed(0))
    evaluate_sae(
        sae, VisionModel(str(checkpoint)), image_folder, embeddings=embeddings,
        min_support=2, out_dir=tmp_path / "eval-x4", progress=False,
    )  # fmt: skip
    return runs, {f"{HOOK}/x4": tmp_path / "eval-x4"}, checkpoint


def test_publish_then_load_by_name_through_saelens(trained, tmp_path):
    runs, evaluations, checkpoint = trained
    out = publish_saes(runs, tmp_path / "release", release="tiny-clip-published",
                       evaluations=evaluations)  # fmt: skip
    assert register_releases(out / "release.yaml") == ["tiny-clip-published"]
    for sae_id, run in runs.items():
        loaded = SAE.from_pretrained("tiny-clip-published", sae_id)
        original = SAE.load_from_disk(run)
        torch.testing.assert_close(loaded.W_enc, original.W_enc, rtol=0, atol=0)
        assert loaded.cfg.metadata.hook_name == HOOK
        assert loaded.cfg.metadata.model_name == str(checkpoint)

    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [line["sae_id"] for line in lines] == list(runs)
    for line in lines:
        for name, entry in line["files"].items():
            data = (out / line["path"] / name).read_bytes()
            assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    report = json.loads((tmp_path / "eval-x4" / "evaluation.json").read_text())
    assert lines[1]["metrics"]["ms"] == pytest.approx(report["sae"]["mean"])
    assert lines[1]["metrics"]["r2"] == pytest.approx(
        report["reconstruction"]["explained_variance"]
    )
    assert lines[0]["metrics"] == {}
    assert (out / HOOK / "x4" / "ms_sorted.png").is_file()

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "saelens"
    row = next(line for line in card.splitlines() if line.startswith(f"| `{HOOK}/x4`"))
    assert f"{report['sae']['mean']:.3f}" in row
    assert f"{report['reconstruction']['l0']:.1f}" in row
    assert f"]({HOOK}/x4/ms_sorted.png)" in card
    entry = yaml.safe_load((out / "release.yaml").read_text())["tiny-clip-published"]
    assert entry["repo_id"] == "./"
    assert entry["saes"][1]["variance_explained"] == pytest.approx(
        report["reconstruction"]["explained_variance"], abs=1e-6
    )


def test_publish_uploads_the_folder_with_huggingface_hub(trained, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    runs, _, _ = trained
    calls = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))  # fmt: skip
    out = tmp_path / "hub"
    code = cli_main(
        ["publish", "--sae", f"{HOOK}/x2={runs[f'{HOOK}/x2']}", "--release", "tiny-hub",
         "--out", str(out), "--repo-id", "lab/tiny-hub", "--private"]
    )  # fmt: skip
    assert code == 0
    assert calls[0] == (
        "create",
        "lab/tiny-hub",
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    upload = calls[1][1]
    assert (upload["repo_id"], upload["folder_path"]) == ("lab/tiny-hub", str(out))
    entry = yaml.safe_load((out / "release.yaml").read_text())["tiny-hub"]
    assert entry["repo_id"] == "lab/tiny-hub"
    assert 'hf_hub_download("lab/tiny-hub", "release.yaml")' in (out / "README.md").read_text()


def test_publish_refuses_mixed_models_and_bad_ids(trained, tmp_path):
    runs, _, _ = trained
    with pytest.raises(ValueError, match="must be a relative path"):
        publish_saes({"../x": runs[f"{HOOK}/x2"]}, tmp_path / "a", release="r")
    with pytest.raises(ValueError, match="evaluations for unknown SAE ids \\['nope'\\]"):
        publish_saes(runs, tmp_path / "b", release="r", evaluations={"nope": tmp_path})
    with pytest.raises(ValueError, match="not a hub repo id"):
        publish_saes(runs, tmp_path / "c", release="r", repo_id="no-slash")
