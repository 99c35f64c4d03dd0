"""Where a release's files come from, and reading checkpoints without trusting them.

``repo_id`` is a Hugging Face repo id (files come through ``hf_hub_download``, so with
``HF_HUB_OFFLINE=1`` they are served from the HF cache, ``HF_HUB_CACHE``), an absolute local
folder or a ``file://`` URL. Checkpoints are untrusted input: tensors load with safetensors or
``torch.load(weights_only=True)``; a pickle that would run code is refused, never unpickled.
"""

from __future__ import annotations

import difflib
import pickle
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import torch
from huggingface_hub import hf_hub_download, list_repo_files
from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
from safetensors import SafetensorError  # type: ignore[attr-defined]
from safetensors.torch import load_file

from sae_vlm_plugin.pretrained.schema import path_escape


class UnsafeCheckpointError(ValueError):
    """A checkpoint that is not plain tensors and data (e.g. a pickle that would run code)."""


def local_root(repo_id: str) -> Path | None:
    """The local folder a ``file://`` URL or absolute path names; None for a HF repo id."""
    if repo_id.startswith("file://"):
        return Path(unquote(urlparse(repo_id).path))
    path = Path(repo_id)
    return path if path.is_absolute() else None


def repo_file(folder: str, name: str) -> str:
    """``folder/name`` inside a repo; ``.`` or an empty folder is the repo's root."""
    return str(PurePosixPath(folder, name)) if folder not in ("", ".") else name


def fetch(repo_id: str, filename: str, force_download: bool = False) -> Path:
    """Local path of ``filename`` in ``repo_id`` (downloading it, or from the HF cache).
    ``filename`` must stay inside the repo (``schema.path_escape``). A file the repo lacks
    raises FileNotFoundError naming the checkpoints that are there (``missing_file_message``)."""
    root = local_root(repo_id)
    try:
        return _fetch(repo_id, filename, force_download)
    except EntryNotFoundError as error:  # the hub has the repo but not the file
        raise FileNotFoundError(
            missing_file_message(repo_id, filename, _hub_files(repo_id))
        ) from error
    except FileNotFoundError:
        if root is None:
            raise
        raise FileNotFoundError(
            missing_file_message(repo_id, filename, _local_files(root, filename))
        ) from None


def fetch_optional(repo_id: str, filename: str, force_download: bool = False) -> Path | None:
    """Like ``fetch``, but None for a file that the repo (or the offline cache) does not have."""
    try:
        return _fetch(repo_id, filename, force_download)
    except (FileNotFoundError, EntryNotFoundError):
        return None


def _fetch(repo_id: str, filename: str, force_download: bool) -> Path:
    problem = path_escape(filename)
    if problem is not None:
        raise ValueError(f"{filename!r} {problem} ({repo_id!r})")
    root = local_root(repo_id)
    if root is not None:
        path = root / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (repo_id {repo_id!r})")
        return path
    try:
        return Path(
            hf_hub_download(repo_id=repo_id, filename=filename, force_download=force_download)
        )
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id}/{filename} is not in the Hugging Face cache and the hub cannot be reached "
            "(or HF_HUB_OFFLINE is set); download it first (huggingface-cli download "
            f"{repo_id} {filename}) or point the release's repo_id at a local copy"
        ) from error


STEP_FILE = re.compile(r"^ae_(\d+)\.(?:pt|safetensors)$")
"""dictionary_learning's per-step checkpoints (``checkpoints/ae_100000.pt``)."""


def missing_file_message(repo_id: str, filename: str, available: list[str] | None) -> str:
    """What to say when ``filename`` is not in ``repo_id``, given the repo's files (None: they
    could not be listed): the checkpoints in the same folder - for a training step file, the
    other steps by name - else the files named like it elsewhere, else the closest paths."""
    message = f"{repo_id} has no file {filename}"
    if available is None:
        return message + " (and its file list could not be read)"
    wanted = PurePosixPath(filename)
    siblings = sorted(f for f in available if PurePosixPath(f).parent == wanted.parent)
    steps = sorted(
        (int(match[1]), f)
        for f in siblings
        if (match := STEP_FILE.match(PurePosixPath(f).name)) is not None
    )
    if steps and STEP_FILE.match(wanted.name):
        names = ", ".join(PurePosixPath(f).name for _, f in steps)
        return f"{message}; {wanted.parent}/ has the training steps {names}: point the entry's path at one"
    if siblings:
        return (
            f"{message}; its folder has: {', '.join(PurePosixPath(f).name for f in siblings[:20])}"
        )
    same_name = [f for f in available if PurePosixPath(f).name == wanted.name]
    close = same_name or difflib.get_close_matches(filename, available, n=5, cutoff=0.5)
    if close:
        return f"{message}; did you mean {', '.join(close[:5])}?"
    return f"{message} (it has {len(available)} files, none like it)"


def _hub_files(repo_id: str) -> list[str] | None:
    try:
        return list(list_repo_files(repo_id))
    except Exception:  # offline, private, rate-limited: the message says the list is unknown
        return None


def _local_files(root: Path, filename: str) -> list[str] | None:
    """Files of the nearest existing folder above ``root / filename``, relative to ``root``."""
    folder = (root / filename).parent
    while not folder.is_dir() and folder != root and root in folder.parents:
        folder = folder.parent
    if not folder.is_dir():
        return None
    return [p.relative_to(root).as_posix() for p in sorted(folder.iterdir()) if p.is_file()]


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors``, or from a torch pickle with ``weights_only=True``.

    Raises ValueError naming a damaged safetensors file, and UnsafeCheckpointError for a pickle holding anything but tensors and plain data -
    unpickling such a file could run arbitrary code, so it is never attempted.
    """
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as error:
            raise ValueError(f"{path} is not a sound safetensors file: {error}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = next(
            (line.strip() for line in str(error).splitlines() if "Unsupported" in line),
            str(error).splitlines()[0] if str(error) else "",
        )
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds more than tensors and plain data (unpickling it "
            "could run code), and sae_vlm_plugin loads pickles only with "
            f"torch.load(weights_only=True). PyTorch: {detail.rstrip('.')}. If you trust the file, "
            "convert it to safetensors yourself."
        ) from None
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
    return loaded
