"""Neuronpedia and SAEDashboard exports, validated by the real ``sae_dashboard`` classes."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess

import pytest
import torch

from dashboard_helpers import EXTERNAL_URL, HOOK, chromium, random_sae
from sae_vlm_plugin import VisionModel
from sae_vlm_plugin.dashboard import (
    collect_dashboard,
    export_neuronpedia,
    export_saedashboard,
    saedashboard_data,
)
from sae_vlm_plugin.tiny import models as tm

N_IMAGES = 40


@pytest.fixture(scope="module")
def collected():
    model = VisionModel(tm.clip_vision_model())
    images, _ = tm.synthetic_images(N_IMAGES)
    embeddings = torch.randn(N_IMAGES, 8, generator=torch.Generator().manual_seed(1))
    sae = random_sae(32, "patches")
    return collect_dashboard(sae, model, images, embeddings=embeddings, latents=range(10))


def test_neuronpedia_batches_round_trip_through_its_classes(collected, tmp_path):
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch

    data = collected.data
    paths = export_neuronpedia(
        data,
        collected.source,
        tmp_path,
        model_id="tiny-clip",
        source_set="test",
        positions=collected.positions,
        features_per_batch=4,
    )
    assert [p.name for p in paths] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    features = []
    for path in paths:
        raw = json.loads(path.read_text())
        batch = NeuronpediaDashboardBatch(**raw)
        assert batch.to_dict() == raw
        features.extend(batch.features)
    assert [f.feature_index for f in features] == list(range(10))
    first = features[0]
    assert len(first.activations) == 16
    top = first.activations[0]
    assert (tmp_path / top.tokens[0]).is_file()
    assert top.values[0] == pytest.approx(float(data.top_values[0, 0]), abs=1e-4)
    assert len(top.tokens) == 1 + tm.N_PATCHES == len(top.values)
    # The patch values are activations: their max over the top images is the heatmap peak.
    patch_max = max(max(a.values[1:]) for a in first.activations)
    assert patch_max == pytest.approx(float(data.heatmap_peaks[0]), rel=1e-3)
    assert first.frac_nonzero == pytest.approx(float(data.density[0]))
    assert sum(first.freq_hist_data_bar_heights) == int(data.support[0])
    assert first.correlated_features_indices == data.similar_indices[0].tolist()


def test_neuronpedia_embedded_images(collected, tmp_path):
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch

    (path,) = export_neuronpedia(
        collected.data,
        collected.source,
        tmp_path,
        model_id="m",
        source_set="s",
        positions=collected.positions,
        embed_images=True,
    )
    batch = NeuronpediaDashboardBatch(**json.loads(path.read_text()))
    assert batch.features[3].activations[0].tokens[0].startswith("data:image/jpeg;base64,")


def test_saedashboard_data_classes_and_writers(collected, tmp_path):
    from sae_dashboard.sae_vis_data import _SaeVisData

    data = collected.data
    vis = saedashboard_data(
        data,
        collected.source,
        tmp_path,
        hook_point="blocks.1.hook_resid_post",
        positions=collected.positions,
    )
    assert sorted(vis.feature_data_dict) == list(range(10))
    feature = vis.feature_data_dict[2]
    (group,) = feature.sequence_data.seq_group_data
    assert len(group.seq_data) == 16
    assert group.seq_data[0].original_index == int(data.top_indices[2, 0])
    assert feature.acts_histogram_data.bar_heights == data.histograms[2].double().tolist()
    paths = export_saedashboard(
        data,
        collected.source,
        tmp_path,
        hook_point="blocks.1.hook_resid_post",
        positions=collected.positions,
    )
    loaded = _SaeVisData.from_dict(json.loads(paths["json"].read_text()))
    again = loaded.feature_data_dict[2]
    assert again.sequence_data.seq_group_data[0].seq_data[0].feat_acts[0] == pytest.approx(
        float(data.top_values[2, 0]), abs=1e-4
    )
    page = paths["html"].read_text()
    assert "TOP ACTIVATIONS" in page
    assert EXTERNAL_URL.search(page) is None  # its d3 / plotly come from the export's folder


def test_saedashboard_renders_its_own_page_from_the_saved_files_alone(collected, tmp_path):
    from sae_dashboard.data_writing_fns import save_feature_centric_vis

    from sae_vlm_plugin.dashboard import load_saedashboard

    data = collected.data
    export_saedashboard(
        data, collected.source, tmp_path, hook_point=HOOK, positions=collected.positions,
        html=False,
    )  # fmt: skip
    vis = load_saedashboard(tmp_path)  # SaeVisData.load_json with the saved setup
    assert sorted(vis.feature_data_dict) == data.latents.tolist()
    save_feature_centric_vis(vis, tmp_path / "again.html")
    page = (tmp_path / "again.html").read_text()
    assert "TOP ACTIVATIONS" in page
    top = int(data.top_indices[0, 0])
    thumbnail = next(t for t, i in vis.model.tokenizer.vocab.items() if i == top)
    assert (tmp_path / thumbnail).is_file()
    assert json.dumps(thumbnail)[1:-1] in page


def test_saedashboard_page_shows_images_with_the_network_off(collected, tmp_path):
    """In headless Chromium with every host unreachable: the plugin's page draws its Plotly
    histograms and shows the top images as images; SAEDashboard's own page stays blank."""
    from sae_dashboard.data_writing_fns import save_feature_centric_vis

    paths = export_saedashboard(
        collected.data, collected.source, tmp_path, hook_point=HOOK,
        positions=collected.positions,
    )  # fmt: skip
    dom = chromium(paths["html"].as_uri(), offline=True)
    images = re.findall(r'<img src="(thumbs/[^"]+)"[^>]*class="sae-vlm-image"', dom)
    assert len(images) == 16  # the first latent's top images
    assert all((tmp_path / image).is_file() for image in images)
    assert "main-svg" in dom  # Plotly drew the activation histogram
    save_feature_centric_vis(
        saedashboard_data(collected.data, collected.source, tmp_path, hook_point=HOOK,
                          positions=collected.positions),
        tmp_path / "cdn.html",
    )  # fmt: skip
    blank = chromium((tmp_path / "cdn.html").as_uri(), offline=True)
    assert "main-svg" not in blank
    assert "sae-vlm-image" not in blank


