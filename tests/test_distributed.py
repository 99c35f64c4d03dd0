"""Data-parallel training under torchrun (gloo, 2 CPU processes) equals one process with the
global batch; the batch-wide reductions equal their one-process values on hand-made shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from sae_lens import SAE

from sae_vlm_plugin import VisionModel
from sae_vlm_plugin.distributed import DataParallel
from sae_vlm_plugin.tiny import models as tm
from sae_vlm_plugin.tokens import TokenSelection
from sae_vlm_plugin.training.batch_reduction import LocalBatch, ShardedBatch
from sae_vlm_plugin.training.image_stream import image_activation_batches

HOOK = "blocks.1.hook_resid_post"
STEPS = 20


# -- the reductions, rank by rank ----------------------------------------------------------


def _reduce_on_rank(rank: int, world: int, init_file: str, cases: list, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        sharded = ShardedBatch()
        results = []
        for pre, n_keep, residual in cases:
            rows = pre.shape[0] // world
            mine = pre[rank * rows : (rank + 1) * rows]
            kept, values, smallest = sharded.topk(mine.flatten(), n_keep, pre.shape[1])
            fired = torch.zeros(pre.shape[1], dtype=torch.bool)
            fired[kept % pre.shape[1]] = True
            local_residual = residual[rank * rows : (rank + 1) * rows]
            results.append(
                {
                    "kept": kept + rank * rows * pre.shape[1],  # as flat indices of the batch
                    "values": values,
                    "smallest": smallest,
                    "fired": sharded.fired(fired),
                    "median": sharded.geometric_median(local_residual),
                    "variance": sharded.residual_variance(local_residual),
                }
            )
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _cases() -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(12, 40, generator=generator, dtype=torch.float64)
    one_rank = torch.full((12, 40), -1.0, dtype=torch.float64)
    one_rank[8:] = torch.rand(4, 40, generator=generator, dtype=torch.float64)  # rank 2 only
    few = torch.full((12, 40), -1.0, dtype=torch.float64)
    few[[0, 5, 11], [3, 7, 3]] = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    silent = -torch.rand(12, 40, generator=generator, dtype=torch.float64)
    residual = torch.randn(12, 6, generator=generator, dtype=torch.float64)
    return [
        (dense, 4 * 12, residual),  # k = 4: the usual case
        (one_rank, 3 * 12, residual),  # every kept entry sits on the last rank
        (few, 4 * 12, residual),  # fewer positive entries than k * B
        (silent, 4 * 12, residual),  # nothing fires
    ]


@pytest.mark.slow
def test_sharded_reductions_equal_the_one_process_values(tmp_path):
    world, cases = 3, _cases()
    out = tmp_path / "results"
    mp.spawn(
        _reduce_on_rank,
        args=(world, str(tmp_path / "init"), cases, str(out)),
        nprocs=world,
        join=True,
    )
    per_rank = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(world)]
    local = LocalBatch()
    for index, (pre, n_keep, residual) in enumerate(cases):
        kept, values, smallest = local.topk(pre.flatten(), n_keep, pre.shape[1])
        results = [ranks[index] for ranks in per_rank]
        assert torch.equal(torch.cat([r["kept"] for r in results]), kept), index
        assert torch.equal(torch.cat([r["values"] for r in results]), values), index
        fired = torch.zeros(pre.shape[1], dtype=torch.bool)
        fired[kept % pre.shape[1]] = True
        for result in results:  # the same on every rank
            assert result["smallest"] == smallest, index
            assert torch.equal(result["fired"], fired), index
            torch.testing.assert_close(result["median"], local.geometric_median(residual))
            torch.testing.assert_close(result["variance"], local.residual_variance(residual))
    assert per_rank[0][2]["kept"].numel() + per_rank[1][2]["kept"].numel() == 2
    assert per_rank[0][3]["smallest"] == 0


def _image_stream_on_rank(rank: int, world: int, init_file: str, images: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = VisionModel(tm.clip_vision_model())
        tokens = TokenSelection.parse("random_k", k=2, seed=0)

        def stream(parallel: DataParallel) -> list[torch.Tensor]:
            batches = image_activation_batches(
                model,
                images,
                HOOK,
                tokens,
                12,
                batch_size_images=5,
                buffer_batches=2,
                seed=1,
                parallel=parallel,
            )
            return [next(batches) for _ in range(8)]  # past one epoch of 18 images (36 rows)

        shares = stream(DataParallel.current())
        alone = stream(DataParallel()) if rank == 0 else []
        torch.save({"shares": shares, "alone": alone}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_extract_disjoint_images_and_share_the_one_process_stream(tmp_path, image_folder):
    world, out = 2, tmp_path / "stream"
    mp.spawn(
        _image_stream_on_rank,
        args=(world, str(tmp_path / "init"), str(image_folder), str(out)),
        nprocs=world,
        join=True,
    )
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(world)]
    alone = ranks[0]["alone"]
    for step, batch in enumerate(alone):
        assert batch.shape == (12, tm.WIDTH)
        shares = [r["shares"][step] for r in ranks]
        assert [s.shape[0] for s in shares] == [6, 6]
        torch.testing.assert_close(torch.cat(shares), batch, atol=1e-5, rtol=1e-5)


# -- training under torchrun ---------------------------------------------------------------


def _sweep_file(path: Path, cache: Path) -> Path:
    """Two paper SAEs, both BatchTopK flavours, with every batch-wide step exercised within 20
    steps: the threshold starts at step 5 and a latent is dead after 2 batches without firing
    (so the auxiliary loss runs)."""
    spec = {
        "shared": {
            "cache_path": str(cache),
            "hook_name": HOOK,
            "batch_size": 64,
            "training_steps": STEPS,
            "warmup_steps": 5,
            "threshold_start_step": 5,
            "dead_after_inputs": 128,
            "n_batches_for_scaling": 4,
            "log_every_steps": 5,
            "checkpoint_every_steps": 10,
        },
        "saes": {
            "batchtopk": {"architecture": "paper_batchtopk", "expansion_factor": 8, "k": 4},
            "matryoshka": {
                "architecture": "paper_matryoshka_batchtopk",
                "expansion_factor": 4,
                "k": 6,
            },
        },
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def _sweep(run_dir: Path, sweep_file: Path, processes: int) -> None:
    command = [sys.executable, "-m", "sae_vlm_plugin.cli", "sweep", "--config", str(sweep_file)]
    if processes > 1:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        if torchrun is None:
            pytest.skip("torchrun is not installed next to this interpreter")
        command = [torchrun, "--standalone", f"--nproc-per-node={processes}", "--no-python"]
        command += [sys.executable, "-m", "sae_vlm_plugin.cli", "sweep", "--config"]
        command += [str(sweep_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "--run-dir", str(run_dir)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return SAE.load_from_disk(run_dir / "final").state_dict()


def _train_log(run_dir: Path) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["kind"] == "train"]


@pytest.mark.slow
def test_two_ranks_train_the_sae_one_process_trains_and_resume(tmp_path, tiny_cache):
    sweep_file = _sweep_file(tmp_path / "sweep.yaml", tiny_cache)
    _sweep(tmp_path / "one", sweep_file, processes=1)
    _sweep(tmp_path / "two", sweep_file, processes=2)
    for name in ("batchtopk", "matryoshka"):
        one, two = _final(tmp_path / "one" / name), _final(tmp_path / "two" / name)
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-5, msg=key)
        assert float(one["threshold"][0]) > 0  # the threshold ran
        log_one, log_two = _train_log(tmp_path / "one" / name), _train_log(tmp_path / "two" / name)
        assert [e["step"] for e in log_two] == [5, 10, 15, 20]
        assert max(e["metrics/dead_latents"] for e in log_one) > 0  # the auxiliary loss ran
        for a, b in zip(log_one, log_two, strict=True):
            assert a["metrics/dead_latents"] == b["metrics/dead_latents"]
            assert a["details/n_training_samples"] == b["details/n_training_samples"]
            assert b["losses/mse_loss"] == pytest.approx(a["losses/mse_loss"], rel=1e-4)
        metadata_one = json.loads((tmp_path / "one" / name / "final" / "cfg.json").read_text())
        metadata_two = json.loads((tmp_path / "two" / name / "final" / "cfg.json").read_text())
        assert metadata_two["metadata"]["l0"] == pytest.approx(metadata_one["metadata"]["l0"])

    # Resume: keep the step-10 checkpoints of the 2-rank run, drop what came after, and train
    # again under 2 ranks (bit for bit) and under 1 process (within the reduction-order noise).
    for processes in (2, 1):
        resumed = tmp_path / f"resumed-{processes}"
        shutil.copytree(tmp_path / "two", resumed)
        for name in ("batchtopk", "matryoshka"):
            shutil.rmtree(resumed / name / "final")
            assert [p.name for p in (resumed / name / "checkpoints").iterdir()] == ["step_10"]
        _sweep(resumed, sweep_file, processes=processes)
        for name in ("batchtopk", "matryoshka"):
            uninterrupted, again = _final(tmp_path / "two" / name), _final(resumed / name)
            tolerance = 0 if processes == 2 else 1e-5
            for key in uninterrupted:
                torch.testing.assert_close(
                    again[key], uninterrupted[key], atol=tolerance, rtol=tolerance, msg=key
                )
            log = _train_log(resumed / name)
            assert [e["step"] for e in log] == [5, 10, 15, 20]
            assert log[-1]["details/n_training_samples"] == STEPS * 64


@pytest.mark.slow
def test_two_ranks_train_from_images_as_one_process(tmp_path, image_folder):
    """Each rank runs the encoder on its share of the images; the SAE is the one-process SAE."""
    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "clip")
    spec = {
        "shared": {
            "model": str(checkpoint),
            "images": str(image_folder),
            "hook_name": HOOK,
            "tokens": "random_k",
            "batch_size": 24,
            "extraction_batch_size": 5,
            "mixing_buffer_batches": 2,
            "training_steps": 10,
            "warmup_steps": 2,
            "threshold_start_step": 3,
            "dead_after_inputs": 48,
            "n_batches_for_scaling": 2,
            "checkpoint_every_steps": 0,
            "log_every_steps": 5,
        },
        "saes": {"matryoshka": {"expansion_factor": 4, "k": 4}},
    }
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    _sweep(tmp_path / "one", sweep_file, processes=1)
    _sweep(tmp_path / "two", sweep_file, processes=2)
    one, two = _final(tmp_path / "one" / "matryoshka"), _final(tmp_path / "two" / "matryoshka")
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-5, msg=key)
