"""Where an SAE's latents fire on the tokens a vision-language model reads.

LLaVA's projector reads only some tokens of the tower block it takes (the ``"default"``
strategy drops CLS), so a latent is picked, scaled and judged for steering on those tokens
alone. ``latent_activity`` encodes a hook's tokens on a set of images and keeps, per latent:

- ``read_max``: its largest activation on a read token, the unit clamp multiples are given in
  (``2x`` = twice the most the latent ever writes into what the language model sees);
- ``read_share = sum(read activations) / sum(all activations)``: how much of its activity the
  language model can see at all (a CLS-only latent has ``read_share`` near 0);
- ``read_images`` / ``unread_images``: on how many images it fires on a read / unread token;
- ``image_codes``: each image's mean code over the read tokens (sparse), for choosing latents.

A latent is *steerable* when it fires on a read token of at least one image and at least
``MIN_READ_SHARE`` of its activation lands on read tokens; ``check_steerable`` refuses the
others, saying where they fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sae_vlm_plugin.model import ModelLike, as_vision_model

if TYPE_CHECKING:
    from sae_lens import SAE

    from sae_vlm_plugin.images import ImageInput
    from sae_vlm_plugin.model import VisionModel

MIN_READ_SHARE = 0.05
"""Smallest fraction of a latent's activation mass on read tokens for it to count as steerable."""


@dataclass(frozen=True)
class LatentActivity:
    """Per-latent activity of an SAE on the tokens a model reads (see the module docstring)."""

    hook: str
    read_tokens: slice
    """Token positions of the hook the language model reads."""
    unread_name: str
    """What the unread tokens are, in words (``"CLS"``; ``""`` when every token is read)."""
    n_images: int
    read_max: Tensor
    """``(d_sae,)`` largest activation on a read token (0 if never active there)."""
    read_share: Tensor
    """``(d_sae,)`` fraction of the activation mass on read tokens (NaN if never active)."""
    read_images: Tensor
    """``(d_sae,)`` images with the latent active on at least one read token."""
    unread_images: Tensor
    """``(d_sae,)`` images with the latent active on an unread token."""
    image_codes: Tensor
    """Sparse ``(n_images, d_sae)``: mean code over each image's read tokens."""

    @property
    def steerable(self) -> Tensor:
        """``(d_sae,)`` bool: fires on read tokens and ``read_share >= MIN_READ_SHARE``."""
        return (self.read_images > 0) & (torch.nan_to_num(self.read_share) >= MIN_READ_SHARE)

    def where(self, latent: int) -> str:
        """Where ``latent`` fires, in words."""
        share = float(self.read_share[latent])
        text = f"active on read tokens of {int(self.read_images[latent])} of {self.n_images} images"
        if share == share:
            text += f" ({share:.1%} of its activation)"
        if self.unread_name:
            text += f", on the {self.unread_name} token of {int(self.unread_images[latent])}"
        return text

    def check_steerable(self, latent: int, purpose: str = "steering") -> None:
        """Raise ValueError, saying where it fires, when ``latent`` is not steerable."""
        if bool(self.steerable[latent]):
            return
        dropped = (
            f"; the language model never reads the {self.unread_name} token"
            if self.unread_name
            else ""
        )
        n_ok = int(self.steerable.sum())
        raise ValueError(
            f"latent {latent} cannot be used for {purpose}: it is {self.where(latent)}{dropped}, "
            f"so clamping it barely changes what the language model sees. {n_ok} of "
            f"{len(self.read_max)} latents fire on read tokens (at least {MIN_READ_SHARE:.0%} "
            "of their activation)"
        )


def read_tokens_of(model: VisionModel, hook: str) -> tuple[slice, str]:
    """The token positions of ``hook`` that ``model``'s language model reads, and the name of
    the others: LLaVA's tower blocks under its select strategy; every token elsewhere."""
    family = model.family
    if family.generates_text and hook.startswith(family.tower_prefix + "blocks."):
        read = family.read_tokens(model.source_module)
        return read, "" if read == slice(None) else "CLS"
    return slice(None), ""


def latent_activity(
    sae: SAE,
    model: ModelLike,
    images: ImageInput,
    hook: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> LatentActivity:
    """Encode ``hook``'s tokens of every readable image of ``images`` (anything
    ``open_image_source`` takes) with ``sae`` and measure where each latent fires (``hook``
    defaults to the steering hook of ``sae`` on ``model``)."""
    model = as_vision_model(model)
    from sae_vlm_plugin.metrics.sae_activations import _image_batches
    from sae_vlm_plugin.steering.edits import default_hook

    hook = hook or default_hook(model, sae)
    if not model.hook_point(hook).has_tokens:
        raise ValueError(f"hook {hook!r} holds one vector per image; it has no tokens to read")
    read, unread_name = read_tokens_of(model, hook)
    d_sae = int(sae.cfg.d_sae)
    read_max = torch.zeros(d_sae)
    mass = torch.zeros(2, d_sae, dtype=torch.float64)  # read, unread
    counts = torch.zeros(2, d_sae, dtype=torch.long)
    image_codes = []
    param = next(sae.parameters())
    batches = _image_batches(model, images, hook, "all", batch_size, progress, True)
    for image_ids, rows, _ in batches:
        hidden = rows.reshape(len(image_ids), -1, rows.shape[-1])  # every token, in order
        with torch.no_grad():
            codes = sae.encode(hidden.to(device=param.device, dtype=param.dtype)).float().cpu()
        unread_mask = torch.ones(codes.shape[1], dtype=torch.bool)
        unread_mask[read] = False
        read_codes, unread_codes = codes[:, read], codes[:, unread_mask]
        read_max = torch.maximum(read_max, read_codes.amax(dim=(0, 1)))
        mass[0] += read_codes.sum(dim=(0, 1)).double()
        mass[1] += unread_codes.sum(dim=(0, 1)).double()
        counts[0] += (read_codes > 0).any(dim=1).sum(dim=0)
        counts[1] += (unread_codes > 0).any(dim=1).sum(dim=0)
        image_codes.append(read_codes.mean(dim=1).to_sparse())
    total = mass.sum(dim=0)
    share = torch.where(total > 0, mass[0] / total.clamp_min(1e-30), torch.nan).float()
    codes_by_image = torch.cat(image_codes).coalesce()
    return LatentActivity(
        hook=hook,
        read_tokens=read,
        unread_name=unread_name,
        n_images=int(codes_by_image.shape[0]),
        read_max=read_max,
        read_share=share,
        read_images=counts[0],
        unread_images=counts[1],
        image_codes=codes_by_image,
    )
