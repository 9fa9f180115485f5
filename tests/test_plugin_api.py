"""``service.plugin_api`` is the whole public surface for plugins: the in-tree
plugins import nothing else of ``service``, and the API imports cleanly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PLUGINS = sorted((ROOT / "plugins").glob("*.py"))


def service_imports(path: Path) -> list[str]:
    """Every ``service`` module that ``path`` imports, however it is written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from service import pipeline`` imports service.pipeline.
            base = node.module
            names = [f"{base}.{a.name}" if base == "service" else base for a in node.names]
        else:
            continue
        found += [n for n in names if n == "service" or n.startswith("service.")]
    return found


@pytest.mark.parametrize("path", PLUGINS, ids=lambda p: p.name)
def test_plugins_import_only_the_plugin_api(path):
    others = [name for name in service_imports(path) if name != "service.plugin_api"]
    assert others == [], f"{path.name} imports {others}: plugins import only service.plugin_api"


def test_the_check_sees_every_form_of_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import service.pipeline\n"
        "from service import errors\n"
        "from service.plugin_api import hookimpl\n"
        "from service.fs import TreeStats\n"
        "def f():\n    import service.db\n"
    )
    assert service_imports(module) == [
        "service.pipeline",
        "service.errors",
        "service.plugin_api",
        "service.fs",
        "service.db",
    ]


def test_errors_import_neither_aiohttp_nor_the_database_driver():
    code = (
        "import sys, service.errors\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'aiopg', 'psycopg2')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
