"""The static HTML dashboard: its data against direct computation, and the page in a real
headless Chromium (index lists and sorts latents, a latent shows 16 loaded images and heatmaps),
with no external URL anywhere in what it writes."""

from __future__ import annotations

import argparse
import math
import re

import pytest
import torch

from dashboard_helpers import EXTERNAL_URL, HOOK, chromium, random_sae, status
from sae_vlm_plugin import VisionModel
from sae_vlm_plugin.dashboard import build_dashboard, data_from_codes
from sae_vlm_plugin.dashboard.data import N_BINS, decoder_neighbours
from sae_vlm_plugin.metrics.evaluation import evaluate_sae
from sae_vlm_plugin.tiny import models as tm

N_IMAGES = 60
D_SAE = 64


@pytest.fixture(scope="module")
def setup():
    model = VisionModel(tm.clip_vision_model())
    images, labels = tm.synthetic_images(N_IMAGES)
    embeddings = torch.randn(N_IMAGES, 8, generator=torch.Generator().manual_seed(1))
    return model, images, embeddings, labels


@pytest.fixture(scope="module")
def patch_dashboard(setup, tmp_path_factory):
    model, images, embeddings, labels = setup
    sae = random_sae(D_SAE, "patches")
    report = evaluate_sae(sae, model, images, embeddings=embeddings, progress=False)
    out = tmp_path_factory.mktemp("patch_dash")
    index = build_dashboard(sae, model, images, out, report=report, labels=labels)
    return sae, report, out, index


def test_data_matches_dense_reference(patch_dashboard):
    _, report, _, _ = patch_dashboard
    dense = report.image_codes.to_dense().double()
    data = data_from_codes(report.image_codes, report.image_ids, report.sae_scores.scores)
    assert torch.equal(data.support, (dense > 0).sum(0))
    torch.testing.assert_close(data.density, (dense > 0).double().mean(0))
    torch.testing.assert_close(data.max_activation, dense.max(0).values)
    assert torch.equal(data.histograms.sum(1), data.support)
    assert data.histograms.shape == (D_SAE, N_BINS)
    for latent in (0, 7, 40):
        column = dense[:, latent]
        order = sorted(range(N_IMAGES), key=lambda i: (-column[i].item(), i))[:16]
        order = [i for i in order if column[i] > 0]
        assert data.top_indices[latent, : len(order)].tolist() == order


def test_decoder_neighbours_match_brute_force():
    w_dec = torch.randn(50, 12, generator=torch.Generator().manual_seed(3))
    ids, values = decoder_neighbours(w_dec, torch.tensor([0, 9, 49]), k=5, block=2)
    unit = torch.nn.functional.normalize(w_dec, dim=1)
    for row, latent in enumerate((0, 9, 49)):
        cos = unit @ unit[latent]
        cos[latent] = -math.inf
        assert ids[row].tolist() == cos.topk(5).indices.tolist()
        torch.testing.assert_close(values[row], cos.topk(5).values)


def test_heatmaps_match_direct_patch_codes(setup, patch_dashboard):
    model, images, *_ = setup
    sae, report, _, _ = patch_dashboard
    from sae_vlm_plugin.dashboard.data import data_from_codes as collect
    from sae_vlm_plugin.dashboard.heatmaps import patch_heatmaps
    from sae_vlm_plugin.images import open_image_source

    data = collect(report.image_codes, report.image_ids, report.sae_scores.scores, latents=[5])
    heat, side, _ = patch_heatmaps(
        sae, model, open_image_source(images), HOOK, data.latents, data.top_indices
    )
    assert side * side == tm.N_PATCHES
    rows = torch.stack(
        [
            model.capture(model.preprocess([images[int(i)]]), [HOOK])[HOOK][0, 1:]
            for i in data.top_indices[0]
            if i >= 0
        ]
    )
    codes = sae.encode(rows).detach()[..., 5].clamp(min=0)
    expected = (codes / codes.max() * 255).round()
    assert (heat[0, : len(rows)].float() - expected).abs().max() <= 1


