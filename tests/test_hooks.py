"""The hook chain: the async runner, pluggy's order, vetoes and failing plugins."""

from __future__ import annotations

import asyncio
import inspect
import time

import pluggy
import pytest

from service import appkeys, hookspecs
from service.app import create_app
from service.errors import TaskFailed, Veto
from service.hookrunner import run_hook
from service.hookspecs import hookimpl
from service.pipeline import BatchContext, DeleteOptions
from service.trash import Trash
from tests.helpers import delete_ok, tree_snapshot


def bare_manager():
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


# ---------------------------------------------------------------- the runner


async def test_pluggy_alone_takes_a_coroutine_for_a_result():
    """The pitfall the runner exists for: keep it, so nobody 'simplifies' it away."""

    class AsyncDetach:
        @hookimpl
        async def dptask_detach_directory(self, task):
            await asyncio.sleep(0)
            return "awaited"

    class SyncDetach:
        @hookimpl(trylast=True)
        def dptask_detach_directory(self, task):
            return "sync"

    pm = bare_manager()
    pm.register(SyncDetach())
    pm.register(AsyncDetach())
    direct = pm.hook.dptask_detach_directory(task=None)
    assert inspect.iscoroutine(direct)  # pluggy ended the chain with a coroutine
    direct.close()
    assert await run_hook(pm, "dptask_detach_directory", task=None) == "awaited"


async def test_async_allow_and_sync_veto_give_a_veto():
    class AsyncAllows:
        @hookimpl
        async def dptask_check_delete(self, task):
            await asyncio.sleep(0)

    class SyncVetoes:
        @hookimpl
        def dptask_check_delete(self, task):
            return Veto("NOPE", "no")

    pm = bare_manager()
    pm.register(SyncVetoes())
    pm.register(AsyncAllows())
    assert await run_hook(pm, "dptask_check_delete", task=None) == [Veto("NOPE", "no")]


async def test_tryfirst_and_trylast_order_holds():
    calls = []

    def plugin(name, **opts):
        class P:
            @hookimpl(**opts)
            async def dptask_before_removal(self, task):
                calls.append(name)

        P.__name__ = name
        return P()

    pm = bare_manager()
    for p in (
        plugin("last", trylast=True),
        plugin("a"),
        plugin("first", tryfirst=True),
        plugin("b"),
    ):
        pm.register(p)
    await run_hook(pm, "dptask_before_removal", task=None)
    # pluggy's order: tryfirst, then later registrations before earlier ones, then trylast.
    assert calls == ["first", "b", "a", "last"]


# ---------------------------------------------------------------- plugins in the service


class AsyncAllowsSyncVetoes:
    @hookimpl
    def dptask_check_delete(self, task):
        if task.task_id == "task_keep":
            return Veto("KEEP_ME", "this task is kept by policy")


class AsyncAllows:
    @hookimpl(tryfirst=True)
    async def dptask_check_delete(self, task):
        await asyncio.sleep(0.01)
        return None


@pytest.mark.parametrize("plugins", [[AsyncAllowsSyncVetoes(), AsyncAllows()]])
async def test_a_plugin_veto_fails_that_task_with_its_code(client, task_factory, base_dir, pg):
    task_factory("task_keep")
    task_factory("task_go")
    body = await delete_ok(client, "task_keep", "task_go")
    (failed,) = body["data"]["failed_tasks"]
    assert failed["task_id"] == "task_keep"
    assert (failed["error_code"], failed["error"]) == ("KEEP_ME", "this task is kept by policy")
    assert (base_dir / "task_keep").is_dir() and pg.task("task_keep")["directory_exists"] is True
    assert [t["task_id"] for t in body["data"]["deleted_tasks"]] == ["task_go"]


class RaisesBeforeRemoval:
    @hookimpl
    async def dptask_before_removal(self, task):
        raise RuntimeError("disk on fire: /secret/path")


@pytest.mark.parametrize("plugins", [[RaisesBeforeRemoval()]])
async def test_a_raising_plugin_fails_only_its_task(client, task_factory, base_dir, pg, settings):
    task_factory("task_a")
    before = tree_snapshot(base_dir)
    body = await delete_ok(client, "task_a")
    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "PLUGIN_ERROR"
    assert "RaisesBeforeRemoval" in failed["error"] or "dptask_before_removal" in failed["error"]
    assert "/secret/path" not in str(body)  # no raw exception text reaches the client
    assert tree_snapshot(base_dir) == before
    assert pg.task("task_a")["directory_exists"] is True
    assert '"error_code": "PLUGIN_ERROR"' in settings.audit_path.read_text()


class RaisesInRecordStep:
    """Fails after the directory was detached: it must be renamed back."""

    @hookimpl(tryfirst=True)
    async def dptask_update_records(self, task):
        assert not task.path.exists()  # detached
        raise RuntimeError("boom")


@pytest.mark.parametrize("plugins", [[RaisesInRecordStep()]])
async def test_failure_after_detach_renames_the_directory_back(client, task_factory, base_dir, pg):
    task_factory("task_a", files=9)
    before = tree_snapshot(base_dir / "task_a")
    body = await delete_ok(client, "task_a")
    assert body["data"]["failed_tasks"][0]["error_code"] == "PLUGIN_ERROR"
    assert tree_snapshot(base_dir / "task_a") == before  # back, byte for byte
    assert list((base_dir / ".trash").iterdir()) == []
    assert pg.task("task_a")["directory_exists"] is True


