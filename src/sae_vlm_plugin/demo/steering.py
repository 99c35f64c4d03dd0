"""Steering the toy LLaVA with one SAE latent, measured over seeds against nulls and a control.

The protocol is fixed here, before any measurement, and the same for every seed:

- Steering SAEs: Matryoshka-BatchTopK on 2 random tokens per image of block ``n-2`` of the toy
  CLIP (the block the toy LLaVA's projector reads; the paper's steering SAEs take 2 random
  tokens per image of block 22), one per seed of ``STEERING_SEEDS`` on the same cache.
- Everything is read on the tokens the language model reads (``LatentActivity``: the toy
  LLaVA's ``"default"`` strategy drops CLS): a latent's image activation is its mean over those
  tokens, its unit (``1x``) its largest activation there, and only latents that fire there
  (``activity.steerable``) can be chosen.
- (a) The paper's rule on the read tokens: the steerable latent with the largest R-precision for
  the concept (``CONCEPT``: the colour red) on the measuring images.
- (b) The census's pick: the latent that adds the concept's word most often in a steerability
  census (``steering.census``) of every steerable latent, with the census prompts (appendix B's
  ten and the one-word question) on the white image.
- Evaluation, on base images the selection never saw (grey and black) with appendix B's ten
  prompts, at ``CENSUS_MULTIPLES``, in one run: (a), (b), ``N_RANDOM_LATENTS`` random steerable
  latents and ``N_RANDOM_DIRECTIONS`` random directions of matched norm (nulls), and the
  concept's DiffMean vector on the read tokens (the positive control). A latent *inserts* the
  concept when at its better multiple at least ``MIN_SCORE`` of the answers gain the word and
  no more than ``MAX_P`` of the null directions do as well (``UnitSteering.steers`` restricted to
  the concept's word).
- Suppression: "Describe the image." on measuring images that show the concept and on which the
  latent fires on a read token, clamped to 0, against the reconstruction alone; specificity: the
  same clamp on images of other colours on which the latent fires, where the image's own colour
  word should stay. It *holds* when at least ``MIN_SCORE`` of the descriptions naming the
  concept lose it, ``MIN_EFFECT`` more than under the reconstruction alone, and under
  ``MIN_EFFECT`` of the other colours' descriptions lose their colour.

Each finding is reported as held in N of the seeds (held when in more than half), with the
rates, the nulls and the control. The judge is a word match: the toy LLaVA's vocabulary is the
toy world's, so naming the concept is naming its word.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_vlm_plugin.demo.findings import Finding
from sae_vlm_plugin.demo.shared import WORLD_STEPS, demo_sae_config, label_embeddings
from sae_vlm_plugin.steering.census import (
    CENSUS_MULTIPLES,
    CENSUS_PROMPTS,
    MAX_P,
    MIN_SCORE,
    SteerabilityReport,
    UnitSteering,
    neutral_images,
)
from sae_vlm_plugin.steering.evaluation import INSERTION_PROMPTS

if TYPE_CHECKING:
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

CONCEPT = ("colour", "red")
STEERING_SEEDS = (0, 1, 2, 3, 4)
SELECTION_PROMPTS = CENSUS_PROMPTS
N_RANDOM_LATENTS = 16
N_RANDOM_DIRECTIONS = 32
N_SUPPRESSION_IMAGES = 24
MIN_EFFECT = 0.25
MAX_NEW_TOKENS = 16
BATCH_SIZE = 512


def concept_latent(image_codes: torch.Tensor, has_concept: torch.Tensor) -> tuple[int, float]:
    """The latent whose ``R`` most active images (``R``: the number of images with the concept)
    most often have the concept, i.e. the largest R-precision; returns ``(latent, its
    R-precision)``."""
    from sae_vlm_plugin.naming.evaluation import r_precisions

    if not bool(has_concept.any()):
        raise ValueError("no image has the concept, so no latent can be chosen for it")
    precision = r_precisions(image_codes, has_concept)
    latent = int(precision.argmax())
    return latent, float(precision[latent])


def paper_rule_latent(activity: Any, has_concept: torch.Tensor) -> tuple[int, float]:
    """(a): the steerable latent with the largest R-precision on the read tokens' image codes
    (``activity.image_codes``, one row per measuring image)."""
    codes = activity.image_codes.to_dense() * activity.steerable.float()
    if not bool(activity.steerable.any()):
        raise ValueError("no latent of the SAE fires on the tokens the language model reads")
    return concept_latent(codes.to_sparse(), has_concept)


def steering_findings(
    clip: Any,
    train_images: list[Any],
    images: list[Any],
    objects: list[Any],
    out: Path,
    config: Any,
    seeds: tuple[int, ...] = STEERING_SEEDS,
) -> tuple[dict[str, Any], list[Finding]]:
    """Train one steering SAE per seed on ``clip`` (the toy CLIP ``VisionModel``) over
    ``train_images``, measure it on ``images`` (with their ``objects``) and the toy LLaVA;
    writes ``out/steering.json``, the first seed's dashboard (``out/dashboard``, with its census)
    and returns the summary entry and the findings."""
    from sae_vlm_plugin.model import VisionModel
    from sae_vlm_plugin.steering.edits import diffmean_vector
    from sae_vlm_plugin.toy import ATTRIBUTE_VALUES, ATTRIBUTES, IMAGE_SIZE, load_toy_llava

    attribute, value = CONCEPT
    index = ATTRIBUTES.index(attribute)
    hook = f"blocks.{clip.n_layers - 2}.hook_resid_post"
    steer_hook = f"vision.{hook}"
    module, processor = load_toy_llava()
    llava = VisionModel(module)
    has_concept = torch.tensor([o.attributes[index] == value for o in objects])
    shows = [im for im, h in zip(images, has_concept.tolist(), strict=True) if h]
    others = [im for im, h in zip(images, has_concept.tolist(), strict=True) if not h]
    diffmean = diffmean_vector(llava, steer_hook, shows, others, tokens="image")
    vocabulary = [v for a in ATTRIBUTES for v in ATTRIBUTE_VALUES[a]]
    white, *held_out = neutral_images(IMAGE_SIZE)
    context = _Context(
        clip, llava, processor, steer_hook, vocabulary, value, diffmean, white, held_out
    )
    runs = []
    for seed in seeds:
        sae = _steering_sae(clip, train_images, out, config, seed)
        run, labels, census = _one_seed(context, sae, seed, images, objects, index, has_concept)
        census.save(out / f"run-seed{seed}" / "final")
        labels.save(out / f"run-seed{seed}" / "final")
        if seed == seeds[0]:
            _dashboard(sae, clip, images, objects, out / "dashboard", labels, census)
        runs.append(run)
    result = {
        "concept": f"{attribute} {value}",
        "hook": steer_hook,
        "protocol": {
            "seeds": list(seeds),
            "selection_prompts": list(SELECTION_PROMPTS),
            "evaluation_prompts": list(INSERTION_PROMPTS),
            "multiples": list(CENSUS_MULTIPLES),
            "n_random_latents": N_RANDOM_LATENTS,
            "n_random_directions": N_RANDOM_DIRECTIONS,
        },
        "seeds": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "steering.json").write_text(json.dumps(result, indent=1))
    return result, _findings(runs, value)


class _Context:
    """What every seed shares: the toy LLaVA, the hook, the concept and its control."""

    def __init__(
        self,
        clip: Any,
        llava: Any,
        processor: Any,
        hook: str,
        vocabulary: list[str],
        word: str,
        diffmean: torch.Tensor,
        selection_image: Any,
        evaluation_images: list[Any],
    ) -> None:
        from sae_vlm_plugin.naming.text_tower import load_text_tower

        self.clip, self.llava, self.processor, self.hook = clip, llava, processor, hook
        self.text_tower = load_text_tower("toy-clip")
        self.vocabulary, self.word, self.diffmean = vocabulary, word, diffmean
        self.selection_image, self.evaluation_images = selection_image, evaluation_images


def steering_sae_config(
    clip: Any, train_images: list[Any], out: Path, config: Any, seed: int
) -> VisionSAERunnerConfig:
    """The run config of the steering SAE of ``seed``: random pairs of the toy CLIP's tokens
    at block ``n - 2`` (its cache under ``out/cache``, made once), trained in
    ``out/run-seed{seed}``."""
    hook = f"blocks.{clip.n_layers - 2}.hook_resid_post"
    return demo_sae_config(
        clip,
        train_images,
        hook,
        out,
        config,
        tokens="random_2",
        default_steps=WORLD_STEPS,
        seed=seed,
        run_name=f"run-seed{seed}",
    )


def _steering_sae(clip: Any, train_images: list[Any], out: Path, config: Any, seed: int) -> Any:
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner

    run_config = steering_sae_config(clip, train_images, out, config, seed)
    return VisionSAETrainingRunner(run_config, progress=config.progress).run()


def _one_seed(
    context: _Context,
    sae: Any,
    seed: int,
    images: list[Any],
    objects: list[Any],
    index: int,
    has_concept: torch.Tensor,
) -> tuple[dict[str, Any], Any, SteerabilityReport]:
    """Measure one steering SAE; returns its figures, its text-tower labels and its census."""
    from sae_vlm_plugin.naming.name import name_latents
    from sae_vlm_plugin.steering.activity import latent_activity
    from sae_vlm_plugin.steering.census import steerability

    word = context.word
    activity = latent_activity(sae, context.llava, images, context.hook)
    paper, r_precision = paper_rule_latent(activity, has_concept)
    options: dict[str, Any] = {
        "vocabulary": context.vocabulary,
        "batch_size": BATCH_SIZE,
        "max_new_tokens": MAX_NEW_TOKENS,
        "progress": False,
    }
    live = torch.nonzero(activity.steerable).flatten().tolist()
    labels = name_latents(sae, context.clip, images, "toy", tokens="all", progress=False)
    selection = steerability(  # every latent (those that cannot steer are listed as such)
        context.llava,
        context.processor,
        sae,
        activity,
        base_images=[context.selection_image],
        prompts=SELECTION_PROMPTS,
        n_random_directions=N_RANDOM_DIRECTIONS,
        seed=seed,
        labels=labels,
        text_tower=context.text_tower,
        **options,
    )
    best = selection.best_for(word)
    census = int(best.name) if best is not None else paper
    generator = torch.Generator().manual_seed(seed)
    pool = [k for k in live if k not in (paper, census)]
    random_latents = [
        pool[i] for i in torch.randperm(len(pool), generator=generator)[:N_RANDOM_LATENTS]
    ]
    evaluation = steerability(
        context.llava,
        context.processor,
        sae,
        activity,
        [paper, census, *random_latents],
        base_images=context.evaluation_images,
        prompts=INSERTION_PROMPTS,
        controls={f"DiffMean {word}": context.diffmean},
        n_random_directions=N_RANDOM_DIRECTIONS,
        seed=seed,
        **options,
    )
    run = {
        "seed": seed,
        "n_steerable": len(live),
        "n_latents": int(sae.cfg.d_sae),
        "paper_rule": {
            "latent": paper,
            "r_precision": r_precision,
            "where": activity.where(paper),
            **_insertion(evaluation, evaluation.latent(paper), word),
            "suppression": _suppression(context, sae, activity, paper, images, objects, index),
        },
        "census": {
            "latent": census,
            "selection_score": best.word_score(word) if best is not None else 0.0,
            "where": activity.where(census),
            **_insertion(evaluation, evaluation.latent(census), word),
            "suppression": _suppression(context, sae, activity, census, images, objects, index),
        },
        "random_latents": [evaluation.latent(k).word_score(word) for k in random_latents],
        "random_directions": evaluation.null_scores(word),
        "diffmean": _insertion(evaluation, evaluation.of_kind("control")[0], word),
        "unsteered": evaluation.unsteered,
        "label_sources": _label_sources(labels, activity, selection, objects),
    }
    return run, labels, selection


def _label_sources(
    labels: Any, activity: Any, census: SteerabilityReport, objects: list[Any]
) -> dict[str, Any]:
    """For each concept of the world with a latent (the steerable latent whose top-16 read-token
    images all show it, largest R-precision: ``naming.check_labels``), which label sources name
    it: the text tower's first label, the census's most-gained word, the one-word answer."""
    from sae_vlm_plugin.demo.naming import concept_masks
    from sae_vlm_plugin.naming.evaluation import check_labels
    from sae_vlm_plugin.steering.answers import mentions

    codes = (activity.image_codes.to_dense() * activity.steerable.float()).to_sparse()
    checks = check_labels(labels, codes, concept_masks(objects, list(range(len(objects)))))
    measured = {u.name: u for u in census.measured_latents()}
    rows: list[dict[str, Any]] = []
    for check in checks:
        if check.latent is None:
            continue
        unit = measured.get(str(check.latent))
        rows.append(
            {
                "concept": check.concept,
                "latent": check.latent,
                "text_tower": check.first_label,
                "steering_word": None if unit is None else unit.top_word,
                "one_word_answer": None if unit is None else unit.explanation,
            }
        )
    return {
        "n_concepts": len(rows),
        "text_tower": sum(r["text_tower"] == r["concept"] for r in rows),
        "steering_word": sum(r["steering_word"] == r["concept"] for r in rows),
        "one_word_answer": sum(mentions(r["one_word_answer"] or "", r["concept"]) for r in rows),
        "concepts": rows,
    }


def _dashboard(
    sae: Any,
    clip: Any,
    images: list[Any],
    objects: list[Any],
    out: Path,
    labels: Any,
    census: SteerabilityReport,
) -> Path:
    """The steering SAE's dashboard, with its concept labels and census."""
    from sae_vlm_plugin.dashboard import build_dashboard

    attributes = [o.attributes for o in objects]
    return build_dashboard(
        sae,
        clip,
        images,
        out,
        embeddings=label_embeddings(attributes),
        labels=[" ".join(a) for a in attributes],
        concept_labels=labels,
        steerability=census,
    )


