"""Canonical hook names, TransformerLens / SAELens style, shared by every model family.

| name | value |
|---|---|
| ``blocks.{l}.hook_resid_post`` | residual stream after block ``l`` (0-based), all tokens; ``hidden_states[l + 1]`` |
| ``hook_post_norm`` | the final norm's output (every token where the family norms every token, else CLS) |
| ``hook_pooled`` | the pooled image vector of families with a pooling head (SigLIP / AIMv2 attention pool) |
| ``hook_image_embeds`` | the final projected image embedding (CLIP ``image_embeds``, open_clip ``encode_image``) |
| ``vision.blocks.{l}.hook_resid_post`` | LLaVA: residual stream of the vision tower |
| ``hook_vision_features`` | LLaVA: the selected layer's tokens that enter the projector (CLS dropped) |
| ``hook_projector_out`` | LLaVA: image tokens in the language model's embedding space |

Names are permanent: SAE metadata (``cfg.metadata.hook_name``) and SAEDashboard rely on them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

BLOCK_HOOK = re.compile(r"^(?P<prefix>(?:vision\.)?)blocks\.(?P<layer>-?\d+)\.hook_resid_post$")


@dataclass(frozen=True)
class HookPoint:
    """Where a canonical hook reads its value in a wrapped model.

    ``module_path`` is the dotted path of a module relative to the wrapped root module;
    the hook's value is that module's ``output`` or ``input`` (first positional argument).
    ``has_tokens`` says whether the value is ``(batch, tokens, d)`` or one ``(batch, d)`` vector
    per image. ``order`` sorts hooks by when they run in the forward pass (nnsight requires
    values to be read in execution order).
    """

    name: str
    module_path: str
    d_model: int
    has_tokens: bool
    order: int
    n_prefix_tokens: int = 0
    """Tokens before the first patch token (CLS, registers) in this hook's token axis."""
    has_cls: bool = False
    """Whether token 0 of this hook's token axis is a CLS token."""
    read: Literal["output", "input"] = "output"
    token_major: bool = False
    """True where the module returns ``(tokens, batch, d)`` (open_clip with batch_first=False)."""


def block_hook_name(layer: int, prefix: str = "") -> str:
    """``blocks.{layer}.hook_resid_post`` (``prefix="vision."`` for LLaVA's vision tower)."""
    return f"{prefix}blocks.{layer}.hook_resid_post"


def parse_block_hook(name: str) -> tuple[str, int] | None:
    """``(prefix, layer)`` of a block hook name, or None if ``name`` is not one."""
    match = BLOCK_HOOK.match(name)
    if match is None:
        return None
    return match["prefix"], int(match["layer"])
