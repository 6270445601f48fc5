"""hpdm's modules import each other in no circle and nobody imports the command line
(`.ci/check_imports.py`, which CI also runs before the tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

CHECK = Path(__file__).resolve().parent.parent / ".ci" / "check_imports.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", CHECK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hpdm_has_no_import_circle():
    check = _checker()
    assert check.problems(check.graph()) == []


def test_the_checker_finds_circles_inside_functions_and_imports_of_the_cli(tmp_path):
    check = _checker()
    pkg = tmp_path / "hpdm"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("from hpdm.data.video import read\n")
    (pkg / "data" / "video.py").write_text("from hpdm.data import x\n")  # its own package: fine
    (pkg / "a.py").write_text("def f():\n    from hpdm.b import g\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "cli.py").write_text("import hpdm.a\n")
    (pkg / "c.py").write_text("from hpdm.cli import main\n")
    found = check.problems(check.graph(tmp_path))
    assert len(found) == 2
    assert found[0].startswith("import circle among hpdm.a, hpdm.b")
    assert found[1].startswith("hpdm.c imports hpdm.cli")
