"""SIGTERM on a real service process in the middle of a 50,000-file deletion:
it stops taking work at once (``/readyz`` 503, a new DELETE 503), lets the
deletion finish within ``server.shutdown_grace`` (or, with a grace too short
for it, leaves the task as its record says), exits 0 with one
``shutdown_complete`` line, and SIGHUP never stops it."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import requests

from tests.helpers import URL, insert_task, make_task_dir

# A load or fault test: .ci/run runs it once, not again on the embedded server.
pytestmark = pytest.mark.slow

BIG = 50_000


def delete_in_background(url: str, task_id: str) -> tuple[threading.Thread, list]:
    answers: list = []

    def send() -> None:
        try:
            body = {"task_ids": [task_id], "confirm": True}
            answers.append(requests.delete(f"{url}{URL}", json=body, timeout=120))
        except requests.RequestException as e:  # the connection closed under it
            answers.append(e)

    thread = threading.Thread(target=send)
    thread.start()
    return thread, answers


def wait_gone(path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while path.exists():
        assert time.monotonic() < deadline, f"{path} never left its place"
        time.sleep(0.005)


def events(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("grace", [30.0, 0.05])
def test_sigterm_during_a_large_deletion(service_factory, pg, base_dir, grace):
    service = service_factory(settings_text=f"[server]\nshutdown_grace = {grace}\n")
    insert_task(pg, "task_big")
    task = make_task_dir(base_dir, "task_big", files=BIG, size=10)
    thread, answers = delete_in_background(service.url, "task_big")
    wait_gone(task)  # detached: the purge of 50,000 files is under way
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    if grace > 1:
        # Still listening while it drains: not ready, and no new deletion starts.
        readyz = requests.get(f"{service.url}/readyz", timeout=5)
        assert readyz.status_code == 503
        assert readyz.json()["data"]["checks"]["shutdown"] == "服务正在停止"
        refused = requests.delete(
            f"{service.url}{URL}", json={"task_ids": ["task_x"], "confirm": True}, timeout=5
        )
        assert refused.status_code == 503
        assert refused.json()["message"] == "服务正在停止，请稍后重试"
    assert service.proc.wait(60) == 0
    thread.join(60)
    record = pg.task("task_big")
    assert record is not None
    # Whole or gone, as its record says.
    assert record["directory_exists"] == task.exists()
    if grace > 1:  # the deletion finished within the grace, and was answered
        (answer,) = answers
        assert answer.status_code == 200, answer
        assert answer.json()["data"]["deleted_tasks"][0]["deleted_files_count"] == BIG
        assert record["directory_exists"] is False
    lines = events(service.log)
    assert [e["event"] for e in lines].count("shutdown_complete") == 1
    assert lines[-1]["event"] == "shutdown_complete"
    assert lines[-1]["drained"] is (grace > 1)


def test_sighup_does_not_stop_the_service(service_factory):
    service = service_factory()
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert service.proc.poll() is None
    assert requests.get(f"{service.url}/healthz", timeout=5).status_code == 200
