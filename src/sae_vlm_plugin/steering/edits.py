"""Steering with SAE latents (and DiffMean directions) as nnsight edits.

The paper (Pach et al. 2025, sec. 3.3 / 4.3) steers LLaVA by replacing the output of the vision
tower block the projector reads (``vision_feature_layer=-2``: block 22 of 24 for llava-1.5) with
the SAE reconstruction after clamping one latent on every token::

    f = SAE.encode(x);  f[..., k] = alpha;  x' = SAE.decode(f)        (no error term)

``steer`` does this as a persistent nnsight edit (``model.edit(inplace=True)``), so every later
``model.trace(...)`` and every generation through ``generate(model, ...)`` applies it until it is
removed - by the returned handle's ``remove()``, by leaving its ``with`` block, or by
``model.clear_edits()``::

    with steer(model, sae, {k: 50.0}):            # temporary: removed when the block ends
        ids = generate(model, **inputs, max_new_tokens=40)

    handle = steer(model, sae, {k: 50.0})          # persistent until handle.remove()

The SAE runs as a module mounted on the envoy tree next to the hooked module
(``model.blocks[22].sae`` for LLaVA), called with ``hook=True`` inside the edit, so its values are
addressable in any trace while the edit is active: ``hook_sae_input``, ``hook_sae_acts`` (codes
before the edit), ``hook_sae_acts_steered`` (after it), ``hook_sae_recons`` (decode of the edited
codes), ``hook_sae_error`` (``x - decode(codes)``). The module is mounted on the nnsight tree
only - the torch model itself never gains a submodule, so once the edit is removed the model is
exactly the model it was.

``keep_error=True`` adds the SAE's error back, ``x' = x + decode(f_edited) - decode(f)``, so that
only the edited latents' decoder directions change the activation.

The edit is applied at the first time its module runs in a call, which is once per forward pass
of an encoder and once per ``generate`` of LLaVA (the vision tower runs at prefill). A call that
never runs the steered module (a text-only LLaVA forward, or ``model.capture`` of a hook before
the steered one, whose early stop skips it) fails with nnsight's OutOfOrderError while an edit is
active; ``generate`` refuses the first up front, ``mean_activation`` avoids the second.
"""

from __future__ import annotations

import itertools
import logging
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from nnsight.intervention.envoy import Envoy

from sae_vlm_plugin.families.base import first_output
from sae_vlm_plugin.hooks import HookPoint, block_hook_name, parse_block_hook
from sae_vlm_plugin.model import ModelLike, as_vision_model

if TYPE_CHECKING:
    from PIL import Image
    from sae_lens import SAE

    from sae_vlm_plugin.model import VisionModel

SteerMode = Literal["clamp", "add", "scale"]
TokenSpec = Literal["all", "image", "patches", "cls"] | Sequence[int] | torch.Tensor
MODES: tuple[str, ...] = ("clamp", "add", "scale")
_LOG = logging.getLogger(__name__)


# -- the modules mounted on the envoy tree ---------------------------------------------------------


