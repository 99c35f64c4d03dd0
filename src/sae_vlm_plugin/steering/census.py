"""Steerability: which SAE latents, clamped in a VLM's vision tower, change what it says.

Picking a latent by its top images tells a user what it detects, not what it writes. The census
measures the second directly. For every latent it clamps the latent on the tokens the language
model reads, at ``multiples`` of the latent's largest activation on those tokens
(``LatentActivity.read_max``), on several neutral base images, and asks every prompt; then it
reads the answers (``answers.py``):

- ``rates[m][w]``: the fraction of trials (prompt x base image) whose answer at multiple ``m``
  gained concept ``w`` (named by the steered answer, not by the unsteered one) and still reads
  as an answer (does not degenerate into repetition: the paper's judge also asks that the
  answer follows the prompt);
- ``score = max_m rates[m][top_word]`` for the concept it adds most (``top_word``) and the
  multiple that does it (``best_multiple``);
- ``off_target``: at that multiple, the fraction of trials gaining some other concept;
- ``degenerate``: the fraction of answers that repeat themselves (fluency);
- ``explanation``: the most common steered answer to the one-word prompt (a label of its own).

Every figure has nulls and a control measured in the same run, the same way: random directions
of matched norm (a random unit vector times the decoder norm of a random steerable latent,
added to the reconstruction at the same multiples of that latent's unit), and DiffMean
vectors given by the caller (added to the raw activation at the same multiples of the vector).
``p_null = (1 + #{random directions with score(top_word) >= score}) / (1 + n_directions)``; a
latent *steers* when ``score >= MIN_SCORE`` and ``p_null <= MAX_P``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from sae_vlm_plugin.model import ModelLike, as_vision_model
from sae_vlm_plugin.steering.activity import LatentActivity
from sae_vlm_plugin.steering.answers import ConceptReader, degenerate, most_common_answer
from sae_vlm_plugin.steering.batched import RowEdit, generate_rows
from sae_vlm_plugin.steering.evaluation import INSERTION_PROMPTS, ONE_WORD_PROMPT

if TYPE_CHECKING:
    from PIL import Image
    from sae_lens import SAE


CENSUS_PROMPTS: tuple[str, ...] = (*INSERTION_PROMPTS, ONE_WORD_PROMPT)
"""Appendix B's insertion prompts and the one-word "what is shown" question."""
CENSUS_MULTIPLES: tuple[float, ...] = (2.0, 8.0)
MIN_SCORE = 0.5
MAX_P = 0.05
FILE_NAME = "steerability.json"
LABEL_WORDS = 12
"""Words of an answer the text tower reads for ``label_gain`` (every CLIP-family text tower
reads 12 words whole; the toy CLIP's context is 16 tokens)."""
UnitKind = Literal["latent", "random_direction", "control"]


def neutral_images(size: int) -> list[Image.Image]:
    """Base images that show nothing: white (the paper's), mid grey and black."""
    from PIL import Image

    return [Image.new("RGB", (size, size), colour) for colour in ("white", "#808080", "black")]


@dataclass
class UnitSteering:
    """One steered unit (a latent, a random direction or a control) and what it did."""

    kind: UnitKind
    name: str
    """``"12"`` for latent 12, ``"random 3"``, or the control's name."""
    unit: float
    """The value of ``1x``: the latent's ``read_max`` (a random direction: its matched latent's;
    a control: 1, its own length)."""
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    """``{multiple: {concept: fraction of trials that gained it fluently}}`` (non-zero only)."""
    degenerate: dict[str, float] = field(default_factory=dict)
    changed: dict[str, float] = field(default_factory=dict)
    answers: dict[str, list[str]] = field(default_factory=dict)
    """``{multiple: answers}``, trial order (prompt-major, then base image)."""
    top_word: str | None = None
    score: float = 0.0
    best_multiple: str | None = None
    off_target: float = 0.0
    """At the best multiple, the fraction of trials (fluent or not) that gained a concept other
    than ``top_word``."""
    explanation: str | None = None
    label: str | None = None
    """The latent's first concept label (``naming.LatentLabels``), when labels were given."""
    label_gain: float | None = None
    """``mean_t cos(T(steered_t), T(label)) - mean_t cos(T(unsteered_t), T(label))`` at the best
    multiple, ``T`` the text tower on an answer's first ``LABEL_WORDS`` words: how much closer to
    its label the answers moved."""
    p_null: float | None = None
    """Rank against the random directions for ``top_word`` (None: nothing gained, or no random
    directions in the census)."""
    steers: bool = False
    note: str = ""
    """Why a latent was not steered (not active on the read tokens)."""

    def word_score(self, word: str) -> float:
        """``max_m rates[m][word]``."""
        return max((r.get(word, 0.0) for r in self.rates.values()), default=0.0)


