"""The offline evaluation report and the training-time MS evaluator, against direct computation."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from sae_vlm_plugin import VisionModel, extract_to_cache
from sae_vlm_plugin.metrics.evaluation import (
    MonosemanticityEvaluator,
    evaluate_sae,
    write_report,
)
from sae_vlm_plugin.metrics.figures import Coverage, figure_title
from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score
from sae_vlm_plugin.metrics.ms_at_k import ms_at_k
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP, its synthetic images, and an SAE trained on 2 random tokens per image."""
    root = tmp_path_factory.mktemp("eval")
    model = VisionModel(tm.clip_vision_model())
    images, _ = tm.synthetic_images(120)
    cache = extract_to_cache(
        model, images, HOOK, root / "cache", tokens="random_k", k=2, progress=False
    )
    cfg = VisionSAERunnerConfig(
        cache_path=str(cache.path),
        hook_name=HOOK,
        expansion_factor=4,
        k=4,
        batch_size=48,
        training_steps=30,
        warmup_steps=3,
        threshold_start_step=5,
        n_batches_for_scaling=2,
        log_every_steps=10,
        checkpoint_every_steps=0,
        run_dir=str(root / "run"),
    )
    sae = VisionSAETrainingRunner(cfg, progress=False).run()
    return model, images, sae, cfg


def test_report_equals_direct_computation(trained, tmp_path):
    model, images, sae, _ = trained
    scorer = VisionModel(tm.webssl_dino_model())
    report = evaluate_sae(
        sae,
        model,
        images,
        scoring_encoder=scorer,
        tokens="random_2",
        out_dir=tmp_path,
        progress=False,
    )

    # Independent path: dense rows, dense codes, explicit per-image means.
    rows = torch.stack(
        [model.capture(model.preprocess([image]), [HOOK])[HOOK][0] for image in images]
    )  # (n, 17, d)
    from sae_vlm_plugin.tokens import TokenSelection

    selection = TokenSelection("random_k", k=2)
    picked = torch.stack(
        [rows[i, selection.token_indices(str(i), 17, 1)] for i in range(len(images))]
    )
    codes = sae.encode(picked.reshape(-1, tm.WIDTH)).detach().reshape(len(images), 2, -1)
    embeddings = scorer.capture(scorer.preprocess(images), ["hook_post_norm"])["hook_post_norm"][
        :, 0
    ]
    assert report.setup["min_support"] == 16  # the README's, by default (#18 item 26)
    # to float rounding: the report reads the images in one batch, this path one at a time
    assert report.sae["ms_at_16"] == pytest.approx(
        ms_at_k(codes.mean(1), embeddings).mean, abs=1e-6
    )
    expected_sae = monosemanticity_score(codes.mean(1), embeddings, min_support=16)
    expected_raw = monosemanticity_score(picked.mean(1), embeddings, min_support=16)
    torch.testing.assert_close(
        report.sae_scores.scores, expected_sae.scores, equal_nan=True, atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        report.raw_scores.scores, expected_raw.scores, equal_nan=True, atol=1e-6, rtol=0
    )
    flat = picked.reshape(-1, tm.WIDTH)
    reconstruction = sae.decode(codes.reshape(-1, codes.shape[-1])).detach()
    r2 = 1 - (flat - reconstruction).pow(2).sum() / (flat - flat.mean(0)).pow(2).sum()
    assert report.reconstruction["explained_variance"] == pytest.approx(r2.item(), abs=1e-5)
    assert report.reconstruction["l0"] == pytest.approx((codes > 0).sum().item() / len(flat))
    fired = (codes > 0).reshape(-1, codes.shape[-1]).any(0)
    assert report.reconstruction["dead_fraction"] == pytest.approx(1 - fired.float().mean().item())
    assert [g["latents"] for g in report.groups] == [[0, 8], [8, 24], [24, 56], [56, 128]]

    # By default an SAE trained on random tokens is read on every token, its codes averaged
    # per image, as the reference's save_activations.py --mean_pool does (#15 item 7).
    pooled = evaluate_sae(sae, model, images, embeddings=embeddings, progress=False)
    assert pooled.setup["tokens"] == "all"
    assert "--mean_pool" in pooled.setup["image_activation"]
    every = sae.encode(rows.reshape(-1, tm.WIDTH)).detach().reshape(len(images), 17, -1)
    torch.testing.assert_close(pooled.image_codes.to_dense(), every.mean(1), atol=1e-6, rtol=0)
    expected_pooled = monosemanticity_score(every.mean(1), embeddings, min_support=16)
    torch.testing.assert_close(
        pooled.sae_scores.scores, expected_pooled.scores, equal_nan=True, atol=1e-6, rtol=0
    )
    assert pooled.reconstruction["n_rows"] == 17 * len(images)

    def refuse(constant: str) -> None:
        raise AssertionError(f"evaluation.json holds {constant}, which is not JSON")

    text = (tmp_path / "evaluation.json").read_text()
    written = json.loads(text, parse_constant=refuse)
    assert written["sae"]["mean"] == pytest.approx(report.sae["mean"])
    assert written["uniqueness"] == pytest.approx(report.uniqueness, nan_ok=True)
    assert written["hierarchy"] == report.hierarchy
    report.sae["worst"] = float("nan")  # a statistic with nothing to summarise
    write_report(report, tmp_path / "with-nan")
    strict = json.loads(
        (tmp_path / "with-nan" / "evaluation.json").read_text(), parse_constant=refuse
    )
    assert strict["sae"]["worst"] is None
    assert written["setup"]["tokens"] == "random_2"  # as asked
    with Image.open(tmp_path / "ms_sorted.png") as plot:
        said = plot.text
    assert said["Title"] == figure_title(
        report.setup["model"], f"{HOOK} (random_2)", report.setup["images"]
    )
    assert (
        said["Description"].splitlines()[0]
        == "SAE latents: " + Coverage.of_result(report.sae_scores).text()
    )


