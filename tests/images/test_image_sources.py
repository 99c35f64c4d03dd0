"""Every form of image input (``sae_vlm_plugin.images``): the toy world written as a folder
tree, webdataset shards, a saved HF dataset, parquet shards, a streamed HF dataset and a CSV of
paths gives the same cache; splits, columns and corrupt members; exact resume after kill -9;
two torchrun ranks equal one process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import torch

from image_forms import N_IMAGES, Form, toy_rows, write_forms
from sae_vlm_plugin import ActivationCache, VisionModel, extract_to_cache
from sae_vlm_plugin.cache import verify_cache
from sae_vlm_plugin.cli import main as cli_main
from sae_vlm_plugin.images import (
    ImageReadError,
    ImageStream,
    open_image_source,
    open_images,
)
from sae_vlm_plugin.tiny import models as tm

BLOCK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, Form]:
    return write_forms(tmp_path_factory.mktemp("forms"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path_factory.mktemp("clip"))


def _extract(checkpoint: Path, form: Form, out: Path, *extra: str) -> int:
    return cli_main(
        [
            "extract",
            "--model",
            str(checkpoint),
            "--hook",
            BLOCK,
            "--tokens",
            "cls",
            "--images",
            form.images,
            *form.arguments,
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--images-per-shard",
            "3",
            *extra,
        ]
    )


def _assert_same_rows(a: ActivationCache, b: ActivationCache, *, exact: bool = True) -> None:
    """The same rows of the same images, bit for bit; with ``exact=False`` the activations to
    float rounding: an indexed source is read in batches within each cache shard, a streamed one
    across them, and on more than one thread a matmul's sums split by batch size."""
    rows_a, rows_b = a.load(), b.load()
    for key in ("image_index", "token_index"):
        assert torch.equal(rows_a[key], rows_b[key]), key
    if exact:
        assert torch.equal(rows_a["activations"], rows_b["activations"])
    else:
        torch.testing.assert_close(
            rows_a["activations"], rows_b["activations"], rtol=1e-5, atol=1e-5
        )


def test_every_form_of_the_toy_world_gives_the_same_cache(tmp_path, forms, checkpoint):
    labels = [label for _, label, _ in toy_rows()]
    caches = {}
    for letter, form in forms.items():
        assert _extract(checkpoint, form, tmp_path / letter) == 0, letter
        caches[letter] = ActivationCache(tmp_path / letter)
    for letter, cache in caches.items():
        assert cache.complete, letter
        assert cache.image_ids == forms[letter].ids, letter
        assert cache.labels == labels, letter
        assert cache.n_rows() == N_IMAGES, letter
        assert verify_cache(cache.path).ok, verify_cache(cache.path).problems
        _assert_same_rows(cache, caches["a"], exact=cache.stream is None)
    assert caches["e"].stream is not None
    assert caches["e"].stream["resume"] == "skip by count"
    assert [s["n_images"] for s in caches["e"].stream["shards"]] == [7, 7, 6]
    assert caches["a"].stream is None
    assert caches["b_url"].stream is not None  # shards by URL are streamed, not indexed


def test_the_python_api_takes_dataset_objects(tmp_path, forms):
    import datasets

    model = VisionModel(tm.clip_vision_model())
    saved = datasets.load_from_disk(forms["c"].images)
    with pytest.raises(ValueError, match="holds the splits train, validation; name one"):
        open_image_source(saved)
    with pytest.raises(ValueError, match="no split 'val'; its splits: train, validation"):
        open_image_source(saved, split="val")
    files = sorted(str(p) for p in Path(forms["d"].images).glob("*.parquet"))
    streamed = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    assert isinstance(open_images(streamed), ImageStream)
    with pytest.raises(TypeError, match="is a stream, read in order"):
        open_image_source(streamed)
    with pytest.raises(ValueError, match="the ImageSource passed is already open"):
        open_images(open_image_source(saved, split="train"), split="train")
    one = extract_to_cache(model, saved, BLOCK, tmp_path / "one", split="train", progress=False)
    two = extract_to_cache(model, streamed, BLOCK, tmp_path / "two", progress=False)
    assert one.labels == two.labels
    _assert_same_rows(one, two, exact=False)  # one streamed


