"""GET /api/v0/data_pipeline/tasks and /tasks/{task_id}: paging, filters, the
envelope, naive timestamps; and unknown routes or methods in the envelope."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import datetime, timedelta

import pytest

from tests.helpers import URL, insert_task

TASK_FIELDS = {
    "task_id",
    "task_name",
    "status",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
    "directory_exists",
    "db_name",
    "created_by",
}
NAIVE_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")
T0 = datetime(2025, 7, 2, 22, 57, 21, 317708)


async def get(client, path=URL, **query):
    resp = await client.get(path, params={k: str(v) for k, v in query.items()})
    return resp.status, await resp.json()


def ids(body):
    return [task["task_id"] for task in body["data"]["tasks"]]


def insert_many(pg, count, **record):
    """``count`` tasks, task_000 the oldest; returns the ids newest first."""
    task_ids = [f"task_{i:03d}" for i in range(count)]
    for i, task_id in enumerate(task_ids):
        insert_task(pg, task_id, created_at=T0 + timedelta(minutes=i), **record)
    return task_ids[::-1]


def assert_bad_request(status, body, name):
    assert status == 400, body
    assert body["success"] is False and body["code"] == 400
    assert name in body["message"]


# ---------------------------------------------------------------- the list


async def test_empty_list_is_the_envelope_with_defaults(client, schema):
    status, body = await get(client)
    assert status == 200
    assert body["success"] is True and body["code"] == 200 and body["message"]
    assert body["data"] == {"tasks": [], "total": 0, "limit": 50, "offset": 0}


async def test_a_task_shows_every_field_the_user_reads(client, schema):
    insert_task(schema, "task_20250702_223802", status="failed", created_at=T0)
    schema.rows(
        "UPDATE data_pipeline_tasks SET started_at = %s, completed_at = %s, updated_at = %s",
        (T0 + timedelta(seconds=5), T0 + timedelta(minutes=12), T0 + timedelta(hours=1)),
    )
    status, body = await get(client)
    assert status == 200
    (task,) = body["data"]["tasks"]
    assert set(task) >= TASK_FIELDS
    assert task["task_id"] == "task_20250702_223802"
    assert task["task_name"] == "name of task_20250702_223802"
    assert task["status"] == "failed"
    assert task["created_at"] == "2025-07-02T22:57:21.317708"
    assert task["started_at"] == "2025-07-02T22:57:26.317708"
    assert task["completed_at"] == "2025-07-02T23:09:21.317708"
    assert task["updated_at"] == "2025-07-02T23:57:21.317708"
    assert task["directory_exists"] is True
    assert task["db_name"] == "db"
    assert task["created_by"] == "tester"


async def test_timestamps_are_naive_iso_strings(client, schema):
    insert_task(schema, "task_a", created_at=datetime(2025, 7, 2, 22, 57, 21))
    insert_task(schema, "task_b", created_at=T0)
    status, body = await get(client)
    for task in body["data"]["tasks"]:
        assert NAIVE_ISO.match(task["created_at"]), task["created_at"]
        assert datetime.fromisoformat(task["created_at"]).tzinfo is None
    assert [t["created_at"] for t in body["data"]["tasks"]] == [
        "2025-07-02T22:57:21.317708",
        "2025-07-02T22:57:21.000000",
    ]
    assert body["data"]["tasks"][0]["started_at"] is None


async def test_the_contracts_cleanup_example_picks_the_old_tasks(client, schema):
    """The contract's cleanup loop, verbatim: its comparison with datetime.now()
    raises TypeError on a timestamp with an offset."""
    insert_task(schema, "task_old", created_at=datetime.now() - timedelta(days=40))
    insert_task(schema, "task_new", created_at=datetime.now() - timedelta(days=1))
    status, body = await get(client, limit=100)
    tasks = body["data"]["tasks"]

    cutoff_date = datetime.now() - timedelta(days=30)
    old_task_ids = []
    for task in tasks:
        if task.get("created_at"):
            created_at = datetime.fromisoformat(task["created_at"].replace("Z", "+00:00"))
            if created_at < cutoff_date:
                old_task_ids.append(task["task_id"])

    assert old_task_ids == ["task_old"]


async def test_newest_first(client, schema):
    for task_id, days in [("task_b", 2), ("task_d", 0), ("task_a", 3), ("task_c", 1)]:
        insert_task(schema, task_id, created_at=T0 - timedelta(days=days))
    status, body = await get(client)
    assert ids(body) == ["task_d", "task_c", "task_b", "task_a"]


async def test_default_limit_is_50_and_total_counts_all(client, schema):
    newest_first = insert_many(schema, 55)
    status, body = await get(client)
    assert ids(body) == newest_first[:50]
    assert body["data"]["total"] == 55
    assert (body["data"]["limit"], body["data"]["offset"]) == (50, 0)


async def test_limit_100_is_allowed(client, schema):
    newest_first = insert_many(schema, 101)
    status, body = await get(client, limit=100)
    assert status == 200
    assert ids(body) == newest_first[:100]
    assert body["data"]["total"] == 101 and body["data"]["limit"] == 100


async def test_pages_cover_every_task_once_and_total_is_the_true_count(client, schema):
    newest_first = insert_many(schema, 7)
    seen = []
    for offset in (0, 3, 6):
        status, body = await get(client, limit=3, offset=offset)
        assert status == 200
        assert body["data"]["total"] == 7
        assert (body["data"]["limit"], body["data"]["offset"]) == (3, offset)
        seen += ids(body)
    assert seen == newest_first


async def test_a_page_past_the_end_is_empty_with_the_true_total(client, schema):
    insert_many(schema, 7)
    status, body = await get(client, limit=5, offset=20)
    assert status == 200
    assert body["data"] == {"tasks": [], "total": 7, "limit": 5, "offset": 20}


async def test_status_filter(client, schema):
    for i, status in enumerate(["completed", "failed", "completed", "pending", "completed"]):
        insert_task(schema, f"task_{i}", status=status, created_at=T0 + timedelta(minutes=i))
    status, body = await get(client, status="completed", limit=2)
    assert ids(body) == ["task_4", "task_2"]
    assert body["data"]["total"] == 3
    status, body = await get(client, status="in_progress")
    assert body["data"]["tasks"] == [] and body["data"]["total"] == 0


async def test_directory_exists_filter(client, schema):
    for i in range(5):
        insert_task(
            schema, f"task_{i}", created_at=T0 + timedelta(minutes=i), directory_exists=i % 2 == 0
        )
    status, body = await get(client, directory_exists="false")
    assert ids(body) == ["task_3", "task_1"] and body["data"]["total"] == 2
    assert all(t["directory_exists"] is False for t in body["data"]["tasks"])
    status, body = await get(client, directory_exists="true", limit=1)
    assert ids(body) == ["task_4"] and body["data"]["total"] == 3


async def test_filters_combine(client, schema):
    insert_task(schema, "task_a", status="failed", directory_exists=False)
    insert_task(schema, "task_b", status="failed", directory_exists=True)
    insert_task(schema, "task_c", status="completed", directory_exists=False)
    status, body = await get(client, status="failed", directory_exists="false")
    assert ids(body) == ["task_a"] and body["data"]["total"] == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "abc"),
        ("limit", "1.5"),
        ("limit", ""),
        ("limit", "0"),
        ("limit", "101"),
        ("limit", "-1"),
        ("offset", "-1"),
        ("offset", "abc"),
        ("offset", "1.5"),
        ("status", "done"),
        ("status", ""),
        ("directory_exists", "yes"),
        ("directory_exists", "1"),
        ("directory_exists", ""),
    ],
)
async def test_bad_query_parameter_is_a_400_naming_it(client, schema, name, value):
    status, body = await get(client, **{name: value})
    assert_bad_request(status, body, name)


async def test_limit_with_a_trailing_newline_is_not_an_integer(client, schema):
    status, body = await get(client, limit="5\n")
    assert_bad_request(status, body, "limit")


# ---------------------------------------------------------------- one task


async def test_one_task_with_its_steps(client, schema):
    insert_task(
        schema,
        "task_20250702_223802",
        status="partial_completed",
        created_at=T0,
        steps={
            "ddl_generation": "completed",
            "qa_generation": "failed",
            "sql_validation": "pending",
        },
    )
    insert_task(schema, "task_other", steps={"training_load": "running"})
    status, body = await get(client, f"{URL}/task_20250702_223802")
    assert status == 200 and body["success"] is True and body["code"] == 200
    task = body["data"]
    assert set(task) >= TASK_FIELDS | {"steps"}
    assert task["task_id"] == "task_20250702_223802"
    assert task["status"] == "partial_completed"
    assert task["created_at"] == "2025-07-02T22:57:21.317708"
    assert [(s["step_name"], s["step_status"]) for s in task["steps"]] == [
        ("ddl_generation", "completed"),
        ("qa_generation", "failed"),
        ("sql_validation", "pending"),
    ]


async def test_step_timestamps_are_naive_iso_strings(client, schema):
    insert_task(schema, "task_a")
    schema.rows("UPDATE data_pipeline_task_steps SET started_at = %s", (T0,))
    status, body = await get(client, f"{URL}/task_a")
    (step,) = body["data"]["steps"]
    assert step["started_at"] == "2025-07-02T22:57:21.317708"
    assert step["completed_at"] is None


@pytest.mark.parametrize("task_id", ["task_unknown", "a" * 64])
async def test_unknown_task_is_a_404_in_the_envelope(client, schema, task_id):
    insert_task(schema, "task_a")
    status, body = await get(client, f"{URL}/{task_id}")
    assert status == 404, body
    assert body["success"] is False and body["code"] == 404 and body["message"]


@pytest.mark.parametrize("raw_id", ["bad.id", "%2e%2e", ".hidden", "a" * 65, "a%20b"])
async def test_an_id_off_the_pattern_is_a_400(client, schema, raw_id):
    status, body = await raw_get(client, f"{URL}/{raw_id}")
    assert status == 400, body
    assert body["success"] is False and body["code"] == 400
    assert body["message"]


async def raw_get(client, path):
    """A GET with the path sent exactly as written: no client-side normalising
    of ``%2e%2e`` into ``..`` and away."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


