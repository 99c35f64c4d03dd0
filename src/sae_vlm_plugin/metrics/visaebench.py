"""ViSAEBench on the plugin's models and SAEs.

ViSAEBench (``pip install visaebench``) evaluates an SAE through two protocols: an SAE with
``encode`` / ``decode`` (``SAEInterface``) and a backbone whose ``extract_activations(images,
layer=)`` returns patch activations ``(B, n_patches, d)`` (``BackboneInterface``).
``VisionModelBackbone`` is the second over any ``VisionModel``, ``BenchSAE`` the first over any
SAELens SAE, and ``visaebench_evaluate`` runs ViSAEBench's own metric code on them: its
``evaluate`` for the metrics that need no hub download, and its ``MonosemanticityScore`` with
the evaluator backbone given here (its ``evaluate`` would download one).

ViSAEBench's MS is an approximation of the exact MS: per latent only its top-16 images, with
activations max-pooled over patches (``metrics.ms_at_k`` computes it from any codes).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae_vlm_plugin.hooks import block_hook_name
from sae_vlm_plugin.model import ModelLike, VisionModel, as_vision_model

FREE_METRICS: tuple[str, ...] = (
    "localization", "fvu", "downstream_preservation", "absorption", "sparse_probing",
)  # fmt: skip
"""ViSAEBench metrics that run on given activations and labels without a download
(``sparse_probing`` calls ``numpy.trapezoid``, numpy 2's name: on this install's numpy < 2
``visaebench_evaluate`` adds the alias, ``_compat.patch_numpy_trapezoid``). Left out:
``cross_domain`` (fetches OOD datasets), and ``monosemanticity``, whose evaluator
``evaluate`` would fetch: ``visaebench_evaluate`` runs it with ``evaluator``. ``absorption``
needs ``sibling_groups=`` unless the labels are ImageNet's (ViSAEBench ships those groups)."""


class VisionModelBackbone:
    """ViSAEBench's ``BackboneInterface`` over a ``VisionModel``: the patch tokens (prefix
    tokens such as CLS dropped) of ``{prefix}blocks.{layer}.hook_resid_post``."""

    def __init__(self, model: ModelLike, *, prefix: str = "") -> None:
        self.model: VisionModel = as_vision_model(model)
        self.prefix = prefix

    def extract_activations(self, images: Tensor | Sequence[Any], *, layer: int = -1) -> Tensor:
        """``(B, n_patches, d)`` for a pixel tensor or a sequence of PIL images (ViSAEBench's
        monosemanticity metric passes images); ``layer=-1`` is the last block."""
        n_layers = self.model.n_layers
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layer {layer} is out of range for {self.model.model_name}: "
                f"valid layers are {-n_layers}..{n_layers - 1}"
            )
        hook = block_hook_name(layer % n_layers, self.prefix)
        pixels = images if isinstance(images, Tensor) else self.model.preprocess(list(images))
        value = self.model.capture(pixels, [hook])[hook]
        return value[:, self.model.hook_point(hook).n_prefix_tokens :].detach()


class BenchSAE:
    """ViSAEBench's ``SAEInterface`` over a SAELens SAE: gradient-free ``encode`` / ``decode``
    on the SAE's device and dtype, results as float32 (ViSAEBench converts them to numpy)."""

    def __init__(self, sae: Any) -> None:
        self.sae = sae

    def _input(self, x: Tensor) -> Tensor:
        param = self.sae.W_enc
        return x.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(self._input(x)).float()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.sae.decode(self._input(z)).float()


def patch_activations(
    backbone: VisionModelBackbone, images: Sequence[Any], layer: int, batch_size: int = 32
) -> Tensor:
    """``(n_images, n_patches, d)`` activations of ``images``, the tensor ViSAEBench's
    metrics take as ``activations``."""
    batches = [
        backbone.extract_activations(images[i : i + batch_size], layer=layer)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(batches)


def visaebench_evaluate(
    sae: Any,
    model: ModelLike,
    images: Sequence[Any],
    labels: Sequence[int],
    *,
    layer: int,
    evaluator: ModelLike,
    evaluator_layer: int = -1,
    metrics: Sequence[str] = (*FREE_METRICS, "monosemanticity"),
    device: str = "cpu",
    prefix: str = "",
    **kwargs: Any,
) -> Any:
    """ViSAEBench's ``EvalResults`` for ``sae`` on ``model``'s block ``layer`` over ``images``
    (PIL, with integer class ``labels``): ``metrics`` from ``FREE_METRICS`` through
    ``visaebench.evaluate``, and ``monosemanticity`` through its ``MonosemanticityScore`` with
    ``evaluator`` (another model, as ViSAEBench requires) at ``evaluator_layer``. A metric
    that fails raises (ViSAEBench's runner would print it and go on)."""
    import numpy as np
    import visaebench
    from visaebench.metrics import METRIC_REGISTRY, MonosemanticityScore

    from sae_vlm_plugin._compat import patch_numpy_trapezoid

    valid = (*FREE_METRICS, "monosemanticity")
    unknown = [name for name in metrics if name not in valid]
    if unknown:
        raise ValueError(f"unknown or unsupported metrics {unknown}; valid: {', '.join(valid)}")
    backbone = VisionModelBackbone(model, prefix=prefix)
    bench_sae = BenchSAE(sae)
    free = [name for name in metrics if name in FREE_METRICS]
    if "sparse_probing" in free:
        patch_numpy_trapezoid()
    with tempfile.TemporaryDirectory() as folder:
        # One shard file of (n_images, n_patches, d): every ViSAEBench metric reads shards so
        # (its FVU takes a tensor as already flattened rows).
        shard = Path(folder) / "activations.pt"
        torch.save(patch_activations(backbone, images, layer), shard)
        results = visaebench.EvalResults()
        if free:
            results = visaebench.evaluate(
                bench_sae,
                backbone=backbone,
                activations=[shard],
                labels=np.asarray(labels),
                images=list(images),
                metrics=free,
                device=device,
                ood_datasets={},
                **kwargs,
            )
        if "monosemanticity" in metrics:
            results.add(
                MonosemanticityScore().compute(
                    bench_sae,
                    [shard],
                    images=list(images),
                    evaluator_backbone=VisionModelBackbone(evaluator),
                    evaluator_layer=evaluator_layer,
                    device=device,
                )
            )
    produced = {result.metric_name for result in results}
    failed = [name for name in metrics if METRIC_REGISTRY[name].name not in produced]
    if failed:
        raise RuntimeError(f"ViSAEBench metrics {failed} failed (its runner printed why above)")
    return results
