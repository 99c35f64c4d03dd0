"""The registry YAML format, validated strictly: an unknown key is an error, never ignored.

A file maps release names to releases, in the schema of SAELens' own ``pretrained_saes.yaml``
plus the vision metadata a user needs to attach an SAE, and a provenance flag::

    pach2025-clip-vit-l14-336-batchtopk:      # release name (must not be a SAELens release)
      repo_id: mateuszpach/sae-for-vlm        # HF repo id | /absolute/dir | file:///dir | ./relative/dir
      model: openai/clip-vit-large-patch14-336
      conversion_func: sae_vlm_dictionary_learning   # or sae_vlm_sae_lens
      verified: false                         # were the files checked against this entry?
      note: why not / what was inferred       # required when verified is false (and given)
      links: {paper: https://...}             # optional, as in SAELens
      config_overrides: {normalize_activations: none}  # optional, SAELens cfg keys (see below)
      metadata:                               # vision metadata shared by every SAE below
        family: clip
        tokens: cls
        training_architecture: batchtopk
        k: 20
        training_data: ImageNet-1k train, CLS token
      saes:
        - id: blocks.22.hook_resid_post/x8    # SAELens sae_id
          path: dir/or/file/in/the/repo
          l0: 20.0                            # optional, as in SAELens (also variance_explained,
                                              # neuronpedia, norm_scaling_factor)
          metadata: {hook_name: blocks.22.hook_resid_post, expansion_factor: 8}
          verified: true                      # optional per-SAE override (+ note)

Vision metadata (``metadata`` of the release, overridden key by key by the SAE's own): the
plugin's shipped files give ``family``, ``hook_name``, ``tokens``, ``training_architecture``,
``training_data`` and ``verified`` for every SAE. A user's file needs only what the files cannot
tell: when the SAE loads, the converter derives ``hook_name``, ``k`` and
``training_architecture`` from the checkpoint (a SAELens ``cfg.json``'s metadata; a
dictionary_learning ``config.json``'s integer ``layer`` and its ``dict_class``) and ``family``
from the model's config (``converters.complete_vision_metadata``), and refuses to load an SAE
whose family, hook, tokens or architecture is still unknown. ``verified`` defaults to false and
``training_data`` to unknown. ``layer`` is derived from a block hook name (and, if given, must
agree with it). The metadata reaches ``sae.cfg.metadata`` together with ``model_name`` (the
release's ``model``), where SAELens tools find ``model_name`` / ``hook_name`` under their usual
names.

Relative local ``repo_id`` paths (``./`` or ``../``) are resolved against the YAML file's folder.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from sae_vlm_plugin.hooks import parse_block_hook

VISION_METADATA_KEY = "sae_vlm_metadata_by_path"
"""Key of the per-SAE vision metadata in a SAELens directory entry's ``config_overrides``."""

CONVERSION_FUNCS: dict[str, str] = {
    "sae_vlm_dictionary_learning": "dictionary_learning checkpoints as the paper's reference code "
    "writes them (ae.pt state dict, optional config.json): BatchTopKSAE, MatroyshkaBatchTopKSAE",
    "sae_vlm_sae_lens": "SAELens format (cfg.json + sae_weights.safetensors), e.g. the plugin's "
    "own exports",
}
"""The plugin's SAELens conversion functions (``converters.py``); only these apply the vision
metadata, so a release must name one of them."""

TRAINING_ARCHITECTURES = (
    "paper_batchtopk",
    "paper_matryoshka_batchtopk",
    "standard",
    "gated",
    "jumprelu",
    "topk",
    "batchtopk",
    "matryoshka_batchtopk",
)
"""How an SAE was trained (``training_architecture``); its SAELens inference architecture can
differ (BatchTopK SAEs run as ``jumprelu`` with a threshold)."""

NEEDS_K = (
    "paper_batchtopk",
    "paper_matryoshka_batchtopk",
    "topk",
    "batchtopk",
    "matryoshka_batchtopk",
)

HOOK_NAME = re.compile(r"^(?:(?:vision\.)?blocks\.\d+\.)?hook_[a-z0-9_]+$")
"""Canonical hook names (``hooks.py``): ``blocks.{l}.hook_*``, ``vision.blocks.{l}.hook_*`` or
``hook_*``."""

HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class SchemaError(ValueError):
    """A registry YAML file (or mapping) that does not follow the schema."""


@dataclass(frozen=True)
class _Field:
    types: tuple[type, ...]
    required: bool = False


_STR = (str,)
_INT = (int,)
_NUMBER = (int, float)
_BOOL = (bool,)
_MAPPING = (dict,)
_LIST = (list,)

RELEASE_FIELDS: dict[str, _Field] = {
    "repo_id": _Field(_STR, required=True),
    "model": _Field(_STR, required=True),
    "conversion_func": _Field(_STR, required=True),
    "verified": _Field(_BOOL),
    "note": _Field(_STR),
    "links": _Field(_MAPPING),
    "config_overrides": _Field(_MAPPING),
    "metadata": _Field(_MAPPING),
    "saes": _Field(_LIST, required=True),
}

SAE_FIELDS: dict[str, _Field] = {
    "id": _Field(_STR, required=True),
    "path": _Field(_STR, required=True),
    "l0": _Field(_NUMBER),
    "variance_explained": _Field(_NUMBER),
    "neuronpedia": _Field(_STR),
    "norm_scaling_factor": _Field(_NUMBER),
    "metadata": _Field(_MAPPING),
    "verified": _Field(_BOOL),
    "note": _Field(_STR),
}

METADATA_FIELDS: dict[str, _Field] = {
    "family": _Field(_STR),
    "hook_name": _Field(_STR),
    "tokens": _Field(_STR),
    "training_architecture": _Field(_STR),
    "training_data": _Field(_STR),
    "layer": _Field(_INT),
    "k": _Field(_INT),
    "expansion_factor": _Field(_NUMBER),
    "group_fractions": _Field(_LIST),
}

CONFIG_OVERRIDE_FIELDS: dict[str, _Field] = {
    "apply_b_dec_to_input": _Field(_BOOL),
    "normalize_activations": _Field(_STR),
    "reshape_activations": _Field(_STR),
    "dtype": _Field(_STR),
    "dataset_path": _Field(_STR),
    "model_from_pretrained_kwargs": _Field(_MAPPING),
    "metadata": _Field(_MAPPING),
}
"""SAELens config keys a release may override; vision keys belong in ``metadata`` instead."""

SHIPPED_REQUIRED = ("family", "hook_name", "tokens", "training_architecture", "training_data")
"""Vision metadata every SAE of a shipped file states (a user's file may leave them to the
checkpoint and the model's config)."""

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
_TYPE_NAMES |= {dict: "a mapping", list: "a list"}


@dataclass(frozen=True)
class VisionMetadata:
    """What a user needs to attach an SAE to a vision model (merged release + SAE metadata)."""

    family: str | None = None
    """Model family (``sae_vlm_plugin.list_families()``), e.g. ``clip``."""
    hook_name: str | None = None
    """Canonical hook the SAE reads and writes, e.g. ``blocks.22.hook_resid_post``."""
    tokens: str | None = None
    """Token selection it was trained on: ``cls``, ``patches``, ``all``, ``mean``, ``random_N``."""
    training_architecture: str | None = None
    """How it was trained: one of ``TRAINING_ARCHITECTURES``."""
    training_data: str | None = None
    """What it was trained on, in words."""
    layer: int | None = None
    """Block index of a block hook (derived from ``hook_name``); None for other hooks."""
    k: int | None = None
    """Active latents per input (TopK) or on average (BatchTopK)."""
    expansion_factor: float | None = None
    """``d_sae / d_in``; checked against the weights when the SAE loads."""
    group_fractions: tuple[float, ...] | None = None
    """Matryoshka group fractions, summing to 1."""

    def to_dict(self) -> dict[str, Any]:
        """The keys that have a value, as they go into ``sae.cfg.metadata``."""
        values = {name: getattr(self, name) for name in METADATA_FIELDS}
        if self.group_fractions is not None:
            values["group_fractions"] = list(self.group_fractions)
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class SAEEntry:
    """One SAE of a release."""

    id: str
    path: str
    metadata: VisionMetadata
    verified: bool
    note: str | None = None
    l0: float | None = None
    variance_explained: float | None = None
    neuronpedia: str | None = None
    norm_scaling_factor: float | None = None


