"""MonoSemanticity score: the paper's largest case against the time and memory budget, and the
closed form against the naive pairwise loop.

- scale: 65,536 latents over 50,000 images, top-k codes with k = 20 (random distinct indices,
  positive values), 768-d embeddings; budget 1 s (issue #16) and 2 GiB of peak memory. Run in
  a fresh subprocess so that its peak memory (resident: VmHWM, reset just before the call;
  CUDA: peak allocated) measures the call alone; the time is also compared with one dense
  float64 matrix product with as many multiply-adds as the sparse product inside MS
  (``nnz * d_embed``).
- naive: 1,000 images x 4,096 latents (k = 20 codes), the pairwise loop of Eq. 9 run to the
  end, against MS on the same codes given as top-k codes and as a dense matrix; the scores
  must agree within 1e-6. Goal: at least 2,000x faster (issue #16).
- MS@16 (issue #28): ViSAEBench's top-16 approximation (``metrics.ms_at_k``, the codes as a
  sparse matrix) against the exact MS on the same top-k codes, at the naive and the scale sizes,
  timed side by side on the CPU (``ms_at_k`` runs there), with both scores' means; at the naive
  size also ViSAEBench's own ``MonosemanticityScore.compute`` (when ``visaebench`` is
  installed), fed the codes through an identity SAE and the embeddings through a backbone that
  looks them up, scoring every latent (``max_features`` = all), its scores checked against
  ``ms_at_k``'s. Not at the scale size: it first writes the dense 50,000 x 65,536 float32 codes
  (13 GB) to a memory map, then loops over the latents in Python. No goals: the figures show
  what the approximation costs next to the exact score.

    python benchmarks/run.py --only monosem [--quick] [--device cuda]
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import torch
from harness import (
    Figure,
    current_memory_gib,
    peak_memory_gib,
    reset_peak_memory,
    time_side_by_side,
)

import sae_vlm_plugin
from sae_vlm_plugin.metrics.codes import TopKCodes
from sae_vlm_plugin.metrics.monosemanticity import MonosemanticityResult, monosemanticity_score
from sae_vlm_plugin.metrics.ms_at_k import ms_at_k

DEVICES = ("cpu", "cuda")
BENCHMARK = "monosemanticity"
GIB = 2**30
SCALE = {"n_images": 50_000, "n_neurons": 65_536, "k": 20, "d_embed": 768}
SCALE_QUICK = {"n_images": 5_000, "n_neurons": 8_192, "k": 20, "d_embed": 768}
NAIVE = {"n_images": 1_000, "n_neurons": 4_096, "k": 20, "d_embed": 768}
NAIVE_QUICK = {"n_images": 200, "n_neurons": 1_024, "k": 20, "d_embed": 768}


def random_topk_codes(n_images: int, n_neurons: int, k: int, seed: int = 0) -> TopKCodes:
    """Codes with ``k`` distinct random latents per image and values in [0.01, 1.01)."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, n_neurons, (n_images, k), generator=generator)
    while True:  # redraw the (rare) rows that name a latent twice
        ordered = indices.sort(dim=1).values
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).nonzero().squeeze(1)
        if repeated.numel() == 0:
            break
        indices[repeated] = torch.randint(
            0, n_neurons, (int(repeated.numel()), k), generator=generator
        )
    values = torch.rand(n_images, k, generator=generator) + 0.01
    return TopKCodes(indices, values, n_neurons)


