"""Figures of MonoSemanticity Scores that say what they show: a title naming the model, the hook
and the image set, and the coverage - how many latents are scored, how many fire on too few
images to be scored (``0 < support < min_support``), how many are dead (``support = 0``) - on
the figure itself, since a curve over the scored latents alone hides the other two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae_vlm_plugin.metrics.monosemanticity import MonosemanticityResult


@dataclass(frozen=True)
class Coverage:
    """What share of the neurons an MS figure covers; the three counts add up to ``n``."""

    n_scored: int
    n_below_support: int
    """Fire on 1 .. ``min_support - 1`` images (a score there rests on too few pairs)."""
    n_dead: int
    """Support 0: never above their minimum on these images."""
    min_support: int

    @property
    def n(self) -> int:
        return self.n_scored + self.n_below_support + self.n_dead

    @classmethod
    def of(cls, scores: Tensor, support: Tensor, min_support: int) -> Coverage:
        """From per-neuron ``scores`` (NaN = unscored) and ``support`` (images fired on)."""
        scored = ~torch.isnan(scores)
        dead = (support == 0) & ~scored
        return cls(
            n_scored=int(scored.sum()),
            n_below_support=int((~scored & ~dead).sum()),
            n_dead=int(dead.sum()),
            min_support=min_support,
        )

    @classmethod
    def of_result(cls, result: MonosemanticityResult) -> Coverage:
        return cls.of(result.scores, result.support, max(2, result.min_support))

    def text(self) -> str:
        """``scored 59 / below support 20 (< 16 images) / dead 433, of 512``."""
        return (
            f"scored {self.n_scored} / below support {self.n_below_support} "
            f"(< {self.min_support} images) / dead {self.n_dead}, of {self.n}"
        )


def figure_title(model: str, hook: str, images: str) -> str:
    """``{model} · {hook}`` over ``images: {images}``."""
    return f"{model} \u00b7 {hook}\nimages: {images}"


def plot_sorted_ms(
    results: dict[str, MonosemanticityResult], path: str | Path, *, title: str
) -> Path:
    """MS of each neuron set, sorted descending, against the normalised neuron index (paper
    Figure 5), titled ``title`` with each set's coverage under the axes."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.2), dpi=120)
    lines = []
    for label, result in results.items():
        scores = result.scores[~torch.isnan(result.scores)].sort(descending=True).values
        if scores.numel():
            axis.plot(torch.linspace(0, 1, scores.numel()), scores, label=label)
        lines.append(f"{label}: {Coverage.of_result(result).text()}")
    axis.set_xlabel("neuron index (normalised, sorted by MS; scored neurons only)")
    axis.set_ylabel("MonoSemanticity Score")
    axis.set_ylim(-0.05, 1.05)
    axis.grid(alpha=0.3)
    axis.legend(frameon=False, fontsize=8)
    return _save(figure, axis, path, title, lines)


def plot_ms_distribution(
    scores: Tensor, coverage: Coverage, path: str | Path, *, title: str
) -> Path:
    """Histogram of the scored latents' MS (NaN = unscored are left out), titled, with
    ``coverage`` under the axes."""
    plt = _pyplot()
    finite = scores[~torch.isnan(scores)].double().numpy()
    figure, axis = plt.subplots(figsize=(5, 3.4), dpi=100)
    axis.hist(finite, bins=40, range=(-1, 1) if finite.size and finite.min() < 0 else (0, 1))
    axis.set_xlabel("MonoSemanticity Score (scored latents)")
    axis.set_ylabel("latents")
    return _save(figure, axis, path, title, [coverage.text()])


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, axis: Any, path: str | Path, title: str, notes: list[str]) -> Path:
    """Draw ``title`` and ``notes`` on the figure and save it; a PNG also carries them as its
    ``Title`` and ``Description`` text, so what the figure says can be read back."""
    axis.set_title(title, fontsize=8)
    note = "\n".join(notes)
    figure.text(0.01, 0.01, note, fontsize=7, va="bottom", ha="left")
    figure.tight_layout(rect=(0, 0.035 * (1 + len(notes)), 1, 1))
    png = str(path).lower().endswith(".png")
    figure.savefig(path, metadata={"Title": title, "Description": note} if png else None)
    _pyplot().close(figure)
    return Path(path)