def test_writes_no_external_url(patch_dashboard):
    _, _, out, _ = patch_dashboard
    written = [p for p in out.rglob("*") if p.suffix in {".html", ".js", ".css", ".json"}]
    assert written
    for path in written:
        found = EXTERNAL_URL.search(path.read_text(encoding="utf-8"))
        assert found is None, f"{path.name} references {found.group(0)!r}"


def test_thumbnails_are_reused(setup, patch_dashboard):
    model, images, *_ = setup
    sae, report, out, _ = patch_dashboard
    thumbs = sorted(out.glob("thumbs/*/*.jpg"))
    assert thumbs
    stamps = {p: p.stat().st_mtime_ns for p in thumbs}
    build_dashboard(sae, model, images, out, report=report, labels=setup[3])
    assert {p: p.stat().st_mtime_ns for p in thumbs} == stamps


def test_chromium_index_lists_and_sorts(patch_dashboard, tmp_path):
    _, report, _, index = patch_dashboard
    dom = chromium(index.as_uri(), tmp_path / "index.png")
    assert (tmp_path / "index.png").stat().st_size > 1000
    assert status(dom)["view"] == "index"
    listed = [int(x) for x in re.findall(r'class="latent-row" data-latent="(\d+)"', dom)]
    assert listed == list(range(50))
    assert "page 1 / 2" in dom
    sorted_dom = chromium(index.as_uri() + "#sort=ms&dir=desc")
    by_ms = [int(x) for x in re.findall(r'class="latent-row" data-latent="(\d+)"', sorted_dom)]
    scores = [round(s, 4) for s in report.sae_scores.scores.tolist()]
    expected = sorted(range(D_SAE), key=lambda i: (-scores[i], i))[:50]
    assert by_ms == expected != listed
    filtered = chromium(index.as_uri() + "#group=0")
    assert len(re.findall('class="latent-row"', filtered)) == D_SAE // 4


def test_chromium_latent_page_images_and_heatmaps(patch_dashboard, tmp_path):
    _, _, _, index = patch_dashboard
    shot = tmp_path / "latent.png"
    dom = chromium(index.as_uri() + "#latent=3", shot)
    state = status(dom)
    assert state["view"] == "latent"
    assert state["latent"] == "3"
    assert state["images"] == "16"
    assert state["images-loaded"] == "16"
    assert state["images-broken"] == "0"
    assert state["ready"] == "1"
    assert state["heatmaps"] == "16"
    assert 'id="histogram"' in dom
    assert 'id="similar"' in dom
    assert shot.stat().st_size > 1000


@pytest.mark.parametrize("hash_", ["#sort=foo", "#sort=ms&dir=sideways", "#sort=&page=x"])
def test_chromium_unknown_sort_falls_back_to_the_default(patch_dashboard, hash_):
    """#18 item 26: a stale or mistyped sort key in the URL must not leave "loading..."."""
    _, _, _, index = patch_dashboard
    dom = chromium(index.as_uri() + hash_)
    assert status(dom)["view"] == "index"
    listed = [int(x) for x in re.findall(r'class="latent-row" data-latent="(\d+)"', dom)]
    if "dir=sideways" in hash_:  # a known key in an unknown direction: its default direction
        scores = [round(s, 4) for s in patch_dashboard[1].sae_scores.scores.tolist()]
        assert listed == sorted(range(D_SAE), key=lambda i: (-scores[i], i))[:50]
    else:
        assert listed == list(range(50))