@dataclass(frozen=True)
class Release:
    """A validated release: SAELens' directory fields plus the vision metadata of each SAE."""

    name: str
    repo_id: str
    """HF repo id, or an absolute local path / ``file://`` URL (relative paths are resolved)."""
    model: str
    conversion_func: str
    verified: bool
    saes: tuple[SAEEntry, ...]
    source: str
    """Where the release was read from (a file path, or ``<mapping>`` / ``<yaml text>``)."""
    note: str | None = None
    links: Mapping[str, str] = field(default_factory=dict)
    config_overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sae_ids(self) -> list[str]:
        return [sae.id for sae in self.saes]

    def sae(self, sae_id: str) -> SAEEntry:
        """The SAE with this id; an unknown id raises, listing the valid ones closest first."""
        for sae in self.saes:
            if sae.id == sae_id:
                return sae
        raise ValueError(
            f"release {self.name!r} has no SAE {sae_id!r}; valid ids (closest first): "
            + ", ".join(closest_first(sae_id, self.sae_ids))
        )


def closest_first(name: str, choices: list[str]) -> list[str]:
    """All ``choices``, the most similar to ``name`` first (difflib ratio), ties in given order."""
    ratio = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in choices}
    return sorted(choices, key=lambda c: -ratio[c])


def load_yaml_text(text: str, source: str) -> Any:
    """``yaml.safe_load`` that also refuses a key repeated in one mapping (which PyYAML would
    otherwise resolve silently to the last value)."""
    try:
        return yaml.load(
            text, Loader=_UniqueKeySafeLoader
        )  # a SafeLoader subclass: plain data only
    except yaml.YAMLError as error:
        raise SchemaError(f"{source}: not valid YAML: {error}") from error
    except SchemaError as error:
        raise SchemaError(f"{source}: {error}") from None


def parse_releases(
    data: Any, source: str, base_dir: Path | None = None, *, shipped: bool = False
) -> dict[str, Release]:
    """Validate a parsed registry file (``{release_name: release}``) into ``Release`` objects.

    ``source`` names the file in error messages; ``base_dir`` resolves relative local repo_ids
    (default: the current directory). ``shipped`` files (the plugin's own) must also give
    ``verified`` and ``SHIPPED_REQUIRED`` (and ``k`` where the architecture needs one) for every
    SAE; a user's file may leave them to the checkpoint (see the module docstring).
    """
    if not isinstance(data, dict) or not data:
        raise SchemaError(
            f"{source}: expected a mapping of release names to releases, got "
            + ("an empty document" if not data else type(data).__name__)
        )
    releases = {}
    for name, value in data.items():
        if not isinstance(name, str) or not name:
            raise SchemaError(f"{source}: release names must be non-empty strings, got {name!r}")
        releases[name] = _parse_release(name, value, source, base_dir or Path.cwd(), shipped)
    return releases


