"""The toy concept world: procedural images with known attributes, a taxonomy and captions.

Every image shows one object on a noisy grey background. An object has four attributes:

- ``shape`` (9 values, in 3 families: round, angular, symbol),
- ``colour`` (8 values),
- ``texture`` (4 values: solid, striped, dotted, checkered),
- ``size`` (small, large),

and is jittered in position (up to ``JITTER`` pixels from the centre), extent and background
brightness by a per-image seed. The
taxonomy (``taxonomy()``) is the four-level tree family -> shape -> colour -> texture, so the
lowest common ancestor of two objects is at depth 0 (different families) to 4 (same shape,
colour and texture): the ground truth of the Matryoshka hierarchy analysis (Table A8).
Captions are templated from the attributes (``caption``), e.g. "a small red striped circle";
a partial caption names only some attributes ("a red shape", "a circle").

Everything is deterministic: ``world_images(n, seed)`` gives the same images and objects on
every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from sae_vlm_plugin.metrics.hierarchy import Taxonomy

IMAGE_SIZE = 48
"""Side of every world image, in pixels."""

SHAPE_FAMILIES: dict[str, tuple[str, ...]] = {
    "round": ("circle", "ring", "semicircle"),
    "angular": ("square", "triangle", "diamond"),
    "symbol": ("star", "cross", "arrow"),
}
SHAPES: tuple[str, ...] = tuple(s for family in SHAPE_FAMILIES.values() for s in family)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (240, 225, 30),
    "green": (40, 170, 50),
    "cyan": (40, 215, 225),
    "blue": (35, 60, 220),
    "purple": (135, 45, 200),
    "pink": (250, 130, 200),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
SIZES: tuple[str, ...] = ("small", "large")
SIZE_EXTENTS: dict[str, tuple[float, float]] = {"small": (0.48, 0.6), "large": (0.72, 0.9)}
"""Range of an object's extent, as a fraction of the image side, per size."""
JITTER = 4
"""Largest offset, in pixels, of an object from the image centre along each axis."""
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "texture", "size")
"""Attribute names, in the order ``WorldObject.attributes`` lists their values."""
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "size": SIZES,
}


@dataclass(frozen=True)
class WorldObject:
    """One object of the world; ``label`` names its taxonomy class (size is not a class)."""

    shape: str
    colour: str
    texture: str
    size: str

    def __post_init__(self) -> None:
        for name, value in zip(ATTRIBUTES, self.attributes, strict=True):
            if value not in ATTRIBUTE_VALUES[name]:
                raise ValueError(
                    f"unknown {name} {value!r}; valid: {', '.join(ATTRIBUTE_VALUES[name])}"
                )

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.texture, self.size)

    @property
    def family(self) -> str:
        return next(f for f, shapes in SHAPE_FAMILIES.items() if self.shape in shapes)

    @property
    def label(self) -> str:
        return f"{self.colour}_{self.texture}_{self.shape}"


def all_objects() -> list[WorldObject]:
    """Every combination of attribute values (9 x 8 x 4 x 2 = 576), in a fixed order."""
    return [WorldObject(*values) for values in product(*ATTRIBUTE_VALUES.values())]


def taxonomy() -> Taxonomy:
    """The tree family -> shape -> colour -> texture over every ``WorldObject.label``."""
    from sae_vlm_plugin.metrics.hierarchy import Taxonomy

    mapping = {}
    for shape, colour, texture in product(SHAPES, COLOURS, TEXTURES):
        obj = WorldObject(shape, colour, texture, "small")
        mapping[obj.label] = (obj.family, shape, colour, texture)
    return Taxonomy.from_mapping(mapping)


def caption(obj: WorldObject, mention: Sequence[str] = ATTRIBUTES) -> str:
    """A caption naming the attributes in ``mention``: ``"a small red striped circle"`` for
    all of them, ``"a red shape"`` for colour alone (the noun is "shape" when the shape is not
    mentioned). Word order is always size, colour, texture, noun."""
    unknown = sorted(set(mention) - set(ATTRIBUTES))
    if unknown or not mention:
        raise ValueError(f"mention must be a non-empty subset of {ATTRIBUTES}, got {mention}")
    words = ["a"]
    words += [obj.size] if "size" in mention else []
    words += [obj.colour] if "colour" in mention else []
    words += [obj.texture] if "texture" in mention else []
    words.append(obj.shape if "shape" in mention else "shape")
    return " ".join(words)