def naive_pairwise_ms(activations: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Eq. 7-9 as a plain loop over the image pairs n < m (vectorised over neurons only):
    ``MS = sum a_n a_m cos(e_n, e_m) / sum a_n a_m`` with min-max normalised ``a``."""
    x = activations.to(torch.float64)
    unit = embeddings.to(torch.float64)
    unit = unit / unit.norm(dim=1, keepdim=True)
    similarity = unit @ unit.T
    low, high = x.min(dim=0).values, x.max(dim=0).values
    a = (x - low) / (high - low)
    numerator = torch.zeros(x.shape[1], dtype=torch.float64)
    denominator = torch.zeros_like(numerator)
    n_images = x.shape[0]
    for n in range(n_images):
        for m in range(n + 1, n_images):
            relevance = a[n] * a[m]
            numerator += relevance * similarity[n, m]
            denominator += relevance
    return numerator / denominator


def scale_worker(
    n_images: int, n_neurons: int, k: int, d_embed: int, device: str = "cpu"
) -> dict[str, float]:
    """Runs in a fresh process: peak memory growth of one MS call, then side-by-side times."""
    codes = random_topk_codes(n_images, n_neurons, k)
    embeddings = torch.randn(n_images, d_embed, generator=torch.Generator().manual_seed(1))
    embeddings = embeddings.to(device)

    def score() -> MonosemanticityResult:
        return monosemanticity_score(codes, embeddings)

    before = current_memory_gib(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    result = score()  # its results come back to the CPU: the time includes a GPU's work
    first = time.perf_counter() - start
    growth = peak_memory_gib(device) - before
    nnz = n_images * k
    left = torch.randn(1000, d_embed, dtype=torch.float64, device=device)
    right = torch.randn(d_embed, max(1, nnz // 1000), dtype=torch.float64, device=device)
    times = time_side_by_side(
        {"ms": score, "gemm": lambda: left @ right}, repeats=3, warmup=0, device=device
    )
    return {
        "first_s": first,
        "ms_s": times["ms"],
        "gemm_s": times["gemm"],
        "peak_growth_bytes": growth * GIB,
        "n_scored": float(result.n_scored),
        "load_average": os.getloadavg()[0],
    }


def _scale_figures(quick: bool, device: str) -> list[Figure]:
    sizes = SCALE_QUICK if quick else SCALE
    package_root = pathlib.Path(sae_vlm_plugin.__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(package_root), env.get("PYTHONPATH", "")) if p
    )
    command = [
        sys.executable,
        __file__,
        "--scale-worker",
        *(str(v) for v in sizes.values()),
        device,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"scale worker failed:\n{completed.stderr}")
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    shape = (
        f"{sizes['n_neurons']:,} latents x {sizes['n_images']:,} images, "
        f"k={sizes['k']}, d={sizes['d_embed']}"
    )
    on_cuda = device.startswith("cuda")
    note = f"load avg {measured['load_average']:.1f}" + (" (on CUDA)" if on_cuda else "")
    memory = "CUDA peak allocated" if on_cuda else "VmHWM reset before the call"
    return [
        Figure(
            BENCHMARK,
            f"MS time, {shape}",
            measured["ms_s"] / 1.0,
            "1 s budget",
            goal_max=None if quick else 1.0,
            detail=f"{measured['ms_s']:.2f} s (median of 3; first call "
            f"{measured['first_s']:.2f} s); {note}",
        ),
        Figure(
            BENCHMARK,
            f"MS peak memory, {shape}",
            measured["peak_growth_bytes"] / (2 * GIB),
            "2 GiB budget",
            goal_max=None if quick else 1.0,
            detail=f"{measured['peak_growth_bytes'] / 2**20:.0f} MiB peak growth over the "
            f"inputs ({memory}, fresh process)",
        ),
        Figure(
            BENCHMARK,
            f"MS time vs a dense fp64 GEMM of nnz*d multiply-adds, {shape}",
            measured["ms_s"] / measured["gemm_s"],
            "(1000 x d) @ (d x nnz/1000) float64",
            detail=f"GEMM {measured['gemm_s'] * 1e3:.0f} ms; {note}",
        ),
    ]


def _naive_figures(quick: bool, device: str) -> list[Figure]:
    sizes = NAIVE_QUICK if quick else NAIVE
    n_images, n_neurons = sizes["n_images"], sizes["n_neurons"]
    codes = random_topk_codes(n_images, n_neurons, sizes["k"], seed=2)
    dense = torch.zeros(n_images, n_neurons).scatter_(1, codes.indices, codes.values)
    embeddings = torch.randn(n_images, sizes["d_embed"], generator=torch.Generator().manual_seed(3))

    start = time.perf_counter()
    reference = naive_pairwise_ms(dense, embeddings)
    naive_s = time.perf_counter() - start
    embeddings = embeddings.to(device)
    for form in (codes, dense):
        torch.testing.assert_close(
            monosemanticity_score(form, embeddings).scores,
            reference,
            atol=1e-6,
            rtol=0,
            equal_nan=True,
        )
    # Timed apart: interleaving the two would let the dense runs evict the codes' caches.
    times = {
        **time_side_by_side(
            {"codes": lambda: monosemanticity_score(codes, embeddings)}, 7, device=device
        ),
        **time_side_by_side(
            {"dense": lambda: monosemanticity_score(dense, embeddings)}, 7, device=device
        ),
    }
    n_pairs = n_images * (n_images - 1) // 2
    shape = f"{n_images:,} images x {n_neurons:,} latents (k={sizes['k']})"
    detail = (
        f"naive loop run to the end once: {naive_s:.1f} s over {n_pairs:,} pairs; "
        f"scores equal within 1e-6; load avg {os.getloadavg()[0]:.1f}"
    )
    goal = None if quick else 2000.0
    return [
        Figure(
            BENCHMARK,
            f"speed-up over the naive pairwise loop, top-k codes, {shape}",
            naive_s / times["codes"],
            "naive pairwise loop (same run)",
            goal_min=goal,
            detail=f"MS {times['codes'] * 1e3:.1f} ms; {detail}",
            unit="x faster",
        ),
        Figure(
            BENCHMARK,
            f"speed-up over the naive pairwise loop, same codes as a dense matrix, {shape}",
            naive_s / times["dense"],
            "naive pairwise loop (same run)",
            detail=f"MS {times['dense'] * 1e3:.1f} ms (no goal: the dense matrix is scanned in "
            f"full before its non-zeros are used); {detail}",
            unit="x faster",
        ),
    ]


def sparse_codes(codes: TopKCodes) -> torch.Tensor:
    """The top-k codes as a sparse COO ``(n_images, n_neurons)`` matrix."""
    n_images, k = codes.indices.shape
    rows = torch.arange(n_images).repeat_interleave(k)
    entries = torch.stack([rows, codes.indices.flatten()])
    shape = (n_images, codes.n_neurons)
    values = codes.values.flatten()
    return torch.sparse_coo_tensor(entries, values, shape, check_invariants=True).coalesce()


class _IdentitySAE:
    """ViSAEBench's ``SAEInterface`` whose codes are its input: its metric reads given codes."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class _EmbeddingLookup:
    """ViSAEBench's ``BackboneInterface`` over precomputed embeddings: the "images" are row
    indices, each returned as one patch (its mean over patches is the embedding itself)."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings

    def extract_activations(self, images: list[int], *, layer: int = -1) -> torch.Tensor:
        return self.embeddings[list(images)].unsqueeze(1)


def visaebench_ms(dense: torch.Tensor, embeddings: torch.Tensor, k: int = 16) -> list[float]:
    """ViSAEBench's ``MonosemanticityScore.compute`` on given codes and embeddings, every
    firing latent scored: the scores it keeps (those with a positive denominator), by latent."""
    from visaebench.metrics import MonosemanticityScore

    n_images, n_neurons = dense.shape
    metric = MonosemanticityScore(top_k_images=k, max_features=n_neurons)
    result = metric.compute(
        _IdentitySAE(),
        dense,
        device="cpu",
        images=range(n_images),
        evaluator_backbone=_EmbeddingLookup(embeddings),
    )
    return list(result.metadata["ms_distribution"])


def _visaebench_installed() -> bool:
    try:
        import visaebench  # noqa: F401
    except ImportError:
        print(
            f"{BENCHMARK}: skipping ViSAEBench's MonosemanticityScore: visaebench is not "
            'installed (pip install -e ".[visaebench]")',
            file=sys.stderr,
        )
        return False
    return True


def _ms_at_16_figures(
    case: str, sizes: dict[str, int], code_seed: int, embedding_seed: int
) -> list[Figure]:
    """MS@16 against the exact MS on the codes (and embeddings) of the ``case`` figures above;
    at the naive size also ViSAEBench's own MS."""
    n_images, n_neurons = sizes["n_images"], sizes["n_neurons"]
    codes = random_topk_codes(n_images, n_neurons, sizes["k"], seed=code_seed)
    sparse = sparse_codes(codes)
    generator = torch.Generator().manual_seed(embedding_seed)
    embeddings = torch.randn(n_images, sizes["d_embed"], generator=generator)
    exact = monosemanticity_score(codes, embeddings)
    at_16 = ms_at_k(sparse, embeddings, k=16)
    times = time_side_by_side(
        {
            "exact": lambda: monosemanticity_score(codes, embeddings),
            "at_16": lambda: ms_at_k(sparse, embeddings, k=16),
        },
        repeats=3 if case == "scale" else 7,
        device="cpu",
    )
    shape = f"{n_images:,} images x {n_neurons:,} latents (k={sizes['k']})"
    baseline = "exact MS on the same codes (TopKCodes)"
    figures = [
        Figure(
            BENCHMARK,
            f"MS@16 / exact MS time ({case}), {shape}",
            times["at_16"] / times["exact"],
            baseline,
            detail=f"ms_at_k on a sparse matrix {times['at_16'] * 1e3:.1f} ms vs "
            f"{times['exact'] * 1e3:.1f} ms; mean MS@16 {at_16.mean:.4f} vs mean exact MS "
            f"{exact.summary()['mean']:.4f}; on the CPU; load avg {os.getloadavg()[0]:.1f}",
        )
    ]
    if case != "naive" or not _visaebench_installed():
        return figures
    dense = sparse.to_dense()
    theirs = torch.tensor(visaebench_ms(dense, embeddings), dtype=torch.float64)
    ours = at_16.scores[~torch.isnan(at_16.scores)]
    if theirs.shape != ours.shape:
        raise AssertionError(
            f"ViSAEBench scored {len(theirs)} latents, ms_at_k {len(ours)}: the two MS@16 "
            "no longer agree on which latents count"
        )
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # Timed apart: its dense codes and memory map would evict the others' caches.
    theirs_s = time_side_by_side(
        {"visaebench": lambda: visaebench_ms(dense, embeddings)}, repeats=3, device="cpu"
    )["visaebench"]
    figures.append(
        Figure(
            BENCHMARK,
            f"ViSAEBench MonosemanticityScore / exact MS time ({case}), {shape}",
            theirs_s / times["exact"],
            baseline,
            detail=f"{theirs_s * 1e3:.0f} ms (its compute on the dense codes, every latent; "
            f"{theirs_s / times['at_16']:.0f}x ms_at_k's time) vs {times['exact'] * 1e3:.1f} "
            f"ms; its {len(theirs):,} scores equal ms_at_k's within 1e-5 (it works in float32)",
        )
    )
    return figures


def run(quick: bool, device: str = "cpu") -> list[Figure]:
    return [
        *_scale_figures(quick, device),
        *_naive_figures(quick, device),
        # the same codes and embeddings as the naive and scale figures
        *_ms_at_16_figures("naive", NAIVE_QUICK if quick else NAIVE, 2, 3),
        *_ms_at_16_figures("scale", SCALE_QUICK if quick else SCALE, 0, 1),
    ]


if __name__ == "__main__" and sys.argv[1:2] == ["--scale-worker"]:
    print(json.dumps(scale_worker(*(int(v) for v in sys.argv[2:6]), device=sys.argv[6])))
