"""``/metrics``: the numbers move after real deletions, label values come from
fixed sets (never a task id), and the ``metrics`` scope guards it."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.errors import Veto
from service.hookspecs import hookimpl
from tests.helpers import URL, delete_ok, sha


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client, **kwargs) -> dict:
    resp = await client.get("/metrics", **kwargs)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return samples(await resp.text())


class VetoOdd:
    """A plugin with a code of its own: it must be counted as OTHER."""

    @hookimpl
    def dptask_check_delete(self, task):
        if task.task_id == "task_vetoed":
            return Veto("MY_PLUGIN_CODE", "不行")
        return None


@pytest.mark.parametrize("plugins", [[VetoOdd()]])
async def test_metrics_move_after_a_deletion_with_fixed_label_sets(client, task_factory, base_dir):
    task_factory("task_gone", files=7, size=1000)
    task_factory("task_vetoed")
    before = await scrape(client)
    assert before[("dptask_tasks_deleted_total", ())] == 0
    assert before[("dptask_tasks_failed_total", (("error_code", "DELETE_FAILED"),))] == 0

    body = await delete_ok(client, "task_gone", "task_vetoed", "task_nodir")
    assert body["data"]["summary"]["successfully_deleted"] == 1
    await delete_ok(client, "task_vetoed", dry_run=True)  # dry runs are not counted
    assert (await client.get(f"{URL}/task_gone")).status == 200
    assert (await client.get(f"{URL}/task_nothere")).status == 404

    after = await scrape(client)
    assert after[("dptask_tasks_deleted_total", ())] == 1
    assert after[("dptask_files_removed_total", ())] == 7
    assert (
        after[("dptask_bytes_removed_total", ())]
        == body["data"]["deleted_tasks"][0]["deleted_bytes"]
    )
    failed = {
        dict(labels)["error_code"]: v
        for (name, labels), v in after.items()
        if name == "dptask_tasks_failed_total"
    }
    assert failed["DELETE_FAILED"] == 1 and failed["OTHER"] == 1
    assert "MY_PLUGIN_CODE" not in failed
    assert after[("dptask_task_deletion_seconds_count", ())] == 3

    routes = {
        labels
        for (name, labels), _ in after.items()
        if name == "dptask_http_request_duration_seconds_count"
    }
    assert (("method", "GET"), ("route", f"{URL}/{{task_id}}"), ("status", "200")) in routes
    assert (("method", "GET"), ("route", f"{URL}/{{task_id}}"), ("status", "404")) in routes
    assert (("method", "DELETE"), ("route", URL), ("status", "200")) in routes
    # No label anywhere carries a task id.
    values = {v for (_, labels), _ in after.items() for _, v in labels}
    assert not [v for v in values if "task_" in v and "{task_id}" not in v]


async def test_an_unknown_path_is_one_route_label(client):
    for i in range(3):
        await client.get(f"/nope/{uuid.uuid4().hex}/{i}")
    after = await scrape(client)
    routes = {
        dict(labels)["route"]
        for (name, labels), _ in after.items()
        if name == "dptask_http_request_duration_seconds_count"
    }
    assert routes == {"unmatched"}


async def test_scrape_time_gauges_read_the_trash_and_the_pool(client, base_dir):
    (base_dir / ".trash" / f"{uuid.uuid4().hex}.task_left").mkdir()
    after = await scrape(client)
    assert after[("dptask_trash_entries", ())] == 1
    assert after[("dptask_metrics_source_up", (("source", "trash"),))] == 1
    # The job runner may hold one for its heartbeat; never more than the pool.
    assert 0 <= after[("dptask_db_pool_connections_in_use", ())] <= 10
    assert after[("process_open_fds", ())] > 0


TOKENS = f"""
[auth]
tokens = [
  {{ name = "ops", token_sha256 = "{sha("ops")}", scopes = ["read", "delete"] }},
  {{ name = "prom", token_sha256 = "{sha("prom")}", scopes = ["metrics"] }},
]
"""


@pytest.mark.parametrize("settings_text", [TOKENS])
async def test_metrics_need_the_metrics_scope(client):
    assert (await client.get("/metrics")).status == 401
    resp = await client.get("/metrics", headers={"Authorization": "Bearer ops"})
    assert resp.status == 403
    assert (await resp.json())["message"] == "访问令牌 ops 缺少权限: metrics"
    await scrape(client, headers={"Authorization": "Bearer prom"})
    # The scraper's token reads nothing else.
    assert (await client.get(URL, headers={"Authorization": "Bearer prom"})).status == 403


@pytest.mark.parametrize("settings_text", [TOKENS + "[metrics]\npublic = true\n"])
async def test_public_metrics_need_no_token(client):
    await scrape(client)
    assert (await client.get(URL)).status == 401
