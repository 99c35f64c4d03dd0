"""Importing the package has no side effects and stays cheap; the CLI answers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import sae_vlm_plugin
from sae_vlm_plugin.cli import main

# Heavy libraries that must stay lazy: only the code that uses them imports them.
LAZY_MODULES = ("nnsight", "open_clip", "timm", "matplotlib", "sae_dashboard", "datasets")


def test_import_prints_nothing_configures_no_logging_and_stays_lazy():
    # Registration needs sae_lens (and what it imports); everything beyond that must stay lazy.
    script = textwrap.dedent(
        f"""
        import json, logging, sys
        import sae_lens
        before_handlers = list(logging.getLogger().handlers)
        before = set(sys.modules)
        import sae_vlm_plugin
        added = {{name.split(".")[0] for name in set(sys.modules) - before}}
        print(json.dumps({{
            "handlers_added": len(logging.getLogger().handlers) - len(before_handlers),
            "loaded": sorted(added & set({LAZY_MODULES!r})),
            "registered": "paper_matryoshka_batchtopk" in sae_lens.registry.SAE_TRAINING_CLASS_REGISTRY,
        }}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report == {"handlers_added": 0, "loaded": [], "registered": True}


def test_public_api_names_resolve():
    for name in sae_vlm_plugin.__all__:
        assert getattr(sae_vlm_plugin, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        sae_vlm_plugin.no_such_name  # noqa: B018


def test_cli_env_lists_the_ecosystem(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("sae-lens", "nnsight", "transformers", "open-clip-torch", "device"):
        assert name in out
