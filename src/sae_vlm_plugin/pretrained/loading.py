"""Loading a registered SAE with what it needs to attach, checking it fits a model, exporting it.

``load_sae(release, sae_id)`` goes through SAELens (``SAE.from_pretrained``), so it returns the
same SAE a plain SAELens user gets, plus the registry's view of it: which model, hook and token
selection it belongs to; ``load_sae(directory)`` reads an SAE saved in SAELens format (``cfg.json``
+ ``sae_weights.safetensors``, e.g. ``sae-vlm train``'s ``RUN/final``) with the same account taken
from its ``cfg.json`` metadata. ``check_attachable`` refuses, before anything runs, an SAE whose
hook a model lacks, whose width differs from that hook's, or that was trained on another model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_vlm_plugin.devices import check_device
from sae_vlm_plugin.hooks import HookPoint
from sae_vlm_plugin.json_files import read_json
from sae_vlm_plugin.pretrained import registry
from sae_vlm_plugin.pretrained.schema import VisionMetadata
from sae_vlm_plugin.tokens import TokenSelection

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_vlm_plugin.model import VisionModel


@dataclass(frozen=True, eq=False)
class PretrainedSAE:
    """A loaded SAE and the registry's account of it."""

    sae: SAE
    """The SAELens SAE (its ``cfg.metadata`` holds the same vision metadata)."""
    release: str
    """The release, or the directory it was loaded from."""
    sae_id: str
    """Its id in the release; empty for a directory."""
    model_name: str
    """The model it was trained on (hub id or local path; empty if its metadata names none)."""
    metadata: VisionMetadata
    """Family, hook, tokens, training architecture, k, expansion, layer, training data: the
    SAE's ``cfg.metadata``, where the converter completed what a registry entry left out."""
    verified: bool
    """Whether the registry entry was checked against the files it names."""
    note: str | None = None
    """What was not verified, or other caveats."""

    @property
    def hook_name(self) -> str:
        return self.metadata.hook_name or ""

    @property
    def tokens(self) -> TokenSelection:
        """The token selection it was trained on."""
        return TokenSelection.parse(self.metadata.tokens or "cls")

    def check_attachable(self, model: VisionModel, *, force: bool = False) -> HookPoint:
        """``check_attachable(self.sae, model, self.hook_name, force=force)``."""
        return check_attachable(self.sae, model, self.hook_name, force=force)


def load_sae(
    release: str | Path,
    sae_id: str | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    force_download: bool = False,
) -> PretrainedSAE:
    """Load SAE ``sae_id`` of a registered release through ``SAE.from_pretrained``, or - with
    no ``sae_id`` - the SAE saved in the directory ``release`` (SAELens format).

    An unknown release or id raises ValueError listing the valid ones, closest first; a
    directory that is missing or holds no SAE raises FileNotFoundError. Works offline from
    local folders, ``file://`` URLs and the Hugging Face cache (``HF_HUB_OFFLINE=1``).
    """
    check_device(device)
    if sae_id is None:
        if not Path(release).expanduser().exists() and str(release) in registry.list_releases():
            ids = registry.get_release(str(release)).sae_ids
            raise ValueError(
                f"{release!r} is a release, not a directory: pass sae_id, one of {ids}"
            )
        return _load_directory(Path(release).expanduser(), device=device, dtype=dtype)
    release = str(release)
    spec = registry.get_release(release)
    entry = spec.sae(sae_id)
    registry.connect_sae_lens()
    from sae_lens import SAE

    sae = SAE.from_pretrained(
        release, sae_id, device=device, dtype=dtype, force_download=force_download
    )
    return PretrainedSAE(
        sae=sae,
        release=release,
        sae_id=sae_id,
        model_name=spec.model,
        metadata=vision_metadata_of(sae),
        verified=entry.verified,
        note=entry.note if entry.note is not None else spec.note,
    )


SAE_FILES = ("cfg.json", "sae_weights.safetensors")
"""What a directory in SAELens format holds (``SAE.save_model``, ``sae-vlm train``'s final/)."""


