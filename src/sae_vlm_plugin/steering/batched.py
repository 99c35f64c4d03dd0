"""Many steering edits in one generation: each row of the batch carries its own edit.

A census of thousands of latents cannot afford one ``generate`` per latent, prompt and image.
``generate_rows`` asks one prompt of a whole batch of rows at once; row ``r`` sees, at the
steered hook and on the selected tokens,

    x'_r = decode(f_r)  with f_r = encode(x_r), f_r[k_r] = v_r     (a latent clamp, as ``steer``)
    x'_r = decode(encode(x_r)) + d_r                               (a direction after the SAE)
    x'_r = x_r + d_r                                               (a direction, no SAE: DiffMean)
    x'_r = x_r                                                     (unsteered)

through the same nnsight edit mechanism as ``steer`` (one edit for the batch), so row ``r``'s
answer equals the answer of one ``generate`` under the equivalent single edit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sae_vlm_plugin.steering.edits import _attach, generate, resolve_site
from sae_vlm_plugin.steering.evaluation import format_prompt

if TYPE_CHECKING:
    from PIL import Image
    from sae_lens import SAE

    from sae_vlm_plugin.model import VisionModel


@dataclass(frozen=True)
class RowEdit:
    """One row's edit: clamp ``latent`` to ``value`` (``latent=None``: no clamp), then add
    ``direction``; ``through_sae=False`` skips the SAE (the direction adds to the raw
    activation). ``RowEdit(through_sae=False)`` is the unsteered model."""

    latent: int | None = None
    value: float = 0.0
    direction: Tensor | None = None
    through_sae: bool = True


class RowSteeringModule(torch.nn.Module):
    """The per-row edits of one batch (see the module docstring); observable at
    ``hook_sae_acts`` (codes) and ``hook_out``."""

    latents: Tensor
    values: Tensor
    directions: Tensor
    through_sae: Tensor

    def __init__(self, sae: SAE, edits: Sequence[RowEdit], d_model: int) -> None:
        super().__init__()
        self.__dict__["sae"] = sae
        self.n_rows = len(edits)
        self.register_buffer(
            "latents", torch.tensor([-1 if e.latent is None else e.latent for e in edits])
        )
        self.register_buffer("values", torch.tensor([e.value for e in edits]))
        directions = torch.zeros(len(edits), d_model)
        for row, edit in enumerate(edits):
            if edit.direction is not None:
                directions[row] = edit.direction.float()
        self.register_buffer("directions", directions)
        self.register_buffer("through_sae", torch.tensor([e.through_sae for e in edits]))
        self.hook_sae_acts = torch.nn.Identity()
        self.hook_out = torch.nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != self.n_rows:
            raise ValueError(f"a batch of {x.shape[0]} rows for {self.n_rows} row edits")
        sae: Any = self.sae
        param = next(sae.parameters())
        x_in = x.to(device=param.device, dtype=param.dtype)
        codes = self.hook_sae_acts(sae.encode(x_in))
        rows = torch.nonzero(self.latents >= 0).flatten()
        if len(rows):
            codes = codes.clone()
            values = self.values[rows].to(codes.dtype).unsqueeze(1)
            codes[rows, :, self.latents[rows]] = values.expand(-1, codes.shape[1])
        recons = sae.decode(codes)
        through = self.through_sae.view(-1, *([1] * (x.ndim - 1)))
        out = torch.where(through, recons, x_in)
        directions = self.directions.to(out.dtype).view(x.shape[0], *([1] * (x.ndim - 2)), -1)
        out = self.hook_out(out + directions)
        return out.to(device=x.device, dtype=x.dtype)


def generate_rows(
    model: VisionModel,
    processor: Any,
    sae: SAE,
    prompt: str,
    images: Sequence[Image.Image],
    rows: Sequence[tuple[int, RowEdit]],
    hook: str,
    tokens: Any = "image",
    batch_size: int = 256,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers to ``prompt``, one per ``(image index, RowEdit)`` of ``rows``, generated
    ``batch_size`` rows at a time; only the new tokens, decoded without special tokens."""
    site = resolve_site(model, hook, tokens)
    dtype = next(model.source_module.parameters()).dtype
    first = processor(
        images=[images[0]], text=[format_prompt(processor, prompt)], return_tensors="pt"
    )
    pixels = processor.image_processor(list(images), return_tensors="pt")["pixel_values"].to(dtype)
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        n = len(chunk)
        inputs = {
            key: value.expand(n, *value.shape[1:])
            for key, value in first.items()
            if key != "pixel_values"
        }
        inputs["pixel_values"] = pixels[torch.tensor([image for image, _ in chunk])]
        module = RowSteeringModule(sae, [edit for _, edit in chunk], site.point.d_model)
        with _attach(model, site, module, "rows"):
            ids = generate(model, **inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, first["input_ids"].shape[1] :]
        answers += [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
    return answers
