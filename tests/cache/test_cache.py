"""The on-disk activation cache: same rows as in memory, kill-and-resume, refusals, provider."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import torch

from sae_vlm_plugin import ActivationCache, VisionModel, extract_activations, extract_to_cache
from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.tiny import models as tm

if TYPE_CHECKING:
    from transformers import CLIPVisionModel

BLOCK = "blocks.1.hook_resid_post"


@pytest.fixture
def model() -> VisionModel:
    return VisionModel(tm.clip_vision_model())


def test_cache_holds_the_rows_extract_activations_returns(tmp_path, model, image_folder):
    hooks = [BLOCK, "blocks.2.hook_resid_post"]
    cache = extract_to_cache(
        model,
        image_folder,
        hooks,
        tmp_path / "cache",
        tokens="random_k",
        k=3,
        batch_size=4,
        images_per_shard=5,
        progress=False,
    )
    in_memory = extract_activations(
        model, image_folder, hooks, tokens="random_k", k=3, progress=False
    )
    assert cache.complete
    assert cache.hooks == hooks
    assert len(cache.shard_paths(BLOCK)) == 4  # 18 images / 5 per shard
    loaded = cache.load(BLOCK)
    torch.testing.assert_close(loaded["activations"], in_memory[BLOCK])
    assert loaded["image_index"].tolist() == [i for i in range(18) for _ in range(3)]
    assert cache.n_rows(BLOCK) == 54
    torch.testing.assert_close(cache.load(hooks[1])["activations"], in_memory[hooks[1]])
    assert torch.equal(cache.load(hooks[1])["token_index"], loaded["token_index"])
    assert cache.image_ids == sorted(cache.image_ids)
    assert sorted(set(cache.labels)) == sorted({f"{c}_{s}" for s in tm.SHAPES for c in tm.COLOURS})
    manifest = json.loads((tmp_path / "cache" / "cache.json").read_text())
    settings = manifest["settings"]
    assert settings["model"] == "CLIPVisionModel"
    assert settings["family"] == "clip"
    assert settings["tokens"] == "random_3@seed0"
    assert manifest["hooks"][BLOCK]["d_in"] == tm.WIDTH
    assert manifest["library_versions"]["sae-lens"] != "missing"


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
)
def test_storage_dtype(tmp_path, model, dtype, torch_dtype):
    pixels = tm.pixel_batch(4)
    cache = extract_to_cache(model, pixels, BLOCK, tmp_path / dtype, dtype=dtype, progress=False)
    stored = cache.load(dtype=torch_dtype)["activations"]
    assert stored.dtype == torch_dtype
    full = extract_activations(model, pixels, BLOCK, progress=False)[BLOCK]
    torch.testing.assert_close(stored.float(), full.to(torch_dtype).float())


KILLABLE_EXTRACTION = textwrap.dedent(
    """
    import time
    from sae_vlm_plugin.tiny import models as tm
    from sae_vlm_plugin import VisionModel, extract_to_cache

    model = VisionModel(tm.clip_vision_model())
    plain = model.preprocess

    def slow(images):
        time.sleep(0.05)
        return plain(images)

    extract_to_cache(
        VisionModel(tm.clip_vision_model(), preprocess=slow), {images!r}, ["{block}", "blocks.2.hook_resid_post"],
        {out!r}, tokens="random_k", k=2, batch_size=2, images_per_shard=3, progress=False,
    )
    """
)


def test_killed_extraction_resumes_to_exactly_the_uninterrupted_rows(tmp_path, model, image_folder):
    hooks = [BLOCK, "blocks.2.hook_resid_post"]
    options = {
        "tokens": "random_k",
        "k": 2,
        "batch_size": 2,
        "images_per_shard": 3,
        "progress": False,
    }
    reference = extract_to_cache(model, image_folder, hooks, tmp_path / "reference", **options)

    out = tmp_path / "interrupted"
    script = KILLABLE_EXTRACTION.format(images=str(image_folder), block=BLOCK, out=str(out))
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while len(list((out / BLOCK).glob("shard_*.safetensors"))) < 2:
            assert process.poll() is None, "the extraction ended before it could be killed"
            assert time.monotonic() < deadline, "no shard appeared in time"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    interrupted = ActivationCache(out)
    assert not interrupted.complete
    assert len(interrupted.shard_paths(BLOCK)) < 6

    resumed = extract_to_cache(model, image_folder, hooks, out, **options)
    assert resumed.complete
    for hook in hooks:
        a, b = resumed.load(hook), reference.load(hook)
        for key in ("activations", "image_index", "token_index"):
            assert torch.equal(a[key], b[key]), (hook, key)
    assert not list(out.rglob(".*.tmp"))


def test_a_cache_of_a_different_run_is_refused(tmp_path, model):
    pixels = tm.pixel_batch(4)
    extract_to_cache(model, pixels, BLOCK, tmp_path / "c", tokens="cls", progress=False)
    with pytest.raises(
        ValueError, match=r"different extraction run.*tokens: 'cls' in the cache, 'mean' now"
    ):
        extract_to_cache(model, pixels, BLOCK, tmp_path / "c", tokens="mean", progress=False)
    with pytest.raises(ValueError, match=r"n_images: 4 in the cache, 3 now"):
        extract_to_cache(model, pixels[:3], BLOCK, tmp_path / "c", tokens="cls", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"not empty \(file.txt\) and holds no activation cache"):
        extract_to_cache(model, pixels, BLOCK, tmp_path / "other", progress=False)
    # Killed between writing the image table and the manifest: started afresh.
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "images.json").write_text('{"ids": ["x"], "labels": null}')
    (tmp_path / "half" / ".cache.json.tmp").write_text("{")
    cache = extract_to_cache(model, pixels, BLOCK, tmp_path / "half", progress=False)
    assert cache.complete
    assert cache.n_rows() == 4
    with pytest.raises(
        ValueError, match="unknown storage dtype 'fp8'; valid: float32, float16, bfloat16"
    ):
        extract_to_cache(model, pixels, BLOCK, tmp_path / "d", dtype="fp8", progress=False)


def test_a_run_that_wrote_no_shard_does_not_block_the_corrected_command(tmp_path, model):
    """A first run that fails at its first image (k too large, a corrupt file) leaves only its
    manifest; the corrected command, with other settings, then runs instead of being refused."""
    pixels = tm.pixel_batch(4)
    with pytest.raises(ValueError, match="k=100 tokens per image"):
        extract_to_cache(
            model, pixels, BLOCK, tmp_path / "c", tokens="random_k", k=100, progress=False
        )
    assert (tmp_path / "c" / "cache.json").exists()
    cache = extract_to_cache(model, pixels, BLOCK, tmp_path / "c", tokens="cls", progress=False)
    assert cache.complete
    assert cache.settings["tokens"] == "cls"
    assert cache.n_rows() == 4


def test_batches_provider_visits_every_row_once_per_epoch_and_is_seeded(tmp_path, model):
    cache = extract_to_cache(
        model,
        tm.pixel_batch(20),
        BLOCK,
        tmp_path / "c",
        tokens="all",
        images_per_shard=3,
        progress=False,
    )
    rows = cache.load()["activations"]  # 20 images x 17 tokens = 340 rows
    one_epoch = list(cache.batches(batch_size=17, loop=False, shards_in_buffer=2, seed=3))
    assert all(b.shape == (17, tm.WIDTH) for b in one_epoch)
    seen = torch.cat(one_epoch)
    assert seen.shape == rows.shape
    assert torch.equal(seen[seen[:, 0].argsort()], rows[rows[:, 0].argsort()])
    again = list(cache.batches(batch_size=17, loop=False, shards_in_buffer=2, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(one_epoch, again, strict=True))
    looping = cache.batches(batch_size=100, seed=3)
    assert [next(looping).shape[0] for _ in range(7)] == [100] * 7  # past one epoch (340 rows)
    # Data-parallel: rank r of N gets rows [r B/N, (r+1) B/N) of the very same batches.
    whole = [b for _, b in zip(range(30), cache.batches(batch_size=18, seed=5), strict=False)]
    for world in (2, 3):
        shares = [
            cache.batches(batch_size=18, seed=5, rank=rank, world_size=world)
            for rank in range(world)
        ]
        for batch in whole:
            assert torch.equal(torch.cat([next(share) for share in shares]), batch)
    with pytest.raises(ValueError, match="cannot take an equal share of batch_size 18"):
        next(cache.batches(batch_size=18, rank=0, world_size=4))


def test_cache_reader_errors(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="not an activation cache"):
        ActivationCache(tmp_path)
    cache = extract_to_cache(
        model, tm.pixel_batch(2), [BLOCK, "hook_post_norm"], tmp_path / "c", progress=False
    )
    with pytest.raises(ValueError, match="several hooks; name one of"):
        cache.load()
    with pytest.raises(
        ValueError,
        match=r"no hook 'hook_pooled'; it holds: blocks\.1\.hook_resid_post, hook_post_norm",
    ):
        cache.load("hook_pooled")


def _extract_arguments(
    checkpoint: Path, images: Path, hook: str, *, images_per_shard: int, batch_size: int
) -> list[str]:
    """``python`` arguments of a ``sae-vlm extract`` of ``random_k`` tokens, less ``--out``."""
    return [
        "-m",
        "sae_vlm_plugin.cli",
        "extract",
        "--model",
        str(checkpoint),
        "--hook",
        hook,
        "--tokens",
        "random_k",
        "--images",
        str(images),
        "--images-per-shard",
        str(images_per_shard),
        "--batch-size",
        str(batch_size),
    ]


@pytest.fixture
def torchrun() -> str:
    """The ``torchrun`` launcher installed next to this interpreter (the test skips without)."""
    path = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("torchrun is not installed next to this interpreter")
    return path


def _two_process_command(torchrun: str, arguments: list[str], out: Path) -> list[str]:
    """``torchrun`` running the ``python`` ``arguments`` in 2 local processes into ``out``."""
    return [
        torchrun,
        "--standalone",
        "--nproc-per-node",
        "2",
        "--no-python",
        sys.executable,
        *arguments,
        "--out",
        str(out),
    ]


class _ThreadRanks:
    """Two "ranks" of a data-parallel extraction as threads of this process, for
    ``DataParallel.current`` in the cache: their barriers meet."""

    def __init__(self) -> None:
        self.meeting = threading.Barrier(2, timeout=60)
        self.local = threading.local()

    @property
    def rank(self) -> int:
        return self.local.rank

    def current(self) -> Any:
        return SimpleNamespace(rank=self.rank, world_size=2, barrier=self.meeting.wait)


def test_a_second_rank_does_not_replace_the_cache_rank_0_just_started(
    tmp_path, model, image_folder, monkeypatch
):
    # Rank 1 used to take rank 0's new manifest for an unstarted cache and remove it, with the
    # hook folder rank 0 was about to write into (torchrun extraction failed 3 runs of 8).
    # The interleaving, made certain: rank 1 opens the manifest once rank 0 has made its hook
    # folder, and rank 0 writes its first shard after that.
    one = extract_to_cache(model, image_folder, BLOCK, tmp_path / "one", images_per_shard=4)
    import sae_vlm_plugin.cache.write as cache_module

    ranks = _ThreadRanks()
    opened = threading.Event()
    open_manifest, write_shard = cache_module._open_manifest, cache_module.write_shard

    def rank_1_opens_late(root: Path, *args: Any, **kwargs: Any) -> Any:
        if ranks.rank == 1:
            deadline = time.monotonic() + 10
            while not (root / BLOCK).is_dir() and time.monotonic() < deadline:
                time.sleep(0.01)
        try:
            return open_manifest(root, *args, **kwargs)
        finally:
            if ranks.rank == 1:
                opened.set()

    def rank_0_writes_late(*args: Any) -> None:
        opened.wait(timeout=10)
        write_shard(*args)

    monkeypatch.setattr(cache_module, "DataParallel", SimpleNamespace(current=ranks.current))
    monkeypatch.setattr(cache_module, "_open_manifest", rank_1_opens_late)
    monkeypatch.setattr(cache_module, "write_shard", rank_0_writes_late)
    errors: list[BaseException] = []

    def extract(rank: int) -> None:
        ranks.local.rank = rank
        own_model = VisionModel(copy.deepcopy(model.source_module))  # nnsight: one per thread
        try:
            extract_to_cache(
                own_model, image_folder, BLOCK, tmp_path / "two", images_per_shard=4, progress=False
            )
        except BaseException as error:
            errors.append(error)
            ranks.meeting.abort()

    threads = [threading.Thread(target=extract, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    two = ActivationCache(tmp_path / "two")
    assert two.complete
    torch.testing.assert_close(two.load(), one.load())


def test_cli_extract_writes_a_cache(tmp_path, image_folder, capsys):
    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "ckpt")
    code = cli_main(
        [
            "extract",
            "--model",
            str(checkpoint),
            "--hook",
            BLOCK,
            "--tokens",
            "cls",
            "--images",
            str(image_folder),
            "--out",
            str(tmp_path / "cache"),
            "--batch-size",
            "8",
            "--dtype",
            "float16",
        ]
    )
    assert code == 0
    assert f"{BLOCK}: 18 rows x {tm.WIDTH}" in capsys.readouterr().out
    cache = ActivationCache(tmp_path / "cache")
    assert cache.settings["model"] == str(checkpoint)
    assert cache.settings["dtype"] == "float16"


def test_two_process_torchrun_extraction_equals_one_process(
    tmp_path, model, image_folder, torchrun
):
    checkpoint = tm.save_clip_checkpoint(model.source_module, tmp_path / "clip")
    arguments = _extract_arguments(
        checkpoint, image_folder, BLOCK, images_per_shard=4, batch_size=3
    )
    single = subprocess.run(
        [sys.executable, *arguments, "--out", str(tmp_path / "one")], capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(
        _two_process_command(torchrun, arguments, tmp_path / "two"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = ActivationCache(tmp_path / "one"), ActivationCache(tmp_path / "two")
    assert two.complete
    assert one.image_ids == two.image_ids
    a, b = one.load(), two.load()
    assert torch.equal(a["image_index"], b["image_index"])
    assert torch.equal(a["token_index"], b["token_index"])
    # Same rows; values equal up to the float reduction order of the two processes' kernels.
    torch.testing.assert_close(a["activations"], b["activations"], atol=1e-5, rtol=1e-5)


def _slow_clip() -> CLIPVisionModel:
    """A random CLIP vision tower heavy enough (about 75 ms an image on one CPU thread here)
    that a 2-process extraction of 18 images is still running when its first shard lands."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=6,
        image_size=64,
        patch_size=4,
    )
    torch.manual_seed(tm.SEED)
    return CLIPVisionModel(config).eval()