def _insertion(report: SteerabilityReport, unit: UnitSteering, word: str) -> dict[str, Any]:
    """How often ``unit`` adds ``word``, its rank against the random directions, an example."""
    nulls = report.null_scores(word)
    score = unit.word_score(word)
    p = (1 + sum(n >= score for n in nulls)) / (1 + len(nulls))
    best = max(unit.rates, key=lambda m: unit.rates[m].get(word, 0.0)) if unit.rates else None
    return {
        "rates": {m: r.get(word, 0.0) for m, r in unit.rates.items()},
        "score": score,
        "p_null": p,
        "inserts": score >= MIN_SCORE and p <= MAX_P,
        "degenerate": unit.degenerate,
        "example": None if best is None else unit.answers[best][0],
    }


def _suppression(
    context: _Context,
    sae: Any,
    activity: Any,
    latent: int,
    images: list[Any],
    objects: list[Any],
    index: int,
) -> dict[str, Any]:
    """Clamp ``latent`` to 0 on images where it fires on a read token (see the docstring)."""
    from sae_vlm_plugin.steering.answers import mentions
    from sae_vlm_plugin.steering.batched import RowEdit, generate_rows
    from sae_vlm_plugin.steering.evaluation import DESCRIBE_PROMPT

    fires = (activity.image_codes.to_dense()[:, latent] > 0).tolist()
    colour = [o.attributes[index] for o in objects]
    shown = [i for i, f in enumerate(fires) if f and colour[i] == context.word]
    other = [i for i, f in enumerate(fires) if f and colour[i] != context.word]
    chosen = shown[:N_SUPPRESSION_IMAGES] + other[:N_SUPPRESSION_IMAGES]
    if not shown:
        return {"n_images": 0, "held": False, "note": "fires on no image of the concept"}
    picked = [images[i] for i in chosen]
    edits = [RowEdit(through_sae=False), RowEdit(latent=latent, value=0.0), RowEdit()]
    rows = [(i, e) for e in edits for i in range(len(picked))]
    answers = generate_rows(
        context.llava, context.processor, sae, DESCRIBE_PROMPT, picked, rows, context.hook,
        batch_size=BATCH_SIZE, max_new_tokens=MAX_NEW_TOKENS,
    )  # fmt: skip
    n = len(picked)
    plain, clamped, recons = answers[:n], answers[n : 2 * n], answers[2 * n :]
    words = [colour[i] for i in chosen]

    def lost(indices: range, after: list[str]) -> float:
        named = [i for i in indices if mentions(plain[i], words[i])]
        return sum(not mentions(after[i], words[i]) for i in named) / max(1, len(named))

    own = range(min(len(shown), N_SUPPRESSION_IMAGES))
    rest = range(len(own), len(chosen))
    result: dict[str, Any] = {
        "n_images": len(own),
        "n_other_images": len(rest),
        "lost": lost(own, clamped),
        "lost_reconstruction_only": lost(own, recons),
        "other_colours_lost": lost(rest, clamped),
        "example": {"unsteered": plain[0], "clamped_0": clamped[0]},
    }
    result["held"] = (
        result["lost"] >= MIN_SCORE
        and result["lost"] - result["lost_reconstruction_only"] >= MIN_EFFECT
        and result["other_colours_lost"] < MIN_EFFECT
    )
    return result


