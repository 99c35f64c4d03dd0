"""Shared fixtures: tiny random models of every supported family and synthetic images.

Builders live in ``sae_vlm_plugin.tiny`` so that benchmarks, examples and the demo use them too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sae_vlm_plugin.threads import ENVIRONMENT_SWITCH
from sae_vlm_plugin.tiny import models as tiny_models


def pytest_configure(config: pytest.Config) -> None:
    """Results are compared bit for bit across runs and processes, so the thread governor,
    which follows the machine's load, stays off (its own tests turn it on). Under pytest-xdist,
    each worker takes its share of the cores for torch's intra-op threads, so that the workers
    together do not oversubscribe the machine; the processes a test starts inherit the same
    count (``OMP_NUM_THREADS``), so that a result they write equals, bit for bit, the one the
    test computes itself."""
    os.environ.setdefault(ENVIRONMENT_SWITCH, "0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


SHARED_SCOPES = ("module", "class", "package")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """How pytest-xdist (``--dist loadgroup``) shares the tests out: the tests of a file that
    use a module- or class-scoped fixture run on one worker (one per parameter of such a
    fixture, when it is parametrised), so that the fixture is built once; every other test
    goes to whichever worker is free. The ``slow`` tests are sent first, so that no long test
    starts last."""
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        definitions = item._fixtureinfo.name2fixturedefs
        shared = sorted(
            name for name, defs in definitions.items() if defs and defs[-1].scope in SHARED_SCOPES
        )
        if not shared:
            continue
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        key = "".join(f",{name}={params[name]}" for name in shared if name in params)
        # xdist reads the group after the node id's last "@" only when no "]" follows it
        group = f"{item.path}{key}".replace("[", "(").replace("]", ")")
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(params=sorted(tiny_models.VISION_BUILDERS))
def vision_build(request) -> tuple[str, torch.nn.Module]:
    """Each tiny vision encoder build in turn, as ``(short_name, model)``."""
    return request.param, tiny_models.VISION_BUILDERS[request.param]()


@pytest.fixture
def clip_vision_model() -> torch.nn.Module:
    return tiny_models.clip_vision_model()


@pytest.fixture
def clip_vision_model_with_projection() -> torch.nn.Module:
    return tiny_models.clip_vision_model_with_projection()


@pytest.fixture
def siglip_vision_model() -> torch.nn.Module:
    return tiny_models.siglip_vision_model()


@pytest.fixture
def aimv2_vision_model() -> torch.nn.Module:
    return tiny_models.aimv2_vision_model()


@pytest.fixture
def webssl_mae_model() -> torch.nn.Module:
    return tiny_models.webssl_mae_model()


@pytest.fixture
def webssl_dino_model() -> torch.nn.Module:
    return tiny_models.webssl_dino_model()


@pytest.fixture
def open_clip_vit_model() -> torch.nn.Module:
    return tiny_models.open_clip_vit_model()


@pytest.fixture
def open_clip_siglip_model() -> torch.nn.Module:
    return tiny_models.open_clip_siglip_model()


@pytest.fixture
def tiny_llava() -> tiny_models.TinyLlava:
    return tiny_models.llava_model()


@pytest.fixture
def synthetic_images():
    """18 labelled PIL images (3 shapes x 3 colours, twice) as ``(images, labels)``."""
    return tiny_models.synthetic_images(18)


@pytest.fixture
def pixel_batch() -> torch.Tensor:
    """A ``(4, 3, 32, 32)`` tensor of preprocessed pixels."""
    return tiny_models.pixel_batch(4)


@pytest.fixture
def image_folder(tmp_path, synthetic_images):
    """An ImageNet-style tree ``root/<label>/<n>.png`` holding the synthetic images."""
    images, labels = synthetic_images
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        class_dir = tmp_path / "images" / label
        class_dir.mkdir(parents=True, exist_ok=True)
        image.save(class_dir / f"{i:04d}.png")
    return tmp_path / "images"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """All 17 tokens of 240 synthetic images from the tiny CLIP at ``blocks.1.hook_resid_post``:
    an activation cache of 4080 rows of width 32."""
    from sae_vlm_plugin import VisionModel, extract_to_cache

    images, _ = tiny_models.synthetic_images(240)
    out = tmp_path_factory.mktemp("cache") / "cache"
    extract_to_cache(
        VisionModel(tiny_models.clip_vision_model()),
        images,
        "blocks.1.hook_resid_post",
        out,
        tokens="all",
        progress=False,
    )
    return out


@pytest.fixture
def hold_directory():
    """``hold_directory(path)``: another process that holds ``path`` (created) as a running
    ``sae-vlm`` command does (an exclusive ``flock`` on the directory), until the test ends."""
    import subprocess
    import sys

    holders: list[subprocess.Popen] = []
    script = (
        "import fcntl, os, sys, time\n"
        "handle = os.open(sys.argv[1], os.O_RDONLY)\n"
        "fcntl.flock(handle, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )

    def hold(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        holder = subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
        )
        holders.append(holder)
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait(timeout=30)
