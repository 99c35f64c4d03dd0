"""Importing the package has no side effects and stays cheap; the CLI answers."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sae_vlm_plugin
from sae_vlm_plugin.cli import main

# Heavy libraries that must stay lazy: only the code that uses them imports them.
LAZY_MODULES = (
    "torch",
    "sae_lens",
    "transformers",
    "nnsight",
    "open_clip",
    "timm",
    "matplotlib",
    "datasets",
)

REPORT = """
import json, logging, sys
print(json.dumps({
    "handlers": len(logging.getLogger().handlers),
    "loaded": sorted(m for m in %r if m in sys.modules),
    "registered": "sae_lens" in sys.modules
    and "paper_matryoshka_batchtopk" in sys.modules["sae_lens"].registry.SAE_TRAINING_CLASS_REGISTRY
    and any(r.startswith("pach2025") for r in sys.modules["sae_lens"].loading.pretrained_saes_directory.get_pretrained_saes_directory()),
}))
""" % (LAZY_MODULES,)  # noqa: UP031


def _run(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def test_import_prints_nothing_configures_no_logging_and_stays_lazy():
    assert _run("import sae_vlm_plugin" + REPORT) == {
        "handlers": 0,
        "loaded": [],
        "registered": False,
    }


@pytest.mark.parametrize(
    "imports", ["import sae_vlm_plugin; import sae_lens", "import sae_lens; import sae_vlm_plugin"]
)
def test_sae_lens_sees_the_plugin_whichever_is_imported_first(imports):
    report = _run(imports + REPORT)
    assert report["registered"] is True
    assert report["handlers"] == 0


def test_registration_survives_a_find_spec_before_the_import():
    """#18 item 18: a ``find_spec("sae_lens")`` between the two imports (as pytest plugins,
    ``importlib.util.find_spec`` probes and IDEs do) must not eat the pending registration."""
    probe = "import importlib.util; importlib.util.find_spec('sae_lens'); "
    report = _run("import sae_vlm_plugin; " + probe + probe + "import sae_lens" + REPORT)
    assert report["registered"] is True


def test_importing_sae_lens_with_the_plugin_parses_no_release_yaml():
    """#18 item 18: SAELens parses its 1.5 MB ``pretrained_saes.yaml`` on first use; the plugin
    must not make ``import sae_lens`` do it eagerly."""
    code = (
        "import json, sae_vlm_plugin, sae_lens\n"
        "from sae_lens.loading import pretrained_saes_directory as p\n"
        "print(json.dumps(p.get_pretrained_saes_directory.cache_info().currsize))"
    )
    assert _run(code) == 0


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


@pytest.mark.parametrize(
    "module",
    [
        "sae_vlm_plugin.pretrained.converters",
        "sae_vlm_plugin.cache",
        "sae_vlm_plugin.training.architectures.sae",
        "sae_vlm_plugin.training.runner",
    ],
)
def test_registration_survives_sae_lens_being_first_imported_by_any_plugin_module(module):
    # The registration callback runs while ``module`` is half-imported; it must not need it.
    assert _run(f"import {module}; import sae_lens" + REPORT)["registered"] is True


def test_a_user_error_is_one_line_and_exit_2(capsys, tmp_path):
    """#18 item 21: a user's mistake prints one line (no traceback) and exits 2; --debug raises."""
    assert main(["train", "--preset", "no-such-preset"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sae-vlm train: error: unknown preset 'no-such-preset'")
    assert "Traceback" not in error
    assert error.count("\n") == 1
    with pytest.raises(ValueError, match="unknown preset"):
        main(["--debug", "train", "--preset", "no-such-preset"])


def test_cli_parser_imports_no_heavy_library():
    """#18 item 28a: ``sae-vlm --help`` builds every subcommand's parser without importing torch,
    transformers or SAELens (they cost seconds); only the handlers import them."""
    code = "from sae_vlm_plugin.cli import build_parser; build_parser()" + REPORT
    assert _run(code)["loaded"] == []


# -- issue 27: arguments are checked before the work and the heavy imports --------------------

EXTRACT = ["extract", "--model", "m", "--hook", "h", "--out", "o"]
USAGE_ERRORS = {
    "extract batch size": (
        [*EXTRACT, "--images", ".", "--batch-size", "0"],
        "argument --batch-size: expected an integer >= 1, got '0'",
    ),
    "extract images": (
        [*EXTRACT, "--images", "no-such-dir"],
        "--images: no such image folder: no-such-dir",
    ),
    "train config": (
        ["train", "--config", "no-such.yaml"],
        "--config: no such config file: no-such.yaml",
    ),
    "train cache": (
        ["train", "--preset", "steering", "--cache", "no-such-cache"],
        "--cache: no such activation cache: no-such-cache",
    ),
    "evaluate sae": (
        ["evaluate", "--sae", "./no-such-sae", "--images", "."],
        "no such SAE directory: ./no-such-sae",
    ),
    "evaluate min support": (
        ["evaluate", "--sae", ".", "--images", ".", "--min-support", "-1"],
        "argument --min-support: expected an integer >= 0, got '-1'",
    ),
    "dashboard serve seconds": (
        ["dashboard", "--sae", ".", "--images", ".", "--out", "d", "--serve-seconds", "-5"],
        "argument --serve-seconds: expected a number >= 0, got '-5'",
    ),
    "dashboard port": (
        ["dashboard", "--sae", ".", "--images", ".", "--out", "d", "--port", "70000"],
        "argument --port: expected a port 0..65535, got '70000'",
    ),
    "name k": (
        ["name", "--sae", ".", "--k", "0"],
        "argument --k: expected an integer >= 1, got '0'",
    ),
    "find top": (["find", "cat", "--top", "0"], "argument --top: expected an integer >= 1"),
    "alignment pairs": (
        ["alignment", "--pairs", "no-such.csv"],
        "--pairs: no such pairs file: no-such.csv",
    ),
    "device spelling": (
        ["evaluate", "--sae", ".", "--images", ".", "--device", "banana"],
        "device 'banana' is not a device; valid: cpu, cuda, cuda:N, mps, xpu",
    ),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_a_usage_error_is_said_before_any_heavy_import(case, tmp_path):
    """#27 item 24 (and items 22, the numbers of every command): the error comes from the
    arguments alone, in one line with exit 2, without importing torch or SAELens."""
    argv, message = USAGE_ERRORS[case]
    code = (
        "import sys\nfrom sae_vlm_plugin.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code\n"
        "assert code == 2, code\n" + REPORT
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"sae-vlm {argv[0]}: error: ")
    assert json.loads(result.stdout)["loaded"] == []


@pytest.mark.parametrize(
    "command",
    [
        ["extract", "--model", "m", "--hook", "h", "--images", ".", "--out", "o"],
        ["train", "--preset", "steering", "--cache", "."],
        ["evaluate", "--sae", ".", "--images", "."],
        ["dashboard", "--sae", ".", "--images", ".", "--out", "d"],
        ["name", "--sae", "."],
        ["steer", "--sae", ".", "--model", "m", "--latent", "0", "--values", "0", "--prompt", "p"],
    ],
)
def test_a_device_this_machine_lacks_is_a_one_line_error(command, tmp_path, monkeypatch, capsys):
    """#27 item 7: ``--device cuda`` without a GPU (here: a GPU index past the machine's)."""
    import torch

    monkeypatch.chdir(tmp_path)
    missing = f"cuda:{torch.cuda.device_count()}"
    assert main([*command, "--device", missing]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert error[0] == (
        f"sae-vlm {command[0]}: error: device '{missing}' is not available on this machine; "
        "valid here: "
        + ", ".join(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    )
    assert not (tmp_path / "o").exists()


def test_the_library_refuses_a_device_this_machine_lacks():
    import torch

    from sae_vlm_plugin import VisionModel
    from sae_vlm_plugin.tiny import models as tm

    with pytest.raises(ValueError, match="'banana' is not a device"):
        VisionModel(tm.clip_vision_model(), device="banana")
    with pytest.raises(ValueError, match="not available on this machine"):
        VisionModel(tm.clip_vision_model(), device=f"cuda:{torch.cuda.device_count()}")


def _type_checking_imports(package: str) -> dict[str, str]:
    """``name -> module`` of the ``from M import N as N`` lines in a package's
    ``if TYPE_CHECKING:`` block, read from its source (what IDEs and mypy see)."""
    import ast
    import importlib.util

    origin = importlib.util.find_spec(package).origin
    tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                for alias in statement.names:
                    assert alias.asname == alias.name, f"{alias.name} is not re-exported as itself"
                    names[alias.name] = statement.module
    return names


@pytest.mark.parametrize(
    "package",
    [
        "sae_vlm_plugin",
        "sae_vlm_plugin.cache",
        "sae_vlm_plugin.families",
        "sae_vlm_plugin.training",
    ],
)
def test_type_checking_block_names_every_lazy_public_name_from_its_module(package):
    """Type checkers see exactly the names the lazy table serves, from the module it loads."""
    module = importlib.import_module(package)
    lazy = module._LAZY_API
    assert _type_checking_imports(package) == lazy
    for name, defining in lazy.items():
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == defining, name
    assert sorted(set(module.__all__) - {"__version__"}) == sorted(lazy)