class SAESteeringModule(torch.nn.Module):
    """``x -> SAE.decode(edit(SAE.encode(x)))`` (+ the error term with ``keep_error``).

    The SAELens SAE is held as a plain attribute, not a submodule, so that nnsight never
    instruments the caller's SAE object. The identity submodules exist to be observed:
    ``hook_sae_input``, ``hook_sae_acts``, ``hook_sae_acts_steered``, ``hook_sae_recons``,
    ``hook_sae_error`` (SAELens names).
    """

    latent_ids: torch.Tensor
    latent_values: torch.Tensor

    def __init__(
        self,
        sae: SAE,
        latents: Mapping[int, float],
        mode: SteerMode = "clamp",
        keep_error: bool = False,
    ) -> None:
        super().__init__()
        self.__dict__["sae"] = sae
        self.mode = mode
        self.keep_error = keep_error
        self.latents = dict(latents)
        self.register_buffer(
            "latent_ids", torch.tensor(list(self.latents), dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "latent_values",
            torch.tensor(list(self.latents.values()), dtype=torch.float32),
            persistent=False,
        )
        self.hook_sae_input = torch.nn.Identity()
        self.hook_sae_acts = torch.nn.Identity()
        self.hook_sae_acts_steered = torch.nn.Identity()
        self.hook_sae_recons = torch.nn.Identity()
        self.hook_sae_error = torch.nn.Identity()

    def extra_repr(self) -> str:
        return f"mode={self.mode}, latents={self.latents}, keep_error={self.keep_error}"

    def edit_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """The codes with the chosen latents clamped to / shifted by / scaled by their values."""
        if not self.latents:
            return codes
        ids = self.latent_ids.to(codes.device)
        values = self.latent_values.to(device=codes.device, dtype=codes.dtype)
        edited = codes.clone()
        if self.mode == "clamp":
            edited[..., ids] = values
        elif self.mode == "add":
            edited[..., ids] += values
        else:
            edited[..., ids] *= values
        return edited

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sae: Any = self.sae
        param = next(sae.parameters())
        x_in = self.hook_sae_input(x.to(device=param.device, dtype=param.dtype))
        codes = self.hook_sae_acts(sae.encode(x_in))
        steered = self.hook_sae_acts_steered(self.edit_codes(codes))
        recons = self.hook_sae_recons(sae.decode(steered))
        if self.keep_error:
            error = self.hook_sae_error(x_in - sae.decode(codes))
            recons = recons + error
        return recons.to(device=x.device, dtype=x.dtype)


class DirectionSteeringModule(torch.nn.Module):
    """``x -> x + alpha * v`` (the DiffMean baseline); observable at ``hook_in`` / ``hook_out``."""

    vector: torch.Tensor

    def __init__(self, vector: torch.Tensor, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.register_buffer("vector", vector.detach().clone().float(), persistent=False)
        self.hook_in = torch.nn.Identity()
        self.hook_out = torch.nn.Identity()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, |vector|={float(self.vector.norm()):.4g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(x)
        shift = (self.alpha * self.vector).to(device=x.device, dtype=x.dtype)
        return self.hook_out(x + shift)


# -- where to steer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SteeringSite:
    """A resolved hook: where the edit reads and writes, and which tokens it changes."""

    point: HookPoint
    module_path: str
    """Path (relative to the wrapped root) of the module whose output / input is edited."""
    tokens: slice | torch.Tensor | None
    """Tokens changed along the token axis (None: every token, or no token axis)."""


def default_hook(model: VisionModel, sae: SAE | None = None) -> str:
    """The hook to steer when none is given: the SAE's ``cfg.metadata.hook_name`` (an encoder
    hook name ``blocks.L.hook_resid_post`` maps to ``vision.blocks.L...`` on LLaVA), else, for
    LLaVA, the block the projector reads."""
    name = getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "hook_name", None)
    family, root = model.family, model.source_module
    if name:
        if family.tower_prefix and name not in model.hook_points:
            parsed = parse_block_hook(name)
            if parsed is not None and parsed[0] == "":
                return block_hook_name(parsed[1], family.tower_prefix)
        return str(name)
    if family.read_blocks(root):
        return block_hook_name(max(family.read_blocks(root)), family.tower_prefix)
    raise ValueError(
        f"the SAE's metadata names no hook_name and {model.model_name} "
        f"({model.family.name}) has no default steering hook; pass hook= (one of "
        f"{', '.join(model.hook_points)})"
    )


def resolve_site(model: VisionModel, hook: str, tokens: TokenSpec = "all") -> SteeringSite:
    """Check that ``hook`` can be steered on ``model`` and resolve the token selection.

    On LLaVA, steering a vision block after the one the projector reads changes nothing
    downstream, so it raises ValueError naming that block.
    """
    from sae_vlm_plugin.model import VisionModel

    if not isinstance(model, VisionModel):
        raise TypeError(f"steering needs a sae_vlm_plugin.VisionModel, got {type(model).__name__}")
    point = model.hook_point(hook)
    family, root = model.family, model.source_module
    read = family.read_blocks(root)
    parsed = parse_block_hook(hook)
    if read and parsed is not None and parsed[1] > max(read):
        raise ValueError(
            f"{hook!r} runs after vision block {max(read)}, the last block {family.reader} "
            f"reads ({family.read_setting(root)}): steering it changes nothing downstream; steer "
            f"{block_hook_name(max(read), family.tower_prefix)!r} (or an earlier block)"
        )
    return SteeringSite(point, point.module_path, _token_selection(model, point, tokens))


def _token_selection(
    model: VisionModel, point: HookPoint, tokens: TokenSpec
) -> slice | torch.Tensor | None:
    if isinstance(tokens, str):
        if tokens == "all":
            return None
        if not point.has_tokens:
            raise ValueError(
                f"hook {point.name!r} holds one vector per image; tokens={tokens!r} needs a "
                "token axis (use tokens='all')"
            )
        if tokens == "patches":
            return slice(point.n_prefix_tokens, None)
        if tokens == "cls":
            if not point.has_cls:
                raise ValueError(f"hook {point.name!r} of {model.model_name} has no CLS token")
            return slice(0, 1)
        if tokens == "image":
            if not model.family.generates_text:
                raise ValueError(
                    "tokens='image' (the tokens LLaVA's projector turns into image tokens) "
                    f"applies to LLaVA only; {model.model_name} is {model.family.name}"
                )
            if point.name.startswith(model.family.tower_prefix + "blocks."):
                read = model.family.read_tokens(model.source_module)
                return None if read == slice(None) else read
            return None
        raise ValueError(
            f"tokens must be 'all', 'image', 'patches', 'cls' or token indices, got {tokens!r}"
        )
    if not point.has_tokens:
        raise ValueError(f"hook {point.name!r} has no token axis; token indices do not apply")
    index = torch.as_tensor(tokens, dtype=torch.long).flatten()
    if index.numel() == 0:
        raise ValueError("tokens= is an empty index")
    return index


# -- applying the edit ----------------------------------------------------------------------------


def _splice(
    value: Any, module_envoy: Envoy, tokens: slice | torch.Tensor | None, token_major: bool
) -> Any:
    """``value`` (a tensor or a block's ``(h, ...)`` tuple) with the selected tokens passed
    through the mounted module (called with ``hook=True`` so its internals are observable)."""
    hidden = first_output(value)
    batch_major = hidden.transpose(0, 1) if token_major else hidden
    if tokens is None:
        new = module_envoy(batch_major, hook=True)
    else:
        index = tokens if isinstance(tokens, slice) else tokens.to(batch_major.device)
        new = batch_major.clone()
        new[:, index] = module_envoy(batch_major[:, index], hook=True)
    if token_major:
        new = new.transpose(0, 1)
    if isinstance(value, tuple):
        return (new, *value[1:])
    return new


def _record_edit(
    model: VisionModel,
    site_envoy: Envoy,
    module_envoy: Envoy,
    read: str,
    tokens: slice | torch.Tensor | None,
    token_major: bool,
) -> None:
    # nnsight stores this block's code and replays it on every later trace of ``model``.
    with model.edit(inplace=True):
        if read == "input":
            site_envoy.input = _splice(site_envoy.input, module_envoy, tokens, token_major)
        else:
            site_envoy.output = _splice(site_envoy.output, module_envoy, tokens, token_major)


@dataclass(eq=False)
class Steering:
    """An active steering edit on a model. ``remove()`` (or leaving its ``with`` block) takes
    the edit out and unmounts the module; the model is then exactly what it was.

    Inside a trace, the mounted module's values are at ``handle.envoy.<hook>.output``
    (also reachable as ``model.<site>.<name>``, e.g. ``model.blocks[1].sae``).
    """

    model: VisionModel = field(repr=False)
    site: SteeringSite = field(repr=False)
    module: torch.nn.Module
    envoy: Envoy = field(repr=False)
    name: str
    _edit: Any = field(repr=False)
    _parent: Envoy = field(repr=False)
    removed: bool = False
    concepts: dict[str, int] = field(default_factory=dict)
    """Concept words given as latents, and the latent each resolved to."""

    @property
    def hook(self) -> str:
        return self.site.point.name

    @property
    def active(self) -> bool:
        """Whether the edit is still stored on the model (``clear_edits()`` also drops it)."""
        return not self.removed and any(e is self._edit for e in self.model._edits)

    def remove(self) -> None:
        """Take the edit out and unmount the module (idempotent)."""
        if self.removed:
            return
        self.model._edits = [e for e in self.model._edits if e is not self._edit]
        _unmount(self._parent, self.name, self.envoy)
        self.removed = True

    def __repr__(self) -> str:
        state = "removed" if self.removed else ("active" if self.active else "cleared")
        words = "".join(f", {word!r} -> latent {j}" for word, j in self.concepts.items())
        return (
            f"Steering({self.hook!r} as {self.name!r}, {self.module.extra_repr()}{words}, {state})"
        )

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


_MOUNT_COUNTER = itertools.count()


def _mount(parent: Envoy, base: str, module: torch.nn.Module) -> tuple[str, Envoy]:
    """Mount ``module`` as a standalone child envoy of ``parent`` (as nnsight mounts its own
    ``generator``): reachable as ``parent.<name>`` and instrumented by the model's interleaver,
    but never added to the torch module, whose structure and ``state_dict`` stay untouched."""
    name = base
    while name in parent.__dict__ or hasattr(parent._module, name):
        name = f"{base}_{next(_MOUNT_COUNTER)}"
    envoy = Envoy(
        module, path=f"{parent.path}.{name}", interleaver=parent.interleaver, parent=parent
    )
    parent._children.append(envoy)
    object.__setattr__(parent, name, envoy)
    return name, envoy


def _unmount(parent: Envoy, name: str, envoy: Envoy) -> None:
    parent._children = [c for c in parent._children if c is not envoy]
    if parent.__dict__.get(name) is envoy:
        del parent.__dict__[name]
    for sub in [envoy, *envoy.modules()]:
        if parent.interleaver.envoys.get(id(sub._module)) is sub:
            del parent.interleaver.envoys[id(sub._module)]


def _attach(
    model: VisionModel, site: SteeringSite, module: torch.nn.Module, base_name: str
) -> Steering:
    parent = model.get(site.module_path) if site.module_path else model
    device = model.device
    if device is not None:
        module.to(device)
    name, envoy = _mount(parent, base_name, module)
    before = list(model._edits)
    try:
        _record_edit(model, parent, envoy, site.point.read, site.tokens, site.point.token_major)
    except BaseException:
        model._edits = before
        _unmount(parent, name, envoy)
        raise
    new = [e for e in model._edits if not any(e is b for b in before)]
    return Steering(model, site, module, envoy, name, _edit=new[0], _parent=parent)


def steer(
    model: ModelLike,
    sae: SAE,
    latents: Mapping[int, float],
    mode: SteerMode = "clamp",
    keep_error: bool = False,
    tokens: TokenSpec = "all",
    hook: str | None = None,
    labels: Any = None,
    force: bool = False,
    activity: Any = None,
) -> Steering:
    """Steer ``model`` through SAE latents until the returned handle is removed.

    Args:
        model: the ``VisionModel`` (LLaVA, or any encoder family).
        sae: a SAELens SAE whose ``d_in`` is the hook's width.
        latents: ``{latent index: value}``; ``{}`` splices the plain SAE in. A key may be a
            concept word (``{"pencil": 40.0}``) when ``labels`` are given: it becomes the
            latent ``find_latents`` ranks first for it, recorded in the handle's ``concepts``
            and logged.
        mode: ``"clamp"`` sets the latents to the values on every selected token (the paper),
            ``"add"`` adds the values, ``"scale"`` multiplies by them.
        keep_error: add the SAE error ``x - decode(encode(x))`` back (the paper does not).
        tokens: ``"all"`` (the paper), ``"patches"`` (no CLS / registers), ``"cls"``,
            ``"image"`` (LLaVA: the tokens the projector reads) or token indices.
        hook: canonical hook name; defaults to ``default_hook(model, sae)``.
        labels: the SAE's concept labels (a ``naming.LatentLabels`` or the directory / file
            ``name_latents(...).save`` and ``sae-vlm name`` write), for concept-word keys.
        force: use an SAE whose metadata names another model (``check_attachable``).
        activity: a ``LatentActivity`` of this SAE (``latent_activity``): latents that do not
            fire on the tokens the language model reads are refused, saying where they fire.

    Returns:
        A ``Steering`` handle, also a context manager that removes the edit on exit.
    """
    model = as_vision_model(model)
    from sae_vlm_plugin.pretrained.loading import check_attachable

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    hook = hook or default_hook(model, sae)
    site = resolve_site(model, hook, tokens)
    check_attachable(sae, model, hook, force=force)
    from sae_vlm_plugin.naming.name import resolve_concepts

    by_index, matches = resolve_concepts(latents, labels, int(sae.cfg.d_sae))
    for word, match in matches.items():
        _LOG.info("steering %r -> latent %d (score %.3f)", word, match.latent, match.score)
    edits = _checked_latents(by_index, int(sae.cfg.d_sae))
    if activity is not None:
        for latent in edits:
            activity.check_steerable(latent)
    module = SAESteeringModule(sae, edits, mode, keep_error)
    handle = _attach(model, site, module, "sae")
    handle.concepts = {word: match.latent for word, match in matches.items()}
    return handle


def _checked_latents(latents: Mapping[Any, Any], d_sae: int) -> dict[int, float]:
    """``latents`` as ``{int index: float value}``, refusing non-integral or out-of-range
    indices (``1.5`` would silently become latent 1, ``True`` latent 1) and non-finite values
    (NaN activations, empty generations)."""
    edits = {}
    for key, value in latents.items():
        try:
            if isinstance(key, bool):
                raise TypeError
            index = operator.index(key)
        except TypeError:
            raise ValueError(
                f"latent index {key!r} is not an integer; give latents as {{index: value}}"
            ) from None
        if not 0 <= index < d_sae:
            raise ValueError(f"latent index {index} is out of range for an SAE with d_sae={d_sae}")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"latent {index}: the value {value!r} is not a finite number")
        edits[index] = number
    return edits


def steer_direction(
    model: ModelLike,
    vector: torch.Tensor,
    hook: str,
    alpha: float = 1.0,
    tokens: TokenSpec = "all",
) -> Steering:
    """Add ``alpha * vector`` at ``hook`` (DiffMean steering) through the same edit mechanism."""
    model = as_vision_model(model)
    site = resolve_site(model, hook, tokens)
    if not math.isfinite(float(alpha)):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    if vector.ndim != 1 or vector.shape[0] != site.point.d_model:
        raise ValueError(
            f"the steering vector has shape {tuple(vector.shape)}, but hook {hook!r} has width "
            f"{site.point.d_model}"
        )
    return _attach(model, site, DirectionSteeringModule(vector, alpha), "direction")


# -- generation -----------------------------------------------------------------------------------


def generate(model: ModelLike, **kwargs: Any) -> torch.Tensor:
    """``LlavaForConditionalGeneration.generate(**kwargs)`` run through nnsight, so every active
    steering edit applies. Returns the token ids (prompt + completion).

    To read values during generation, trace it instead:
    ``with model.trace(**inputs, fn=model.source_module.generate, max_new_tokens=8) as tr:``.
    """
    model = as_vision_model(model)
    if not model.family.generates_text:
        raise ValueError(
            f"{model.model_name} is a {model.family.name} encoder and cannot generate text: "
            "steer its forward pass with model.trace(...) instead"
        )
    if model._edits and kwargs.get("pixel_values") is None:
        raise ValueError(
            "steering edits the vision tower, which a generation without pixel_values never "
            "runs: pass pixel_values (or remove the steering)"
        )
    with torch.no_grad():
        source: Any = model.source_module
        ids: torch.Tensor = model.trace(fn=source.generate, trace=False, **kwargs)
    return ids


# -- DiffMean -------------------------------------------------------------------------------------


def _pixels(model: VisionModel, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    return model.preprocess(list(images))


def mean_activation(
    model: VisionModel,
    hook: str,
    images: Sequence[Image.Image] | torch.Tensor,
    tokens: TokenSpec = "all",
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean of ``hook``'s activation over images and the selected tokens, ``(d,)``."""
    site = resolve_site(model, hook, tokens)
    pixels = _pixels(model, images)
    if pixels.shape[0] == 0:
        raise ValueError("no images given")
    total: torch.Tensor | None = None
    count = 0
    for start in range(0, pixels.shape[0], batch_size):
        # An active steering edit must be served, so no early stop while one is stored.
        batch = pixels[start : start + batch_size]
        value = model.capture(batch, [hook], stop=not model._edits)[hook].float()
        if site.point.has_tokens:
            if site.tokens is not None:
                value = value[:, site.tokens]
            value = value.reshape(-1, value.shape[-1])
        part = value.sum(0)
        total = part if total is None else total + part
        count += value.shape[0]
    assert total is not None
    return total / count


def diffmean_vector(
    model: ModelLike,
    hook: str,
    concept_images: Sequence[Image.Image] | torch.Tensor,
    other_images: Sequence[Image.Image] | torch.Tensor,
    tokens: TokenSpec = "all",
    batch_size: int = 32,
) -> torch.Tensor:
    """DiffMean (paper Table 2 baseline): mean activation over the concept images minus the
    mean over the other images, each averaged over every selected token. Apply it with
    ``steer_direction(model, v, hook, alpha)``."""
    model = as_vision_model(model)
    concept = mean_activation(model, hook, concept_images, tokens, batch_size)
    other = mean_activation(model, hook, other_images, tokens, batch_size)
    return concept - other


__all__ = [
    "DirectionSteeringModule",
    "SAESteeringModule",
    "Steering",
    "SteeringSite",
    "default_hook",
    "diffmean_vector",
    "generate",
    "mean_activation",
    "resolve_site",
    "steer",
    "steer_direction",
]