def test_training_evaluator_appears_in_the_run_log(trained, tmp_path):
    model, images, _, cfg = trained
    evaluator = MonosemanticityEvaluator.from_images(
        model, images[:60], HOOK, "random_2", scoring_encoder=VisionModel(tm.webssl_dino_model())
    )
    run = VisionSAERunnerConfig(
        **{
            **cfg.to_dict(),
            "checkpoint_path": str(tmp_path / "run"),
            "training_tokens": 20 * cfg.train_batch_size_tokens,
            "eval_every_steps": 10,
        }
    )
    VisionSAETrainingRunner(run, evaluator=evaluator, progress=False).run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [entry for entry in log if entry["kind"] == "eval"]
    assert [entry["step"] for entry in evals] == [10, 20]
    assert all(0 <= entry["eval/ms_n_scored"] <= 128 and "eval/ms_mean" in entry for entry in evals)


def test_evaluation_refuses_a_mismatched_model(trained):
    _, images, sae, _ = trained
    with pytest.raises(ValueError, match=r"d_in=32.*has width"):
        evaluate_sae(
            sae,
            VisionModel(tm.open_clip_vit_model()),
            images,
            hook="hook_image_embeds",
            tokens="cls",
            embeddings=torch.randn(len(images), 8),
            progress=False,
        )


def test_report_adds_uniqueness_and_taxonomy_hierarchy(trained, tmp_path):
    from sae_vlm_plugin.metrics.hierarchy import Taxonomy, mean_lca_depth, reference_lca_depths
    from sae_vlm_plugin.metrics.top_activations import top_activations
    from sae_vlm_plugin.metrics.uniqueness import jaccard_uniqueness

    model, images, sae, _ = trained
    image_folder = tmp_path / "images"
    for i, (image, label) in enumerate(
        zip(images, tm.synthetic_images(len(images))[1], strict=True)
    ):
        (image_folder / label).mkdir(parents=True, exist_ok=True)
        image.save(image_folder / label / f"{i:04d}.png")
    labels = sorted(p.name for p in image_folder.iterdir())
    taxonomy = Taxonomy.from_mapping({label: tuple(reversed(label.split("_"))) for label in labels})
    embeddings = torch.randn(len(images), 8)
    report = evaluate_sae(
        sae, model, image_folder, embeddings=embeddings, taxonomy=taxonomy, progress=False
    )
    top = top_activations(report.image_codes.to_dense(), k=16)
    assert report.uniqueness["n_latents"] >= 2  # latents firing on at least 16 of the images
    assert report.uniqueness["mean_jaccard"] == pytest.approx(jaccard_uniqueness(top).mean_jaccard)
    assert [level["level"] for level in report.hierarchy] == [0, 1, 2, 3]
    classes = taxonomy.class_indices([i.split("/")[0] for i in report.image_ids])
    for key, depths in (
        ("unrounded_mean_depth", mean_lca_depth(top, classes, taxonomy)),
        ("mean_depth", reference_lca_depths(top, classes, taxonomy).rounded_mean),
        ("majority_depth", reference_lca_depths(top, classes, taxonomy).majority),
    ):
        level0 = depths[:8][~torch.isnan(depths[:8])]
        expected = level0.mean().item() if level0.numel() else float("nan")
        got = report.hierarchy[0][key]
        assert (got != got and expected != expected) or got == pytest.approx(expected), key