class FailsWithCode:
    @hookimpl
    def dptask_before_removal(self, task):
        raise TaskFailed("ARCHIVE_FAILED", "archive disk is full")


@pytest.mark.parametrize("plugins", [[FailsWithCode()]])
async def test_task_failed_keeps_the_plugins_code(client, task_factory, base_dir):
    task_factory("task_a")
    body = await delete_ok(client, "task_a")
    (failed,) = body["data"]["failed_tasks"]
    assert (failed["error_code"], failed["error"]) == ("ARCHIVE_FAILED", "archive disk is full")
    assert (base_dir / "task_a").is_dir()


class AddsFields:
    @hookimpl
    async def dptask_before_removal(self, task):
        return {"archive_path": f"/archives/{task.task_id}.tar.gz"}


@pytest.mark.parametrize("plugins", [[AddsFields()]])
async def test_before_removal_fields_reach_the_result(client, task_factory):
    task_factory("task_a")
    body = await delete_ok(client, "task_a")
    assert body["data"]["deleted_tasks"][0]["archive_path"] == "/archives/task_a.tar.gz"


class BrokenAudit:
    @hookimpl
    def dptask_after_delete(self, task, result):
        raise RuntimeError("observer broke")


@pytest.mark.parametrize("plugins", [[BrokenAudit()]])
async def test_a_failing_observer_does_not_change_the_outcome(client, task_factory, base_dir):
    task_factory("task_a")
    body = await delete_ok(client, "task_a")
    assert body["message"] == "任务目录删除成功"
    assert not (base_dir / "task_a").exists()


def test_every_hook_states_its_contract():
    specs = [name for name in dir(hookspecs) if name.startswith(hookspecs.PROJECT + "_")]
    assert len(specs) >= 7
    for name in specs:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert "Return" in doc, f"{name} does not state its return contract"


class SeesFailures:
    """Records what the task hooks and the batch hook see of failed tasks."""

    def __init__(self):
        self.paths = {}
        self.batch_failed = []

    @hookimpl
    def dptask_delete_failed(self, task, result):
        self.paths[task.task_id] = task.path

    @hookimpl
    def dptask_batch_finished(self, batch, data):
        self.batch_failed = [(f["task_id"], f["error_code"]) for f in data["failed_tasks"]]


SEES = SeesFailures()


@pytest.mark.parametrize("plugins", [[SEES]])
async def test_no_hook_sees_a_path_built_from_an_invalid_id(client, schema):
    """An invalid id gets no TaskContext: only the batch hook sees its failure."""
    await delete_ok(client, "/etc", "../x")
    assert SEES.paths == {}
    assert sorted(SEES.batch_failed) == [("../x", "INVALID_TASK_ID"), ("/etc", "INVALID_TASK_ID")]


async def test_without_a_detach_implementation_nothing_is_recorded(
    aiohttp_client, settings, task_factory, base_dir, pg
):
    app = create_app(settings)
    app[appkeys.PLUGINS].unregister(name="builtin.directory")
    client = await aiohttp_client(app)
    task_factory("task_a")
    body = await delete_ok(client, "task_a")
    assert body["data"]["failed_tasks"][0]["error_code"] == "DELETE_FAILED"
    assert (base_dir / "task_a").is_dir()
    assert pg.task("task_a")["directory_exists"] is True


class SlowDetach:
    """Detaches like the built-in, slowly, so the request can be cancelled meanwhile."""

    @hookimpl(tryfirst=True)
    async def dptask_detach_directory(self, task):
        def slow():
            time.sleep(0.3)
            trash = Trash(task.settings.base_dir)
            try:
                return trash.detach(task.task_id)
            finally:
                trash.close()

        return await asyncio.to_thread(slow)


@pytest.mark.parametrize("plugins", [[SlowDetach()]])
async def test_a_request_cancelled_during_detach_leaves_the_task_whole(
    client, task_factory, base_dir, pg
):
    task_factory("task_a", files=7)
    before = tree_snapshot(base_dir / "task_a")
    batch = BatchContext(["task_a"], DeleteOptions(), request_id="r", client=None)
    deletion = asyncio.ensure_future(client.app[appkeys.DELETER].delete_batch(batch))
    await asyncio.sleep(0.1)  # the rename is under way in its thread
    deletion.cancel()
    with pytest.raises(asyncio.CancelledError):
        await deletion
    assert tree_snapshot(base_dir / "task_a") == before
    assert list((base_dir / ".trash").iterdir()) == []
    assert pg.task("task_a")["directory_exists"] is True


class BrokenPurge:
    @hookimpl(tryfirst=True)
    def dptask_purge_directory(self, task, path):
        raise RuntimeError("purge plugin broke")


@pytest.mark.parametrize("plugins", [[BrokenPurge()]])
async def test_a_raising_purge_plugin_is_a_purge_failure_with_the_remains_back(
    client, task_factory, base_dir, pg
):
    task_factory("task_a", files=7)
    before = tree_snapshot(base_dir / "task_a")
    body = await delete_ok(client, "task_a")
    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "PURGE_FAILED"
    assert tree_snapshot(base_dir / "task_a") == before
    assert pg.task("task_a")["directory_exists"] is True
