"""``LatentLabels``: every latent's vector in a CLIP text space, its concept labels, and search.

Each latent ``j`` has a unit vector ``e_j`` in the text tower's embedding space (the centred
mean image embedding of its top images, or its decoder direction: see ``naming.name``), and each
concept word ``w`` a unit (centred) text embedding ``t_w``. The score of ``w`` for latent ``j``
is the cosine

    s(j, w) = e_j . t_w

A latent's labels are its vocabulary words by descending score; ``find`` ranks latents by
``s(j, query)`` for any text. Latents that never fire on the images have no vector (a zero row)
and get no labels.

On disk (``save`` / ``load``), next to the SAE by default:

- ``latent_labels.json``: setup, the vocabulary and each named latent's top labels with scores;
- ``latent_labels.csv``: ``latent,rank,label,score`` rows of the same labels (a label that a
  spreadsheet would run as a formula starts with ``'``);
- ``latent_labels.safetensors``: the latent and word vectors, so ``find`` needs no images.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae_vlm_plugin.json_files import read_json

LABELS_FILE = "latent_labels.json"
CSV_FILE = "latent_labels.csv"
VECTORS_FILE = "latent_labels.safetensors"
FORMAT = "sae_vlm_plugin.latent_labels"
FORMAT_VERSION = 1
_BLOCK = 4096
"""Latents scored against the whole vocabulary at once."""


@dataclass(frozen=True)
class LatentMatch:
    """A latent found for a text query: its index, the query's score and its own top labels."""

    latent: int
    score: float
    labels: list[tuple[str, float]]