@dataclass
class SteerabilityReport:
    """A census: its settings, the unsteered answers and every unit's results."""

    hook: str
    prompts: list[str]
    base_images: list[str]
    multiples: list[float]
    unsteered: list[str]
    units: list[UnitSteering]
    vocabulary: list[str] | None = None

    def latent(self, index: int) -> UnitSteering:
        for unit in self.units:
            if unit.kind == "latent" and unit.name == str(index):
                return unit
        raise KeyError(f"latent {index} is not in this census")

    def of_kind(self, kind: UnitKind) -> list[UnitSteering]:
        return [u for u in self.units if u.kind == kind]

    def measured_latents(self) -> list[UnitSteering]:
        return [u for u in self.of_kind("latent") if u.answers]

    def best_for(self, word: str) -> UnitSteering | None:
        """The measured latent that adds ``word`` most often (its ``word_score``)."""
        latents = self.measured_latents()
        return max(latents, key=lambda u: u.word_score(word)) if latents else None

    def null_scores(self, word: str, kind: UnitKind = "random_direction") -> list[float]:
        """``word_score(word)`` of every unit of ``kind`` (the null distribution for ``word``)."""
        return [u.word_score(word) for u in self.of_kind(kind) if u.answers]

    def to_dict(self) -> dict[str, Any]:
        return {"format": "sae_vlm_plugin.steerability/1", **asdict(self)}

    def save(self, directory: str | Path) -> Path:
        """Write ``steerability.json`` into ``directory`` (beside the SAE's weights)."""
        path = Path(directory) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteerabilityReport:
        """Read a report written by ``save`` (a directory holding it, or the file)."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the steerability report {path}: {error}") from None
        if (
            not isinstance(data, dict)
            or data.pop("format", None) != "sae_vlm_plugin.steerability/1"
        ):
            raise ValueError(f"{path} is not a steerability report")
        units = [UnitSteering(**u) for u in data.pop("units")]
        return cls(**data, units=units)


def dashboard_entry(
    report: SteerabilityReport, latent: int, n_answers: int = 6
) -> dict[str, Any] | None:
    """What the dashboard shows of ``latent``: its top concept, score, multiple, rank against
    the nulls, one-word answer, and its first ``n_answers`` trials at the best multiple as
    ``[prompt, unsteered, steered]``; None when the census did not clamp it."""
    unit = next((u for u in report.of_kind("latent") if u.name == str(latent)), None)
    if unit is None:
        return None
    entry: dict[str, Any] = {"note": unit.note, "steers": unit.steers}
    if unit.answers:
        key = _best(unit)
        trials = [(p, i) for p in report.prompts for i in range(len(report.base_images))]
        entry |= {
            "word": unit.top_word,
            "score": unit.score,
            "multiple": key,
            "p": unit.p_null,
            "one_word": unit.explanation,
            "degenerate": unit.degenerate[key],
            "label": unit.label,
            "label_gain": unit.label_gain,
            "answers": [
                [prompt, report.unsteered[t], unit.answers[key][t]]
                for t, (prompt, _) in enumerate(trials[:n_answers])
            ],
        }
    return entry


def steerability(
    model: ModelLike,
    processor: Any,
    sae: SAE,
    activity: LatentActivity,
    latents: Sequence[int] | None = None,
    *,
    base_images: Sequence[Image.Image] | None = None,
    prompts: Sequence[str] = CENSUS_PROMPTS,
    multiples: Sequence[float] = CENSUS_MULTIPLES,
    vocabulary: Sequence[str] | None = None,
    controls: Mapping[str, Tensor] | None = None,
    n_random_directions: int = 32,
    labels: Any = None,
    text_tower: Any = None,
    seed: int = 0,
    batch_size: int = 256,
    max_new_tokens: int = 16,
    progress: bool = True,
) -> SteerabilityReport:
    """Census of ``latents`` (default: all) of ``sae`` on LLaVA ``model`` (see the module
    docstring). ``activity`` (``latent_activity`` on images the SAE was made for) gives each
    latent's unit and which latents fire on the read tokens; the others are listed with a note
    and not generated. ``vocabulary``: the concepts to count (default: every non-function word);
    ``controls``: named DiffMean vectors at the hook; ``labels`` (``naming.LatentLabels``) and
    ``text_tower`` (``naming.load_text_tower``): each latent's ``label_gain``."""
    model = as_vision_model(model)
    from tqdm.auto import tqdm

    hook = activity.hook
    if base_images is None:
        source: Any = model.source_module
        size = int(source.config.vision_config.image_size)
        base_images = neutral_images(size)
    base_images = list(base_images)
    multiples = [float(m) for m in multiples]
    if not multiples or not all(math.isfinite(m) for m in multiples):
        raise ValueError(f"multiples must be finite numbers, got {multiples}")
    if not base_images or not prompts:
        raise ValueError("a census needs at least one base image and one prompt")
    if n_random_directions < 0 or batch_size < 1:
        raise ValueError(
            f"n_random_directions must be >= 0 and batch_size >= 1, got {n_random_directions} "
            f"and {batch_size}"
        )
    d_sae = int(sae.cfg.d_sae)
    latents = list(range(d_sae)) if latents is None else [int(k) for k in latents]
    units, edits = _units(sae, activity, latents, multiples, controls, n_random_directions, seed)
    trials = [(p, i) for p in prompts for i in range(len(base_images))]
    unsteered: list[str] = []
    steered: list[list[str]] = [[] for _ in edits]  # one list per (unit, multiple) edit
    with tqdm(total=len(prompts), desc="steerability", unit="prompt", disable=not progress) as bar:
        for prompt in prompts:
            rows = [(i, RowEdit(through_sae=False)) for i in range(len(base_images))]
            rows += [(i, edit) for edit in edits for i in range(len(base_images))]
            answers = generate_rows(
                model, processor, sae, prompt, base_images, rows, hook, batch_size,
                max_new_tokens,
            )  # fmt: skip
            n = len(base_images)
            unsteered += answers[:n]
            for e in range(len(edits)):
                steered[e] += answers[n * (e + 1) : n * (e + 2)]
            bar.update(1)
    measured = [u for u in units if not u.note]
    reader = ConceptReader(vocabulary)
    for u, unit in enumerate(measured):
        for m, multiple in enumerate(multiples):
            _read_answers(unit, f"{multiple:g}", steered[u * len(multiples) + m], unsteered, reader)
        _summarise(unit, trials, unsteered, reader)
    _rank_against_nulls(units)
    if labels is not None and text_tower is not None:
        _label_gains(measured, labels, text_tower, unsteered)
    return SteerabilityReport(
        hook=hook,
        prompts=list(prompts),
        base_images=[_describe(im) for im in base_images],
        multiples=multiples,
        unsteered=unsteered,
        units=units,
        vocabulary=None if vocabulary is None else list(vocabulary),
    )