def test_a_root_with_split_folders_is_refused_unless_a_split_is_named(
    tmp_path, forms, checkpoint, capsys
):
    root = tmp_path / "dataset"
    for split in ("train", "val"):
        (root / split / "cat").mkdir(parents=True)
        (root / split / "cat" / "0.png").write_bytes(toy_rows(1)[0][2])
    with pytest.raises(ValueError, match="holds the splits train, val; name one with --split"):
        open_image_source(root)
    source = open_image_source(root, split="val")
    assert source.ids == ["cat/0.png"]
    assert source.labels == ["cat"]
    with pytest.raises(
        ValueError, match=r"split 'test' is not a folder of .*; its folders: train, val"
    ):
        open_image_source(root, split="test")
    code = _extract(checkpoint, Form(str(root)), tmp_path / "cache")
    assert code == 2
    assert "holds the splits train, val" in capsys.readouterr().err


def test_webdataset_labels_keys_and_corrupt_members(tmp_path):
    rows = toy_rows(4)
    shard = tmp_path / "one.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (_, label, data) in enumerate(rows):
            members = {"jpg": data if i != 2 else b"not an image", "cls": label.encode()}
            for extension, payload in members.items():
                info = tarfile.TarInfo(f"sample{i}.{extension}")
                info.size = len(payload)
                tar.addfile(info, fileobj=io.BytesIO(payload))
    source = open_image_source(shard)
    assert source.ids == [f"one.tar/sample{i}" for i in range(4)]
    assert source.labels == [label for _, label, _ in rows]
    with pytest.raises(ImageReadError, match=r"cannot read image one\.tar/sample2"):
        source.load(2)
    model = VisionModel(tm.clip_vision_model())
    with pytest.raises(ImageReadError, match=r"one\.tar/sample2"):
        extract_to_cache(model, shard, BLOCK, tmp_path / "strict", progress=False)
    cache = extract_to_cache(
        model, str(shard), BLOCK, tmp_path / "skipping", skip_unreadable=True, progress=False
    )
    assert cache.manifest["skipped_images"] == ["one.tar/sample2"]
    assert cache.n_rows() == 3
    masked = tmp_path / "masked.tar"
    with tarfile.open(masked, "w") as tar:
        for extension in ("jpg", "mask.png"):
            info = tarfile.TarInfo(f"sample0.{extension}")
            info.size = len(rows[0][2])
            tar.addfile(info, fileobj=io.BytesIO(rows[0][2]))
    with pytest.raises(
        ValueError, match=r"masked.tar/sample0 has several image members \(jpg, mask.png\)"
    ):
        open_image_source(masked)
    assert open_image_source(masked, image_column="mask.png").ids == ["masked.tar/sample0"]
    with pytest.raises(FileNotFoundError, match=r"no such shard: .*two-0\.tar \(2 of the 2 shards"):
        open_image_source(str(tmp_path / "two-{0..1}.tar"))


def test_path_lists_are_relative_to_the_list_and_columns_are_checked(tmp_path, forms):
    tree = Path(forms["a"].images)
    files = sorted(tree.rglob("*.png"))[:3]
    (tmp_path / "list.txt").write_text(
        "# a comment\n" + "".join(f"{f}\t{f.parent.name}\n" for f in files)
    )
    from_txt = open_image_source(tmp_path / "list.txt")
    assert from_txt.labels == [f.parent.name for f in files]
    relative = [os.path.relpath(f, tmp_path) for f in files]
    (tmp_path / "names.csv").write_text(
        "file,kind\n"
        + "".join(f"{r},{f.parent.name}\n" for r, f in zip(relative, files, strict=True))
    )
    from_csv = open_image_source(tmp_path / "names.csv", label_column="kind")
    assert from_csv.ids == relative
    assert from_csv.labels == from_txt.labels
    assert from_csv.load(0).size == (48, 48)
    with pytest.raises(ValueError, match="has no label column 'colour'; valid: kind"):
        open_image_source(tmp_path / "names.csv", label_column="colour")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_path": [str(f) for f in files]}), tmp_path / "list.parquet")
    from_parquet = open_image_source(tmp_path / "list.parquet")
    assert from_parquet.ids == [str(f) for f in files]
    assert from_parquet.labels is None
    with pytest.raises(ValueError, match="has no column 'img'; its columns: image, label"):
        open_image_source(forms["d"].images, image_column="img")