def test_chromium_heatmaps_start_hidden(patch_dashboard):
    """#18 item 26: the heatmap overlay tints the thumbnails, so it is off until toggled on."""
    _, _, _, index = patch_dashboard
    dom = chromium(index.as_uri() + "#latent=3")
    assert status(dom)["heatmaps-shown"] == "0"
    canvases = re.findall(r'<canvas [^>]*class="heatmap"[^>]*>', dom)
    assert len(canvases) == 16
    assert all("display: none" in c for c in canvases)
    assert 'id="heat-toggle"' in dom
    assert re.search(r'<input type="checkbox" id="heat-toggle"(?![^>]*checked)', dom)
    shown = chromium(index.as_uri() + "#latent=3&heat=1")
    assert status(shown)["heatmaps-shown"] == "1"
    assert not any("display: none" in c for c in re.findall(r"<canvas [^>]*>", shown))


def test_chromium_cls_dashboard_has_no_heatmaps(setup, tmp_path):
    model, images, embeddings, *_ = setup
    sae = random_sae(32, "cls", seed=2, matryoshka=False)
    index = build_dashboard(sae, model, images, tmp_path, embeddings=embeddings)
    state = status(chromium(index.as_uri() + "#latent=1"))
    assert state["images-loaded"] == state["images"] != "0"
    assert state["heatmaps"] == "0"


def test_latents_out_of_range(setup, patch_dashboard, tmp_path):
    model, images, *_ = setup
    sae, report, _, _ = patch_dashboard
    with pytest.raises(ValueError, match=r"latent 64 is out of range; valid latents are 0..63"):
        build_dashboard(sae, model, images, tmp_path, report=report, latents=[1, 64])


def test_images_missing_for_recorded_ids(setup, patch_dashboard, tmp_path):
    model, images, *_ = setup
    sae, report, _, _ = patch_dashboard
    with pytest.raises(ValueError, match="missing from the images"):
        build_dashboard(sae, model, images[:30], tmp_path, report=report)


def test_sae_that_does_not_match_the_activations(setup, patch_dashboard, tmp_path):
    model, images, *_ = setup
    _, report, _, _ = patch_dashboard
    other = random_sae(32, "patches")
    with pytest.raises(ValueError, match="does not match the activations"):
        build_dashboard(other, model, images, tmp_path, report=report)


def test_subset_of_latents(setup, patch_dashboard, tmp_path):
    model, images, *_ = setup
    sae, report, _, _ = patch_dashboard
    index = build_dashboard(sae, model, images, tmp_path, report=report, latents=[9, 2])
    text = (tmp_path / "data" / "index.js").read_text()
    assert '"latent":[9,2]' in text
    state = status(chromium(index.as_uri() + "#latent=2"))
    assert state["images-loaded"] == "16"
    assert state["heatmaps"] == "16"


def test_data_from_codes_rejects_mismatched_input(patch_dashboard):
    _, report, _, _ = patch_dashboard
    codes, ids, scores = report.image_codes, report.image_ids, report.sae_scores.scores
    with pytest.raises(TypeError, match="sparse COO"):
        data_from_codes(codes.to_dense(), ids, scores)
    with pytest.raises(ValueError, match="59 image ids for codes of 60 images"):
        data_from_codes(codes, ids[:-1], scores)
    with pytest.raises(ValueError, match="do not come from the same SAE"):
        data_from_codes(codes, ids, scores[:10])
    with pytest.raises(ValueError, match="does not match the activations"):
        data_from_codes(codes, ids, scores, w_dec=torch.randn(10, 4))
    with pytest.raises(ValueError, match="latent -1 is out of range"):
        data_from_codes(codes, ids, scores, latents=[-1])


def test_top_labels_and_search(setup, patch_dashboard):
    *_, labels = setup
    _, report, _, index = patch_dashboard
    data = data_from_codes(
        report.image_codes, report.image_ids, report.sae_scores.scores, image_labels=labels
    )
    for latent in (0, 11):
        top = [labels[i] for i in data.top_indices[latent].tolist() if i >= 0]
        best = max(top.count(label) for label in top)
        assert (
            data.top_labels[latent] == f"{next(x for x in top if top.count(x) == best)} {best}/16"
        )
    query = data.top_labels[0].split()[0]
    dom = chromium(index.as_uri() + f"#q={query}")
    shown = [int(x) for x in re.findall(r'class="latent-row" data-latent="(\d+)"', dom)]
    expected = [i for i, label in enumerate(data.top_labels) if query in label][:50]
    assert shown == expected
    assert shown


