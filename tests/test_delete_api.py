"""DELETE /api/v0/data_pipeline/tasks: the contract, and every row of the table
in docs/design.md, "Choices the contract leaves open"."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime

import pytest

from tests.helpers import (
    URL,
    audit_lines,
    insert_task,
    make_task_dir,
    request_delete,
    tree_snapshot,
)


def only_failure(body):
    (failed,) = body["data"]["failed_tasks"]
    return failed


# ---------------------------------------------------------------- request validation


@pytest.mark.parametrize(
    ("body", "message", "missing"),
    [
        ({"confirm": True}, "缺少必需参数: task_ids", ["task_ids"]),
        ({"task_ids": ["a"]}, "缺少必需参数: confirm", ["confirm"]),
    ],
)
async def test_missing_parameter(client, body, message, missing):
    status, resp = await request_delete(client, **body)
    assert status == 400
    assert resp == {
        "success": False,
        "code": 400,
        "message": message,
        "missing_params": missing,
        "data": None,
    }


@pytest.mark.parametrize("raw", ["", "not json", "[1, 2]", '"text"', "null", "\xff"])
async def test_body_not_a_json_object(client, raw):
    resp = await client.request(
        "DELETE", URL, data=raw.encode("latin-1"), headers={"Content-Type": "application/json"}
    )
    body = await resp.json()
    assert resp.status == 400 and body["code"] == 400 and body["success"] is False
    assert "JSON对象" in body["message"]


@pytest.mark.parametrize("confirm", ["true", 1, False, None, [True]])
async def test_confirm_must_be_json_true(client, confirm):
    status, body = await request_delete(client, task_ids=["a"], confirm=confirm)
    assert status == 400
    assert "confirm" in body["message"] and "true" in body["message"]


@pytest.mark.parametrize("task_ids", [[], "task_1", None, [1], ["a", None], {"a": 1}])
async def test_task_ids_must_be_a_non_empty_list_of_strings(client, task_ids):
    status, body = await request_delete(client, task_ids=task_ids, confirm=True)
    assert status == 400
    assert body["message"] == "task_ids必须是非空的任务ID列表"


@pytest.mark.parametrize(
    "option", ["delete_database_records", "continue_on_error", "force", "dry_run", "allow_missing"]
)
@pytest.mark.parametrize("value", ["false", 0, 1, None])
async def test_boolean_option_must_be_a_json_boolean(client, option, value, task_factory, base_dir):
    task_factory("task_a")
    status, body = await request_delete(
        client, task_ids=["task_a"], confirm=True, **{option: value}
    )
    assert status == 400
    assert option in body["message"]
    assert (base_dir / "task_a").is_dir()


async def test_unknown_parameter_is_refused(client, task_factory, base_dir):
    task_factory("task_a")
    status, body = await request_delete(
        client, task_ids=["task_a"], confirm=True, delete_db_records=True
    )
    assert status == 400
    assert "delete_db_records" in body["message"]
    assert (base_dir / "task_a").is_dir()


@pytest.mark.parametrize("settings_text", ["[limits]\nmax_task_ids = 3\n"])
async def test_more_ids_than_the_limit(client):
    status, body = await request_delete(client, task_ids=["a", "b", "c", "d"], confirm=True)
    assert status == 400
    assert "3" in body["message"] and "max_task_ids" in body["message"]


async def test_body_over_one_mebibyte_is_refused_in_the_envelope(client):
    ids = ["task_x" * 10] * 30_000
    status, body = await request_delete(client, task_ids=ids, confirm=True)
    assert status == 413 and body["code"] == 413 and body["success"] is False


# ---------------------------------------------------------------- one task, as the contract shows


async def test_single_delete_keeps_the_record(client, task_factory, base_dir, pg):
    task_factory("task_20250702_223802", files=15, size=1000)
    before = datetime.now()
    status, body = await request_delete(client, task_ids=["task_20250702_223802"], confirm=True)
    assert status == 200
    assert body["success"] is True and body["code"] == 200
    assert body["message"] == "任务目录删除成功"
    (task,) = body["data"]["deleted_tasks"]
    assert task["success"] is True
    assert task["task_id"] == "task_20250702_223802"
    assert task["directory_deleted"] is True
    assert task["database_records_deleted"] is False
    assert task["deleted_files_count"] == 15
    assert task["deleted_bytes"] == 15 * 1000 - 1000 + len('{"task_id": "task_20250702_223802"}')
    assert task["deleted_size"] == "13.7 KB"  # 14035 bytes
    assert datetime.fromisoformat(task["deleted_at"]).tzinfo is None
    assert body["data"]["failed_tasks"] == []
    assert body["data"]["summary"] == {
        "total_requested": 1,
        "successfully_deleted": 1,
        "failed": 0,
        "skipped": 0,
    }
    assert not (base_dir / "task_20250702_223802").exists()
    assert list((base_dir / ".trash").iterdir()) == []
    record = pg.task("task_20250702_223802")
    assert record["directory_exists"] is False
    assert record["updated_at"] >= before
    assert len(pg.steps("task_20250702_223802")) == 1


async def test_list_shows_the_deletion(client, task_factory):
    task_factory("task_20250702_223802")
    await request_delete(client, task_ids=["task_20250702_223802"], confirm=True)
    resp = await client.get(URL, params={"limit": "5"})
    (task,) = (await resp.json())["data"]["tasks"]
    assert task["directory_exists"] is False
    assert (datetime.now() - datetime.fromisoformat(task["updated_at"])).total_seconds() < 60


async def test_delete_database_records_removes_task_and_steps(client, task_factory, base_dir, pg):
    task_factory("task_b", steps={"ddl_generation": "completed", "qa_generation": "failed"})
    status, body = await request_delete(
        client, task_ids=["task_b"], confirm=True, delete_database_records=True
    )
    (task,) = body["data"]["deleted_tasks"]
    assert task["directory_deleted"] is True and task["database_records_deleted"] is True
    assert pg.task("task_b") is None and pg.steps("task_b") == []
    assert not (base_dir / "task_b").exists()


async def test_batch_with_failures_is_partial(client, task_factory):
    task_factory("task_20250702_223802")
    task_factory("task_20250702_223751")
    status, body = await request_delete(
        client,
        task_ids=["task_20250702_223802", "task_20250702_invalid", "task_20250702_223751"],
        confirm=True,
        delete_database_records=False,
        continue_on_error=True,
    )
    assert status == 200 and body["success"] is True
    assert body["message"] == "批量删除部分完成"
    assert [t["task_id"] for t in body["data"]["deleted_tasks"]] == [
        "task_20250702_223802",
        "task_20250702_223751",
    ]
    failed = only_failure(body)
    assert failed["task_id"] == "task_20250702_invalid"
    assert failed["error"] == "任务目录不存在"
    assert failed["error_code"] == "DELETE_FAILED"
    assert body["data"]["summary"]["total_requested"] == 3
    assert body["data"]["summary"]["successfully_deleted"] == 2
    assert body["data"]["summary"]["failed"] == 1


async def test_all_failed_is_200_with_success_false(client, schema):
    status, body = await request_delete(
        client, task_ids=["task_none_1", "task_none_2"], confirm=True
    )
    assert status == 200
    assert body["success"] is False and body["code"] == 200
    assert "失败" in body["message"]
    assert body["data"]["summary"]["failed"] == 2


async def test_stop_on_first_error_lists_the_tasks_not_tried(client, task_factory, base_dir):
    task_factory("task_1")
    task_factory("task_3")
    status, body = await request_delete(
        client, task_ids=["task_1", "task_2", "task_3"], confirm=True, continue_on_error=False
    )
    assert [t["task_id"] for t in body["data"]["deleted_tasks"]] == ["task_1"]
    assert only_failure(body)["task_id"] == "task_2"
    assert body["data"]["skipped_tasks"] == ["task_3"]
    assert body["data"]["summary"]["skipped"] == 1
    assert (base_dir / "task_3").is_dir()


async def test_the_same_id_twice_is_processed_once(client, task_factory):
    task_factory("task_a")
    status, body = await request_delete(client, task_ids=["task_a", "task_a"], confirm=True)
    assert body["message"] == "任务目录删除成功"
    assert [t["task_id"] for t in body["data"]["deleted_tasks"]] == ["task_a"]
    assert body["data"]["summary"]["total_requested"] == 1


# ---------------------------------------------------------------- ids that must touch nothing


@pytest.mark.parametrize(
    "task_id",
    ["..", "../x", "/etc", ".", "", "a/b", "a\x00b", ".trash", "..\\x", "task_" + "x" * 70],
)
async def test_traversal_and_malformed_ids_touch_nothing(client, schema, workdir, task_id):
    outside = workdir / "x"
    outside.mkdir(exist_ok=True)
    (outside / "keep").write_text("keep")
    before = tree_snapshot(workdir / "data_pipeline"), tree_snapshot(outside)
    status, body = await request_delete(client, task_ids=[task_id], confirm=True)
    failed = only_failure(body)
    assert failed["error_code"] == "INVALID_TASK_ID"
    assert failed["task_id"] == task_id
    assert (tree_snapshot(workdir / "data_pipeline"), tree_snapshot(outside)) == before


async def test_protected_name_is_refused(client, base_dir, schema):
    make_task_dir(base_dir, "vector_bak")
    status, body = await request_delete(client, task_ids=["vector_bak"], confirm=True, force=True)
    assert only_failure(body)["error_code"] == "PROTECTED"
    assert (base_dir / "vector_bak" / "task_config.json").exists()


async def test_symlinked_task_directory_is_refused(client, base_dir, workdir, schema):
    target = make_task_dir(workdir, "elsewhere")
    insert_task(schema, "task_link")
    (base_dir / "task_link").symlink_to(target)
    status, body = await request_delete(client, task_ids=["task_link"], confirm=True)
    assert only_failure(body)["error_code"] == "UNSAFE_PATH"
    assert (target / "task_config.json").exists()
    assert (base_dir / "task_link").is_symlink()
    assert schema.task("task_link")["directory_exists"] is True


async def test_a_file_instead_of_a_directory_is_refused(client, base_dir, schema):
    insert_task(schema, "task_file")
    (base_dir / "task_file").write_text("not a directory")
    status, body = await request_delete(client, task_ids=["task_file"], confirm=True)
    assert only_failure(body)["error_code"] == "UNSAFE_PATH"
    assert (base_dir / "task_file").read_text() == "not a directory"


async def test_symlink_inside_a_task_is_removed_not_followed(client, task_factory, workdir):
    outside = workdir / "precious"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"z" * 5000)
    (outside / "file.txt").write_text("keep me")
    task_dir = task_factory("task_links", files=3, size=10)
    (task_dir / "to_dir").symlink_to(outside)
    (task_dir / "vector_bak" / "to_file").symlink_to(outside / "data.bin")
    status, body = await request_delete(client, task_ids=["task_links"], confirm=True)
    (task,) = body["data"]["deleted_tasks"]
    assert task["deleted_files_count"] == 5  # 3 files + 2 links
    assert task["deleted_bytes"] < 5000  # the target's bytes are not counted
    assert (outside / "data.bin").read_bytes() == b"z" * 5000
    assert (outside / "file.txt").read_text() == "keep me"


# ---------------------------------------------------------------- state of the task


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"status": "in_progress"}, "in_progress"),
        ({"status": "failed", "steps": {"qa_generation": "running"}}, "qa_generation"),
    ],
)
async def test_running_task_is_refused_unless_forced(
    client, task_factory, base_dir, record, reason
):
    task_factory("task_run", **record)
    status, body = await request_delete(client, task_ids=["task_run"], confirm=True)
    failed = only_failure(body)
    assert failed["error_code"] == "TASK_RUNNING"
    assert reason in failed["error"]
    assert (base_dir / "task_run").is_dir()

    status, body = await request_delete(client, task_ids=["task_run"], confirm=True, force=True)
    assert body["data"]["deleted_tasks"][0]["task_id"] == "task_run"
    assert not (base_dir / "task_run").exists()


async def test_every_veto_is_reported(client, base_dir, schema):
    insert_task(schema, "vector_bak", status="in_progress")
    (base_dir / "vector_bak").symlink_to(base_dir)
    status, body = await request_delete(client, task_ids=["vector_bak"], confirm=True)
    failed = only_failure(body)
    codes = {v["code"] for v in failed["vetoes"]}
    assert codes == {"PROTECTED", "UNSAFE_PATH", "TASK_RUNNING"}
    assert failed["error_code"] == failed["vetoes"][0]["code"]


async def test_missing_directory_with_allow_missing_succeeds(client, schema, pg):
    insert_task(schema, "task_gone")
    status, body = await request_delete(
        client, task_ids=["task_gone"], confirm=True, allow_missing=True
    )
    (task,) = body["data"]["deleted_tasks"]
    assert task["directory_deleted"] is False and task["database_records_deleted"] is False
    assert pg.task("task_gone")["directory_exists"] is False


async def test_missing_directory_with_record_deletion_removes_the_records(client, schema, pg):
    insert_task(schema, "task_gone")
    status, body = await request_delete(
        client, task_ids=["task_gone"], confirm=True, delete_database_records=True
    )
    (task,) = body["data"]["deleted_tasks"]
    assert task["directory_deleted"] is False and task["database_records_deleted"] is True
    assert pg.task("task_gone") is None and pg.steps("task_gone") == []


async def test_directory_without_a_record_is_deleted(client, base_dir, schema):
    make_task_dir(base_dir, "manual_20250701_101500")
    status, body = await request_delete(client, task_ids=["manual_20250701_101500"], confirm=True)
    (task,) = body["data"]["deleted_tasks"]
    assert task["directory_deleted"] is True
    assert not (base_dir / "manual_20250701_101500").exists()


# ---------------------------------------------------------------- dry run


async def test_dry_run_reports_real_counts_and_changes_nothing(client, task_factory, base_dir, pg):
    task_factory("task_dry", files=12, size=300, steps={"ddl_generation": "completed"})
    before_tree = tree_snapshot(base_dir)
    before_record = pg.task("task_dry")
    status, body = await request_delete(
        client, task_ids=["task_dry"], confirm=True, dry_run=True, delete_database_records=True
    )
    (task,) = body["data"]["deleted_tasks"]
    assert body["data"]["dry_run"] is True and task["dry_run"] is True
    assert tree_snapshot(base_dir) == before_tree
    assert pg.task("task_dry") == before_record and len(pg.steps("task_dry")) == 1

    status, real = await request_delete(client, task_ids=["task_dry"], confirm=True)
    (done,) = real["data"]["deleted_tasks"]
    for field in ("deleted_files_count", "deleted_bytes", "deleted_size", "directory_deleted"):
        assert task[field] == done[field]
    assert task["database_records_deleted"] is True


async def test_dry_run_is_audited_as_a_dry_run(client, task_factory, settings):
    task_factory("task_dry")
    await request_delete(client, task_ids=["task_dry"], confirm=True, dry_run=True)
    lines = audit_lines(settings)
    task_line = next(line for line in lines if line.get("task_id") == "task_dry")
    assert task_line["dry_run"] is True and task_line["outcome"] == "deleted"


# ---------------------------------------------------------------- audit


async def test_every_outcome_has_an_audit_line(client, task_factory, settings):
    task_factory("task_ok", files=4, size=10)
    resp = await client.request(
        "DELETE",
        URL,
        json={"task_ids": ["task_ok", "task_missing", "../x"], "confirm": True},
        headers={"X-Request-ID": "req-42"},
    )
    assert resp.headers["X-Request-ID"] == "req-42"
    lines = audit_lines(settings)
    by_task = {line["task_id"]: line for line in lines if "task_id" in line}
    assert by_task["task_ok"]["outcome"] == "deleted"
    assert by_task["task_ok"]["files"] == 4
    assert by_task["task_ok"]["directory_deleted"] is True
    assert by_task["task_missing"]["error_code"] == "DELETE_FAILED"
    assert by_task["../x"]["error_code"] == "INVALID_TASK_ID"
    for line in by_task.values():
        assert line["request_id"] == "req-42"
        assert line["client"] == "127.0.0.1"
        assert line["duration_ms"] >= 0
    (summary,) = [line for line in lines if line["event"] == "delete_request"]
    assert summary["successfully_deleted"] == 1 and summary["failed"] == 2


# ---------------------------------------------------------------- concurrency


async def test_overlapping_concurrent_requests_delete_each_task_once(
    client, task_factory, base_dir
):
    ids = [f"task_{i:03d}" for i in range(12)]
    for task_id in ids:
        task_factory(task_id, files=30)
    batches = [ids[0:8], ids[4:12], ids[2:10]]
    bodies = await asyncio.gather(
        *(request_delete(client, task_ids=batch, confirm=True) for batch in batches)
    )
    deleted = [t["task_id"] for _, body in bodies for t in body["data"]["deleted_tasks"]]
    failed = [t for _, body in bodies for t in body["data"]["failed_tasks"]]
    assert sorted(deleted) == ids  # each task deleted exactly once
    assert {t["error_code"] for t in failed} <= {"TASK_LOCKED", "DELETE_FAILED"}
    assert len(deleted) + len(failed) == sum(len(b) for b in batches)
    assert sum(t["deleted_files_count"] for _, b in bodies for t in b["data"]["deleted_tasks"]) == (
        30 * len(ids)
    )
    assert sorted(os.listdir(base_dir)) == [".trash"]
    assert os.listdir(base_dir / ".trash") == []


@pytest.mark.parametrize(
    "raw",
    [
        '{"task_ids": ["task_a", "\\ud800"], "confirm": true}',
        '{"task_ids": ["task_a"], "confirm": true, "\\ud800": true}',
        "[" * 100_000 + "]" * 100_000,
    ],
)
async def test_unwritable_or_too_deep_json_is_400_and_touches_nothing(
    client, task_factory, base_dir, raw
):
    task_factory("task_a")
    resp = await client.request(
        "DELETE", URL, data=raw.encode(), headers={"Content-Type": "application/json"}
    )
    body = await resp.json()
    assert resp.status == 400 and body["code"] == 400
    assert (base_dir / "task_a").is_dir()
