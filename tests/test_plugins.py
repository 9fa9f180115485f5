"""Plugins an operator enables: loading and its errors, the plugin list, the
retention guard, and the guide (every hook documented, its example runs)."""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta

import pytest

from tests.helpers import ROOT, delete_ok, run_py, write_settings

GUIDE = ROOT / "docs" / "plugins.md"


# ---------------------------------------------------------------- the guide


# What the guide says about the hooks is checked by tests/test_docs.py.


@pytest.fixture
def guide_example(workdir, monkeypatch):
    """The guide's worked example, saved as an importable module."""
    section = GUIDE.read_text().split("## A worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    package = workdir / "guidepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "size_limit.py").write_text(code)
    monkeypatch.syspath_prepend(str(workdir))
    return "guidepkg.size_limit"


@pytest.mark.parametrize(
    "settings_text",
    [
        '[plugins]\nenabled = ["guidepkg.size_limit"]\n'
        '[plugins."guidepkg.size_limit"]\nmax_files = 10\njournal = "journal.txt"\n'
    ],
)
async def test_the_guides_example_runs(guide_example, client, task_factory, workdir):
    task_dir = task_factory("task_big", files=20)
    body = await delete_ok(client, "task_big")
    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "TOO_BIG" and "20" in failed["error"]
    assert task_dir.is_dir()

    body = await delete_ok(client, "task_big", force=True)
    assert body["data"]["deleted_tasks"][0]["task_id"] == "task_big"
    assert "task_big" in (workdir / "journal.txt").read_text()


# ---------------------------------------------------------------- loading


def start_with(workdir, settings_text: str, extra_files: dict[str, str] | None = None):
    for name, text in (extra_files or {}).items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = write_settings(workdir, settings_text)
    env = {**os.environ, "PYTHONPATH": str(workdir), "DATABASE_URL": "postgresql://unused/x"}
    return run_py("--config", str(config), "--port", "0", env=env, timeout=30)


TYPO_PLUGIN = """
from service.hookspecs import hookimpl

@hookimpl
def dptask_check_delet(task):
    return None
"""
WRAPPER_PLUGIN = """
from service.hookspecs import hookimpl

@hookimpl(wrapper=True)
def dptask_check_delete(task):
    return (yield)
"""


@pytest.mark.parametrize(
    ("settings_text", "files", "names"),
    [
        ('[plugins]\nenabled = ["no_such_plugin"]\n', {}, "no_such_plugin"),
        ('[plugins]\nenabled = ["nopkg.nomodule"]\n', {}, "nopkg.nomodule"),
        ('[plugins]\nenabled = ["archive"]\n[plugins.archive]\ndirr = "x"\n', {}, "archive.dirr"),
        (
            '[plugins]\nenabled = ["archive"]\n[plugins.archive]\ncompression_level = "9"\n',
            {},
            "compression_level",
        ),
        ('[plugins]\nenabled = ["archive"]\n[plugins.archive]\nformat = "zip"\n', {}, "format"),
        (
            "[plugins]\nenabled = []\n[plugins.retention_guard]\nmin_age_hours = 1\n",
            {},
            "retention_guard",
        ),
        (
            '[plugins]\nenabled = ["retention_guard"]\n'
            '[plugins.retention_guard]\nkeep_statuses = "failed"\n',
            {},
            "keep_statuses",
        ),
        (
            '[plugins]\nenabled = ["typo.plugin"]\n',
            {"typo/plugin.py": TYPO_PLUGIN},
            "dptask_check_delet",
        ),
        ('[plugins]\nenabled = ["wrap.plugin"]\n', {"wrap/plugin.py": WRAPPER_PLUGIN}, "wrapper"),
    ],
)
def test_a_plugin_problem_stops_start_up_with_one_line(workdir, settings_text, files, names):
    result = start_with(workdir, settings_text, files)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0] and "Traceback" not in result.stderr


# ---------------------------------------------------------------- the plugin list


