"""The documentation says each thing once and stays true to the code: the
guide's hook reference is generated from the hookspecs, every hookspec says
what it returns, and no file points at a design document outside the clone."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

from service import hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_plugin_docs", ROOT / "docs" / "gen_plugin_docs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_hook_reference_is_generated_from_the_hookspecs():
    gen = _generator()
    committed = GUIDE.read_text(encoding="utf-8")
    assert gen.rewrite(committed) == committed, (
        "docs/plugins.md is out of date: run python docs/gen_plugin_docs.py"
    )


def test_the_generator_checks_from_the_command_line():
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_plugin_docs.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_every_hook_is_in_the_reference_in_the_order_it_runs():
    documented = re.findall(r"^### (dptask_\w+)$", GUIDE.read_text(), flags=re.M)
    assert documented == [name for name, _ in _generator().hookspecs()]
    assert set(documented) == {n for n in dir(hookspecs) if n.startswith("dptask_")}


def test_every_hookspec_states_its_return_contract():
    for name, fn in _generator().hookspecs():
        doc = inspect.getdoc(fn) or ""
        assert re.search(r"^Returns\b", doc, flags=re.M), f"{name}: no 'Returns ...' paragraph"


def test_the_protocol_is_written_in_the_hookspecs_and_names_every_hook():
    doc = hookspecs.__doc__
    for name in (n for n in dir(hookspecs) if n.startswith("dptask_")):
        assert f"``{name}``" in doc, f"the protocol in service/hookspecs.py omits {name}"
    for field in ("actor", "record", "running_steps", "transaction", "path", "batch", "extra"):
        assert f"``{field}``" in doc, f"the task context's {field} is not documented"


# Split so that this file does not match itself.
OUTSIDE = "../" + "shared"
DESIGN_SECTION = re.compile("DESIGN" + r"\.md\s*§")


def test_no_file_cites_a_design_document_outside_the_clone():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for rel in tracked:
        path = ROOT / rel
        if path.suffix not in {".py", ".md", ".toml", ".txt", ".yaml", ".yml", ".cfg"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if OUTSIDE in text or DESIGN_SECTION.search(text):
            offenders.append(rel)
    assert offenders == []
    assert (ROOT / "docs" / "design.md").is_file()