def _worker_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the child of ``launcher_pid`` (torchrun) whose environment has ``RANK=rank``,
    read from Linux' ``/proc``; None while there is none."""
    wanted = f"RANK={rank}".encode()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
            if int(fields["PPid"]) != launcher_pid:
                continue
            environment = (status.parent / "environ").read_bytes().split(b"\0")
        except (OSError, KeyError, ValueError):  # the process ended meanwhile
            continue
        if wanted in environment:
            return int(status.parent.name)
    return None


def _assert_same_rows(cache: ActivationCache, reference: ActivationCache, n_shards: int) -> None:
    """``cache`` is complete and holds exactly ``reference``'s rows, once each, in
    ``n_shards`` shards, with no temporary file left behind."""
    assert cache.complete
    assert cache.image_ids == reference.image_ids
    assert len(cache.shard_paths()) == n_shards
    assert not list(cache.path.rglob(".*.tmp"))
    rows, expected = cache.load(), reference.load()
    assert torch.equal(rows["image_index"], expected["image_index"])
    assert torch.equal(rows["token_index"], expected["token_index"])
    pairs = torch.stack([rows["image_index"], rows["token_index"]], dim=1)
    assert len(pairs.unique(dim=0)) == len(pairs)
    # Values equal up to the float reduction order of differently threaded processes.
    torch.testing.assert_close(rows["activations"], expected["activations"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank in /proc")
def test_killing_one_rank_and_restarting_completes_without_loss_or_duplication(
    tmp_path, image_folder, torchrun
):
    """SIGKILL rank 1 of a 2-process ``torchrun`` extraction mid-way; the interrupted cache is
    then finished by a second 2-process run, and (a copy of it) by one plain process: both
    equal an uninterrupted 1-process run row for row."""
    hook = "blocks.5.hook_resid_post"
    n_shards = 18  # one image a shard, so each rank has 9 shards to write
    checkpoint = tm.save_clip_checkpoint(_slow_clip(), tmp_path / "clip")
    arguments = _extract_arguments(checkpoint, image_folder, hook, images_per_shard=1, batch_size=1)
    options = {"tokens": "random_k", "batch_size": 1, "images_per_shard": 1, "progress": False}
    model = VisionModel(str(checkpoint))  # named as the command names it: same cache settings
    reference = extract_to_cache(model, image_folder, hook, tmp_path / "reference", **options)

    out = tmp_path / "interrupted"
    log = tmp_path / "torchrun.log"
    with log.open("w") as log_file:
        launcher = subprocess.Popen(
            _two_process_command(torchrun, arguments, out), stdout=log_file, stderr=log_file
        )
    try:
        deadline = time.monotonic() + 120
        rank1 = None
        while rank1 is None or not list((out / hook).glob("shard_*.safetensors")):
            assert launcher.poll() is None, (
                f"the run ended before a rank was killed:\n{log.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, "no shard appeared in time"
            rank1 = rank1 or _worker_pid(launcher.pid, rank=1)
            time.sleep(0.01)
        os.kill(rank1, signal.SIGKILL)
        assert launcher.wait(timeout=120) != 0  # torchrun tears the group down and fails
    finally:
        if launcher.poll() is None:  # the test failed before the kill
            launcher.terminate()  # torchrun stops its workers on SIGTERM
            launcher.wait(timeout=60)
    interrupted = ActivationCache(out)
    assert not interrupted.complete
    written = {path.name for path in interrupted.shard_paths()}
    assert 1 <= len(written) < n_shards
    rank1_shards = {f"shard_{s:06d}.safetensors" for s in range(1, n_shards, 2)}
    assert not rank1_shards <= written, "rank 1 was killed after its work was done"
    alone = tmp_path / "finished_alone"
    shutil.copytree(out, alone)

    restarted = subprocess.run(
        _two_process_command(torchrun, arguments, out), capture_output=True, text=True, timeout=300
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    _assert_same_rows(ActivationCache(out), reference, n_shards)

    _assert_same_rows(
        extract_to_cache(model, image_folder, hook, alone, **options), reference, n_shards
    )


def test_a_cache_with_no_rows_is_refused_instead_of_looping_forever(tmp_path, model):
    # Every image unreadable and skipped: the cache is complete but holds 0 rows, and its
    # batches() used to spin on an empty buffer.
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_text("not an image")
    cache = extract_to_cache(
        model, folder, BLOCK, tmp_path / "cache", tokens="cls", skip_unreadable=True, progress=False
    )
    assert cache.n_rows(BLOCK) == 0
    with pytest.raises(ValueError, match=r"has 0 rows for blocks\.1\.hook_resid_post"):
        next(cache.batches(BLOCK, batch_size=4))