# ---------------------------------------------------------------- the rest of the router


@pytest.mark.parametrize(
    "path", ["/", "/api/v0/data_pipeline/task", "/api/v0/data_pipeline/tasks/a/b", "/nope"]
)
async def test_unknown_route_is_a_404_in_the_envelope(client, path):
    resp = await client.get(path)
    body = await resp.json()
    assert resp.status == 404
    assert body["success"] is False and body["code"] == 404 and body["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", URL),
        ("PUT", URL),
        ("PATCH", URL),
        ("DELETE", f"{URL}/task_a"),
        ("POST", f"{URL}/task_a"),
    ],
)
async def test_wrong_method_is_a_405_in_the_envelope(client, method, path):
    resp = await client.request(method, path)
    body = await resp.json()
    assert resp.status == 405
    assert body["success"] is False and body["code"] == 405 and body["message"]
    assert "GET" in resp.headers["Allow"]


async def test_every_response_carries_a_request_id(client, schema):
    seen = set()
    for path in (URL, f"{URL}?limit=0", f"{URL}/task_none", "/nope"):
        resp = await client.get(path)
        request_id = resp.headers.get("X-Request-ID")
        assert request_id, path
        seen.add(request_id)
    assert len(seen) == 4


# ---------------------------------------------------------------- created_before / created_after


