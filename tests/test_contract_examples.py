"""Every example of the contract, run verbatim (curl and Python) against a real
service on port 8084, as the contract's reader would run them.

When 8084 is taken (the README's flow: the service runs there in another
terminal), the examples run unchanged except for the port, rewritten to a free
one, and a warning in pytest's summary says so."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import ROOT, insert_task, make_task_dir

CONTRACT = ROOT / "docs" / "contract" / "task-deletion-api.md"
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", CONTRACT.read_text(), flags=re.S)
CURL_DELETES = [code for lang, code in BLOCKS if lang == "bash" and "-X DELETE" in code]
RESULT_FIELDS = {
    "success",
    "task_id",
    "directory_deleted",
    "database_records_deleted",
    "deleted_files_count",
    "deleted_size",
    "deleted_at",
}


CONTRACT_PORT = 8084


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def service(service_factory):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    if not port_taken(CONTRACT_PORT):
        return service_factory(port=CONTRACT_PORT)
    service = service_factory()
    warnings.warn(
        f"port {CONTRACT_PORT} is in use (the service in another terminal?): the contract's"
        f" examples ran on port {service.port} instead, unchanged otherwise",
        stacklevel=1,
    )
    return service


def on(service, code: str) -> str:
    """The example as written, but for the port the test service listens on."""
    return code.replace(f"localhost:{CONTRACT_PORT}", f"localhost:{service.port}")


def ids_in(code: str) -> list[str]:
    return sorted(set(re.findall(r"task_20250702_\w+", code)))


def make_tasks(pg, base_dir: Path, task_ids, **record) -> None:
    for task_id in task_ids:
        insert_task(pg, task_id, **record)
        make_task_dir(base_dir, task_id, files=15, size=170_000)


def assert_deleted_shape(body: dict, task_ids) -> None:
    assert body["success"] is True and body["code"] == 200
    assert body["message"] == "任务目录删除成功"
    data = body["data"]
    assert sorted(t["task_id"] for t in data["deleted_tasks"]) == sorted(task_ids)
    for task in data["deleted_tasks"]:
        assert task.keys() >= RESULT_FIELDS
        assert task["deleted_files_count"] == 15
        assert re.fullmatch(r"\d+\.\d (B|KB|MB|GB)", task["deleted_size"])
    assert data["failed_tasks"] == []
    assert data["summary"]["total_requested"] == len(task_ids)
    assert data["summary"]["successfully_deleted"] == len(task_ids)
    assert data["summary"]["failed"] == 0


def test_the_contract_has_the_examples_this_file_runs():
    assert len(CURL_DELETES) == 4
    assert sum(lang == "python" for lang, _ in BLOCKS) == 2


@pytest.mark.parametrize("code", CURL_DELETES, ids=lambda code: "+".join(ids_in(code)))
def test_curl_example(service, pg, base_dir, code):
    task_ids = ids_in(code)
    make_tasks(pg, base_dir, task_ids)
    out = subprocess.run(
        ["bash", "-c", on(service, code)], capture_output=True, text=True, check=True
    )
    body = json.loads(out.stdout)
    assert_deleted_shape(body, task_ids)
    records_deleted = '"delete_database_records": true' in code
    for task_id in task_ids:
        assert not (base_dir / task_id).exists()
        record = pg.task(task_id)
        assert record is None if records_deleted else record["directory_exists"] is False

    # "查看删除效果": the list call of the contract, verbatim.
    (list_call,) = [c for lang, c in BLOCKS if lang == "bash" and "?limit=5" in c]
    listed = json.loads(
        subprocess.run(["bash", "-c", on(service, list_call)], capture_output=True).stdout
    )
    for task in listed["data"]["tasks"]:
        if task["task_id"] in task_ids:
            assert task["directory_exists"] is False
            age = datetime.now() - datetime.fromisoformat(task["updated_at"])
            assert age < timedelta(minutes=1)


def test_python_example_deletes_single_task(service, pg, base_dir):
    (code,) = [c for lang, c in BLOCKS if lang == "python" and "delete_single_task" in c]
    code = on(service, code)
    make_tasks(pg, base_dir, ["task_20250702_223802"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert_deleted_shape(json.loads(out.stdout), ["task_20250702_223802"])
    assert pg.task("task_20250702_223802")["directory_exists"] is False

    # delete_multiple_tasks, from the same block, on tasks that exist and one that does not.
    make_tasks(pg, base_dir, ["task_20250702_223751"])
    call = code.split("# 使用示例")[0] + (
        "\nprint(json.dumps(delete_multiple_tasks("
        '["task_20250702_223751", "task_20250702_invalid"]), ensure_ascii=False))'
    )
    out = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True, check=True)
    body = json.loads(out.stdout)
    assert body["message"] == "批量删除部分完成"
    assert body["data"]["failed_tasks"] == [
        {
            "success": False,
            "task_id": "task_20250702_invalid",
            "error": "任务目录不存在",
            "error_code": "DELETE_FAILED",
            **{k: body["data"]["failed_tasks"][0][k] for k in ("vetoes", "duration_ms")},
        }
    ]


def test_python_cleanup_of_old_tasks(service, pg, base_dir):
    (code,) = [c for lang, c in BLOCKS if lang == "python" and "cleanup_old_tasks" in c]
    code = on(service, code)
    old = ["task_20250702_old1", "task_20250702_old2"]
    make_tasks(pg, base_dir, old, created_at=datetime.now() - timedelta(days=45))
    make_tasks(pg, base_dir, ["task_20250702_new1"], created_at=datetime.now() - timedelta(days=2))
    call = code + "\nprint(json.dumps(cleanup_old_tasks(30), ensure_ascii=False))"
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + call], capture_output=True, text=True, check=True
    )
    assert_deleted_shape(json.loads(out.stdout), old)
    assert (base_dir / "task_20250702_new1").is_dir()
