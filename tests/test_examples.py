"""Every example script runs offline in its ``--tiny`` mode, without ``--out`` (#18 item 25) and
with a relative one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def run_example(script: Path, *args: str, cwd: Path, temp: Path) -> subprocess.CompletedProcess:
    """``script --tiny ARGS`` in ``cwd``, with temporary directories made under ``temp``."""
    cwd.mkdir(parents=True, exist_ok=True)
    temp.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(script), "--tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "TMPDIR": str(temp)},
    )


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_tiny_mode_without_out(script, tmp_path):
    result = run_example(script, cwd=tmp_path / "cwd", temp=tmp_path / "tmp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing in the working directory
    assert any(p.name.startswith("sae-vlm-example-") for p in (tmp_path / "tmp").iterdir())


def test_a_relative_out_is_taken_from_the_working_directory(tmp_path):
    script = next(p for p in EXAMPLES if p.stem == "load_pretrained_and_attach")
    result = run_example(script, "--out", "ex/lpa", cwd=tmp_path, temp=tmp_path / "tmp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ex" / "lpa" / "repo" / "layer2" / "cfg.json").is_file()