async def test_created_before_and_after_filter_strictly(client, schema):
    newest_first = insert_many(schema, 5)  # task_000 at T0, a minute apart
    at_2 = (T0 + timedelta(minutes=2)).isoformat()
    status, body = await get(client, created_before=at_2)
    assert status == 200 and ids(body) == ["task_001", "task_000"]
    assert body["data"]["total"] == 2
    status, body = await get(client, created_after=at_2)
    assert ids(body) == newest_first[:2]
    status, body = await get(client, created_after=T0.isoformat(), created_before=at_2)
    assert ids(body) == ["task_001"]
    status, body = await get(client, created_before="2025-07-02")  # a date: its midnight
    assert ids(body) == []


@pytest.mark.parametrize(
    "value", ["yesterday", "2025-13-01", "2025-02-30T00:00:00", "2025-07-02T22:57:21+08:00", ""]
)
async def test_a_bad_timestamp_filter_is_400(client, schema, value):
    status, body = await get(client, created_before=value)
    assert_bad_request(status, body, "created_before")
    assert body["invalid_params"] == ["created_before"]


@pytest.mark.parametrize("name", ["statuss", "created_befor", "task_id"])
async def test_unknown_list_parameters_are_refused(client, schema, name):
    insert_many(schema, 2)
    status, body = await get(client, **{name: "completed"})
    assert status == 400 and body["success"] is False
    assert body["message"] == f"未知参数: {name}" and body["unknown_params"] == [name]
    assert body["data"] is None