def attribute_prompt(attribute: str, value: str) -> str:
    """The one-attribute caption used for zero-shot classification (``"a red shape"``)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; valid: {', '.join(ATTRIBUTES)}")
    values = dict.fromkeys(ATTRIBUTES, "")
    values[attribute] = value
    template = WorldObject(
        values["shape"] or SHAPES[0],
        values["colour"] or next(iter(COLOURS)),
        values["texture"] or TEXTURES[0],
        values["size"] or SIZES[0],
    )
    return caption(template, (attribute,))


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain."""
    return ["a", "shape", *[v for values in ATTRIBUTE_VALUES.values() for v in values]]


def _outline(shape: str, box: tuple[int, int, int, int], draw: ImageDraw.ImageDraw) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        inset = max(2, round(w * 0.3))
        draw.ellipse((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=0)
    elif shape == "semicircle":
        draw.pieslice((x0, y0, x1, y1 + h), 180, 360, fill=255)
    elif shape == "square":
        draw.rectangle(box, fill=255)
    elif shape == "triangle":
        draw.polygon([(x0, y1), (cx, y0), (x1, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "star":
        points = []
        for i in range(10):
            radius = (w / 2) if i % 2 == 0 else (w / 5)
            angle = -np.pi / 2 + i * np.pi / 5
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "cross":
        bar = w / 6
        draw.rectangle((cx - bar, y0, cx + bar, y1), fill=255)
        draw.rectangle((x0, cy - bar, x1, cy + bar), fill=255)
    elif shape == "arrow":
        shaft = h / 6
        head = x0 + w * 0.55
        draw.rectangle((x0, cy - shaft, head, cy + shaft), fill=255)
        draw.polygon([(head, y0), (x1, cy), (head, y1)], fill=255)
    else:  # pragma: no cover - WorldObject validates shapes
        raise ValueError(f"unknown shape {shape!r}")


def _fill(colour: str, texture: str, size: int, phase: tuple[int, int]) -> np.ndarray:
    """The object's paint: its colour, with a darker pattern for non-solid textures."""
    fill = np.zeros((size, size, 3), dtype=np.float32) + np.array(COLOURS[colour], np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    yy, xx = yy + phase[0], xx + phase[1]
    if texture == "striped":
        dark = (yy // 2) % 2 == 0
    elif texture == "dotted":
        dark = ((yy % 5) < 2) & ((xx % 5) < 2)
    elif texture == "checkered":
        dark = ((yy // 4) + (xx // 4)) % 2 == 0
    else:
        dark = np.zeros((size, size), dtype=bool)
    fill[dark] *= 0.35
    return fill


def world_image(obj: WorldObject, seed: int = 0, size: int = IMAGE_SIZE) -> Image.Image:
    """One RGB image of ``obj``; ``seed`` jitters background brightness, position, extent and
    the texture's phase."""
    rng = np.random.default_rng(seed)
    level = int(rng.integers(70, 150))
    background = rng.normal(level, 12, size=(size, size, 3)).clip(0, 255)
    low, high = SIZE_EXTENTS[obj.size]
    extent = round(size * rng.uniform(low, high))
    centre = (size - extent) // 2
    low_corner, high_corner = max(1, centre - JITTER), min(size - extent - 1, centre + JITTER)
    x0, y0 = (int(v) for v in rng.integers(low_corner, high_corner + 1, size=2))
    mask = Image.new("L", (size, size), 0)
    _outline(obj.shape, (x0, y0, x0 + extent, y0 + extent), ImageDraw.Draw(mask))
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    phase = (int(rng.integers(0, 6)), int(rng.integers(0, 6)))
    paint = _fill(obj.colour, obj.texture, size, phase)
    pixels = background * (1 - alpha) + paint * alpha
    return Image.fromarray(pixels.round().astype(np.uint8), mode="RGB")


def world_objects(n: int, seed: int = 0) -> list[WorldObject]:
    """``n`` objects drawn uniformly (with replacement) from ``all_objects()``."""
    objects = all_objects()
    rng = np.random.default_rng(seed)
    return [objects[int(i)] for i in rng.integers(0, len(objects), size=n)]


def world_images(
    n: int, seed: int = 0, size: int = IMAGE_SIZE
) -> tuple[list[Image.Image], list[WorldObject]]:
    """``n`` images with their objects, the same for the same ``(n, seed)`` everywhere."""
    objects = world_objects(n, seed)
    images = [
        world_image(obj, seed=seed * 1_000_003 + i, size=size) for i, obj in enumerate(objects)
    ]
    return images, objects
