"""``recsys_mtl.runs``'s names resolve to what they name, and the light part stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import recsys_mtl.runs as runs


def test_every_public_name_is_the_object_not_a_submodule_even_after_every_submodule_is_imported():
    for sub in ("load", "bundle", "topk", "scoring", "batch"):
        importlib.import_module(f"recsys_mtl.runs.{sub}")
    for name in runs.__all__:
        value = getattr(runs, name)
        assert not isinstance(value, types.ModuleType), name
        assert value.__name__ == name


def test_reading_the_run_layout_does_not_import_torch():
    code = "import sys, recsys_mtl.layout, recsys_mtl.tracking; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