def test_cli_dashboard_with_exports_and_server(tmp_path, image_folder, capsys):
    import argparse
    import urllib.request

    from sae_vlm_plugin.dashboard.commands import add_commands
    from sae_vlm_plugin.dashboard.serve import start_server

    checkpoint = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "ckpt")
    scorer = tm.save_clip_checkpoint(tm.clip_vision_model(), tmp_path / "scorer")
    sae_dir = tmp_path / "sae"
    random_sae(16, "patches").save_model(sae_dir)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "dash"
    args = parser.parse_args(
        [
            "dashboard",
            "--sae",
            str(sae_dir),
            "--images",
            str(image_folder),
            "--out",
            str(out),
            "--model",
            str(checkpoint),
            "--scoring-encoder",
            str(scorer),
            "--latents",
            "0-3,9",
            "--neuronpedia",
            "--saedashboard",
        ]
    )
    assert args.handler(args) == 0
    assert (out / "index.html").is_file()
    assert (out / "neuronpedia" / "batch-0.json").is_file()
    assert (out / "saedashboard" / "saedashboard.json").is_file()
    assert '"latent":[0,1,2,3,9]' in (out / "data" / "index.js").read_text()
    server = start_server(out, port=0)
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as reply:
            assert b"data/index.js" in reply.read()
    finally:
        server.shutdown()
        server.server_close()


def _synthetic_codes(n_images: int = 30, d_sae: int = 12):
    generator = torch.Generator().manual_seed(5)
    dense = torch.rand(n_images, d_sae, generator=generator)
    dense[dense < 0.6] = 0
    return dense.to_sparse(), [f"im{i}" for i in range(n_images)], torch.rand(d_sae)


