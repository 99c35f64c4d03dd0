"""The paper's architectures at their published sizes (random weights, built from their configs
as ``sae_vlm_plugin.tiny.real_size`` builds them): extraction and the x64 training step.

- extraction, per family: ``extract_to_cache`` from a folder of real-size JPEGs (decode +
  preprocess + the forward, stopped after the hook + fp16 shard write) against the bare
  truncated forward on the same, already preprocessed pixels (plain PyTorch: a forward hook on
  the hook's module that ends the pass, no nnsight); images/s of both. The hook is the
  paper's (the second to last block), CLS where the family has one, else two random tokens
  per image (the reference's rule).
- training step at d_in 1024, d_sae 65,536 (the steering SAE's x64), batch 4096, through
  SAELens' ``SAETrainer.step``: the paper's Matryoshka step against SAELens' built-in
  ``matryoshka_batchtopk`` and against one dense 4096 x 1024 x 65,536 matmul.

Each figure runs in a fresh process, so that its peak memory is its own: on the CPU the
process's peak resident memory during the measured work (``VmHWM``, reset before it; the
weights and torch included), on CUDA peak allocated memory; there the models run in bfloat16.
``quick`` (a smoke run): the training step at d_sae 4096 and one 224 px encoder on one image, in
this process.

    python benchmarks/run.py --only real_size [--quick] [--device cuda]
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from bench_training_step import step_figures
from harness import Figure, peak_memory_gib, reset_peak_memory, time_side_by_side

DEVICES = ("cpu", "cuda")
BENCHMARK = "real_size"
ENCODERS = (
    # name, builder in sae_vlm_plugin.tiny.real_size (open_clip: its model name), image size, CLS
    ("CLIP ViT-L/14-336", "clip_vit_l14_336", 336, True),
    ("SigLIP so400m/14-384", "siglip_so400m_384", 384, False),
    ("AIMv2-L/14-224", "aimv2_large_224", 224, False),
    ("WebSSL MAE-300m/14-224", "webssl_mae300m_224", 224, True),
    ("WebSSL DINO-300m/14-224", "webssl_dino300m_224", 224, True),
    ("open_clip ViT-L-14-336", "open_clip:ViT-L-14-336", 336, True),
    ("open_clip ViT-SO400M-14-SigLIP-384", "open_clip:ViT-SO400M-14-SigLIP-384", 384, False),
)


class _EndOfPass(Exception):
    """Raised by the baseline's forward hook once the hooked module has run."""


def _build(builder: str) -> torch.nn.Module:
    from sae_vlm_plugin.tiny import real_size as real

    if builder.startswith("open_clip:"):
        return real.open_clip_model(builder.removeprefix("open_clip:"))()
    return getattr(real, builder)()


def _truncated_forward(
    root: torch.nn.Module, module_path: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], None]:
    """The bare forward of ``root`` that ends right after ``root.get_submodule(module_path)``."""

    def stop(*_: object) -> None:
        raise _EndOfPass

    target = root.get_submodule(module_path)

    def forward() -> None:
        handle = target.register_forward_hook(stop)
        try:
            with torch.no_grad():
                root(*args, **kwargs)
        except _EndOfPass:
            pass
        finally:
            handle.remove()

    return forward


def _write_jpegs(folder: Path, size: int, n_images: int) -> None:
    from PIL import Image

    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(n_images):
        pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:03d}.jpg", quality=90)


def extraction_figures(
    name: str, builder: str, size: int, has_cls: bool, n_images: int, repeats: int, device: str
) -> list[Figure]:
    from PIL import Image

    from sae_vlm_plugin import VisionModel, extract_to_cache

    on_cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if on_cuda else torch.float32
    model = VisionModel(_build(builder), device=device, dtype=dtype)
    hook = f"blocks.{model.n_layers - 2}.hook_resid_post"
    tokens = "cls" if has_cls else "random_k+replacement"
    root = model.family.vision_root(model.source_module)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        _write_jpegs(folder, size, n_images)
        pixels = model.preprocess([Image.open(p) for p in sorted(folder.iterdir())])
        args, kwargs = model.forward_inputs(pixels.to(device=device, dtype=dtype))
        runs = iter(range(1000))

        def extract() -> None:
            extract_to_cache(
                model,
                folder,
                hook,
                Path(tmp) / f"cache{next(runs)}",
                tokens=tokens,
                dtype="float16",
                batch_size=n_images,
                progress=False,
            )

        forward = _truncated_forward(root, model.hook_point(hook).module_path, args, kwargs)
        reset_peak_memory(device)
        times = time_side_by_side(
            {"extract": extract, "forward": forward}, repeats=repeats, device=device
        )
    figure = Figure(
        BENCHMARK,
        f"{name}: sae-vlm extract ({hook}, {tokens}) / bare truncated forward",
        times["extract"] / times["forward"],
        "bare forward to the hook on preprocessed pixels",
        goal_max=1.25,
        detail=f"{n_images / times['extract']:.2f} vs {n_images / times['forward']:.2f} images/s "
        f"({n_images} {size}-px JPEGs a batch, {str(dtype).removeprefix('torch.')} model, fp16 "
        f"cache); peak {peak_memory_gib(device):.1f} GiB",
    )
    return [figure]


def _in_fresh_process(fn: Callable[..., list[Figure]], *args: object) -> list[Figure]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def training_figures(quick: bool, device: str) -> list[Figure]:
    d_in, d_sae, batch_size = (128, 4096, 512) if quick else (1024, 65_536, 4096)
    return step_figures(d_in, d_sae, batch_size, repeats=2, device=device, benchmark=BENCHMARK)


def _in_this_process(fn: Callable[..., list[Figure]], *args: object) -> list[Figure]:
    return fn(*args)


def run(quick: bool, device: str = "cpu") -> list[Figure]:
    call = _in_this_process if quick else _in_fresh_process
    figures = call(training_figures, quick, device)
    encoders = [e for e in ENCODERS if e[2] == 224][:1] if quick else ENCODERS
    n_images, repeats = (1, 1) if quick else (4, 2)
    for name, builder, size, has_cls in encoders:
        figures += call(extraction_figures, name, builder, size, has_cls, n_images, repeats, device)
    return figures
