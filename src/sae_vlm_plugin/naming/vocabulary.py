"""The concept words latents are named with.

Shipped vocabularies (plain text files in ``vocabularies/``, one concept per line, ``#``
comments): ``imagenet`` (the 1000 ImageNet-1k class names), ``attributes`` (255 common visual
attributes: colours, materials, textures, shapes, scenes ...) and ``toy`` (the toy world's
words). The default is ``imagenet`` + ``attributes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

VOCABULARY_DIR = Path(__file__).parent / "vocabularies"
SHIPPED = ("imagenet", "attributes", "toy")
DEFAULT = ("imagenet", "attributes")


def load_vocabulary(spec: str | Path | Sequence[str] | None = None) -> list[str]:
    """The concept words of ``spec``, in order, without duplicates or blanks.

    ``spec``: None (the default, ``imagenet`` + ``attributes``); a shipped name, or several
    joined by ``+`` (``"imagenet+attributes"``); a text file with one concept per line; or a
    sequence of words.

    Raises:
        ValueError: an unknown name that is not a file, or a vocabulary with no words.
    """
    if spec is None:
        words = [w for name in DEFAULT for w in _shipped(name)]
    elif isinstance(spec, Path) or (isinstance(spec, str) and Path(spec).is_file()):
        words = _read(Path(spec))
    elif isinstance(spec, str):
        names = spec.split("+")
        unknown = [n for n in names if n not in SHIPPED]
        if unknown:
            raise ValueError(
                f"vocabulary {spec!r} is neither a file nor a shipped vocabulary; shipped: "
                f"{', '.join(SHIPPED)} (join several with '+'), or give a file with one "
                "concept per line"
            )
        words = [w for name in names for w in _shipped(name)]
    else:
        words = [str(w).strip() for w in spec]
    unique = list(dict.fromkeys(w for w in words if w))
    if not unique:
        raise ValueError(f"the vocabulary {spec!r} has no words")
    return unique


def _shipped(name: str) -> list[str]:
    return _read(VOCABULARY_DIR / f"{name}.txt")


def _read(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
