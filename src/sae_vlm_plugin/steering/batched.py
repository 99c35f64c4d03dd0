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

The rows share a few base images, so the tower runs once per distinct image: the edit fans
the steered block's output out to one row per edit (``image_index``), and the blocks after it,
the projector and the language model see the full batch. (Where LLaVA reads several tower
blocks, one of them maybe before the steered one, every row carries its own image instead.)
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
    """The per-row edits of one batch (see the module docstring) on the ``tokens`` positions;
    input row ``image_index[r]`` becomes output row ``r``. Observable at ``hook_sae_acts``
    (codes) and ``hook_out``."""

    latents: Tensor
    values: Tensor
    directions: Tensor
    through_sae: Tensor
    image_index: Tensor

    def __init__(
        self,
        sae: SAE,
        edits: Sequence[RowEdit],
        d_model: int,
        image_index: Tensor,
        tokens: slice = slice(None),
    ) -> None:
        super().__init__()
        if len(image_index) != len(edits):
            raise ValueError(f"{len(image_index)} image indices for {len(edits)} row edits")
        self.__dict__["sae"] = sae
        self.tokens = tokens
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
        self.register_buffer("image_index", image_index.long())
        self.hook_sae_acts = torch.nn.Identity()
        self.hook_out = torch.nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        sae: Any = self.sae
        param = next(sae.parameters())
        x = x[self.image_index.to(x.device)]
        x_in = x[:, self.tokens].to(device=param.device, dtype=param.dtype)
        codes = self.hook_sae_acts(sae.encode(x_in))
        rows = torch.nonzero(self.latents >= 0).flatten()
        if len(rows):
            codes = codes.clone()
            values = self.values[rows].to(codes.dtype).unsqueeze(1)
            codes[rows, :, self.latents[rows]] = values.expand(-1, codes.shape[1])
        recons = sae.decode(codes)
        through = self.through_sae.view(-1, 1, 1)
        edited = torch.where(through, recons, x_in) + self.directions.to(recons.dtype)[:, None]
        out = x.clone()
        out[:, self.tokens] = self.hook_out(edited).to(device=x.device, dtype=x.dtype)
        return out


def generate_rows(
    model: VisionModel,
    processor: Any,
    sae: SAE,
    prompt: str,
    images: Sequence[Image.Image],
    rows: Sequence[tuple[int, RowEdit]],
    hook: str,
    batch_size: int = 256,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy answers to ``prompt``, one per ``(image index, RowEdit)`` of ``rows``, each edit
    applied to the tokens of ``hook`` the language model reads, ``batch_size`` rows at a time;
    only the new tokens, decoded without special tokens."""
    from sae_vlm_plugin.steering.activity import read_tokens_of

    site = resolve_site(model, hook, "all")
    if not model.family.generates_text:
        raise ValueError(
            f"{model.model_name} is a {model.family.name} encoder: it generates no text"
        )
    tokens, _ = read_tokens_of(model, hook)
    fan_out = len(model.family.read_blocks(model.source_module)) == 1
    param = next(model.source_module.parameters())
    text = [format_prompt(processor, prompt)]
    first = processor(images=[images[0]], text=text, return_tensors="pt").to(param.device)
    pixels = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    pixels = pixels.to(device=param.device, dtype=param.dtype)
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        image_index = torch.tensor([image for image, _ in chunk], device=param.device)
        inputs = {
            key: value.expand(len(chunk), *value.shape[1:])
            for key, value in first.items()
            if key != "pixel_values"
        }
        if fan_out:
            distinct, image_index = torch.unique(image_index, return_inverse=True)
            inputs["pixel_values"] = pixels[distinct]
        else:
            inputs["pixel_values"] = pixels[image_index]
            image_index = torch.arange(len(chunk), device=param.device)
        edits = [edit for _, edit in chunk]
        module = RowSteeringModule(sae, edits, site.point.d_model, image_index, tokens)
        with _attach(model, site, module, "rows"):
            ids = generate(model, **inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, first["input_ids"].shape[1] :]
        answers += [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
    return answers