def test_min_support_defaults_agree_with_the_readme():
    """#18 item 26: `evaluate`, `dashboard` and the library functions score latents from 16
    images on (the README's value), not 2."""
    import inspect

    from sae_vlm_plugin.cli import build_parser
    from sae_vlm_plugin.dashboard import collect_dashboard

    parser = build_parser()
    evaluate = parser.parse_args(["evaluate", "--sae", "s", "--images", "i"])
    dashboard = parser.parse_args(["dashboard", "--sae", "s", "--images", "i", "--out", "o"])
    library = [
        inspect.signature(f).parameters["min_support"].default
        for f in (evaluate_sae, collect_dashboard)
    ]
    assert [evaluate.min_support, dashboard.min_support, *library] == [16] * 4


def test_cli_dashboard_title_min_support_and_unreadable_images(tmp_path, image_folder, capsys):
    """#18 item 26: `dashboard --title --min-support --skip-unreadable`; an unreadable image
    without --skip-unreadable is one error line that names it and the flag; the SAEDashboard
    export's page needs no network."""
    from sae_vlm_plugin.cli import main

    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "ckpt")
    scorer = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "scorer")
    random_sae(16, "cls", matryoshka=False).save_model(tmp_path / "sae")
    (image_folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "dash"
    argv = ["dashboard", "--sae", str(tmp_path / "sae"), "--images", str(image_folder)]
    argv += ["--out", str(out), "--model", str(checkpoint), "--scoring-encoder", str(scorer)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "cannot read image broken.png" in error
    assert "--skip-unreadable" in error
    extra = ["--skip-unreadable", "--title", "My <SAE>", "--min-support", "3", "--saedashboard"]
    assert main([*argv, *extra]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image(s)" in printed
    assert "saedashboard: " in printed
    assert "https://" not in (out / "saedashboard" / "saedashboard.html").read_text()
    assert "<title>My &lt;SAE&gt;</title>" in (out / "index.html").read_text()
    page_data = (out / "data" / "index.js").read_text()
    assert '"min_support": 3' in page_data or '"min_support":3' in page_data


# -- memory and the server (#18 item 27) ------------------------------------------------------


def test_the_dashboard_skips_the_quadratic_uniqueness(setup, tmp_path, monkeypatch):
    """A dense 65,536-latent SAE on 300 images took the dashboard to 22 GB in the uniqueness of
    the top sets, which the dashboard never shows."""
    import sae_vlm_plugin.metrics.evaluation as evaluation

    def refuse(*args, **kwargs):
        raise AssertionError("the dashboard computed the uniqueness of the top sets")

    monkeypatch.setattr(evaluation, "jaccard_uniqueness", refuse)
    model, images, embeddings, _ = setup
    sae = random_sae(32, "cls", seed=4, matryoshka=False)
    assert build_dashboard(sae, model, images, tmp_path, embeddings=embeddings).is_file()


def test_serve_on_a_busy_port_fails_before_the_build(tmp_path, capsys):
    import socket

    from sae_vlm_plugin.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["dashboard", "--sae", str(tmp_path), "--images", str(tmp_path)]
        code = main([*argv, "--out", str(tmp_path / "dash"), "--serve", "--port", str(port)])
    error = capsys.readouterr().err
    assert code == 2
    assert f"port {port} on 127.0.0.1 is in use" in error  # not the later "not an SAE"
    assert "is not an SAE directory" not in error


def test_a_request_with_a_nul_byte_is_a_400_not_a_crash(tmp_path, capfd):
    import urllib.error
    import urllib.request

    from sae_vlm_plugin.dashboard.serve import start_server

    (tmp_path / "index.html").write_text("<p>hello</p>")
    server = start_server(tmp_path, port=0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/%00", timeout=10)
        assert refused.value.code == 400
        with urllib.request.urlopen(f"{base}/index.html", timeout=10) as reply:
            assert reply.read() == b"<p>hello</p>"
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err


def _census(d_sae: int):
    """A hand-made steerability report: latent 2 steers towards 'red' (one answer carries
    markup that must show as text), latent 5 fires only on unread tokens, the rest unmeasured."""
    from sae_vlm_plugin.steering.census import SteerabilityReport, UnitSteering

    hostile = "<img src=x onerror=alert(1)> red"
    units = [
        UnitSteering(
            "latent", "2", 3.0, rates={"8": {"red": 1.0}}, degenerate={"8": 0.0},
            changed={"8": 1.0}, answers={"8": [hostile, "a red star"]}, top_word="red",
            score=1.0, best_multiple="8", explanation="red", p_null=0.03, steers=True,
        ),
        UnitSteering("latent", "5", 0.0, note="active on read tokens of 0 of 60 images"),
        UnitSteering(
            "latent", "7", 1.0, rates={"8": {}}, degenerate={"8": 0.5}, changed={"8": 0.5},
            answers={"8": ["a star", "a star star star"]}, best_multiple="8",
        ),
    ]  # fmt: skip
    return SteerabilityReport(
        hook=HOOK, prompts=["p <b>1</b>"], base_images=["white", "grey"], multiples=[8.0],
        unsteered=["a star", "a star"], units=units,
    )  # fmt: skip


def test_chromium_steering_column_and_answers(setup, tmp_path):
    model, images, embeddings, _ = setup
    sae = random_sae(D_SAE, "patches")
    report = _census(D_SAE)
    report.save(tmp_path / "sae")
    index = build_dashboard(
        sae, model, images, tmp_path / "dash", embeddings=embeddings, heatmaps=False,
        steerability=tmp_path / "sae",
    )  # fmt: skip
    dom = chromium(index.as_uri() + "#sort=steer_score&dir=desc")
    listed = [int(x) for x in re.findall(r'class="latent-row" data-latent="(\d+)"', dom)]
    assert listed[:2] == [2, 7]
    assert "\u2713 red 100%" in dom
    page = chromium(index.as_uri() + "#latent=2")
    answers = re.search(r'<ul id="steering-answers">(.*?)</ul>', page).group(1)
    assert "&lt;img src=x onerror=alert(1)&gt; red" in answers
    assert "p &lt;b&gt;1&lt;/b&gt;: a star" in answers
    assert "'red' gained in 100% of answers at 8x" in page
    assert "not clamped: active on read tokens of 0" in chromium(index.as_uri() + "#latent=5")


def _get(port: int, path: str, host: str | None = None) -> tuple[int, bytes]:
    """One bounded GET to the loopback server: status and body."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": host} if host is not None else {}
        connection.request("GET", path, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read(1 << 20)
    finally:
        connection.close()


def test_the_server_serves_only_the_dashboard_files_to_local_hosts(tmp_path):
    """No foreign file, no listing, no symlink out of the folder, no other ``Host``."""
    from sae_vlm_plugin.dashboard.serve import start_server

    out = tmp_path / "dash"
    (out / "data" / "latents").mkdir(parents=True)
    (out / "thumbs" / "112").mkdir(parents=True)
    (out / "index.html").write_text("<p>hello</p>")
    (out / "data" / "index.js").write_text("window.SAEDASH = {};")
    (out / "thumbs" / "112" / ("0" * 20 + ".jpg")).write_bytes(b"jpeg")
    (out / "notes.txt").write_text("private")
    (tmp_path / "secret.js").write_text("secret")
    (out / "data" / "latents" / "c0.js").symlink_to(tmp_path / "secret.js")
    server = start_server(out, port=0)
    port = server.server_address[1]
    try:
        assert _get(port, "/index.html") == (200, b"<p>hello</p>")
        assert _get(port, "/") == (200, b"<p>hello</p>")
        assert _get(port, "/index.html", host=f"localhost:{port}")[0] == 200
        assert _get(port, "/thumbs/112/" + "0" * 20 + ".jpg") == (200, b"jpeg")
        assert _get(port, "/notes.txt")[0] == 404
        assert _get(port, "/data/latents/c0.js")[0] == 404
        assert _get(port, "/../secret.js")[0] == 404
        for listing in ("/data/", "/thumbs/112/"):
            assert _get(port, listing)[0] == 404
        status, body = _get(port, "/index.html", host=f"rebound.example:{port}")
        assert status == 403
        assert b"hello" not in body
    finally:
        server.shutdown()
        server.server_close()


def test_a_dashboard_into_a_folder_of_other_files_is_refused_before_work(tmp_path, capsys):
    from sae_vlm_plugin.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("private")
    argv = ["dashboard", "--sae", str(tmp_path), "--images", str(tmp_path)]
    assert main([*argv, "--out", str(out), "--serve", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert "is not empty" in error
    assert "is not an SAE directory" not in error


def test_a_huge_latent_range_is_refused_without_being_built():
    """#27 item 10: ``--latents 0-999999999`` is checked against the SAE's width before a list of
    its latents exists (peak memory here: a few KB, not a list of millions)."""
    import tracemalloc

    from sae_vlm_plugin.command_line import latent_ids, parse_latents
    from sae_vlm_plugin.dashboard.data import check_latents

    tracemalloc.start()
    try:
        spec = parse_latents("0-4999999,7")
        with pytest.raises(
            ValueError, match=r"latent 4999999 is out of range; valid latents are 0\.\.15"
        ):
            latent_ids(spec, 16)
        with pytest.raises(ValueError, match=r"latent 4999999 is out of range"):
            check_latents(range(5_000_000), 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert latent_ids(parse_latents("2-4,8"), 16) == [2, 3, 4, 8]
    for bad in ("4-2", "-3", "a-b", "1,,2", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_latents(bad)


def _paint(folder, colour, mtime):
    """Two images under fixed names, all of one colour, with a given modification time."""
    import os

    from PIL import Image

    folder.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 20), colour).save(folder / name)
        os.utime(folder / name, ns=(mtime, mtime))


@pytest.mark.parametrize("kind", ["folder", "pil", "pixels"])
def test_thumbnails_follow_the_images_not_their_names(tmp_path, kind):
    """#27 item 13: rebuilding into the same folder after the images changed under the same
    names shows the new images."""
    from PIL import Image

    from sae_vlm_plugin.dashboard.thumbnails import write_thumbnails
    from sae_vlm_plugin.images import open_image_source

    def source(colour):
        if kind == "folder":
            _paint(tmp_path / "images", colour, 10**18 if colour == "red" else 2 * 10**18)
            return open_image_source(tmp_path / "images")
        if kind == "pil":
            return open_image_source([Image.new("RGB", (20, 20), colour)] * 2)
        return open_image_source(
            torch.tensor([1.0, -1.0, -1.0] if colour == "red" else [-1.0, -1.0, 1.0])
            .view(1, 3, 1, 1)
            .expand(2, 3, 8, 8)
            .clone()
        )

    out = tmp_path / "dash"
    first = write_thumbnails(source("red"), [0, 1], out, size=16)
    second = write_thumbnails(source("blue"), [0, 1], out, size=16)
    assert first[0] != second[0]
    red, _, blue = Image.open(out / second[0]).convert("RGB").getpixel((4, 4))
    assert blue > 200 > red
