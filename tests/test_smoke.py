async def test_list_empty(client):
    resp = await client.get("/api/v0/data_pipeline/tasks?limit=5")
    assert resp.status == 200
    body = await resp.json()
    assert body["success"] is True and body["data"]["tasks"] == [] and body["data"]["total"] == 0


async def test_delete_one(client, task_factory, base_dir, pg):
    task_factory("task_20250702_223802", files=15, size=1000)
    resp = await client.delete(
        "/api/v0/data_pipeline/tasks", json={"task_ids": ["task_20250702_223802"], "confirm": True}
    )
    body = await resp.json()
    assert body["message"] == "任务目录删除成功", body
    assert body["data"]["deleted_tasks"][0]["deleted_files_count"] == 15
    assert not (base_dir / "task_20250702_223802").exists()
    assert pg.task("task_20250702_223802")["directory_exists"] is False