def test_cli_checks_a_path_early_and_leaves_hub_names_and_patterns_to_the_reader(tmp_path, capsys):
    from sae_vlm_plugin.command_line import images_exist

    arguments = ["extract", "--model", "x", "--hook", BLOCK, "--out", str(tmp_path / "out")]
    code = cli_main([*arguments, "--images", str(tmp_path / "none")])
    assert code == 2
    assert "--images: no such image folder: " in capsys.readouterr().err
    assert images_exist("hf:ILSVRC/imagenet-1k")
    assert images_exist(str(tmp_path / "shards-{000..009}.tar"))
    assert images_exist("pipe:curl -s https://host/shard-000.tar")
    assert not images_exist(str(tmp_path / "list.csv"))


KILLABLE = textwrap.dedent(
    """
    import sys, time
    from sae_vlm_plugin.tiny import models as tm
    from sae_vlm_plugin import VisionModel, extract_to_cache

    model = VisionModel(tm.clip_vision_model())
    plain = model.preprocess

    def slow(images):
        time.sleep(0.05)
        return plain(images)

    extract_to_cache(
        VisionModel(tm.clip_vision_model(), preprocess=slow), {images!r}, ["{block}"], {out!r},
        tokens="random_k", k=2, batch_size=2, images_per_shard=3, progress=False, **{options!r},
    )
    """
)


@pytest.mark.parametrize("letter", ["b", "b_url", "e"])
def test_a_killed_extraction_resumes_to_the_uninterrupted_cache(tmp_path, forms, letter):
    """kill -9 once a random number (2..4) of shard files is written; the same call again
    finishes the cache to exactly the uninterrupted one, leaving the finished files as they
    were (nothing extracted twice)."""
    form = forms[letter]
    options = {"stream": True, "split": "train"} if letter == "e" else {}
    model = VisionModel(tm.clip_vision_model())
    kwargs = {"tokens": "random_k", "k": 2, "batch_size": 2, "images_per_shard": 3}
    reference = extract_to_cache(
        model, form.images, BLOCK, tmp_path / "reference", progress=False, **kwargs, **options
    )
    out = tmp_path / "interrupted"
    script = KILLABLE.format(images=form.images, block=BLOCK, out=str(out), options=options)
    kill_after = int(torch.randint(2, 5, ()).item())
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while len(list((out / BLOCK).glob("shard_*.safetensors"))) < kill_after:
            assert process.poll() is None, "the extraction ended before it could be killed"
            assert time.monotonic() < deadline, "no shard appeared in time"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not ActivationCache(out).complete
    before = {p.name: p.stat().st_mtime_ns for p in (out / BLOCK).glob("shard_*.safetensors")}
    resumed = extract_to_cache(model, form.images, BLOCK, out, progress=False, **kwargs, **options)
    assert resumed.complete
    assert resumed.image_ids == reference.image_ids
    assert resumed.labels == reference.labels
    _assert_same_rows(resumed, reference)
    after = {p.name: p.stat().st_mtime_ns for p in (out / BLOCK).glob("shard_*.safetensors")}
    assert {name: after[name] for name in before} == before  # finished shards not redone
    assert json.loads((out / "cache.json").read_text())["complete"]