def _findings(runs: list[dict[str, Any]], word: str) -> list[Finding]:
    n = len(runs)

    def count(rule: str, key: str) -> int:
        return sum(bool(_get(run[rule], key)) for run in runs)

    def rates(rule: str) -> str:
        return ", ".join(f"{run[rule]['latent']}: {run[rule]['score']:.0%}" for run in runs)

    nulls = [max(run["random_directions"], default=0.0) for run in runs]
    latents = [sum(s >= MIN_SCORE for s in run["random_latents"]) for run in runs]
    n_random = len(runs[0]["random_latents"]) if runs else 0
    control = ", ".join(f"{run['diffmean']['score']:.0%}" for run in runs)
    null_text = (
        f"nulls per seed: best random direction {', '.join(f'{x:.0%}' for x in nulls)}; random "
        f"latents inserting '{word}' {', '.join(map(str, latents))} of {n_random}; DiffMean "
        f"control {control}"
    )
    findings = []
    for rule, claim in (
        ("paper_rule", "the paper's rule on the read tokens (best R-precision) picks"),
        ("census", "the steerability census picks"),
    ):
        held = count(rule, "inserts")
        findings.append(
            Finding(
                f"steering_insertion_{rule}",
                f"{claim} a '{word}' latent whose clamp puts '{word}' into the answers "
                "(held-out base images, above nulls)",
                held > n / 2,
                f"held in {held} of {n} seeds; '{word}' inserted per seed (latent: rate) "
                f"{rates(rule)}; {null_text}",
            )
        )
        suppressed = count(rule, "suppression.held")
        figures = "; ".join(_suppression_text(run[rule]["suppression"]) for run in runs)
        findings.append(
            Finding(
                f"steering_suppression_{rule}",
                f"clamping that latent to 0 removes '{word}' from descriptions of {word} images "
                "on which it fires, and only that colour",
                suppressed > n / 2,
                f"held in {suppressed} of {n} seeds; {figures}",
            )
        )
    return findings


def _suppression_text(result: dict[str, Any]) -> str:
    if not result["n_images"]:
        return "no image"
    return (
        f"lost {result['lost']:.0%} (reconstruction {result['lost_reconstruction_only']:.0%}, "
        f"other colours {result['other_colours_lost']:.0%}, n={result['n_images']})"
    )


def _get(mapping: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        mapping = mapping[part]
    return mapping
