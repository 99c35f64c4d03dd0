"""Publishing trained SAEs as a release others load by name: a hub-ready folder, uploaded with
``huggingface_hub`` when a repo id is given.

The folder (``out_dir``) holds::

    README.md          model card: hub metadata, how to load, one row per SAE (hook, tokens,
                       d_in, d_sae, k, MS, R^2, L0, dead fraction) and each SAE's MS plot
    release.yaml       the release entry (``schema.py``): repo_id = the hub repo, or ``./`` for
                       the folder itself; conversion_func sae_vlm_sae_lens
    manifest.jsonl     one JSON line per SAE checkpoint: id, path, each file's sha256 and size,
                       its vision metadata and metrics
    <sae_id>/          cfg.json + sae_weights.safetensors (SAELens format, loadable without the
                       plugin by SAE.load_from_disk), and evaluation.json + ms_sorted.png when an
                       evaluation (``sae-vlm evaluate --out``) was given

so that, with the release file registered (``register_releases``), SAELens'
``SAE.from_pretrained(release, sae_id)`` loads each SAE by name. Metrics come from the
evaluation: ``MS`` = mean MonoSemanticity Score of the scored latents, ``R^2`` = explained
variance ``1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2``, ``L0`` = mean active latents per row.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from sae_vlm_plugin.pretrained.loading import SAE_FILES, check_sae_directory
from sae_vlm_plugin.pretrained.schema import HF_REPO_ID, METADATA_FIELDS, parse_releases

RELEASE_FILE = "release.yaml"
MANIFEST_FILE = "manifest.jsonl"
CARD_FILE = "README.md"
EVALUATION_FILES = ("evaluation.json", "ms_sorted.png")
OPTIONAL_SAE_FILES = ("sparsity.safetensors",)


@dataclass(frozen=True)
class PublishedSAE:
    """One SAE of a published release."""

    sae_id: str
    cfg: dict[str, Any]
    """Its ``cfg.json``."""
    metrics: dict[str, float]
    """``ms``, ``r2``, ``l0``, ``dead_fraction`` from its evaluation (empty without one)."""
    has_plot: bool

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.cfg.get("metadata") or {})


def publish_saes(
    saes: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    release: str,
    evaluations: Mapping[str, str | Path] | None = None,
    repo_id: str | None = None,
    private: bool = False,
) -> Path:
    """Write the release folder for ``saes`` (sae_id -> SAE directory in SAELens format) in
    ``out_dir`` and, with ``repo_id``, upload it to that hub model repo (created if missing).
    ``evaluations`` maps an sae_id to the folder ``evaluate_sae(out_dir=...)`` wrote. Returns
    the folder. Every SAE must belong to one model (a release names one)."""
    evaluations = dict(evaluations or {})
    unknown = sorted(set(evaluations) - set(saes))
    if unknown:
        raise ValueError(f"evaluations for unknown SAE ids {unknown}; SAE ids: {sorted(saes)}")
    if not saes:
        raise ValueError("nothing to publish: give at least one SAE")
    if repo_id is not None and not HF_REPO_ID.match(repo_id):
        raise ValueError(f"repo_id {repo_id!r} is not a hub repo id (ORG/NAME)")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / RELEASE_FILE).is_file():
        raise FileExistsError(f"{out} is neither empty nor a published release: choose another")
    out.mkdir(parents=True, exist_ok=True)
    published = [
        _copy_sae(sae_id, Path(path), out, evaluations.get(sae_id)) for sae_id, path in saes.items()
    ]
    model = _one_model(published)
    entry = _release_entry(published, model, repo_id or "./")
    parse_releases({release: entry}, f"{release} (publish)", out)  # the schema checks it now
    (out / RELEASE_FILE).write_text(yaml.safe_dump({release: entry}, sort_keys=False))
    with (out / MANIFEST_FILE).open("w") as manifest:
        for item in published:
            manifest.write(json.dumps(_manifest_line(item, out), sort_keys=True) + "\n")
    (out / CARD_FILE).write_text(model_card(release, model, published, repo_id))
    if repo_id is not None:
        _upload(out, repo_id, private, release)
    return out


def _copy_sae(sae_id: str, source: Path, out: Path, evaluation: str | Path | None) -> PublishedSAE:
    parts = PurePosixPath(sae_id).parts
    if not sae_id or sae_id.startswith("/") or ".." in parts or "\\" in sae_id:
        raise ValueError(
            f"SAE id {sae_id!r} must be a relative path such as 'blocks.22.hook_resid_post/x8'"
        )
    check_sae_directory(source)
    target = out.joinpath(*parts)
    target.mkdir(parents=True, exist_ok=True)
    for name in (*SAE_FILES, *OPTIONAL_SAE_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    metrics: dict[str, float] = {}
    has_plot = False
    if evaluation is not None:
        folder = Path(evaluation)
        if not (folder / "evaluation.json").is_file():
            raise FileNotFoundError(f"no evaluation.json in {folder} (sae-vlm evaluate --out)")
        for name in EVALUATION_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, target / name)
        has_plot = (folder / "ms_sorted.png").is_file()
        metrics = evaluation_metrics(json.loads((folder / "evaluation.json").read_text()))
    cfg = json.loads((source / "cfg.json").read_text())
    return PublishedSAE(sae_id, cfg, metrics, has_plot)


def evaluation_metrics(report: dict[str, Any]) -> dict[str, float]:
    """MS (mean over scored latents), R^2, L0 and dead fraction of an ``evaluation.json``."""
    reconstruction = report.get("reconstruction", {})
    values = {
        "ms": report.get("sae", {}).get("mean"),
        "r2": reconstruction.get("explained_variance"),
        "l0": reconstruction.get("l0"),
        "dead_fraction": reconstruction.get("dead_fraction"),
    }
    return {name: float(value) for name, value in values.items() if value is not None}


def _one_model(published: list[PublishedSAE]) -> str:
    models = sorted({str(item.metadata.get("model_name") or "") for item in published})
    if models == [""]:
        raise ValueError("the SAEs' cfg.json metadata names no model_name: a release needs one")
    if len(models) != 1:
        raise ValueError(f"a release holds SAEs of one model; these name {models}")
    return models[0]


def _release_entry(published: list[PublishedSAE], model: str, repo_id: str) -> dict[str, Any]:
    """The release in the registry schema; each SAE's vision metadata from its ``cfg.json``."""
    saes = []
    for item in published:
        metadata = {
            name: item.metadata[name]
            for name in METADATA_FIELDS
            if item.metadata.get(name) is not None
        }
        sae: dict[str, Any] = {"id": item.sae_id, "path": item.sae_id}
        if "l0" in item.metrics:
            sae["l0"] = round(item.metrics["l0"], 4)
        if "r2" in item.metrics:
            sae["variance_explained"] = round(item.metrics["r2"], 6)
        if metadata:
            sae["metadata"] = metadata
        saes.append(sae)
    return {
        "repo_id": repo_id,
        "model": model,
        "conversion_func": "sae_vlm_sae_lens",
        "verified": True,
        "saes": saes,
    }