@pytest.mark.parametrize("letter", ["b", "b_url", "e"])
def test_two_torchrun_ranks_give_the_one_process_cache(tmp_path, forms, checkpoint, letter):
    """Rank r of 2 reads the shards (tar images by position; stream shards j % 2 == r) apart
    from the other; the finished cache equals the one-process cache."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this interpreter")
    form = forms[letter]
    arguments = [
        "-m",
        "sae_vlm_plugin.cli",
        "extract",
        "--model",
        str(checkpoint),
        "--hook",
        BLOCK,
        "--tokens",
        "random_k",
        "--images",
        form.images,
        *form.arguments,
        "--images-per-shard",
        "4",
        "--batch-size",
        "3",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, *arguments, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    double = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "--no-python",
            sys.executable,
            *arguments,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = ActivationCache(tmp_path / "one"), ActivationCache(tmp_path / "two")
    assert two.complete
    assert (one.image_ids, one.labels) == (two.image_ids, two.labels)
    a, b = one.load(), two.load()
    assert torch.equal(a["image_index"], b["image_index"])
    assert torch.equal(a["token_index"], b["token_index"])
    torch.testing.assert_close(a["activations"], b["activations"], atol=1e-5, rtol=1e-5)
    assert one.manifest["shard_rows"] == two.manifest["shard_rows"]


def test_train_evaluate_dashboard_and_the_other_commands_read_the_new_forms(
    tmp_path, forms, checkpoint
):
    """``train`` from images takes tar shards and a saved dataset's split as it takes a folder;
    ``evaluate`` runs on a saved dataset's split and ``dashboard`` on parquet shards; every
    command that opens images takes the same options (``--split`` and the columns)."""
    from sae_vlm_plugin.cli import build_parser
    from sae_vlm_plugin.training.runner import VisionSAETrainingRunner
    from sae_vlm_plugin.training.runner_config import VisionSAERunnerConfig

    for letter, split in (("b", None), ("c", "train")):
        cfg = VisionSAERunnerConfig(
            model=str(checkpoint),
            images=forms[letter].images,
            images_split=split,
            hook_name=BLOCK,
            tokens="random_k",
            tokens_per_image=4,
            expansion_factor=2,
            k=4,
            batch_size=16,
            training_steps=4,
            warmup_steps=1,
            threshold_start_step=2,
            n_batches_for_scaling=1,
            mixing_buffer_batches=2,
            extraction_batch_size=8,
            log_every_steps=2,
            run_dir=str(tmp_path / f"run_{letter}"),
        )
        sae = VisionSAETrainingRunner(cfg, progress=False).run()
        assert sae.cfg.d_in == tm.WIDTH
    final = str(tmp_path / "run_b" / "final")
    common = ["--sae", final, "--model", str(checkpoint), "--scoring-encoder", str(checkpoint)]
    saved = [forms["c"].images, "--split", "train"]
    code = cli_main(["evaluate", *common, "--images", *saved, "--out", str(tmp_path / "eval")])
    assert code == 0
    code = cli_main(
        ["dashboard", *common, "--images", forms["d"].images, "--out", str(tmp_path / "dash")]
    )
    assert code == 0
    assert (tmp_path / "dash" / "index.html").is_file()
    parser = build_parser()
    for command in (
        ["train", "--images", "x", "--split", "val"],
        ["evaluate", "--sae", "s", "--images", "x", "--split", "val", "--label-column", "y"],
        ["dashboard", "--sae", "s", "--images", "x", "--split", "val", "--out", "o"],
        ["name", "--sae", "s", "--images", "x", "--split", "val", "--image-column", "img"],
        ["demo", "--images", "x", "--split", "val"],
    ):
        args = parser.parse_args(command)
        assert args.split == "val", command


@pytest.mark.parametrize("letter", ["b", "d", "e"])
def test_decoding_in_dataloader_workers_gives_the_same_cache(tmp_path, forms, letter):
    model = VisionModel(tm.clip_vision_model())
    options = {"stream": True, "split": "train"} if letter == "e" else {}
    caches = [
        extract_to_cache(
            model,
            forms[letter].images,
            BLOCK,
            tmp_path / f"workers{n}",
            batch_size=4,
            images_per_shard=8,
            num_workers=n,
            progress=False,
            **options,
        )
        for n in (0, 2)
    ]
    assert caches[0].image_ids == caches[1].image_ids
    _assert_same_rows(*caches)


def test_a_hub_style_dataset_needs_a_split_when_it_has_several(tmp_path, forms, monkeypatch):
    """``hf:NAME`` goes through ``datasets.load_dataset`` (here on a local repository laid out
    as the hub's are: one folder of parquet files per split)."""
    import shutil

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    parts = sorted(Path(forms["d"].images).glob("*.parquet"))
    for split, part in (("train", parts[0]), ("validation", parts[1])):
        (tmp_path / "repo" / split).mkdir(parents=True)
        shutil.copy(part, tmp_path / "repo" / split)
    name = f"hf:{tmp_path / 'repo'}"
    with pytest.raises(ValueError, match="has the splits train, validation; name one with --split"):
        open_images(name)
    loaded = open_image_source(name, split="validation")
    streamed = open_images(name, split="validation", stream=True)
    assert isinstance(streamed, ImageStream)
    items = list(streamed.read(0))
    assert [item.label for item in items] == loaded.labels
    assert len(loaded) == 7