# ---------------------------------------------------------------- the list's query plan
# The page is found from the nearer end of the matching rows (service.db.list_tasks):
# every page, at either end, past the end, with ties and NULLs, must be the one that
# the plain query gives.


def insert_mixed(pg, count=41):
    """``count`` tasks: ties on created_at, some without one, NULL directory_exists."""
    pg.rows(
        "INSERT INTO data_pipeline_tasks (task_id, task_name, status, parameters, created_at,"
        " db_name, directory_exists)"
        " SELECT 'task_' || lpad(i::text, 3, '0'), 'n' || i,"
        "  (ARRAY['completed', 'failed', 'pending'])[1 + i %% 3], '{}',"
        "  CASE WHEN i %% 9 = 0 THEN NULL ELSE %s + (i / 4) * interval '1 minute' END,"
        "  'db', CASE WHEN i %% 5 = 0 THEN NULL ELSE i %% 2 = 0 END"
        " FROM generate_series(1, %s) AS i",
        (T0, count),
    )


def expected(pg, where="", args=()):
    return [
        r["task_id"]
        for r in pg.rows(
            f"SELECT task_id FROM data_pipeline_tasks {where}"
            " ORDER BY created_at DESC NULLS LAST, task_id DESC",
            args,
        )
    ]


FILTERS = [
    ({}, "", ()),
    ({"status": "completed"}, "WHERE status = 'completed'", ()),
    ({"directory_exists": "true"}, "WHERE COALESCE(directory_exists, true)", ()),
    (
        {"directory_exists": "false", "status": "failed"},
        "WHERE NOT COALESCE(directory_exists, true) AND status = 'failed'",
        (),
    ),
    (
        {"created_after": (T0 + timedelta(minutes=2)).isoformat()},
        "WHERE created_at > %s",
        (T0 + timedelta(minutes=2),),
    ),
    (
        {
            "created_before": (T0 + timedelta(minutes=8)).isoformat(),
            "created_after": T0.isoformat(),
            "status": "pending",
        },
        "WHERE created_at < %s AND created_at > %s AND status = 'pending'",
        (T0 + timedelta(minutes=8), T0),
    ),
]


@pytest.mark.parametrize("query, where, args", FILTERS)
async def test_every_page_is_the_plain_querys_with_its_total(client, schema, query, where, args):
    insert_mixed(schema)
    everything = expected(schema, where, args)
    assert everything  # each filter matches some
    total = len(everything)
    for limit in (1, 3, 7, 100):
        for offset in sorted({0, 1, 2, total // 2 - 1, total // 2, total - 3, total - 1, total}):
            if offset < 0:
                continue
            status, body = await get(client, limit=limit, offset=offset, **query)
            assert status == 200, body
            assert body["data"]["total"] == total, (limit, offset)
            assert ids(body) == everything[offset : offset + limit], (limit, offset)
        status, body = await get(client, limit=limit, offset=total + 5, **query)
        assert body["data"]["tasks"] == [] and body["data"]["total"] == total


async def test_a_filter_matching_nothing_is_empty_with_total_zero(client, schema):
    insert_mixed(schema)
    status, body = await get(client, status="in_progress")
    assert status == 200
    assert body["data"]["tasks"] == [] and body["data"]["total"] == 0


async def test_the_largest_offset_with_filters_is_an_empty_page(client, schema):
    """The largest offset the API accepts, with every filter: an empty page and
    the true total, never an integer overflow in the query (found by schemathesis)."""
    resp = await client.get(
        URL + "?limit=50&offset=2147483646&status=pending&directory_exists=true"
        "&created_before=1000-01-01&created_after=1000-01-01"
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["data"]["tasks"] == [] and body["data"]["total"] == 0