def _manifest_line(item: PublishedSAE, out: Path) -> dict[str, Any]:
    folder = out.joinpath(*PurePosixPath(item.sae_id).parts)
    files = {}
    for path in sorted(folder.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files[path.name] = {"sha256": digest, "bytes": path.stat().st_size}
    return {
        "sae_id": item.sae_id,
        "path": item.sae_id,
        "architecture": item.cfg.get("architecture"),
        "d_in": item.cfg.get("d_in"),
        "d_sae": item.cfg.get("d_sae"),
        "metadata": item.metadata,
        "metrics": item.metrics,
        "files": files,
    }


def model_card(release: str, model: str, published: list[PublishedSAE], repo_id: str | None) -> str:
    """The README.md of the release: hub front matter, loading code, a table and the plots."""
    front = {
        "library_name": "saelens",
        "tags": ["sae_lens", "sparse-autoencoder", "vision", "sae_vlm_plugin"],
    }
    if HF_REPO_ID.match(model):
        front["base_model"] = model
    where = f'hf_hub_download("{repo_id}", "{RELEASE_FILE}")' if repo_id else f'"{RELEASE_FILE}"'
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {release}",
        "",
        f"Sparse autoencoders on `{model}`, in SAELens format, trained with sae_vlm_plugin.",
        "",
        "```python",
        "import sae_vlm_plugin",
        "from sae_lens import SAE",
        *(["from huggingface_hub import hf_hub_download"] if repo_id else []),
        "",
        f"sae_vlm_plugin.register_releases({where})",
        f'sae = SAE.from_pretrained("{release}", "{published[0].sae_id}")',
        "```",
        "",
        "MS: mean MonoSemanticity Score of the scored latents; R^2: explained variance; "
        "L0: active latents per input; dead: fraction of latents that never fire on the "
        "evaluation images.",
        "",
        "| SAE id | hook | tokens | d_in | d_sae | k | MS | R^2 | L0 | dead |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in published:
        meta, m = item.metadata, item.metrics
        lines.append(
            f"| `{item.sae_id}` | `{meta.get('hook_name', '')}` | {meta.get('tokens', '')} | "
            f"{item.cfg.get('d_in', '')} | {item.cfg.get('d_sae', '')} | {meta.get('k', '')} | "
            f"{_number(m, 'ms', 3)} | {_number(m, 'r2', 3)} | {_number(m, 'l0', 1)} | "
            f"{_number(m, 'dead_fraction', 3)} |"
        )
    for item in published:
        if item.has_plot:
            lines += [
                "",
                f"## {item.sae_id}",
                "",
                f"![MS of {item.sae_id}]({item.sae_id}/ms_sorted.png)",
            ]
    return "\n".join(lines) + "\n"


def _number(metrics: dict[str, float], name: str, digits: int) -> str:
    return f"{metrics[name]:.{digits}f}" if name in metrics else "-"


def _upload(out: Path, repo_id: str, private: bool, release: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(out),
        commit_message=f"Publish {release} (sae_vlm_plugin)",
    )
