"""Which tokens of a ``(batch, tokens, d)`` activation become training rows.

| kind | rows per image | tokens |
|---|---|---|
| ``cls`` | 1 | token 0; refused for families without a CLS token |
| ``patches`` | n_patches | every token after the prefix (CLS / register tokens) |
| ``all`` | n_tokens | every token |
| ``mean`` | 1 | mean over the patch tokens (prefix excluded) |
| ``random_k`` | k | k distinct tokens drawn from all tokens, seeded per image |
| ``random_k+replacement`` | k | k tokens drawn with replacement (a token may repeat) |

``random_k`` draws from a generator seeded by ``(seed, image_id)`` alone, so an image gets the
same tokens whatever batch it lands in and whatever its position (the paper's steering SAE uses
2 random tokens per image from all 577 tokens of CLIP's block 22). The paper's
``save_activations.py`` draws with replacement (``torch.randint`` over every token, CLS
included), so an image sometimes gives the same token twice; ``+replacement`` follows that rule
(the paper presets use it), with the same per-image seeding. Spelled ``random_N`` /
``random_N+replacement`` as a string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

TokenKind = Literal["cls", "patches", "all", "mean", "random_k"]
TOKEN_KINDS: tuple[str, ...] = get_args(TokenKind)
MEAN_TOKEN = -1
"""``token_index`` recorded for a ``mean`` row, which is no single token."""


@dataclass(frozen=True)
class TokenSelection:
    """A token selection rule (see the module docstring)."""

    kind: TokenKind = "cls"
    """One of ``cls``, ``patches``, ``all``, ``mean``, ``random_k``."""
    k: int = 2
    """Tokens per image for ``random_k``."""
    seed: int = 0
    """Seed of the per-image draw for ``random_k``."""
    replacement: bool = False
    """``random_k`` draws with replacement, as the paper's reference code does."""

    def __post_init__(self) -> None:
        if self.kind not in TOKEN_KINDS:
            raise ValueError(
                f"unknown token selection {self.kind!r}; valid: {', '.join(TOKEN_KINDS)}"
            )
        if self.kind == "random_k" and self.k < 1:
            raise ValueError(f"random_k needs k >= 1, got k={self.k}")
        if self.replacement and self.kind != "random_k":
            raise ValueError(f"only random_k draws with replacement, not {self.kind!r}")

    @classmethod
    def parse(cls, spec: str | TokenSelection, k: int = 2, seed: int = 0) -> TokenSelection:
        """A selection from a kind (``"cls"``, ``"random_k"`` with ``k``), ``"random_N"``
        (shorthand for ``random_k`` with k=N), either with ``+replacement``, or an instance
        (returned as is)."""
        if isinstance(spec, TokenSelection):
            return spec
        spec, plus, rule = spec.partition("+")
        if plus and rule != "replacement":
            raise ValueError(
                f"unknown token draw '+{rule}'; random_k draws distinct tokens, or "
                "'+replacement' (e.g. random_2+replacement)"
            )
        replacement = bool(plus)
        suffix = spec.removeprefix("random_")
        if spec.startswith("random_") and suffix.isdigit():
            return cls("random_k", k=int(suffix), seed=seed, replacement=replacement)
        return cls(spec, k=k, seed=seed, replacement=replacement)  # type: ignore[arg-type]

    def describe(self) -> str:
        """Short form recorded in metadata: ``cls``, ``random_2@seed0``,
        ``random_2+replacement@seed0``, ..."""
        if self.kind != "random_k":
            return self.kind
        draw = "+replacement" if self.replacement else ""
        return f"random_{self.k}{draw}@seed{self.seed}"

    def rows_per_image(self, n_tokens: int, n_prefix: int) -> int:
        return {
            "cls": 1,
            "mean": 1,
            "patches": n_tokens - n_prefix,
            "all": n_tokens,
            "random_k": self.k if self.replacement else min(self.k, n_tokens),
        }[self.kind]

    def check_family(self, has_cls: bool, family: str) -> None:
        if self.kind == "cls" and not has_cls:
            raise ValueError(
                f"tokens='cls' needs a CLS token, and the {family} family has none; "
                "use 'mean', 'patches', 'all' or 'random_k' (the paper uses two random tokens "
                "per image for encoders without CLS)"
            )

    def token_indices(self, image_id: str, n_tokens: int, n_prefix: int) -> torch.Tensor:
        """The token positions this rule takes from one image (``MEAN_TOKEN`` for ``mean``)."""
        if self.kind == "cls":
            return torch.zeros(1, dtype=torch.long)
        if self.kind == "mean":
            return torch.full((1,), MEAN_TOKEN, dtype=torch.long)
        if self.kind == "patches":
            return torch.arange(n_prefix, n_tokens)
        if self.kind == "all":
            return torch.arange(n_tokens)
        generator = torch.Generator().manual_seed(_image_seed(self.seed, image_id))
        if self.replacement:
            return torch.randint(0, n_tokens, (self.k,), generator=generator).sort().values
        if self.k > n_tokens:
            raise ValueError(
                f"random_k asks for k={self.k} tokens per image, but the hook has {n_tokens}; "
                f"use k <= {n_tokens}, tokens='all', or draw with replacement"
            )
        return torch.randperm(n_tokens, generator=generator)[: self.k].sort().values

    def select(
        self, activations: torch.Tensor, image_ids: Sequence[str], n_prefix: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``activations`` ``(batch, tokens, d)`` -> ``(values (rows, d), token_index (rows,))``.

        Rows are grouped by image in batch order, each image's rows in token order.
        """
        batch, n_tokens, _ = activations.shape
        if len(image_ids) != batch:
            raise ValueError(f"{len(image_ids)} image ids for a batch of {batch}")
        if self.kind == "cls":
            return activations[:, 0], torch.zeros(batch, dtype=torch.long)
        if self.kind == "mean":
            return activations[:, n_prefix:].mean(dim=1), torch.full((batch,), MEAN_TOKEN)
        if self.kind in ("patches", "all"):
            start = n_prefix if self.kind == "patches" else 0
            values = activations[:, start:].reshape(-1, activations.shape[-1])
            return values, torch.arange(start, n_tokens).repeat(batch)
        positions = torch.stack([self.token_indices(i, n_tokens, n_prefix) for i in image_ids])
        rows = torch.arange(batch).unsqueeze(1).expand_as(positions)
        return activations[rows.reshape(-1), positions.reshape(-1)], positions.reshape(-1)


def _image_seed(seed: int, image_id: str) -> int:
    """A 63-bit seed from ``(seed, image_id)``, stable across processes and platforms."""
    digest = hashlib.blake2b(f"{seed}\x00{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
