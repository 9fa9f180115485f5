"""Real faults: a database that stops, a file that cannot be removed, a killed process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from service import appkeys
from service.app import create_app
from service.hookspecs import hookimpl
from service.settings import load_settings
from tests.helpers import (
    URL,
    OwnServer,
    Pg,
    delete,
    insert_task,
    make_task_dir,
    send_in_background,
    tree_snapshot,
    wait_for,
    wait_for_empty_trash,
    write_settings,
)

# A load or fault test: .ci/run runs it once, not again on the embedded server.
pytestmark = pytest.mark.slow


@pytest.fixture
def own_settings(workdir, base_dir, own_server):
    return load_settings(write_settings(workdir), environ={"DATABASE_URL": own_server.url})


# ---------------------------------------------------------------- the database goes away


class StopsDatabaseBeforeRecordStep:
    def __init__(self, server: OwnServer) -> None:
        self.server = server

    @hookimpl(tryfirst=True)
    async def dptask_update_records(self, task):
        await asyncio.to_thread(self.server.stop)  # the built-in then meets a dead server


async def test_database_lost_during_record_step_restores_the_directory(
    aiohttp_client, own_server, own_settings, base_dir
):
    app = create_app(own_settings)
    app[appkeys.PLUGINS].register(StopsDatabaseBeforeRecordStep(own_server))
    client = await aiohttp_client(app)
    pg = Pg(own_server.url)
    insert_task(pg, "task_a")
    pg.close()
    task_dir = make_task_dir(base_dir, "task_a", files=20)
    before = tree_snapshot(task_dir)

    status, body = await delete(client, "task_a")

    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "DATABASE_ERROR"
    assert tree_snapshot(task_dir) == before
    assert list((base_dir / ".trash").iterdir()) == []
    own_server.start()
    pg = Pg(own_server.url)
    assert pg.task("task_a")["directory_exists"] is True  # never committed
    pg.close()


async def test_database_down_gives_503_and_touches_nothing_then_recovers(
    aiohttp_client, own_server, own_settings, base_dir
):
    client = await aiohttp_client(create_app(own_settings))
    pg = Pg(own_server.url)
    insert_task(pg, "task_a")
    pg.close()
    task_dir = make_task_dir(base_dir, "task_a")
    before = tree_snapshot(base_dir)
    await asyncio.to_thread(own_server.stop)

    status, body = await delete(client, "task_a")
    assert status == 503 and body["code"] == 503 and body["success"] is False
    assert tree_snapshot(base_dir) == before
    resp = await client.get(URL)
    assert resp.status == 503 and (await resp.json())["code"] == 503

    await asyncio.to_thread(own_server.start)
    resp = await client.get(URL)
    assert resp.status == 200
    assert (await resp.json())["data"]["tasks"][0]["task_id"] == "task_a"
    status, body = await delete(client, "task_a")
    assert body["message"] == "任务目录删除成功"
    assert not task_dir.exists()


# ---------------------------------------------------------------- a file that cannot be removed


async def test_file_that_cannot_be_removed_fails_the_task_consistently(
    client, task_factory, base_dir, pg, immutable
):
    task_dir = task_factory("task_a", files=10)
    stuck = immutable(task_dir / "vector_bak" / "embedding.csv")

    status, body = await delete(client, "task_a")

    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "PURGE_FAILED"
    assert any("vector_bak/embedding.csv" in e for e in failed["errors"])
    assert failed["deleted_files_count"] == 9
    # What is left is back in place, and the record says the directory exists.
    assert stuck.exists()
    assert sorted(p.name for p in task_dir.rglob("*")) == ["embedding.csv", "vector_bak"]
    assert pg.task("task_a")["directory_exists"] is True
    assert list((base_dir / ".trash").iterdir()) == []

    subprocess.run(["chattr", "-i", str(stuck)], check=True)
    status, body = await delete(client, "task_a")
    assert body["data"]["deleted_tasks"][0]["deleted_files_count"] == 1
    assert pg.task("task_a")["directory_exists"] is False


# ---------------------------------------------------------------- a killed process

PAUSE_PLUGIN = """
import asyncio, os
from pathlib import Path
from service.hookspecs import hookimpl

MARK = Path(os.environ["PAUSE_MARK"])
STEP = os.environ["PAUSE_STEP"]


async def _pause(task):
    MARK.write_text(task.task_id)
    await asyncio.sleep(3600)  # until the test kills the process


@hookimpl(tryfirst=True)
async def dptask_update_records(task):
    if STEP == "record":
        await _pause(task)


@hookimpl(tryfirst=True)
async def dptask_purge_directory(task, path):
    if STEP == "purge":
        await _pause(task)
"""


def start_paused_delete(service_factory, workdir, step: str, task_id: str, body: dict):
    """A real service that stops at ``step``; a DELETE sent to it; returns when paused."""
    package = workdir / "pausetest"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "pause.py").write_text(PAUSE_PLUGIN)
    mark = workdir / "paused"
    service = service_factory(
        settings_text='[plugins]\nenabled = ["pausetest.pause"]\n',
        env={"PYTHONPATH": str(workdir), "PAUSE_MARK": str(mark), "PAUSE_STEP": step},
    )
    return service, mark


@pytest.mark.parametrize("delete_records", [False, True])
def test_sigkill_between_detach_and_record_restores_the_task(
    service_factory, workdir, base_dir, pg, delete_records
):
    service, mark = start_paused_delete(service_factory, workdir, "record", "task_a", {})
    insert_task(pg, "task_a")
    task_dir = make_task_dir(base_dir, "task_a", files=50)
    before = tree_snapshot(task_dir)
    body = {"task_ids": ["task_a"], "confirm": True, "delete_database_records": delete_records}
    send_in_background(service.url, body)
    wait_for(mark)
    assert not task_dir.exists()  # detached into the trash, not yet recorded
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait()

    service_factory()  # restart, without the pausing plugin

    assert tree_snapshot(task_dir) == before
    assert pg.task("task_a")["directory_exists"] is True
    assert len(pg.steps("task_a")) == 1
    assert os.listdir(base_dir / ".trash") == []


@pytest.mark.parametrize("delete_records", [False, True])
def test_sigkill_between_record_and_purge_finishes_the_deletion(
    service_factory, workdir, base_dir, pg, delete_records
):
    service, mark = start_paused_delete(service_factory, workdir, "purge", "task_a", {})
    insert_task(pg, "task_a")
    task_dir = make_task_dir(base_dir, "task_a", files=50)
    body = {"task_ids": ["task_a"], "confirm": True, "delete_database_records": delete_records}
    send_in_background(service.url, body)
    wait_for(mark)
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait()
    assert any((base_dir / ".trash").iterdir())  # the committed tree waits in the trash

    service_factory()

    assert not task_dir.exists()
    record = pg.task("task_a")
    assert record is None if delete_records else record["directory_exists"] is False
    wait_for_empty_trash(base_dir)


async def test_purge_failure_after_records_were_deleted_leaves_the_remains_in_the_trash(
    client, task_factory, base_dir, pg, immutable
):
    task_dir = task_factory("task_a", files=10)
    immutable(task_dir / "vector_bak" / "embedding.csv")

    status, body = await delete(client, "task_a", delete_database_records=True)

    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "PURGE_FAILED" and "回收区" in failed["error"]
    assert pg.task("task_a") is None
    assert not task_dir.exists()  # no record says it exists: it is not put back
    (remains,) = (base_dir / ".trash").iterdir()  # <token>.<task_id>
    assert remains.name.endswith(".task_a")
    assert sorted(p.name for p in remains.rglob("*")) == ["embedding.csv", "vector_bak"]
