"""Static dashboard: build time and size at 4,096 latents x 10,000 images, and the paper's
largest case (65,536 latents x 50,000 images) projected from measured scaling.

Synthetic input: top-k codes (k = 20 random latents per image), random MS scores and decoder
rows (d_in = 1,024), and tiny 32 x 32 images generated on demand. Every time is a ratio against
writing the thumbnails of the same shown images alone (the part no dashboard can skip):

- build: ``data_from_codes`` (top-16, density, histograms) + thumbnails + MS plot + page/data
  files, into a fresh folder;
- rebuild: the same into a folder whose thumbnails exist (they are reused);
- size: bytes written / thumbnail bytes;
- projected: each stage timed at the larger size is extrapolated along its driver (codes:
  images; page: latents; thumbnails: shown images - linear by construction; decoder neighbours
  of Matryoshka SAEs: latents squared); the growth measured between two sizes (both dimensions
  doubled) is printed beside, as a check of those assumptions.

    python benchmarks/run.py --only dashboard [--quick]
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from harness import Figure
from PIL import Image

from sae_vlm_plugin.dashboard.build import write_from_data
from sae_vlm_plugin.dashboard.data import data_from_codes, decoder_neighbours
from sae_vlm_plugin.dashboard.html import write_dashboard
from sae_vlm_plugin.dashboard.thumbnails import write_thumbnails
from sae_vlm_plugin.images import ImageSource
from sae_vlm_plugin.metrics.figures import Coverage, plot_ms_distribution

BENCHMARK = "dashboard"
K = 20
D_IN = 1024
SIZES = [(2048, 5000), (4096, 10_000)]
SIZES_QUICK = [(512, 1000), (1024, 2000)]
TARGET = (65_536, 50_000)
REPEATS = 3


def synthetic(n_latents: int, n_images: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(n_images).repeat_interleave(K)
    cols = torch.stack(
        [torch.randperm(n_latents, generator=generator)[:K] for _ in range(n_images)]
    )
    values = torch.rand(n_images * K, generator=generator) + 0.01
    codes = torch.sparse_coo_tensor(
        torch.stack([rows, cols.reshape(-1)]),
        values,
        (n_images, n_latents),
        check_invariants=False,
    ).coalesce()
    scores = torch.rand(n_latents, generator=generator)
    ids = [f"img{i:06d}" for i in range(n_images)]

    def load(i: int) -> Image.Image:
        shade = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
        return Image.new("RGB", (32, 32), shade)

    source = ImageSource(ids=ids, labels=None, description="synthetic", loader=load)
    return codes, scores, ids, source


def _bytes(folder: Path, pattern: str = "**/*") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def measure(n_latents: int, n_images: int) -> dict[str, float]:
    codes, scores, ids, source = synthetic(n_latents, n_images)
    root = Path(tempfile.mkdtemp(prefix="bench_dash_"))
    try:
        start = time.perf_counter()
        data = data_from_codes(codes, ids, scores)
        t_data = time.perf_counter() - start
        shown = data.top_indices[data.top_indices >= 0].unique().tolist()
        # Alternate fresh-folder runs so that file-system noise hits both alike; medians.
        thumb_times, build_times = [], []
        for repeat in range(REPEATS):
            start = time.perf_counter()
            write_thumbnails(source, shown, root / f"thumbs_only{repeat}", size=32)
            thumb_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            write_from_data(data, source, root / f"build{repeat}", thumbnail_size=32)
            build_times.append(time.perf_counter() - start)
        t_thumbs, t_build_write = statistics.median(thumb_times), statistics.median(build_times)
        start = time.perf_counter()
        write_from_data(data, source, root / "build0", thumbnail_size=32)
        t_rebuild = time.perf_counter() - start
        start = time.perf_counter()
        thumbs = {p: f"thumbs/32/{p}.jpg" for p in shown}
        write_dashboard(data, root / "page_only", thumbs)
        coverage = Coverage.of(data.scores, data.support, min_support=2)
        plot_ms_distribution(data.scores, coverage, root / "page_only" / "ms.png", title="bench")
        t_page = time.perf_counter() - start
        w_dec = torch.randn(n_latents, D_IN)
        start = time.perf_counter()
        decoder_neighbours(w_dec, torch.arange(n_latents))
        t_neigh = time.perf_counter() - start
        return {
            "data": t_data,
            "thumbs": t_thumbs,
            "build": t_data + t_build_write,
            "rebuild": t_data + t_rebuild,
            "page": t_page,
            "neighbours": t_neigh,
            "bytes": _bytes(root / "build0"),
            "thumb_bytes": _bytes(root / "build0", "thumbs/**/*.jpg"),
            "shown": len(shown),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(quick: bool = False) -> list[Figure]:
    (small_l, small_i), (n_latents, n_images) = SIZES_QUICK if quick else SIZES
    measure(64, 100)  # warm-up: first calls of sparse ops and matplotlib
    small = measure(small_l, small_i)
    big = measure(n_latents, n_images)
    label = f"{n_latents:,} latents x {n_images:,} images"
    figures = [
        Figure(
            BENCHMARK,
            f"build {label} vs writing its thumbnails alone",
            big["build"] / big["thumbs"],
            "write_thumbnails of the shown images",
            goal_max=3.0,
            detail=f"build {big['build']:.2f} s, thumbnails {big['thumbs']:.2f} s "
            f"({big['shown']:,} shown images)",
        ),
        Figure(
            BENCHMARK,
            f"rebuild {label} (thumbnails reused) vs writing thumbnails",
            big["rebuild"] / big["thumbs"],
            "write_thumbnails of the shown images",
            goal_max=1.0,
            detail=f"rebuild {big['rebuild']:.2f} s",
        ),
        Figure(
            BENCHMARK,
            f"size {label} vs its thumbnails",
            big["bytes"] / big["thumb_bytes"],
            "bytes of the thumbnails",
            unit="x bytes",
            detail=f"{big['bytes'] / 2**20:.1f} MiB in all, "
            f"{(big['bytes'] - big['thumb_bytes']) / n_latents:.0f} B of data per latent",
        ),
    ]
    # Codes, page and thumbnails are linear in their drivers by construction and are projected
    # linearly; decoder neighbours quadratically. The growth exponents measured between the two
    # sizes (both dimensions x2) are reported beside, to check those assumptions.
    latent_factor, image_factor = TARGET[0] / n_latents, TARGET[1] / n_images
    shown_target = min(TARGET[1], 16 * TARGET[0])
    drivers = {
        "data": (image_factor, 1),
        "page": (latent_factor, 1),
        "thumbs": (shown_target / big["shown"], 1),
        "neighbours": (latent_factor, 2),
    }
    projected, measured = {}, {}
    for stage, (factor, power) in drivers.items():
        measured[stage] = math.log(max(big[stage], 1e-6) / max(small[stage], 1e-6)) / math.log(2)
        projected[stage] = big[stage] * factor**power
    total = projected["data"] + projected["page"] + projected["thumbs"]
    figures.append(
        Figure(
            BENCHMARK,
            "projected build 65,536 latents x 50,000 images vs writing thumbnails",
            total / projected["thumbs"],
            "write_thumbnails of the shown images (projected)",
            goal_max=3.0,
            detail=f"projected {total:.0f} s (codes {projected['data']:.1f} s, page "
            f"{projected['page']:.0f} s, thumbnails {projected['thumbs']:.0f} s); decoder "
            f"neighbours for Matryoshka SAEs +{projected['neighbours']:.0f} s; measured growth "
            "per x2: " + ", ".join(f"{stage} x{2**e:.2f}" for stage, e in measured.items()),
        )
    )
    return figures


if __name__ == "__main__":
    for figure in run(quick=True):
        print(figure)
