"""LLaVA (transformers ``LlavaForConditionalGeneration``): vision tower, projector, language model.

The projector reads ``hidden_states[vision_feature_layer]`` of the vision tower (``-2`` for
llava-1.5, i.e. the output of block ``n_layers - 2``: block 22 of 24), with the CLS token dropped
under the ``"default"`` strategy. Hooks:

- ``vision.blocks.{l}.hook_resid_post``: the tower's residual stream (CLS first);
- ``hook_vision_features``: the projector's input (CLS dropped), one token per image placeholder;
- ``hook_projector_out``: the projector's output, which replaces the image placeholder tokens.

Paths are found by structure: ``model.vision_tower`` in transformers 4.5x / 5.x,
``vision_tower`` at the top in older layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sae_vlm_plugin.families._transformers import ImageProcessorPreprocessor
from sae_vlm_plugin.families.base import Preprocessor, VisionFamily, join, module_at
from sae_vlm_plugin.hooks import HookPoint, block_hook_name


def _shallowest(root: Any, name: str) -> str:
    paths = [p for p, _ in root.named_modules() if p == name or p.endswith(f".{name}")]
    if not paths:
        raise ValueError(f"{type(root).__name__} has no {name!r} module")
    return min(paths, key=lambda p: p.count("."))


VISION_TOWERS: dict[str, str] = {
    "llava-hf/llava-1.5-7b-hf": "openai/clip-vit-large-patch14-336",
    "llava-hf/llava-1.5-13b-hf": "openai/clip-vit-large-patch14-336",
    "liuhaotian/llava-v1.5-7b": "openai/clip-vit-large-patch14-336",
    "liuhaotian/llava-v1.5-13b": "openai/clip-vit-large-patch14-336",
    "toy-llava": "toy-clip",
}
"""LLaVA checkpoints -> the encoder their vision tower was initialised from (its SAEs steer them)."""


def tower_read_block(n_layers: int, vision_feature_layer: int) -> int:
    """The block whose output is ``hidden_states[vision_feature_layer]`` (``hidden_states[0]``
    is the embeddings, ``hidden_states[l + 1]`` the output of block ``l``)."""
    index = vision_feature_layer % (n_layers + 1)
    if index == 0:
        raise ValueError("vision_feature_layer selects the embeddings, which no block outputs")
    return index - 1


class LlavaFamily(VisionFamily):
    """LLaVA; ``tower_family`` answers which family the vision tower is (the registry passes its
    ``detect_family``, so this module does not import the registry that imports it)."""

    name = "llava"
    description = "transformers LlavaForConditionalGeneration (vision tower + projector + LM)"
    model_types = ("llava",)
    generates_text = True
    tower_prefix = "vision."
    reader = "LLaVA's projector"

    def __init__(self, tower_family: Callable[[torch.nn.Module], VisionFamily]) -> None:
        self.tower_family = tower_family

    def matches(self, module: torch.nn.Module) -> bool:
        return type(module).__name__ in ("LlavaForConditionalGeneration", "LlavaModel")

    def tower_path(self, root: Any) -> str:
        return _shallowest(root, "vision_tower")

    def projector_path(self, root: Any) -> str:
        return _shallowest(root, "multi_modal_projector")

    def language_model_path(self, root: Any) -> str:
        return _shallowest(root, "language_model")

    def _tower_family(self, root: Any) -> VisionFamily:
        return self.tower_family(module_at(root, self.tower_path(root)))

    def blocks_path(self, root: Any) -> str:
        tower = module_at(root, self.tower_path(root))
        return join(self.tower_path(root), self._tower_family(root).blocks_path(tower))

    def read_blocks(self, root: Any) -> list[int]:
        """The tower blocks the projector reads (one for llava-1.5; a list for some variants)."""
        config = root.config
        layers = config.vision_feature_layer
        n_layers = len(module_at(root, self.blocks_path(root)))
        layers = layers if isinstance(layers, list | tuple) else [layers]
        return [tower_read_block(n_layers, int(layer)) for layer in layers]

    def hook_points(self, root: Any) -> dict[str, HookPoint]:
        tower_path = self.tower_path(root)
        tower = module_at(root, tower_path)
        tower_hooks = self._tower_family(root).hook_points(tower)
        hooks = {}
        for name, hook in tower_hooks.items():
            if name.startswith("blocks."):
                hooks[self.tower_prefix + name] = HookPoint(
                    self.tower_prefix + name,
                    join(tower_path, hook.module_path),
                    hook.d_model,
                    True,
                    hook.order,
                    n_prefix_tokens=hook.n_prefix_tokens,
                    has_cls=hook.has_cls,
                )
        n_layers = len(hooks)
        projector_path = self.projector_path(root)
        d_vision = next(h.d_model for h in tower_hooks.values() if h.name == block_hook_name(0))
        d_text = int(root.config.text_config.hidden_size)
        keeps_cls = root.config.vision_feature_select_strategy == "full"
        hooks["hook_vision_features"] = HookPoint(
            "hook_vision_features",
            projector_path,
            d_vision,
            True,
            n_layers + 1,
            n_prefix_tokens=int(keeps_cls),
            has_cls=keeps_cls,
            read="input",
        )
        hooks["hook_projector_out"] = HookPoint(
            "hook_projector_out",
            projector_path,
            d_text,
            True,
            n_layers + 2,
            n_prefix_tokens=int(keeps_cls),
            has_cls=keeps_cls,
        )
        return hooks

    def aliases(self, root: Any) -> dict[str, str]:
        return {
            self.blocks_path(root): "blocks",
            self.tower_path(root): "vision_tower",
            self.projector_path(root): "projector",
            self.language_model_path(root): "language_model",
        }

    def tower_names(self, root: Any, name: str, key: Callable[[str], str] = str) -> list[str]:
        """Names an SAE may give for the vision tower of the LLaVA called ``name``: the LLaVA
        itself, the tower's own ``_name_or_path`` when its config keeps one, and the encoder
        ``VISION_TOWERS`` lists for it (names compared after ``key``, e.g. a local path's)."""
        names = [name]
        tower = getattr(getattr(root.config, "vision_config", None), "_name_or_path", "")
        if tower:
            names.append(str(tower))
        names += [t for llava, t in VISION_TOWERS.items() if key(llava) == key(name)]
        return names

    def read_setting(self, root: Any) -> str:
        return f"vision_feature_layer={root.config.vision_feature_layer}"

    def read_tokens(self, root: Any) -> slice:
        """Token positions of a tower block's output that the projector reads: every token but
        CLS under the ``"default"`` strategy, every token under ``"full"``."""
        return (
            slice(None) if root.config.vision_feature_select_strategy == "full" else slice(1, None)
        )

    def image_token_count(self, root: Any) -> int:
        """Placeholder tokens per image: the tower's patches (+1 if the strategy keeps CLS)."""
        config = root.config.vision_config
        n_patches = (config.image_size // config.patch_size) ** 2
        return n_patches + int(root.config.vision_feature_select_strategy == "full")

    def forward_inputs(
        self, root: Any, pixel_values: torch.Tensor
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A forward on images alone: each sequence is just the image's placeholder tokens."""
        n_tokens = self.image_token_count(root)
        input_ids = torch.full(
            (pixel_values.shape[0], n_tokens),
            int(root.config.image_token_index),
            dtype=torch.long,
            device=pixel_values.device,
        )
        return (), {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
        }

    def load(self, name: str, **kwargs: Any) -> tuple[torch.nn.Module, Preprocessor]:
        from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

        model_type = AutoConfig.from_pretrained(name).model_type
        if model_type not in self.model_types:
            # from_pretrained would build a default-size LLaVA around a foreign config.
            raise ValueError(
                f"{name!r} is a {model_type!r} model, not a LLaVA model; the llava family "
                f"loads model types {', '.join(self.model_types)}"
            )
        module = LlavaForConditionalGeneration.from_pretrained(name, **kwargs).eval()
        processor = AutoProcessor.from_pretrained(name)
        return module, ImageProcessorPreprocessor(processor.image_processor)

    def default_preprocessor(self, root: Any) -> Preprocessor:
        tower = module_at(root, self.tower_path(root))
        return self._tower_family(root).default_preprocessor(tower)
