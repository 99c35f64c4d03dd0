"""The shared machine: each figure is the same work beside another process that wants the CPU,
over its value on the quiet machine, measured back to back in one run.

Work (each a unit repeated many times, as a user's job repeats it):

- MS at 1,000 images x 4,096 latents (top-k codes, k = 20), as the training-time evaluator and
  a sweep of analyses call it, and at the paper's scale (50,000 x 65,536);
- the paper's Matryoshka training step, d_in 768, x8, batch 4096, through SAELens'
  ``SAETrainer.step``, with the thread governor (``adaptive_threads=True``) and without it
  (the default: fixed threads, bit for bit whatever the load);
- extraction: the toy CLIP's second-to-last block, CLS, on 256 toy-world images
  (``extract_activations``: preprocessing, the forward, the capture);
- the demo's small-SAE training end to end: ``train_demo_sae`` (the demo's settings: x4, k 8,
  batch 128, ``adaptive_threads``) on the toy CLIP's CLS activations of 1,000 toy-world images,
  200 steps; its cache is written by the first call and reused by the rest, as in the demo.

Competitors, each its own process started by the benchmark:

- a 1-thread Python busy loop;
- a 2-thread torch matmul loop (1024 x 1024 float32, as another PyTorch job that wants every
  core);
- a second copy of the same work (this module's ``repeat_forever`` in a fresh interpreter).

Goal (issue #28): every loaded figure at most 2.0x its quiet value: two processes that both
want 2 cores get one each, so 2x is the fair share; more is time lost to oversubscription. A
governed unit needs a window of work (0.25 s) to see the shared cores, so each case first runs
its work for ``SETTLE`` seconds unmeasured.

    python benchmarks/run.py --only contention [--quick]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from bench_monosemanticity import NAIVE, NAIVE_QUICK, SCALE, SCALE_QUICK, random_topk_codes
from bench_training_step import K, _stepper, _trainer
from harness import Figure

BENCHMARK = "contention"
HERE = Path(__file__).resolve().parent
SETTLE = 1.0
GOAL = 2.0

COMPETITORS: dict[str, tuple[str, bool]] = {
    "1-thread busy loop": ("while True: pass\n", False),
    "2-thread torch matmul loop": (
        "import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nwhile True: a @ a\n",
        False,
    ),
    "second copy of the same work": (
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
        "import bench_contention\n"
        "bench_contention.repeat_forever(sys.argv[1], sys.argv[2] == 'quick')\n",
        True,
    ),
}
"""Competitor name -> (the Python program it runs, with the work's name and ``quick`` or
``full`` as arguments; whether it prints ``ready`` once its set-up is done)."""


# --- the work ---------------------------------------------------------------------------------


def _ms(size: dict[str, int]) -> Callable[[], object]:
    from sae_vlm_plugin.metrics.monosemanticity import monosemanticity_score

    codes = random_topk_codes(size["n_images"], size["n_neurons"], size["k"])
    embeddings = torch.randn(size["n_images"], size["d_embed"])
    return lambda: monosemanticity_score(codes, embeddings)


def _paper_step(quick: bool, governed: bool) -> Callable[[], object]:
    from sae_vlm_plugin.threads import ThreadGovernor
    from sae_vlm_plugin.training import (
        PaperMatryoshkaBatchTopKTrainingSAE,
        PaperMatryoshkaBatchTopKTrainingSAEConfig,
        paper_learning_rate,
        prepare_paper_trainer,
    )

    d_in, d_sae, batch_size = (256, 2048, 1024) if quick else (768, 6144, 4096)
    torch.manual_seed(0)
    batch = torch.randn(batch_size, d_in)
    sae = PaperMatryoshkaBatchTopKTrainingSAE(
        PaperMatryoshkaBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=K)
    )
    trainer = _trainer(sae, batch_size, paper_learning_rate(d_sae))
    prepare_paper_trainer(trainer, scaling_factor=None, warmup_steps=10)
    step = _stepper(trainer, batch)
    if not governed:
        return step
    governor = ThreadGovernor()

    def governed_step() -> None:
        with governor.unit():
            step()

    return governed_step


def _extraction(quick: bool) -> Callable[[], object]:
    from sae_vlm_plugin import VisionModel, extract_activations
    from sae_vlm_plugin.toy import world_images

    model = VisionModel("toy-clip")
    images, _ = world_images(64 if quick else 256, seed=5)
    hook = f"blocks.{model.n_layers - 2}.hook_resid_post"
    return lambda: extract_activations(model, images, hook, tokens="cls", progress=False)


def _demo_training(quick: bool) -> Callable[[], object]:
    from sae_vlm_plugin import VisionModel
    from sae_vlm_plugin.demo.shared import DemoConfig, train_demo_sae
    from sae_vlm_plugin.toy import world_images

    folder = Path(tempfile.mkdtemp(prefix="bench-contention-"))
    config = DemoConfig(out_dir=folder, training_steps=50 if quick else 200, progress=False)
    model = VisionModel("toy-clip")
    hook = f"blocks.{model.n_layers - 2}.hook_resid_post"
    images, _ = world_images(1000, seed=5)
    runs = iter(range(10**9))
    return lambda: train_demo_sae(
        model, images, hook, folder, config, "cls", run_name=f"run{next(runs)}"
    )


def work(name: str, quick: bool) -> Callable[[], object]:
    """The unit of work called ``name`` (a key of ``WORK``), ready to call repeatedly."""
    naive, scale = (NAIVE_QUICK, SCALE_QUICK) if quick else (NAIVE, SCALE)
    builders: dict[str, Callable[[], Callable[[], object]]] = {
        "ms_naive": lambda: _ms(naive),
        "ms_scale": lambda: _ms(scale),
        "step_governed": lambda: _paper_step(quick, governed=True),
        "step_fixed": lambda: _paper_step(quick, governed=False),
        "extraction": lambda: _extraction(quick),
        "demo_training": lambda: _demo_training(quick),
    }
    return builders[name]()


WORK: dict[str, tuple[str, int]] = {
    "ms_naive": ("MS 1,000 images x 4,096 latents (thread governor)", 20),
    "ms_scale": ("MS 50,000 images x 65,536 latents (thread governor)", 3),
    "step_governed": ("paper step d_in 768, x8, batch 4096 (adaptive_threads=True)", 5),
    "step_fixed": ("paper step d_in 768, x8, batch 4096 (default: fixed threads)", 5),
    "extraction": ("extraction, toy CLIP, 256 images, CLS", 5),
    "demo_training": ("the demo's small-SAE training, 200 steps end to end", 3),
}
"""Name -> (what the figure says, measured repeats). Quick sizes are smaller than named."""


def repeat_forever(name: str, quick: bool) -> None:
    """The competitor "a second copy of the same work": says ``ready`` once built, then runs."""
    fn = work(name, quick)
    fn()
    print("ready", flush=True)
    while True:
        fn()


# --- measuring ---------------------------------------------------------------------------------


@contextmanager
def competing(
    program: str, args: tuple[str, ...], announces_ready: bool, seconds: float = 900.0
) -> Iterator[None]:
    """``program`` running in another process for the duration of the block (killed at the
    end; it also ends by itself after ``seconds``, should the benchmark be killed first). One
    that ``announces_ready`` is waited for until it prints ``ready`` (its set-up done)."""
    guard = (
        "import threading, os, time\n"
        f"threading.Thread(target=lambda: (time.sleep({seconds}), os._exit(0)), daemon=True)"
        ".start()\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", guard + program, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        if announces_ready:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"competitor {args} did not start (exit {process.poll()})")
        else:
            time.sleep(0.5)  # let the scheduler see it
        yield
    finally:
        process.kill()
        process.wait()


def median_seconds(fn: Callable[[], object], repeats: int, settle: float = SETTLE) -> float:
    """Median time of ``fn`` after running it for ``settle`` seconds unmeasured."""
    end = time.perf_counter() + settle
    while time.perf_counter() < end:
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def contention_figures(
    name: str, competitors: dict[str, tuple[str, bool]], quick: bool
) -> list[Figure]:
    """The work ``name`` quiet, then beside each competitor (quiet again before each)."""
    label, repeats = WORK[name]
    repeats, settle = (1, 0.1) if quick else (repeats, SETTLE)
    fn = work(name, quick)
    figures = []
    for competitor, (program, announces_ready) in competitors.items():
        quiet = median_seconds(fn, repeats, settle)
        with competing(program, (name, "quick" if quick else "full"), announces_ready):
            loaded = median_seconds(fn, repeats, settle)
        figures.append(
            Figure(
                BENCHMARK,
                f"{'quick ' if quick else ''}{label}, beside a {competitor}",
                loaded / quiet,
                "the same on the quiet machine",
                goal_max=None if quick else GOAL,
                detail=f"{loaded * 1e3:.1f} ms loaded vs {quiet * 1e3:.1f} ms quiet "
                f"({torch.get_num_threads()} threads)",
            )
        )
    return figures


def run(quick: bool) -> list[Figure]:
    """Every work beside every competitor; ``quick`` (a smoke run): smaller work, one
    competitor each, in turn, so that every work and every competitor runs once."""
    figures = []
    names = list(COMPETITORS)
    for i, name in enumerate(WORK):
        chosen = [names[i % len(names)]] if quick else names
        figures += contention_figures(name, {c: COMPETITORS[c] for c in chosen}, quick)
    return figures
