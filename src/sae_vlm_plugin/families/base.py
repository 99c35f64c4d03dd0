"""The interface every model family adapter implements.

A family knows, for the modules it recognises: which module the plugin wraps (the vision root:
a vision tower alone, or the whole LLaVA), where its blocks are, which canonical hook points it
offers (``hooks.py``, each knowing its token layout: CLS, registers, patches), how its forward is called on pixels, how to load it by name, and its default preprocessing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from sae_vlm_plugin.hooks import HookPoint

Preprocessor = Callable[[Sequence[Image.Image]], torch.Tensor]
"""RGB images -> ``(batch, 3, height, width)`` pixel tensor ready for the model."""


class VisionFamily(ABC):
    """A model family adapter (one file per family in ``sae_vlm_plugin.families``)."""

    name: str
    """Registry name, e.g. ``"clip"``."""
    description: str
    """One line shown by ``list_families()``: which builds the family covers."""
    model_types: tuple[str, ...] = ()
    """transformers ``config.model_type`` values this family loads by hub id / path."""
    generates_text: bool = False
    """Whether a language model reads the vision tower and generates text (LLaVA)."""
    tower_prefix: str = ""
    reader: str = ""
    """What reads the vision tower, for messages (``"LLaVA's projector"``)."""
    """Prefix of the vision tower's hook names (``"vision."`` where a language model sits on
    top, so ``vision.blocks.22.hook_resid_post``)."""

    @abstractmethod
    def matches(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` is a build of this family (decided by type and structure)."""

    def vision_root(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module the plugin wraps and runs on pixels (default: ``module`` itself)."""
        return module

    @abstractmethod
    def blocks_path(self, root: torch.nn.Module) -> str:
        """Dotted path (relative to ``root``) of the ``ModuleList`` of transformer blocks."""

    @abstractmethod
    def hook_points(self, root: torch.nn.Module) -> dict[str, HookPoint]:
        """Every canonical hook this build offers, by name."""

    def aliases(self, root: torch.nn.Module) -> dict[str, str]:
        """nnsight ``rename`` map (real path -> short name) giving every family the same names."""
        return {self.blocks_path(root): "blocks"}

    def forward_inputs(
        self, root: torch.nn.Module, pixel_values: torch.Tensor
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` that run ``root`` on a pixel batch."""
        return (), {"pixel_values": pixel_values}

    @abstractmethod
    def load(self, name: str, **kwargs: Any) -> tuple[torch.nn.Module, Preprocessor]:
        """Load a checkpoint by hub id or local path, with its own preprocessing."""

    def read_blocks(self, root: torch.nn.Module) -> list[int]:
        """The tower blocks whose output a language model reads (none for an encoder alone)."""
        return []

    def read_tokens(self, root: torch.nn.Module) -> slice:
        """The token positions of a read block's output that the language model reads."""
        return slice(None)

    def read_setting(self, root: torch.nn.Module) -> str:
        """The model's own setting that chooses the read blocks, for messages (``""``: none)."""
        return ""

    def tower_names(self, root: Any, name: str, key: Callable[[str], str] = str) -> list[str]:
        """Names an SAE may give for the model called ``name`` (compared after ``key``): the
        model itself; a family with a language model adds its vision tower's encoders."""
        return [name]

    @abstractmethod
    def default_preprocessor(self, root: torch.nn.Module) -> Preprocessor:
        """The family's standard preprocessing at the model's image size (for built modules)."""


def module_at(root: torch.nn.Module, path: str) -> Any:
    """The submodule at dotted ``path`` ("" is ``root`` itself), typed ``Any`` because family
    code reads architecture-specific attributes off it."""
    return root.get_submodule(path) if path else root


def join(*parts: str) -> str:
    """Join dotted path parts, skipping empty ones."""
    return ".".join(part for part in parts if part)


def first_output(value: Any) -> torch.Tensor:
    """The hidden-state tensor of a block's output: transformers 4.x blocks return ``(h, ...)``,
    5.x blocks and open_clip / timm blocks return ``h``. (Taking ``out[0]`` of a tensor would
    silently mean batch row 0.)"""
    return value[0] if isinstance(value, tuple) else value
