"""Every example script runs offline in its ``--tiny`` mode, without ``--out`` (#18 item 25) and
with a relative one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def run_example(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), "--tiny", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_tiny_mode_without_out(script, tmp_path):
    result = run_example(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # a temporary directory, not the working directory


def test_a_relative_out_is_taken_from_the_working_directory(tmp_path):
    script = next(p for p in EXAMPLES if p.stem == "load_pretrained_and_attach")
    result = run_example(script, "--out", "ex/lpa", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ex" / "lpa" / "repo" / "layer2" / "cfg.json").is_file()
