import subprocess
import sys
import textwrap


def test_datasets_set_format_torch_works_after_patch_with_torchvision_imported():
    # A fresh interpreter, since the bug only shows once torchvision is in sys.modules.
    script = textwrap.dedent(
        """
        import torchvision  # noqa: F401  (the trigger)
        import datasets
        from sae_vlm_plugin._compat import patch_datasets_torch_formatting

        ds = datasets.Dataset.from_dict({"x": [[1.0, 2.0], [3.0, 4.0]]})
        try:
            ds.with_format("torch")[0]
            broken = False
        except ImportError:
            broken = True
        patched = patch_datasets_torch_formatting()
        assert broken == patched, (broken, patched)
        assert patch_datasets_torch_formatting() is False  # idempotent
        row = ds.with_format("torch")[1]["x"]
        assert row.tolist() == [3.0, 4.0]
        print("ok", broken)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