@dataclass
class LatentLabels:
    """Concept labels of an SAE's latents (see the module docstring for the score)."""

    vocabulary: list[str]
    word_vectors: Tensor
    """``(n_words, d)`` unit text embeddings of ``vocabulary``."""
    latent_vectors: Tensor
    """``(d_sae, d)`` unit latent vectors; a zero row for a latent without one."""
    text_centre: Tensor
    """``(d,)`` what is taken off a unit text embedding before it is compared (the
    vocabulary's mean; zeros when uncentred)."""
    n_labels: int = 5
    """Labels kept per latent in the files and returned by default."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Setup: ``text_model``, ``templates``, ``scorer``, ``hook``, ``k``, ``n_images`` ..."""
    _top: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)
    _word_index: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._word_index = {word: i for i, word in enumerate(self.vocabulary)}
        if len(self.vocabulary) != self.word_vectors.shape[0]:
            raise ValueError(
                f"{len(self.vocabulary)} words but {self.word_vectors.shape[0]} word vectors"
            )
        if self.word_vectors.shape[1] != self.latent_vectors.shape[1]:
            raise ValueError(
                f"word vectors have {self.word_vectors.shape[1]} dims, latent vectors "
                f"{self.latent_vectors.shape[1]}: they come from different text towers"
            )
        if self.text_centre.shape != (self.word_vectors.shape[1],):
            raise ValueError(
                f"text_centre has shape {tuple(self.text_centre.shape)}, not "
                f"({self.word_vectors.shape[1]},)"
            )
        if self.n_labels < 1:
            raise ValueError(f"n_labels must be at least 1, got {self.n_labels}")

    @property
    def d_sae(self) -> int:
        return int(self.latent_vectors.shape[0])

    @property
    def named(self) -> Tensor:
        """``(d_sae,)`` bool: latents that have a vector (and so labels)."""
        return self.latent_vectors.abs().sum(1) > 0

    def top(self) -> tuple[Tensor, Tensor]:
        """``(scores, word indices)``, each ``(d_sae, n_labels)``, best first; NaN / -1 for
        latents without a vector."""
        if self._top is None:
            n = min(self.n_labels, len(self.vocabulary))
            scores, indices = [], []
            for start in range(0, self.d_sae, _BLOCK):
                block = self.latent_vectors[start : start + _BLOCK] @ self.word_vectors.T
                best = block.topk(n, dim=1)
                scores.append(best.values)
                indices.append(best.indices)
            named = self.named
            self._top = (
                torch.cat(scores).masked_fill(~named[:, None], torch.nan),
                torch.cat(indices).masked_fill(~named[:, None], -1),
            )
        return self._top

    def labels(self, latent: int, n: int | None = None) -> list[tuple[str, float]]:
        """The latent's best ``n`` (default ``n_labels``) labels with their scores; ``[]`` for a
        latent without a vector."""
        self._check_latent(latent)
        if not bool(self.named[latent]):
            return []
        if n is None or n <= self.n_labels:
            scores, indices = self.top()
            pairs = zip(indices[latent].tolist(), scores[latent].tolist(), strict=True)
            return [(self.vocabulary[i], round(s, 6)) for i, s in pairs][: n or self.n_labels]
        row = self.word_vectors @ self.latent_vectors[latent]
        best = row.topk(min(n, len(self.vocabulary)))
        return [
            (self.vocabulary[i], round(s, 6))
            for i, s in zip(best.indices.tolist(), best.values.tolist(), strict=True)
        ]

    def best_label(self, latent: int) -> str | None:
        """The latent's first label, or None if it has none."""
        labels = self.labels(latent, 1)
        return labels[0][0] if labels else None

    def word_vector(self, word: str) -> Tensor | None:
        """The stored embedding of a vocabulary word, or None if ``word`` is not in it."""
        index = self._word_index.get(word)
        return None if index is None else self.word_vectors[index]

    def find(self, query: Tensor, top: int = 10) -> list[LatentMatch]:
        """The ``top`` latents with the largest score for the unit text embedding ``query``."""
        if query.shape != (self.word_vectors.shape[1],):
            raise ValueError(
                f"the query embedding has shape {tuple(query.shape)}, the latent vectors "
                f"{self.word_vectors.shape[1]} dims"
            )
        scores = (self.latent_vectors @ query.float()).masked_fill(~self.named, -torch.inf)
        n = min(top, int(self.named.sum()))
        best = scores.topk(n)
        return [
            LatentMatch(int(j), round(float(s), 6), self.labels(int(j)))
            for j, s in zip(best.indices, best.values, strict=True)
        ]

    def _check_latent(self, latent: int) -> None:
        if not 0 <= latent < self.d_sae:
            raise ValueError(
                f"latent {latent} is out of range; valid latents are 0..{self.d_sae - 1}"
            )

    # -- files ------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the three files (module docstring) into ``directory``; returns the JSON's path."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        named = [j for j in range(self.d_sae) if bool(self.named[j])]
        record = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "meta": self.meta,
            "n_labels": self.n_labels,
            "d_sae": self.d_sae,
            "vocabulary": self.vocabulary,
            "labels": {str(j): self.labels(j) for j in named},
        }
        _write_atomic(out / LABELS_FILE, json.dumps(record, indent=1, allow_nan=False))
        rows = ["latent,rank,label,score"]
        for j in named:
            for rank, (word, score) in enumerate(self.labels(j)):
                rows.append(_csv_row([j, rank, _csv_text(word), f"{score:.6f}"]))
        _write_atomic(out / CSV_FILE, "\n".join(rows) + "\n")
        partial = out / (VECTORS_FILE + ".tmp")
        save_file(
            {
                "latent_vectors": self.latent_vectors.float().contiguous(),
                "word_vectors": self.word_vectors.float().contiguous(),
                "text_centre": self.text_centre.float().contiguous(),
            },
            str(partial),
        )
        partial.replace(out / VECTORS_FILE)
        return out / LABELS_FILE

    @classmethod
    def load(cls, path: str | Path) -> LatentLabels:
        """Labels written by ``save``, from their directory or their JSON file.

        Raises:
            FileNotFoundError: no labels there (``name_latents`` / ``sae-vlm name`` write them).
            ValueError: a file that is not a labels file of this format.
        """
        from safetensors.torch import load_file

        where = Path(path)
        json_path = where / LABELS_FILE if where.is_dir() else where
        if not json_path.is_file():
            raise FileNotFoundError(
                f"no {LABELS_FILE} at {where}; write one with name_latents(...).save(dir) or "
                "`sae-vlm name`"
            )
        record = read_json(json_path)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{json_path} is not a latent labels file ({FORMAT})")
        if record.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{json_path} has labels format version {record.get('version')}; this "
                f"version of sae_vlm_plugin reads version {FORMAT_VERSION}"
            )
        vectors = load_file(str(json_path.parent / VECTORS_FILE))
        return cls(
            vocabulary=list(record["vocabulary"]),
            word_vectors=vectors["word_vectors"],
            latent_vectors=vectors["latent_vectors"],
            text_centre=vectors["text_centre"],
            n_labels=int(record["n_labels"]),
            meta=dict(record["meta"]),
        )


def labels_beside(sae: str | Path) -> Path | None:
    """The labels file in an SAE folder (``sae-vlm name`` writes it there), or None."""
    path = Path(sae) / LABELS_FILE
    return path if path.is_file() else None


def labels_for(labels: LatentLabels | str | Path, d_sae: int) -> LatentLabels:
    """``labels`` (a ``LatentLabels``, or the directory / file it was saved to), checked to be
    for an SAE of ``d_sae`` latents."""
    found = labels if isinstance(labels, LatentLabels) else LatentLabels.load(labels)
    if found.d_sae != d_sae:
        raise ValueError(
            f"the labels are for {found.d_sae} latents but the SAE has {d_sae}: they belong "
            "to another SAE"
        )
    return found


def _csv_text(text: str) -> str:
    """``text`` as a spreadsheet shows it, not runs it: a cell starting with ``= + - @`` (or a
    tab / carriage return) is a formula in Excel and LibreOffice, so it gets a leading ``'``."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def _csv_row(values: list[Any]) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