def _units(
    sae: SAE,
    activity: LatentActivity,
    latents: Sequence[int],
    multiples: Sequence[float],
    controls: Mapping[str, Tensor] | None,
    n_random: int,
    seed: int,
) -> tuple[list[UnitSteering], list[RowEdit]]:
    """The units in report order and, for the measured ones, one edit per multiple."""
    units: list[UnitSteering] = []
    edits: list[RowEdit] = []
    steerable = activity.steerable
    for k in latents:
        unit = UnitSteering("latent", str(k), float(activity.read_max[k]))
        if not bool(steerable[k]):
            unit.note = activity.where(k)
        else:
            edits += [RowEdit(latent=k, value=m * unit.unit) for m in multiples]
        units.append(unit)
    live = torch.nonzero(steerable).flatten()
    if n_random and len(live):
        generator = torch.Generator().manual_seed(seed)
        w_dec = sae.W_dec.detach().float().cpu()
        for r in range(n_random):
            k = int(live[torch.randint(len(live), (1,), generator=generator)])
            direction = torch.randn(w_dec.shape[1], generator=generator)
            direction *= w_dec[k].norm() / direction.norm()
            unit = UnitSteering("random_direction", f"random {r}", float(activity.read_max[k]))
            edits += [RowEdit(direction=m * unit.unit * direction) for m in multiples]
            units.append(unit)
    for name, vector in (controls or {}).items():
        units.append(UnitSteering("control", name, 1.0))
        edits += [RowEdit(direction=m * vector, through_sae=False) for m in multiples]
    return units, edits


