"""Nothing blocks the event loop: list requests stay fast during a large deletion."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.helpers import URL, insert_task

# A load or fault test: .ci/run runs it once, not again on the embedded server.
pytestmark = pytest.mark.slow


def make_big_task(base_dir, task_id: str, files: int) -> None:
    task_dir = base_dir / task_id
    for d in range(20):
        sub = task_dir / f"part_{d:02d}"
        sub.mkdir(parents=True)
        for i in range(files // 20):
            (sub / f"qs_{i}_pair.json").write_bytes(b"{}")


async def test_list_requests_answer_within_200ms_while_deleting_20000_files(
    client, schema, base_dir
):
    insert_task(schema, "task_big")
    await asyncio.to_thread(make_big_task, base_dir, "task_big", 20_000)

    deletion = asyncio.create_task(
        client.request("DELETE", URL, json={"task_ids": ["task_big"], "confirm": True})
    )
    latencies = []
    while not deletion.done():
        started = time.monotonic()
        resp = await client.get(URL, params={"limit": "5"})
        assert resp.status == 200
        await resp.read()
        latencies.append(time.monotonic() - started)
    body = await (await deletion).json()

    assert body["data"]["deleted_tasks"][0]["deleted_files_count"] == 20_000
    assert len(latencies) >= 3, "the deletion ended before the loop was probed"
    assert max(latencies) < 0.2, f"slowest list request took {max(latencies):.3f}s"
