"""Loading a registered SAE with what it needs to attach, checking it fits a model, exporting it.

``load_sae(release, sae_id)`` goes through SAELens (``SAE.from_pretrained``), so it returns the
same SAE a plain SAELens user gets, plus the registry's view of it: which model, hook and token
selection it belongs to. ``check_attachable`` refuses, before anything runs, an SAE whose hook a
model lacks or whose width differs from that hook's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sae_vlm_plugin.hooks import HookPoint
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
    sae_id: str
    model_name: str
    """The model it was trained on (hub id)."""
    metadata: VisionMetadata
    """Family, hook, tokens, training architecture, k, expansion, layer, training data."""
    verified: bool
    """Whether the registry entry was checked against the files it names."""
    note: str | None = None
    """What was not verified, or other caveats."""

    @property
    def hook_name(self) -> str:
        return self.metadata.hook_name

    @property
    def tokens(self) -> TokenSelection:
        """The token selection it was trained on."""
        return TokenSelection.parse(self.metadata.tokens)

    def check_attachable(self, model: VisionModel) -> HookPoint:
        """``check_attachable(self.sae, model, self.hook_name)``."""
        return check_attachable(self.sae, model, self.hook_name)


def load_sae(
    release: str,
    sae_id: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    force_download: bool = False,
) -> PretrainedSAE:
    """Load SAE ``sae_id`` of a registered release through ``SAE.from_pretrained``.

    An unknown release or id raises ValueError listing the valid ones, closest first. Works
    offline from local folders, ``file://`` URLs and the Hugging Face cache (``HF_HUB_OFFLINE=1``).
    """
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
        metadata=entry.metadata,
        verified=entry.verified,
        note=entry.note if entry.note is not None else spec.note,
    )


def check_attachable(sae: SAE, model: VisionModel, hook_name: str | None = None) -> HookPoint:
    """The hook point of ``model`` that ``sae`` attaches to, after checking that it fits.

    ``hook_name`` defaults to ``sae.cfg.metadata.hook_name``. Raises ValueError - without running
    the model - if the model has no such hook (listing its hooks), if the hook's width is not the
    SAE's ``d_in``, or if the SAE's token selection (``cfg.metadata.tokens``) cannot apply to
    that hook (``cls`` on a family without a CLS token). Model ids are not compared: an SAE may
    be applied to a fine-tune of the model it was trained on.
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
    return point


def export_sae(release: str, sae_id: str, out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Write a registered SAE in SAELens format (``cfg.json`` + ``sae_weights.safetensors``,
    vision metadata in ``cfg.json``), loadable by plain ``SAE.load_from_disk``. Returns the
    folder."""
    loaded = load_sae(release, sae_id, dtype=dtype)
    out = Path(out_dir)
    loaded.sae.save_model(out)
    return out
