"""``VisionModel``: any supported vision encoder or LLaVA as an nnsight model with one vocabulary.

Inside ``model.trace(...)`` every family answers to the same short names (``model.blocks[l]``,
``model.post_norm``; LLaVA adds ``model.projector``), and ``model.hook_points`` lists the
canonical hook names (``hooks.py``) the model offers. ``model.capture(pixels, hooks)`` reads
several hooks in one forward pass that stops after the deepest one.

A model the user already wrapped with nnsight (``NNsight(module)``, ``TransformersModel(repo,
task=...)``, the deprecated ``VisionLanguageModel``) is adopted, not copied: the
``VisionModel`` joins the wrapper's envoy tree (same envoys, same interleaver, same paths) and
stores its edits in the wrapper's edit list, so a steer installed through the plugin is seen by
the user's own ``trace`` / ``generate``, and an edit the user made is seen by the plugin - one
model, one set of edits.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable
from typing import Any, TypeAlias

import torch
from nnsight import NNsight
from nnsight.intervention.envoy import Envoy

from sae_vlm_plugin.devices import check_device
from sae_vlm_plugin.families.base import Preprocessor, VisionFamily, first_output
from sae_vlm_plugin.families.registry import (
    detect_family,
    get_family,
    load_by_name,
    model_reference,
)
from sae_vlm_plugin.hooks import HookPoint, parse_block_hook


class VisionModel(NNsight):
    """An nnsight model of a supported family (see ``sae_vlm_plugin.list_families()``).

    Args:
        model_or_name: a built module (``CLIPVisionModel``, ``open_clip`` CLIP, LLaVA, ...), a
            model wrapped with nnsight (adopted with its edits, see the module docstring), or a
            hub id / local path (transformers), ``open_clip:ARCH/PRETRAINED`` or ``hf-hub:ORG/REPO``.
        family: force a family instead of detecting it from the module's structure.
        preprocess: images -> pixel tensor; defaults to the checkpoint's own processor when
            loaded by name, else the family's standard preprocessing at the model's image size.
        device, dtype: where and in which precision the model runs.
        **load_kwargs: passed to ``from_pretrained`` / ``create_model_and_transforms``.
    """

    def __init__(
        self,
        model_or_name: torch.nn.Module | Envoy | str,
        *,
        family: str | None = None,
        preprocess: Preprocessor | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **load_kwargs: Any,
    ) -> None:
        check_device(device)  # before a model is loaded, not when it moves there
        wrapper = _dispatched(model_or_name) if isinstance(model_or_name, Envoy) else None
        if wrapper is not None:
            if load_kwargs:
                raise TypeError(
                    f"load arguments {sorted(load_kwargs)} need a model name, not an nnsight model"
                )
            module = wrapper._module
            chosen = get_family(family) if family is not None else detect_family(module)
            loaded_preprocess = _wrapper_preprocess(wrapper)
            name = _wrapper_name(wrapper, module)
        elif isinstance(model_or_name, str):
            name = model_reference(model_or_name)
            module, loaded_preprocess, chosen = load_by_name(name, family, **load_kwargs)
        else:
            if load_kwargs:
                raise TypeError(
                    f"load arguments {sorted(load_kwargs)} need a model name, not a module"
                )
            module = model_or_name
            chosen = get_family(family) if family is not None else detect_family(module)
            loaded_preprocess = None
            loaded_from = getattr(getattr(module, "config", None), "_name_or_path", "")
            name = (
                model_reference(loaded_from, strict=False) if loaded_from else type(module).__name__
            )
        root = chosen.vision_root(module).eval()
        if device is not None or dtype is not None:
            root.to(device=device, dtype=dtype)
        rename = {
            path: alias for path, alias in chosen.aliases(root).items() if not hasattr(root, alias)
        }
        with warnings.catch_warnings():
            # ViT / DINOv2 layers have a submodule named ``output``; nnsight notes that it moves
            # it to ``E_output``. Nothing here uses that submodule, so the notice is only noise.
            warnings.filterwarnings("ignore", message=r".*has a submodule named 'output'")
            if wrapper is None:
                super().__init__(root, rename=rename)
            else:
                self._join(wrapper, root, rename)
        self._family = chosen
        self._model_name = name
        self._source_module = module
        self._points = chosen.hook_points(root)
        self._preprocess = preprocess or loaded_preprocess or chosen.default_preprocessor(root)

    def _join(self, wrapper: Envoy, root: torch.nn.Module, rename: dict[str, str]) -> None:
        """Build this envoy over ``root`` inside ``wrapper``'s tree: with its interleaver,
        ``root``'s children resolve to the wrapper's own envoys (nnsight gives a module one
        envoy per interleaver), the root gets the wrapper's path for ``root`` (or, for a
        family's image tower over the model's own modules, a path of its own), and the edit
        list is the wrapper's."""
        envoys = wrapper.interleaver.envoys
        owner = envoys.get(id(root))
        if owner is None and not all(id(child) in envoys for child in root.children()):
            raise ValueError(
                f"{type(root).__name__} is not a module of the nnsight model "
                f"{type(wrapper).__name__}; wrap the model that contains it"
            )
        path = owner.path if owner is not None else f"{wrapper.path}.{type(root).__name__}"
        super().__init__(root, path=path, interleaver=wrapper.interleaver, rename=rename)
        if owner is not None:
            envoys[id(root)] = owner  # the user's tree keeps its envoy
        self.__dict__["_edit_owner"] = wrapper

    @property
    def _edits(self) -> list[Any]:
        """nnsight's stored edits: the adopted wrapper's list when there is one."""
        owner = self.__dict__.get("_edit_owner")
        return owner._edits if owner is not None else self.__dict__["_own_edits"]

    @_edits.setter
    def _edits(self, edits: list[Any]) -> None:
        owner = self.__dict__.get("_edit_owner")
        if owner is not None:
            owner._edits = edits
        else:
            self.__dict__["_own_edits"] = edits

    # -- what the model is --------------------------------------------------------------------

    @property
    def family(self) -> VisionFamily:
        return self._family

    @property
    def model_name(self) -> str:
        """Hub id or absolute local path it was loaded from (``model_reference``), else the
        config's name or the class name."""
        return self._model_name

    @property
    def source_module(self) -> torch.nn.Module:
        """The module passed in or loaded (LLaVA's full model; a CLIPModel, not its image tower)."""
        return self._source_module

    @property
    def preprocess(self) -> Preprocessor:
        return self._preprocess

    @property
    def hook_points(self) -> list[str]:
        """Canonical hook names this model offers, in forward-pass order."""
        return [p.name for p in sorted(self._points.values(), key=lambda p: p.order)]

    @property
    def n_layers(self) -> int:
        return sum(1 for name in self._points if parse_block_hook(name) is not None)

    def hook_point(self, name: str) -> HookPoint:
        """The ``HookPoint`` behind a canonical name; bad names raise with what is valid."""
        if name in self._points:
            return self._points[name]
        parsed = parse_block_hook(name)
        if parsed is not None:
            prefix, layer = parsed
            if any(n.startswith(f"{prefix}blocks.") for n in self._points):
                raise ValueError(
                    f"layer {layer} is out of range for {self.model_name}: its blocks are "
                    f"0..{self.n_layers - 1} ({prefix}blocks.{{l}}.hook_resid_post)"
                )
        close = difflib.get_close_matches(name, self._points, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"{self.model_name} ({self.family.name}) has no hook {name!r}.{hint} "
            f"Its hooks: {_summarise(self.hook_points)}"
        )

    # -- reading hooks ------------------------------------------------------------------------

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """nnsight's ``trace``. Called with images alone, ``trace(pixel_values=pixels)``, it runs
        the family's own forward on them (``forward_inputs``: LLaVA also gets one sequence of
        image placeholder tokens per image, open_clip the pixels as its positional ``image``), so
        that the same line works for every family. Any other call goes to nnsight unchanged."""
        if not inputs and set(kwargs) == {"pixel_values"}:
            inputs, kwargs = self.forward_inputs(kwargs["pixel_values"])
        return super().trace(*inputs, **kwargs)

    def read_hook(self, point: HookPoint | str) -> Any:
        """Inside a trace: the value of a hook (a canonical name or its ``HookPoint``) as
        ``(batch, tokens, d)`` or ``(batch, d)``, a tensor nnsight lets you ``.save()``.

        Right for every family: a block's ``.output`` is a tuple ``(h, ...)`` in transformers
        4.x CLIP but the tensor ``h`` in SigLIP, AIMv2, ViT, DINOv2, open_clip and transformers
        5.x, where ``output[0]`` would silently be image 0."""
        if isinstance(point, str):
            point = self.hook_point(point)
        envoy = self.get(point.module_path) if point.module_path else self
        value = envoy.input if point.read == "input" else envoy.output
        value = first_output(value)
        if point.token_major:
            value = value.transpose(0, 1)
        return value

    def forward_inputs(self, pixel_values: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self.family.forward_inputs(self._module, pixel_values)

    def capture(
        self, pixel_values: torch.Tensor, hooks: Iterable[str], stop: bool = True
    ) -> dict[str, torch.Tensor]:
        """Values of several hooks from one forward pass on ``pixel_values``.

        With ``stop=True`` the pass ends right after the deepest requested hook (nnsight
        ``tracer.stop()``), so deeper blocks never run.
        """
        points = sorted(
            (self.hook_point(h) for h in hooks), key=lambda p: (p.order, p.read != "input")
        )
        if not points:
            raise ValueError("no hooks requested")
        device = self.device
        if device is not None:
            pixel_values = pixel_values.to(device)
        dtype = next(self._module.parameters()).dtype
        args, kwargs = self.forward_inputs(pixel_values.to(dtype))
        saved: dict[str, torch.Tensor] = {}
        with torch.no_grad(), self.trace(*args, **kwargs) as tracer:
            for point in points:
                saved[point.name] = self.read_hook(point).save()
            if stop:
                tracer.stop()
        return saved


ModelLike: TypeAlias = VisionModel | torch.nn.Module | Envoy | str
"""What an API taking a model accepts: a ``VisionModel``, a module, an nnsight model, a name."""


def as_vision_model(model: ModelLike) -> VisionModel:
    """``model`` as a ``VisionModel``: itself, or a module / nnsight model / name wrapped (an
    nnsight model is adopted with its edits, so both see the same steering)."""
    return model if isinstance(model, VisionModel) else VisionModel(model)


def _dispatched(wrapper: Envoy) -> Envoy:
    """``wrapper`` with real weights: nnsight's lazily loaded models start on the meta device."""
    if getattr(wrapper, "dispatched", True) is False:
        wrapper.dispatch()
    return wrapper


def _wrapper_preprocess(wrapper: Envoy) -> Preprocessor | None:
    """The image processor an nnsight ``TransformersModel`` loaded, if any."""
    from sae_vlm_plugin.families._transformers import ImageProcessorPreprocessor

    processor = getattr(wrapper, "image_processor", None) or getattr(
        getattr(wrapper, "processor", None), "image_processor", None
    )
    return ImageProcessorPreprocessor(processor) if processor is not None else None


def _wrapper_name(wrapper: Envoy, module: torch.nn.Module) -> str:
    """The wrapper's repo id or path, else the module's config name or class name."""
    loaded_from = getattr(wrapper, "repo_id", None)
    if not isinstance(loaded_from, str):
        loaded_from = getattr(getattr(module, "config", None), "_name_or_path", "")
    return model_reference(loaded_from, strict=False) if loaded_from else type(module).__name__


def _summarise(names: list[str]) -> str:
    """Hook names with runs of block hooks folded: ``blocks.{0..23}.hook_resid_post, ...``."""
    folded: list[str] = []
    blocks: dict[str, list[int]] = {}
    for name in names:
        parsed = parse_block_hook(name)
        if parsed is None:
            folded.append(name)
        else:
            blocks.setdefault(parsed[0], []).append(parsed[1])
    for prefix, layers in blocks.items():
        folded.insert(0, f"{prefix}blocks.{{{min(layers)}..{max(layers)}}}.hook_resid_post")
    return ", ".join(folded)