def test_exports_without_heatmaps_or_neighbours_from_a_pixel_tensor(tmp_path):
    """A CLS-style dashboard straight from codes, with images given as a pixel tensor."""
    from sae_dashboard.neuronpedia.neuronpedia_dashboard import NeuronpediaDashboardBatch
    from sae_dashboard.sae_vis_data import _SaeVisData

    from sae_vlm_plugin.dashboard import data_from_codes, write_from_data
    from sae_vlm_plugin.images import open_image_source

    codes, ids, scores = _synthetic_codes()
    pixels = torch.randn(30, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    source = open_image_source(pixels)
    source.ids = ids
    data = data_from_codes(codes, ids, scores)
    index = write_from_data(data, source, tmp_path / "dash", thumbnail_size=16)
    assert index.is_file()
    assert len(list((tmp_path / "dash" / "thumbs" / "16").glob("*.jpg"))) == len(
        data.top_indices[data.top_indices >= 0].unique()
    )
    (path,) = export_neuronpedia(
        data, source, tmp_path / "np", model_id="m", source_set="s", layer=0
    )
    batch = NeuronpediaDashboardBatch(**json.loads(path.read_text()))
    assert all(len(a.tokens) == 1 for f in batch.features for a in f.activations)
    paths = export_saedashboard(data, source, tmp_path / "sd", hook_point="hook_pooled")
    loaded = _SaeVisData.from_dict(json.loads(paths["json"].read_text()))
    assert sorted(loaded.feature_data_dict) == list(range(12))


def test_neuronpedia_explanations_carry_the_steering_census(collected, tmp_path):
    import dataclasses

    from sae_vlm_plugin.dashboard.neuronpedia import STEERING_EXPLANATION_TYPE

    steering = [None] * collected.data.n_latents
    steering[2] = {"note": "", "steers": True, "word": "red", "score": 0.9, "multiple": "8",
                   "p": 0.03, "one_word": "star"}  # fmt: skip
    steering[3] = {"note": "fires only on CLS", "steers": False}
    data = dataclasses.replace(collected.data, steering=steering, meta={"steering census": "h"})
    paths = export_neuronpedia(
        data, collected.source, tmp_path, model_id="m", source_set="s", layer=0,
        positions=collected.positions,
    )  # fmt: skip
    explanations = json.loads(paths[-1].read_text())
    assert explanations == [
        {
            "modelId": "m",
            "source": "0-s",
            "layer": "0-s",
            "index": str(int(data.latents[2])),
            "description": "clamped, adds 'red' to 90% of answers at 8x (p 0.030 against "
            "random directions); one-word answer: star",
            "explanationModelName": "h",
            "typeName": STEERING_EXPLANATION_TYPE,
        }
    ]


HOSTILE_LABEL = "<img src=x onerror=alert(1)></script><script>alert(2)</script>"
_DEFINE_DATA = """
const vm = require("vm");
const code = require("fs").readFileSync(0, "utf8");
const page = vm.createContext({document: {addEventListener() {}}});
vm.runInContext(code, page);
process.stdout.write(JSON.stringify(vm.runInContext("defineData()", page)));
"""


class _PageParser(html.parser.HTMLParser):
    """The inline scripts and the element tags of an HTML text, split as a browser splits
    them (a ``</script`` inside a script ends it)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def _parsed(text: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(text)
    parser.close()
    return parser


def _titles(value):
    """Every ``title`` string in SAEDashboard's page data (what its scripts set as HTML)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "title" and isinstance(item, str):
                yield item
            else:
                yield from _titles(item)
    elif isinstance(value, list):
        for item in value:
            yield from _titles(item)


def test_saedashboard_page_shows_hostile_concept_labels_as_text(tmp_path):
    """A concept label is text on SAEDashboard's page: its titles (set with innerHTML) hold no
    element but the line breaks, and the page's script is not cut short by the label."""
    from sae_vlm_plugin.dashboard import data_from_codes
    from sae_vlm_plugin.images import open_image_source

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is missing: it evaluates the page's data as a browser would")
    codes, ids, scores = _synthetic_codes()
    source = open_image_source(torch.rand(30, 3, 16, 16))
    source.ids = ids
    data = data_from_codes(codes, ids, scores)
    data.concepts = [[(HOSTILE_LABEL, 0.5)] for _ in range(data.n_latents)]
    paths = export_saedashboard(data, source, tmp_path, hook_point="hook_pooled")
    page = _parsed(paths["html"].read_text())
    assert "img" not in page.tags
    inline = [s for s in page.scripts if "defineData" in s]
    assert len(inline) == 1
    done = subprocess.run(
        [node, "-e", _DEFINE_DATA], input=inline[0], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    titles = list(_titles(json.loads(done.stdout)))
    shown = [t for t in titles if "CONCEPTS" in t]
    assert len(shown) == data.n_latents
    for title in titles:
        assert set(_parsed(title).tags) <= {"br"}, title
    assert all(HOSTILE_LABEL in html.unescape(t) for t in shown)
