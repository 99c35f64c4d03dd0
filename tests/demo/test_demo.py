"""The README's main job runs end to end, and its ground-truth check is right on known cases."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sae_lens import SAE

from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.demo import concept_purity, label_embeddings, verdict
from sae_vlm_plugin.naming import LatentLabels

FINDINGS = {
    "ms_clip",
    "ms_labels",
    "purity",
    "hierarchy",
    "alignment",
    "naming",
    "steering_insertion_paper_rule",
    "steering_suppression_paper_rule",
    "steering_insertion_census",
    "steering_suppression_census",
}


def _without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("seconds", "outputs")}


@pytest.mark.slow
def test_world_demo_reports_every_finding_and_is_deterministic_for_a_seed(
    tmp_path, capsys, monkeypatch
):
    # Bit for bit: with MS's thread governor on, a call on shared cores runs on fewer threads,
    # which can move float64 sums in their last bit (sae_vlm_plugin.threads).
    monkeypatch.setenv("SAE_VLM_ADAPTIVE_THREADS", "0")
    args = ["demo", "--n-images", "600", "--steps", "200", "--seeds", "1"]
    assert cli_main([*args, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert cli_main([*args, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert _without_timing(a) == _without_timing(b)
    assert {f["name"] for f in a["findings"]} == FINDINGS
    assert "RANDOM" not in printed
    for finding in a["findings"]:
        assert finding["claim"] in printed
        assert isinstance(finding["held"], bool)
    assert a["hook"] == "blocks.2.hook_resid_post"
    assert len(a["hierarchy"]) == 4  # the paper's four Matryoshka groups
    sae = SAE.load_from_disk(tmp_path / "a" / "run" / "final")
    assert sae.cfg.metadata.training_architecture == "paper_matryoshka_batchtopk"
    steering = json.loads((tmp_path / "a" / "steering" / "steering.json").read_text())
    assert [run["seed"] for run in steering["seeds"]] == [0]
    assert [run["seed"] for run in a["seeds"]] == [0]
    assert "held in" in a["findings"][0]["figure"]
    assert (tmp_path / "a" / "dashboard" / "index.html").exists()
    labels = LatentLabels.load(tmp_path / "a" / "run" / "final")  # named next to the SAE
    assert labels.d_sae == sae.cfg.d_sae
    assert a["naming"]["n_concepts"] == 23
    _assert_chosen_latents_fire_on_read_tokens(tmp_path / "a" / "steering", steering)


def _assert_chosen_latents_fire_on_read_tokens(out, steering) -> None:
    from sae_vlm_plugin.demo.world import EVAL_IMAGES
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.steering.activity import latent_activity
    from sae_vlm_plugin.toy import world_images

    llava = VisionModel("toy-llava")
    images, _ = world_images(EVAL_IMAGES, seed=11)
    for run in steering["seeds"]:
        assert len(run["random_directions"]) == 32
        assert run["diffmean"]["rates"]  # the control ran
        sae = SAE.load_from_disk(out / f"run-seed{run['seed']}" / "final")
        activity = latent_activity(sae, llava, images, steering["hook"])
        for rule in ("paper_rule", "census"):
            assert bool(activity.steerable[run[rule]["latent"]])
            assert set(run[rule]["rates"]) == {"2", "8"}


def test_side_by_side_training_gives_the_weights_of_training_in_turn(tmp_path):
    """The 5-seed demo trains its SAEs in worker processes on one thread each, then loads them;
    they are the SAEs the demo trains in its own process on two threads, bit for bit."""
    from sae_vlm_plugin.demo.shared import (
        DemoConfig,
        demo_sae_config,
        train_demo_sae,
        train_side_by_side,
    )
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.toy import world_images

    model, (images, _) = VisionModel("toy-clip"), world_images(256, seed=3)
    config = DemoConfig(out_dir=tmp_path, training_steps=120, progress=False)
    hook = "blocks.2.hook_resid_post"
    seeds = {"cls": 0, "random_2": 1}
    side_by_side = [
        demo_sae_config(model, images, hook, tmp_path / tokens, config, tokens, seed=seed)
        for tokens, seed in seeds.items()
    ]
    train_side_by_side(side_by_side, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for tokens, seed in seeds.items():
            loaded, _ = train_demo_sae(
                model, images, hook, tmp_path / tokens, config, tokens, seed=seed
            )
            alone, _ = train_demo_sae(
                model, images, hook, tmp_path / f"{tokens}-alone", config, tokens, seed=seed
            )
            assert loaded.state_dict().keys() == alone.state_dict().keys()
            for name, value in alone.state_dict().items():
                assert torch.equal(loaded.state_dict()[name], value), (tokens, name)
    finally:
        torch.set_num_threads(threads)


def test_random_demo_runs_end_to_end_and_writes_loadable_outputs(tmp_path, capsys):
    argv = ["demo", "--random", "--out", str(tmp_path), "--n-images", "270", "--steps", "120"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed
    assert "Verdict: the SAE latents" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["hook"] == "blocks.2.hook_resid_post"
    for key in ("purity_sae", "purity_raw", "purity_chance"):
        assert 0 <= summary[key] <= 1
    sae = SAE.load_from_disk(tmp_path / "run" / "final")
    assert sae.cfg.metadata.training_architecture == "paper_matryoshka_batchtopk"
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["setup"]["n_images"] == 270
    assert (tmp_path / "evaluation" / "ms_sorted.png").exists()
    assert (tmp_path / "dashboard" / "index.html").exists()
    steering = json.loads((tmp_path / "steering.json").read_text())
    assert set(steering["answers"]) == {"no steer", "0", "10", "30"}
    assert steering["changed"] == any(
        text != steering["answers"]["no steer"]
        for key, text in steering["answers"].items()
        if key != "no steer"
    )


def test_concept_purity_on_known_cases():
    attributes = [("square", "red"), ("square", "blue"), ("circle", "red"), ("circle", "blue")]
    # Neuron 0: both images are squares (purity 1) of two colours (purity 1/2) -> 0.75.
    # Neuron 1: identical images -> 1.0. Neuron 2: one missing slot -> not counted.
    top = torch.tensor([[0, 1], [2, 2], [3, -1]])
    assert concept_purity(top, attributes) == pytest.approx((0.75 + 1.0) / 2)


def test_label_embeddings_cosine_is_the_shared_attribute_fraction():
    attributes = [
        ("square", "red", "solid"),
        ("square", "blue", "solid"),
        ("circle", "green", "dots"),
    ]
    e = label_embeddings(attributes)
    assert torch.allclose(e.norm(dim=1), torch.ones(3))
    assert e[0] @ e[1] == pytest.approx(2 / 3)
    assert e[0] @ e[2] == pytest.approx(0.0)


def test_verdict_says_when_the_sae_does_not_win():
    summary = {
        "ms_sae": {"mean": 0.4},
        "ms_raw": {"mean": 0.3},
        "purity_sae": 0.6,
        "purity_raw": 0.7,
    }
    assert verdict(summary) == (
        "the SAE latents beat the raw neurons on mean MS (0.400 vs 0.300), "
        "but NOT on top-16 concept purity (0.600 vs 0.700)."
    )
    assert "do NOT beat" in verdict({"ms_sae": {"mean": 0.2}, "ms_raw": {"mean": 0.3}})


def test_demo_resolves_its_scoring_encoder_before_training(tmp_path, capsys):
    """#18 item 22: `demo --scoring-encoder` that cannot load fails at once, naming the model,
    before extraction and training; the trained world refuses a scoring encoder."""
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    out = tmp_path / "demo"
    assert cli_main(["demo", "--random", "--scoring-encoder", str(empty), "--out", str(out)]) == 2
    assert f"cannot load the scoring encoder '{empty}'" in capsys.readouterr().err
    assert not (out / "cache").exists()
    assert cli_main(["demo", "--scoring-encoder", "clip", "--out", str(out)]) == 2
    assert "scores MS with the toy CLIP's own embeddings" in capsys.readouterr().err


def test_single_concept_purity_does_not_reward_conjunctions():
    from sae_vlm_plugin.demo import single_concept_purity

    # Neuron 0's top images share one concept (red) and nothing else; three of neuron 1's four
    # are one conjunction (blue solid circle). The attribute mean prefers neuron 1 (0.75 vs
    # 0.5); the single concept, neuron 0 (1.0 vs 0.75).
    attributes = [
        ("circle", "red", "solid"),
        ("star", "red", "dotted"),
        ("ring", "red", "striped"),
        ("cross", "red", "checkered"),
        ("circle", "blue", "solid"),
        ("circle", "blue", "solid"),
        ("circle", "blue", "solid"),
        ("star", "green", "dotted"),
    ]
    one_concept = torch.tensor([[0, 1, 2, 3]])
    conjunction = torch.tensor([[4, 5, 6, 7]])
    assert single_concept_purity(one_concept, attributes) == 1.0
    assert single_concept_purity(conjunction, attributes) == 0.75
    assert concept_purity(one_concept, attributes) == 0.5
    assert concept_purity(conjunction, attributes) == 0.75
    assert math.isnan(single_concept_purity(torch.tensor([[0, -1, 2, 3]]), attributes))


def test_seed_findings_count_seeds_and_hold_on_a_majority():
    from sae_vlm_plugin.demo import seed_findings

    def run(seed, sae_ms, held):
        ms = {"mean": sae_ms}
        return {
            "seed": seed,
            "ms_sae": ms,
            "ms_raw": {"mean": 0.3},
            "ms_labels_sae": ms,
            "ms_labels_raw": {"mean": 0.3},
            "single_concept_purity_sae": 0.9,
            "single_concept_purity_raw": 0.95,
            "purity_sae": 0.7,
            "purity_raw": 0.6,
            "hierarchy": [{"mean_depth": 1.0}, {"mean_depth": 2.0}],
            "hierarchy_held": held,
            "alignment": {"score": 0.6, "bins": []},
            "alignment_held": held,
            "naming": {"named_right": 0.5},
            "naming_held": held,
            "naming_figure": "seed figure",
        }

    findings = {
        f.name: f for f in seed_findings([run(0, 0.5, True), run(1, 0.2, False), run(2, 0.4, True)])
    }
    assert findings["ms_clip"].held
    assert findings["ms_clip"].figure.startswith(
        "held in 2 of 3 seeds; SAE latents 0.367 (0.200-0.500)"
    )
    assert not findings["purity"].held  # rests on single-concept purity, not the attribute mean
    assert "held in 0 of 3" in findings["purity"].figure
    assert findings["hierarchy"].held
    assert "1.000 (1.000-1.000), 2.000 (2.000-2.000)" in findings["hierarchy"].figure
    assert findings["naming"].figure.endswith("seed 0: seed figure")
    two = {f.name: f for f in seed_findings([run(0, 0.5, True), run(1, 0.2, False)])}
    assert not two["hierarchy"].held  # a tie is not a majority


@pytest.mark.parametrize(
    "args", [["--steps", "0"], ["--n-images", "0"], ["--n-images", "-5"], ["--seeds", "0"]]
)
def test_demo_refuses_counts_below_one(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["demo", *args])
    assert exit_.value.code == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def test_demo_on_an_empty_folder_says_so_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        cli_main(["demo", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "empty" in capsys.readouterr().err