def check_sae_directory(path: Path) -> None:
    """Raise FileNotFoundError, saying what is missing, unless ``path`` holds an SAE in SAELens
    format: a run directory or a typo would otherwise fail deep inside SAELens."""
    if not path.is_dir():
        raise FileNotFoundError(f"no such SAE directory: {path}")
    missing = [name for name in SAE_FILES if not (path / name).is_file()]
    if missing:
        final = path / "final"
        hint = f"; did you mean {final} (a training run's SAE)?" if final.is_dir() else ""
        raise FileNotFoundError(
            f"{path} is not an SAE directory: it has no {' or '.join(missing)} (SAELens format: "
            f"{' + '.join(SAE_FILES)}){hint}"
        )


def _load_directory(path: Path, *, device: str, dtype: str) -> PretrainedSAE:
    """``load_sae(directory)``: the SAE and its ``cfg.json`` metadata, unverified (no registry
    entry vouches for it)."""
    check_sae_directory(path)
    sae = _read_sae_directory(path, device=device, dtype=dtype)
    return PretrainedSAE(
        sae=sae,
        release=str(path),
        sae_id="",
        model_name=_meta(sae.cfg.metadata, "model_name") or "",
        metadata=vision_metadata_of(sae),
        verified=False,
        note=f"loaded from the directory {path}, not from a registry entry",
    )


def _read_sae_directory(path: Path, *, device: str, dtype: str) -> SAE:
    """``SAE.load_from_disk(path)``, with files that are not what SAELens wrote (a truncated or
    hand-edited ``cfg.json``, weights of another shape or architecture, a corrupt safetensors
    file) refused by a ValueError naming the file, not SAELens' KeyError, TypeError,
    RuntimeError or SafetensorError."""
    from sae_lens import SAE
    from sae_lens.registry import SAE_CLASS_REGISTRY
    from safetensors import SafetensorError  # type: ignore[attr-defined]

    cfg_path = path / SAE_FILES[0]
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected SAELens' JSON object, got {type(cfg).__name__}")
    for key in ("d_in", "d_sae"):
        if type(cfg.get(key)) is not int or cfg[key] < 1:
            raise ValueError(f"{cfg_path}: {key} must be a positive integer, got {cfg.get(key)!r}")
    architecture = cfg.get("architecture")
    if architecture is not None and architecture not in SAE_CLASS_REGISTRY:
        raise ValueError(
            f"{cfg_path}: unknown architecture {architecture!r}; SAELens knows "
            f"{', '.join(SAE_CLASS_REGISTRY)}"
        )
    try:
        return SAE.load_from_disk(path, device=device, dtype=dtype)
    except SafetensorError as error:
        raise ValueError(
            f"{path / SAE_FILES[1]} is not a sound safetensors file: {error}"
        ) from None
    except RuntimeError as error:
        if "loading state_dict" not in str(error):
            raise
        described = f"{architecture or 'standard'}, d_in={cfg['d_in']}, d_sae={cfg['d_sae']}"
        raise ValueError(
            f"{path}: {SAE_FILES[1]} does not hold the SAE {SAE_FILES[0]} describes "
            f"({described}): {error}"
        ) from None


def vision_metadata_of(sae: SAE) -> VisionMetadata:
    """The vision metadata in ``sae.cfg.metadata`` (a key it lacks: None; the training
    architecture defaults to the SAELens architecture it runs as)."""
    meta = sae.cfg.metadata
    fractions = _meta(meta, "group_fractions")
    return VisionMetadata(
        family=_meta(meta, "family"),
        hook_name=_meta(meta, "hook_name"),
        tokens=_meta(meta, "tokens"),
        training_architecture=_meta(meta, "training_architecture") or sae.cfg.architecture(),
        training_data=_meta(meta, "training_data"),
        layer=_meta(meta, "layer"),
        k=_meta(meta, "k"),
        expansion_factor=_meta(meta, "expansion_factor"),
        group_fractions=tuple(fractions) if fractions else None,
    )


def _meta(metadata: Any, name: str) -> Any:
    """``metadata.name``; None where SAELens' metadata lacks the key."""
    return getattr(metadata, name, None)