def _read_answers(
    unit: UnitSteering,
    key: str,
    answers: list[str],
    unsteered: list[str],
    reader: ConceptReader,
) -> None:
    n = len(answers)
    repeats = [degenerate(a) for a in answers]
    fluent = [(a, b) for a, b, r in zip(answers, unsteered, repeats, strict=True) if not r]
    counts = reader.gained([a for a, _ in fluent], [b for _, b in fluent])
    unit.answers[key] = answers
    unit.rates[key] = {w: c / n for w, c in sorted(counts.items(), key=lambda x: (-x[1], x[0]))}
    unit.degenerate[key] = sum(repeats) / n
    unit.changed[key] = sum(a != b for a, b in zip(answers, unsteered, strict=True)) / n


def _summarise(
    unit: UnitSteering,
    trials: list[tuple[str, int]],
    unsteered: list[str],
    reader: ConceptReader,
) -> None:
    words = sorted({w for rates in unit.rates.values() for w in rates})
    if words:
        top = max(words, key=unit.word_score)
        unit.top_word, unit.score = top, unit.word_score(top)
        unit.best_multiple = max(unit.rates, key=lambda m: unit.rates[m].get(top, 0.0))
    answers = unit.answers[_best(unit)]
    other = [
        bool(reader.named(after) - reader.named(before) - {unit.top_word})
        for after, before in zip(answers, unsteered, strict=True)
    ]
    unit.off_target = sum(other) / len(other)
    one_word = [a for (p, _), a in zip(trials, answers, strict=True) if p == ONE_WORD_PROMPT]
    plain = [a for (p, _), a in zip(trials, unsteered, strict=True) if p == ONE_WORD_PROMPT]
    unit.explanation = most_common_answer(one_word, exclude=plain) if one_word else None


def _label_gains(
    units: list[UnitSteering], labels: Any, text_tower: Any, unsteered: list[str]
) -> None:
    """Each latent unit's ``label`` and ``label_gain`` (see ``UnitSteering``)."""
    latents = [u for u in units if u.kind == "latent" and labels.best_label(int(u.name))]
    if not latents:
        return
    for unit in latents:
        unit.label = labels.best_label(int(unit.name))
    words = sorted({str(u.label) for u in latents})
    texts = sorted({*unsteered, *(a for u in latents for a in u.answers[_best(u)])})
    clipped = [" ".join(text.split()[:LABEL_WORDS]) for text in texts]
    with torch.no_grad():
        word_vectors = dict(zip(words, text_tower.embed(words), strict=True))
        encoded = [
            text_tower.encode(clipped[i : i + 256]).float() for i in range(0, len(clipped), 256)
        ]
    unit_texts = torch.nn.functional.normalize(torch.cat(encoded), dim=-1)
    text_vectors = dict(zip(texts, unit_texts, strict=True))
    before = torch.stack([text_vectors[t] for t in unsteered])
    for unit in latents:
        target = word_vectors[str(unit.label)]
        after = torch.stack([text_vectors[t] for t in unit.answers[_best(unit)]])
        unit.label_gain = float((after @ target).mean() - (before @ target).mean())


def _best(unit: UnitSteering) -> str:
    return unit.best_multiple or next(iter(unit.answers))


def _rank_against_nulls(units: list[UnitSteering]) -> None:
    nulls = [u for u in units if u.kind == "random_direction" and u.answers]
    for unit in units:
        if not unit.answers or unit.top_word is None or not nulls:
            continue
        exceed = sum(n.word_score(unit.top_word) >= unit.score for n in nulls)
        unit.p_null = (1 + exceed) / (1 + len(nulls))
        unit.steers = unit.score >= MIN_SCORE and unit.p_null <= MAX_P


def _describe(image: Image.Image) -> str:
    colours = image.getcolors(1)
    if colours:
        return f"plain {image.width}x{image.height} rgb{colours[0][1]}"
    return f"{image.width}x{image.height} image"
