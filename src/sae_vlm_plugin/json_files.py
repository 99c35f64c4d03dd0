"""Reading the JSON files the package writes and reads back, naming the file in every error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path) -> Any:
    """The JSON ``path`` holds; ValueError naming the file if it is not valid JSON (a
    truncated or hand-edited file), where ``json`` would not say which file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({error})") from None
