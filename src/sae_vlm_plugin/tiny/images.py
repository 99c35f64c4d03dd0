"""Synthetic concept images with known ground truth: shapes x colours x textures.

Each image shows one shape in one colour with one fill texture on a noisy grey background,
jittered in position and size. The labels make results checkable (a latent whose top images
share a concept is monosemantic by construction), which is what the offline demo relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("square", "circle", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}
TEXTURES = ("solid", "stripes", "dots")


@dataclass(frozen=True)
class Concept:
    shape: str
    colour: str
    texture: str = "solid"

    @property
    def label(self) -> str:
        return f"{self.colour}_{self.shape}_{self.texture}"


def concept_image(concept: Concept, size: int = 32, seed: int = 0) -> Image.Image:
    """One RGB image of ``concept``; ``seed`` jitters background, position and size."""
    if (
        concept.shape not in SHAPES
        or concept.colour not in COLOURS
        or concept.texture not in TEXTURES
    ):
        raise ValueError(
            f"unknown concept {concept}; shapes {SHAPES}, colours {tuple(COLOURS)}, textures {TEXTURES}"
        )
    rng = np.random.default_rng(seed)
    background = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background, mode="RGB")
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    extent = int(size * rng.uniform(0.4, 0.65))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent, size=2))
    box = (x0, y0, x0 + extent, y0 + extent)
    if concept.shape == "square":
        draw.rectangle(box, fill=255)
    elif concept.shape == "circle":
        draw.ellipse(box, fill=255)
    else:
        draw.polygon(
            [(x0, y0 + extent), (x0 + extent // 2, y0), (x0 + extent, y0 + extent)], fill=255
        )
    fill = np.zeros((size, size, 3), dtype=np.uint8) + np.array(
        COLOURS[concept.colour], dtype=np.uint8
    )
    if concept.texture != "solid":
        yy, xx = np.mgrid[0:size, 0:size]
        period = max(size // 8, 2)
        if concept.texture == "stripes":
            light = (yy // (period // 2 or 1)) % 2 == 0
        else:
            light = ((yy % period) < period // 2) & ((xx % period) < period // 2)
        fill[light] = (fill[light] // 3 + 170).astype(np.uint8)
    image.paste(Image.fromarray(fill, mode="RGB"), (0, 0), mask)
    return image


def concept_images(
    n: int, size: int = 32, textures: tuple[str, ...] = TEXTURES, seed: int = 0
) -> tuple[list[Image.Image], list[Concept]]:
    """``n`` images cycling through every (shape, colour, texture) combination."""
    combos = [Concept(s, c, t) for s, c, t in product(SHAPES, COLOURS, textures)]
    concepts = [combos[i % len(combos)] for i in range(n)]
    images = [
        concept_image(concept, size, seed=seed * 1_000_003 + i)
        for i, concept in enumerate(concepts)
    ]
    return images, concepts