def check_attachable(
    sae: SAE, model: VisionModel, hook_name: str | None = None, *, force: bool = False
) -> HookPoint:
    """The hook point of ``model`` that ``sae`` attaches to, after checking that it fits.

    ``hook_name`` defaults to ``sae.cfg.metadata.hook_name``. Raises ValueError - without running
    the model - if the model has no such hook (listing its hooks), if the hook's width is not the
    SAE's ``d_in``, if the SAE's token selection (``cfg.metadata.tokens``) cannot apply to that
    hook (``cls`` on a family without a CLS token), or - unless ``force`` - if the SAE was
    trained on another model (``check_same_model``). ``force=True`` applies an SAE to a fine-tune
    or a renamed copy of its model.
    """
    from sae_vlm_plugin.activations import resolve_hooks

    hook = hook_name or sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError("the SAE's metadata names no hook_name; pass hook_name=")
    point = model.hook_point(hook)
    if point.d_model != sae.cfg.d_in:
        raise ValueError(
            f"the SAE reads vectors of width d_in={sae.cfg.d_in}, but {model.model_name}'s hook "
            f"{hook!r} has width {point.d_model}: this SAE was trained on a different model "
            f"({sae.cfg.metadata.model_name or 'unknown'}) or hook"
        )
    tokens = sae.cfg.metadata.tokens
    if tokens:
        # "random_2@seed0" (TokenSelection.describe) names the same selection as "random_2".
        resolve_hooks(model, [hook], TokenSelection.parse(tokens.split("@")[0]))
    if not force:
        check_same_model(sae, model)
    return point


def check_same_model(sae: SAE, model: VisionModel) -> None:
    """Raise ValueError, naming both, if ``sae.cfg.metadata`` names a family or a model other
    than ``model``'s: an SAE of another model of the same width runs but reconstructs nothing
    (a CLIP SAE on SigLIP: R^2 -2).

    Names are compared after resolving local paths (``models/clip`` and its absolute path are
    one model) and toy names; a hub id and a local copy of it differ. An SAE steers LLaVA when
    it names that LLaVA or the encoder its vision tower came from (``LlavaFamily.tower_names``).
    A model built from
    a module without a name (``VisionModel(module)``), or an SAE trained on one (its metadata
    then records the class name, e.g. ``CLIPVisionModel``), is compared by family only.
    """
    family = _meta(sae.cfg.metadata, "family")
    trained_on = _meta(sae.cfg.metadata, "model_name")
    if model.family.generates_text:
        towers = model.family.tower_names(model.source_module, model.model_name, _model_key)
        if family in (None, "", "clip", "llava") and (
            not trained_on
            or _is_class_name(str(trained_on))
            or not _has_name(model)
            or _model_key(str(trained_on)) in {_model_key(name) for name in towers}
        ):
            return
    elif (not family or family == model.family.name) and (
        not trained_on
        or _is_class_name(str(trained_on))
        or not _has_name(model)
        or _model_key(str(trained_on)) == _model_key(model.model_name)
    ):
        return
    raise ValueError(
        f"the SAE was trained on {trained_on or 'an unnamed model'} ({family or 'family unknown'})"
        f", but the model is {model.model_name} ({model.family.name}): an SAE reads only the "
        "model it was trained on, even at the same width. Pass --force (force=True) if it is "
        "the same model under another name or a fine-tune of it"
    )


def _has_name(model: VisionModel) -> bool:
    """Whether the model has a name to compare: not just the class name of a module given
    without one."""
    return model.model_name != type(model.source_module).__name__


def _is_class_name(name: str) -> bool:
    """Whether a recorded model name is a bare class name (``CLIPVisionModel``): what
    ``VisionModel(module)`` calls a module given without a name. No hub id or path looks so."""
    return name.isidentifier() and name[:1].isupper() and not name.isupper()


def _model_key(name: str) -> str:
    """A model name to compare: the resolved path of a local directory (or toy name), else the
    name itself (a hub id)."""
    from sae_vlm_plugin.families.toy_models import resolve_model_name

    path = Path(resolve_model_name(name)).expanduser()
    return str(path.resolve()) if path.exists() else name


def export_sae(release: str, sae_id: str, out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Write a registered SAE in SAELens format (``cfg.json`` + ``sae_weights.safetensors``,
    vision metadata in ``cfg.json``), loadable by plain ``SAE.load_from_disk``. Returns the
    folder."""
    loaded = load_sae(release, sae_id, dtype=dtype)
    out = Path(out_dir)
    loaded.sae.save_model(out)
    return out
