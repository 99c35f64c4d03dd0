"""The README's main job runs end to end and writes what it reports."""

from __future__ import annotations

import json

from sae_vlm_plugin import ActivationCache
from sae_vlm_plugin.cli import main as cli_main


def test_demo_extracts_caches_and_writes_a_summary(tmp_path, capsys):
    assert cli_main(["demo", "--out", str(tmp_path), "--n-images", "27"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["hook"] == "blocks.2.hook_resid_post"
    assert summary["concepts"] == 27
    cls = ActivationCache(tmp_path / "cache_cls")
    assert cls.n_rows() == 27
    assert ActivationCache(tmp_path / "cache_random_k").n_rows() == 54
    # Running it again resumes the finished caches instead of failing or redoing them.
    assert cli_main(["demo", "--out", str(tmp_path), "--n-images", "27"]) == 0