def _parse_release(name: str, value: Any, source: str, base_dir: Path, shipped: bool) -> Release:
    where = f"{source}: release {name!r}"
    raw = _check_mapping(value, RELEASE_FIELDS, where)
    if shipped and "verified" not in raw:
        raise SchemaError(f"{where}: missing key 'verified' (required in shipped files)")
    if raw["conversion_func"] not in CONVERSION_FUNCS:
        raise SchemaError(
            f"{where}: conversion_func {raw['conversion_func']!r} is not one of the plugin's: "
            + "; ".join(f"{n} ({d})" for n, d in CONVERSION_FUNCS.items())
        )
    _check_note(raw, where)
    overrides = _check_mapping(raw.get("config_overrides", {}), CONFIG_OVERRIDE_FIELDS, where)
    links = raw.get("links", {})
    bad_links = [k for k, v in links.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad_links:
        raise SchemaError(f"{where}: links must map strings to strings; bad: {bad_links}")
    defaults = _check_mapping(
        raw.get("metadata", {}), METADATA_FIELDS, f"{where}: metadata", check_required=False
    )
    if not raw["saes"]:
        raise SchemaError(f"{where}: saes is empty")
    saes = tuple(
        _parse_sae(item, defaults, raw.get("verified", False), f"{where}: saes[{i}]", shipped)
        for i, item in enumerate(raw["saes"])
    )
    for attribute in ("id", "path"):
        values = [getattr(sae, attribute) for sae in saes]
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise SchemaError(f"{where}: SAE {attribute}s must be unique; repeated: {repeated}")
    return Release(
        name=name,
        repo_id=_resolve_repo_id(raw["repo_id"], base_dir, where),
        model=raw["model"],
        conversion_func=raw["conversion_func"],
        verified=raw.get("verified", False),
        note=raw.get("note"),
        links=dict(links),
        config_overrides=overrides,
        saes=saes,
        source=source,
    )


def _parse_sae(
    value: Any, defaults: dict[str, Any], verified: bool, where: str, shipped: bool
) -> SAEEntry:
    raw = _check_mapping(value, SAE_FIELDS, where)
    where = f"{where} (id {raw['id']!r})"
    _check_note(raw, where)
    if not raw["path"]:
        raise SchemaError(f"{where}: path is empty (use '.' for the root of repo_id)")
    problem = path_escape(raw["path"])
    if problem is not None:
        raise SchemaError(f"{where}: path {raw['path']!r} {problem}")
    own = _check_mapping(
        raw.get("metadata", {}), METADATA_FIELDS, f"{where}: metadata", check_required=False
    )
    merged = _check_mapping({**defaults, **own}, METADATA_FIELDS, f"{where}: metadata")
    missing = [key for key in SHIPPED_REQUIRED if key not in merged]
    if shipped and missing:
        raise SchemaError(
            f"{where}: metadata: missing key {missing[0]!r} (required in shipped files: "
            f"{list(SHIPPED_REQUIRED)})"
        )
    return SAEEntry(
        id=raw["id"],
        path=raw["path"],
        metadata=_vision_metadata(merged, f"{where}: metadata", shipped),
        verified=raw.get("verified", verified),
        note=raw.get("note"),
        l0=raw.get("l0"),
        variance_explained=raw.get("variance_explained"),
        neuronpedia=raw.get("neuronpedia"),
        norm_scaling_factor=raw.get("norm_scaling_factor"),
    )


def path_escape(path: str) -> str | None:
    """Why ``path`` (a file or folder inside a repo) could name something outside the repo, or
    None if it cannot: it must be relative, with no ``..`` component and no drive or backslash
    (a Windows path), so that ``repo / path`` stays inside ``repo`` on every platform."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or PureWindowsPath(path).is_absolute() or PureWindowsPath(path).drive:
        return "is absolute: it must be relative to repo_id"
    if "\\" in path:
        return "contains a backslash: use '/' between folders"
    if ".." in pure.parts:
        return "climbs out of repo_id with '..'"
    return None


def _vision_metadata(raw: dict[str, Any], where: str, shipped: bool = True) -> VisionMetadata:
    """Cross-field checks of merged vision metadata (of the keys it has)."""
    from sae_vlm_plugin.tokens import TokenSelection  # imports torch: only when validating

    hook = raw.get("hook_name")
    layer = raw.get("layer")
    if hook is not None:
        if not HOOK_NAME.match(hook):
            raise SchemaError(
                f"{where}: hook_name {hook!r} is not a canonical hook name "
                "(blocks.{l}.hook_resid_post, vision.blocks.{l}.hook_resid_post or hook_*)"
            )
        parsed = parse_block_hook(hook)
        layer = parsed[1] if parsed is not None else None
        if "layer" in raw and raw["layer"] != layer:
            raise SchemaError(
                f"{where}: layer {raw['layer']} disagrees with hook_name {hook!r} "
                f"(which means layer {layer})"
            )
    if "tokens" in raw:
        try:
            TokenSelection.parse(raw["tokens"])
        except ValueError as error:
            raise SchemaError(
                f"{where}: tokens: {error} (or random_N for N random tokens)"
            ) from None
    architecture = raw.get("training_architecture")
    if architecture is not None and architecture not in TRAINING_ARCHITECTURES:
        raise SchemaError(
            f"{where}: training_architecture {architecture!r} is not one of "
            + ", ".join(TRAINING_ARCHITECTURES)
        )
    k = raw.get("k")
    if shipped and architecture in NEEDS_K and k is None:
        raise SchemaError(f"{where}: missing key 'k' (required for {architecture})")
    if k is not None and k < 1:
        raise SchemaError(f"{where}: k must be >= 1, got {k}")
    expansion = raw.get("expansion_factor")
    if expansion is not None and expansion <= 0:
        raise SchemaError(f"{where}: expansion_factor must be > 0, got {expansion}")
    fractions = raw.get("group_fractions")
    if fractions is not None:
        if architecture is not None and not architecture.endswith("matryoshka_batchtopk"):
            raise SchemaError(f"{where}: group_fractions only applies to Matryoshka architectures")
        if not all(isinstance(f, int | float) and not isinstance(f, bool) for f in fractions):
            raise SchemaError(f"{where}: group_fractions must be a list of numbers")
        if not fractions or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
            raise SchemaError(
                f"{where}: group_fractions must be positive and sum to 1, got {fractions}"
            )
    return VisionMetadata(
        family=raw.get("family"),
        hook_name=hook,
        tokens=raw.get("tokens"),
        training_architecture=architecture,
        training_data=raw.get("training_data"),
        layer=layer,
        k=k,
        expansion_factor=expansion,
        group_fractions=tuple(float(f) for f in fractions) if fractions is not None else None,
    )


def _check_mapping(
    value: Any, fields: dict[str, _Field], where: str, check_required: bool = True
) -> dict[str, Any]:
    """``value`` as a dict whose keys are all in ``fields``, with the right types; required
    fields present unless ``check_required`` is False."""
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SchemaError(
                f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(fields)}"
            )
    if check_required:
        missing = [key for key, spec in fields.items() if spec.required and key not in value]
        if missing:
            raise SchemaError(f"{where}: missing key {missing[0]!r} (required: {missing})")
    for key, item in value.items():
        types = fields[key].types
        is_bool = isinstance(item, bool)
        if not isinstance(item, types) or (is_bool and bool not in types):
            expected = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in types))
            raise SchemaError(
                f"{where}: key {key!r} must be {expected}, got {type(item).__name__} {item!r}"
            )
    return dict(value)


def _check_note(raw: dict[str, Any], where: str) -> None:
    if raw.get("verified") is False and not raw.get("note"):
        raise SchemaError(f"{where}: verified is false, so a 'note' must say what is unverified")


def _resolve_repo_id(repo_id: str, base_dir: Path, where: str) -> str:
    """HF repo ids and absolute paths / file:// URLs as given; ./ and ../ paths made absolute."""
    if repo_id.startswith(("./", "../")):
        return str((base_dir / repo_id).resolve())
    if repo_id.startswith("file://") or Path(repo_id).is_absolute() or HF_REPO_ID.match(repo_id):
        return repo_id
    raise SchemaError(
        f"{where}: repo_id {repo_id!r} is neither a Hugging Face repo id (owner/name) nor a local "
        "path (absolute, file://..., or ./relative to the YAML file)"
    )


MAX_YAML_VALUES = 100_000
"""Values (scalars, lists, mappings) a YAML document may hold once its aliases are expanded.
A few lines of nested aliases (an "alias bomb") expand to billions of values in whatever copies
or saves the loaded data; the document is refused before anything is built from it."""


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only), refusing repeated mapping keys and documents
    that expand past ``MAX_YAML_VALUES`` (or into themselves)."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise SchemaError(
                f"the document expands to more than {MAX_YAML_VALUES} values through its "
                "aliases (&anchor / *alias); refusing it"
            )
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias expanded, counted once per distinct
    node (``sizes``), capped just past the limit. A node inside itself counts as too many."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_YAML_VALUES + 1  # until done: met again, it contains itself
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    size = 1
    for child in children:
        size = min(size + _expanded_size(child, sizes), MAX_YAML_VALUES + 1)
    sizes[id(node)] = size
    return size


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, list | dict):
            raise SchemaError(f"line {key_node.start_mark.line + 1}: a key must be a scalar")
        if key in seen:
            raise SchemaError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeySafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)
