"""The paper's checkpoint format and inference formulas, written plainly as an independent reference.

Checkpoints are built the way the reference code (ExplainableML/sae-for-vlm, vendoring
saprmarks/dictionary_learning) saves them: ``torch.save`` of a state dict of plain tensors
(``trainer_0/checkpoints/ae_{step}.pt``) and a ``trainer_0/config.json`` ``{"trainer": {...}}``
whose Matryoshka ``dict_class`` is spelt ``MatroyshkaBatchTopKSAE``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

GROUP_FRACTIONS = [0.0625, 0.125, 0.25, 0.5625]


def group_sizes(d_sae: int, fractions: list[float]) -> list[int]:
    """As the reference trainer splits ``d_sae``: floors, the remainder to the last group."""
    sizes = [int(f * d_sae) for f in fractions[:-1]]
    return [*sizes, d_sae - sum(sizes)]


def batchtopk_state(
    d_in: int, d_sae: int, k: int = 20, threshold: float = 1.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A ``BatchTopKSAE`` state dict (``nn.Linear`` encoder / decoder) with random weights."""
    g = torch.Generator().manual_seed(seed)
    return {
        "k": torch.tensor(k, dtype=torch.int),
        "threshold": torch.tensor(threshold, dtype=torch.float32),
        "decoder.weight": torch.randn(d_in, d_sae, generator=g),
        "encoder.weight": torch.randn(d_sae, d_in, generator=g),
        "encoder.bias": 0.5 * torch.randn(d_sae, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }


def matryoshka_state(
    d_in: int, d_sae: int, k: int = 20, threshold: float = 1.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A ``MatroyshkaBatchTopKSAE`` state dict (``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "k": torch.tensor(k, dtype=torch.int),
        "threshold": torch.tensor(threshold, dtype=torch.float32),
        "group_sizes": torch.tensor(group_sizes(d_sae, GROUP_FRACTIONS)),
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": 0.5 * torch.randn(d_sae, generator=g),
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }


def trainer_config(state: dict[str, torch.Tensor], dict_class: str | None = None) -> dict:
    """The ``trainer`` block of the reference ``config.json`` for ``state``."""
    matryoshka = "W_enc" in state
    d_in, d_sae = state["W_enc"].shape if matryoshka else state["encoder.weight"].T.shape
    config = {
        "trainer_class": "MatroyshkaBatchTopKTrainer" if matryoshka else "BatchTopKTrainer",
        "dict_class": dict_class or ("MatroyshkaBatchTopKSAE" if matryoshka else "BatchTopKSAE"),
        "lr": 2e-4,
        "steps": 110000,
        "auxk_alpha": 0.03,
        "threshold_beta": 0.999,
        "threshold_start_step": 1000,
        "activation_dim": d_in,
        "dict_size": d_sae,
        "k": int(state["k"]),
        "layer": "",
        "lm_name": "",
        "submodule_name": "",
    }
    if matryoshka:
        config["group_fractions"] = GROUP_FRACTIONS
        config["group_sizes"] = state["group_sizes"].tolist()
    return config


def write_checkpoint(
    trainer_dir: Path, state: dict[str, torch.Tensor], config: dict | None, step: int = 100000
) -> Path:
    """``trainer_dir/checkpoints/ae_{step}.pt`` (+ ``trainer_dir/config.json`` unless None)."""
    path = trainer_dir / "checkpoints" / f"ae_{step}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: tensor.clone() for name, tensor in state.items()}, path)
    if config is not None:
        (trainer_dir / "config.json").write_text(json.dumps({"trainer": config}, indent=4))
    return path


def reference_encode(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``encode(x, use_threshold=True)`` of the reference classes."""
    if "W_enc" in state:
        pre = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
        f = pre * (pre > state["threshold"])
        f[:, int(state["group_sizes"].sum()) :] = 0  # every group active: zeroes nothing
        return f
    pre = torch.relu(F.linear(x - state["b_dec"], state["encoder.weight"], state["encoder.bias"]))
    return pre * (pre > state["threshold"])


def reference_decode(state: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    if "W_dec" in state:
        return f @ state["W_dec"] + state["b_dec"]
    return F.linear(f, state["decoder.weight"]) + state["b_dec"]