def test_cli_evaluate_writes_the_report(trained, tmp_path, capsys):
    from sae_vlm_plugin.cli import main as cli_main

    model, images, _, cfg = trained
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images[:40]):
        image.save(folder / f"{i:03d}.png")
    checkpoint = tm.save_clip_checkpoint(model.source_module, tmp_path / "clip")
    dino = tmp_path / "dino"
    tm.webssl_dino_model().save_pretrained(dino)
    VisionModel(tm.webssl_dino_model()).family.image_processor(tm.IMAGE_SIZE).save_pretrained(dino)
    code = cli_main(
        [
            "evaluate",
            "--sae",
            f"{cfg.checkpoint_path}/final",
            "--images",
            str(folder),
            "--model",
            str(checkpoint),
            "--scoring-encoder",
            str(dino),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "SAE latents  MS" in printed
    assert "uniqueness of top-16 sets:" in printed
    assert (
        json.loads((tmp_path / "eval" / "evaluation.json").read_text())["setup"]["n_images"] == 40
    )


def test_a_scoring_encoder_that_cannot_load_fails_before_any_extraction(
    trained, tmp_path, monkeypatch
):
    """#18 item 22: the scoring encoder is resolved first, and its error names it."""
    from sae_vlm_plugin.metrics import evaluation

    _, images, sae, _ = trained
    model = VisionModel(tm.clip_vision_model())

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted before the scoring encoder was resolved")

    monkeypatch.setattr(evaluation, "hook_rows", no_extraction)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"cannot load the scoring encoder '{empty}'.*dinov2 ="):
        evaluate_sae(sae, model, images, scoring_encoder=str(empty), progress=False)


def test_a_local_siglip_scores_with_its_pooled_vector(tmp_path):
    """#18 item 22: an encoder without CLS scores with its pooling head, not hook_post_norm+cls."""
    from transformers import SiglipImageProcessor

    from sae_vlm_plugin.metrics.embeddings import image_embeddings, load_scoring_encoder

    siglip = tm.siglip_vision_model()
    siglip.save_pretrained(tmp_path / "siglip")
    size = {"height": tm.IMAGE_SIZE, "width": tm.IMAGE_SIZE}
    SiglipImageProcessor(size=size).save_pretrained(tmp_path / "siglip")
    scorer = load_scoring_encoder(str(tmp_path / "siglip"))
    assert (scorer.hook, scorer.tokens) == ("hook_pooled", "cls")
    assert load_scoring_encoder(VisionModel(tm.clip_vision_model())).hook == "hook_post_norm"
    images, _ = tm.synthetic_images(6)
    scored = image_embeddings(images, str(tmp_path / "siglip"), progress=False)
    with torch.no_grad():
        expected = siglip(pixel_values=scorer.model.preprocess(images)).pooler_output
    torch.testing.assert_close(scored.embeddings, expected, atol=1e-5, rtol=1e-5)


def test_an_evaluation_into_an_out_another_run_holds_is_refused(tmp_path, capsys, hold_directory):
    """#27 items 4/5, their sibling: two evaluations writing one --out."""
    from sae_vlm_plugin.cli import main as cli_main

    out = tmp_path / "evaluation"
    hold_directory(out)
    argv = ["evaluate", "--sae", str(tmp_path), "--images", str(tmp_path), "--out", str(out)]
    assert cli_main(argv) == 2
    assert "is in use by another evaluation" in capsys.readouterr().err
