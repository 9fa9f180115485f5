"""Several service processes on one database and one base_dir, and a crash in
the middle of a large batch: each task deleted once, nothing half-done."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import (
    URL,
    insert_task,
    make_task_dir,
    send_in_background,
    wait_for_empty_trash,
)

# A load or fault test: .ci/run runs it once, not again on the embedded server.
pytestmark = pytest.mark.slow


def test_two_processes_delete_each_task_exactly_once(service_factory, pg, base_dir):
    first, second = service_factory(), service_factory()
    ids = [f"task_{i:03d}" for i in range(40)]
    for task_id in ids:
        insert_task(pg, task_id)
        make_task_dir(base_dir, task_id, files=40)
    # Overlapping batches, sent to both processes at once.
    batches = [(first, ids[:30]), (second, ids[10:]), (first, ids[20:]), (second, ids[:20])]

    def send(service_and_ids):
        service, batch = service_and_ids
        body = {"task_ids": batch, "confirm": True}
        return requests.delete(f"{service.url}{URL}", json=body, timeout=120).json()

    with ThreadPoolExecutor(len(batches)) as pool:
        bodies = list(pool.map(send, batches))

    deleted = [t["task_id"] for b in bodies for t in b["data"]["deleted_tasks"]]
    failed = [t for b in bodies for t in b["data"]["failed_tasks"]]
    assert sorted(deleted) == ids  # every task exactly once
    assert sum(b["data"]["summary"]["successfully_deleted"] for b in bodies) == len(ids)
    assert {t["error_code"] for t in failed} <= {"TASK_LOCKED", "DELETE_FAILED"}
    assert sum(t["deleted_files_count"] for b in bodies for t in b["data"]["deleted_tasks"]) == (
        40 * len(ids)
    )
    assert os.listdir(base_dir / ".trash") == []
    assert all(pg.task(t)["directory_exists"] is False for t in ids)


def test_sigkill_in_the_middle_of_a_large_batch_leaves_every_task_whole(
    service_factory, pg, base_dir
):
    service = service_factory()
    ids = [f"task_{i:03d}" for i in range(60)]
    for task_id in ids:
        insert_task(pg, task_id)
        make_task_dir(base_dir, task_id, files=400)
    body = {"task_ids": ids, "confirm": True, "continue_on_error": False}
    send_in_background(service.url, body)
    # Kill it once some tasks are gone and others are not.
    deadline = time.monotonic() + 60
    while sum(not (base_dir / t).exists() for t in ids) < 5:
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.005)
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait()

    service_factory()  # restart: the sweep runs

    gone = [t for t in ids if not (base_dir / t).exists()]
    intact = [t for t in ids if (base_dir / t).exists()]
    assert gone and intact, "the kill did not land mid-batch"
    for task_id in gone:
        assert pg.task(task_id)["directory_exists"] is False
    for task_id in intact:
        assert pg.task(task_id)["directory_exists"] is True
        assert sum(len(f) for _, _, f in os.walk(base_dir / task_id)) == 400
    wait_for_empty_trash(base_dir)