@pytest.mark.parametrize(
    "settings_text",
    ['[plugins]\nenabled = ["archive", "retention_guard"]\n[plugins.archive]\ndir = "a"\n'],
)
async def test_plugin_list_shows_hooks_in_call_order(client):
    resp = await client.get("/api/v0/data_pipeline/plugins")
    body = await resp.json()
    assert resp.status == 200 and body["success"] is True
    plugins = {p["name"]: p for p in body["data"]["plugins"]}
    assert list(plugins)[:3] == [
        "builtin.checks",
        "builtin.directory",
        "builtin.records",
    ]
    assert [h["hook"] for h in plugins["archive"]["hooks"]] == ["dptask_before_removal"]
    assert [h["hook"] for h in plugins["retention_guard"]["hooks"]] == ["dptask_check_delete"]
    # Later registrations run first: the guard, then the built-in checks.
    assert body["data"]["hooks"]["dptask_check_delete"] == ["retention_guard", "builtin.checks"]


# ---------------------------------------------------------------- the retention guard

GUARD = (
    '[plugins]\nenabled = ["retention_guard"]\n'
    '[plugins.retention_guard]\nmin_age_hours = 48\nkeep_statuses = ["failed"]\n'
)


@pytest.mark.parametrize("settings_text", [GUARD])
async def test_retention_guard_refuses_young_and_kept_tasks(client, task_factory, base_dir):
    task_factory("task_young", created_at=datetime.now() - timedelta(hours=5))
    task_factory("task_kept", status="failed", created_at=datetime.now() - timedelta(days=9))
    task_factory("task_old", created_at=datetime.now() - timedelta(days=9))
    body = await delete_ok(client, "task_young", "task_kept", "task_old", force=True)
    failed = {t["task_id"]: t for t in body["data"]["failed_tasks"]}
    assert failed["task_young"]["error_code"] == "RETENTION_GUARD"
    assert "48" in failed["task_young"]["error"]
    assert failed["task_kept"]["error_code"] == "RETENTION_GUARD"
    assert "failed" in failed["task_kept"]["error"]
    assert [t["task_id"] for t in body["data"]["deleted_tasks"]] == ["task_old"]
    assert (base_dir / "task_young").is_dir() and (base_dir / "task_kept").is_dir()


@pytest.mark.parametrize("settings_text", [GUARD + "allow_force = true\n"])
async def test_retention_guard_yields_to_force_when_allowed(client, task_factory, base_dir):
    task_factory("task_young", created_at=datetime.now() - timedelta(hours=5))
    body = await delete_ok(client, "task_young")
    assert body["data"]["failed_tasks"][0]["error_code"] == "RETENTION_GUARD"
    body = await delete_ok(client, "task_young", force=True)
    assert body["data"]["deleted_tasks"][0]["task_id"] == "task_young"
    assert not (base_dir / "task_young").exists()


# ---------------------------------------------------------------- entry points


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path that offers a plugin through the entry-point group."""
    (tmp_path / "epplugin.py").write_text(
        "from service.hookspecs import hookimpl\n"
        "from service.errors import Veto\n\n"
        "@hookimpl\n"
        "def dptask_check_delete(task):\n"
        "    return Veto('FROM_ENTRY_POINT', 'installed plugin says no')\n"
    )
    dist = tmp_path / "epplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: epplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dptask.plugins]\nepplugin = epplugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize(("autoload", "loaded"), [("", True), ("1", False)])
def test_entry_point_plugins_load_unless_switched_off(
    installed_plugin, workdir, monkeypatch, autoload, loaded
):
    from service.plugin_manager import create_plugin_manager
    from service.settings import load_settings

    monkeypatch.setenv("DPTASK_DISABLE_PLUGIN_AUTOLOAD", autoload)
    settings = load_settings(write_settings(workdir))
    pm = create_plugin_manager(settings)
    assert (pm.get_plugin("epplugin") is not None) is loaded

    off = load_settings(write_settings(workdir, "[plugins]\nentry_points = false\n"))
    assert create_plugin_manager(off).get_plugin("epplugin") is None
