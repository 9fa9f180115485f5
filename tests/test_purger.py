"""service/purger.py: purges walked in a helper process, with real processes
and real faults: a helper stopped (SIGSTOP), killed (SIGKILL), one that
cannot be started, and a service killed while its helper runs."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service.progress import Progress
from service.trash import Trash
from tests.helpers import URL, children, insert_task, make_task_dir


@pytest.fixture
def trash(tmp_path: Path) -> Iterator[Trash]:
    base = tmp_path / "base"
    base.mkdir()
    trash = Trash(base)
    trash.open()
    try:
        yield trash
    finally:
        trash.close()


def detached(trash: Trash, task_id: str, files: int) -> Path:
    make_task_dir(trash.base_dir, task_id, files=files, size=10)
    return trash.detach(task_id)


def counts(tree: Path) -> tuple[int, int]:
    """Files and bytes under ``tree``, as a purge should report them."""
    sizes = [f.stat().st_size for f in tree.rglob("*") if f.is_file()]
    return len(sizes), sum(sizes)


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a thread; the thread and a list its result lands in."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def helper_of(trash: Trash) -> int:
    assert trash.purger.start()
    pid = trash.purger.pid
    assert pid is not None and pid != os.getpid()
    return pid


def test_a_group_of_purges_is_walked_by_the_helper_process(trash: Trash) -> None:
    trees = [detached(trash, f"task_{n}", files=n + 2) for n in range(3)]
    expected = [(*counts(tree), 0) for tree in trees]
    pid = helper_of(trash)
    os.kill(pid, signal.SIGSTOP)  # the helper cannot walk: nothing may go
    try:
        thread, out = in_thread(trash.purge_many, [(tree, None) for tree in trees])
        thread.join(0.5)
        assert thread.is_alive() and all(os.path.isdir(tree) for tree in trees)
    finally:
        os.kill(pid, signal.SIGCONT)
    thread.join(30)
    assert [(s.files, s.bytes, s.error_count) for s in out[0]] == expected
    assert not any(os.path.lexists(tree) for tree in trees)
    assert os.listdir(trash.label) == []


def test_a_killed_helper_leaves_no_tree_behind_and_is_started_again(trash: Trash) -> None:
    tree = detached(trash, "task_big", files=2_000)
    expected = counts(tree)
    pid = helper_of(trash)
    os.kill(pid, signal.SIGSTOP)  # the request waits in its socket, unread
    progress = Progress()
    thread, out = in_thread(trash.purge, tree, progress)
    thread.join(0.3)
    assert thread.is_alive()
    os.kill(pid, signal.SIGKILL)
    thread.join(60)
    (stats,) = out
    # Walked again in the caller's thread: exact, since the helper removed nothing.
    assert (stats.files, stats.bytes, stats.error_count) == (*expected, 0)
    assert progress.snapshot() == (stats.files, stats.bytes)
    assert not os.path.lexists(tree)

    again = detached(trash, "task_next", files=3)
    assert trash.purge(again).files == 3
    assert trash.purger.pid not in (None, pid)  # a new helper


def test_a_purge_is_walked_in_its_thread_when_no_helper_can_start(
    trash: Trash, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")  # as if uninstalled
    tree = detached(trash, "task_a", files=4)
    assert trash.purger.start() is False
    assert (trash.purge(tree).files, trash.purger.pid) == (4, None)
    assert not os.path.lexists(tree)


def test_progress_from_the_helper_adds_up_to_the_results(trash: Trash) -> None:
    trees = [detached(trash, f"task_{n}", files=300) for n in range(4)]
    progress = Progress()
    results = trash.purge_many([(tree, progress) for tree in trees])
    assert progress.snapshot() == (
        sum(s.files for s in results),  # type: ignore[union-attr]
        sum(s.bytes for s in results),  # type: ignore[union-attr]
    )
    assert progress.files == 4 * 300


@pytest.mark.slow  # a killed service: .ci/run runs it once
def test_the_helper_ends_with_a_killed_service(service_factory, base_dir: Path, pg) -> None:
    service = service_factory()
    assert service.proc is not None
    insert_task(pg, "task_a")
    make_task_dir(base_dir, "task_a")
    body = {"task_ids": ["task_a"], "confirm": True}
    resp = requests.delete(f"{service.url}{URL}", json=body, timeout=30)
    assert resp.json()["data"]["deleted_tasks"][0]["deleted_files_count"] == 5
    (helper,) = [
        pid
        for pid in children(service.proc.pid)
        if b"service.purger" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    service.kill()

    def running() -> bool:
        try:  # a zombie has exited: whoever adopted it may be slow to reap it
            return Path(f"/proc/{helper}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and running():
        time.sleep(0.05)
    assert not running()


def test_a_purge_under_way_when_the_trash_closes_still_finishes(trash: Trash) -> None:
    # As at shutdown: the helper is stopped while it has a request, and the
    # trash's descriptors are closed; the caller walks the tree itself.
    tree = detached(trash, "task_late", files=50)
    expected = counts(tree)
    pid = helper_of(trash)
    os.kill(pid, signal.SIGSTOP)
    try:
        thread, out = in_thread(trash.purge, tree)
        thread.join(0.3)
        assert thread.is_alive()
        trash.close()
    finally:
        os.kill(pid, signal.SIGCONT)
    thread.join(60)
    (stats,) = out
    assert (stats.files, stats.bytes, stats.error_count) == (*expected, 0)
    assert not os.path.lexists(tree)


def test_a_helper_closed_by_the_service_can_be_started_again_at_once(trash: Trash) -> None:
    first = helper_of(trash)
    trash.purger.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{first}/cmdline"):
        time.sleep(0.02)  # reaped by its reader thread
    again = helper_of(trash)  # not taken for a helper that cannot run
    assert again != first
    tree = detached(trash, "task_a", files=3)
    assert trash.purge(tree).files == 3
