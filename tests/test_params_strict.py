"""Nothing ambiguous is guessed at: a duplicate JSON key (at any depth),
NaN/Infinity, a query parameter given twice are refused with the envelope's
400 and touch nothing; a huge integer is told its range, not "must be an
integer". All through a real HTTP server, with raw bodies and raw query strings."""

from __future__ import annotations

import pytest

from tests.helpers import URL

JSON = {"Content-Type": "application/json"}


async def delete_raw(client, raw: str, headers=JSON):
    r = await client.delete(URL, data=raw.encode(), headers=headers)
    return r.status, await r.json()


def assert_400(status, body, message, **fields):
    assert status == 400, body
    assert body["success"] is False and body["code"] == 400 and body["data"] is None
    assert body["message"] == message
    for name, value in fields.items():
        assert body[name] == value


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ('{"task_ids": ["t1"], "confirm": false, "confirm": true}', "confirm"),
        ('{"task_ids": ["t1"], "confirm": true, "confirm": false}', "confirm"),
        ('{"task_ids": ["t1"], "task_ids": ["t2"], "confirm": true}', "task_ids"),
        ('{"task_ids": ["t1"], "confirm": true, "force": false, "force": true}', "force"),
        # nested objects: refused at any depth (one is an unknown parameter's value)
        ('{"task_ids": [{"a": 1, "a": 2}], "confirm": true}', "a"),
        ('{"task_ids": ["t1"], "confirm": true, "x": {"y": {"z": 1, "z": 1}}}', "z"),
    ],
)
async def test_a_duplicate_key_is_refused_and_touches_nothing(client, task_factory, raw, name):
    path = task_factory("t1")
    status, body = await delete_raw(client, raw)
    assert_400(status, body, f"重复的参数: {name}", invalid_params=[name])
    assert path.is_dir()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_not_json(client, task_factory, constant):
    path = task_factory("t1")
    raw = f'{{"task_ids": ["t1"], "confirm": true, "force": {constant}}}'
    status, body = await delete_raw(client, raw)
    assert_400(status, body, "请求体不是有效的JSON: 不允许 NaN/Infinity")
    assert path.is_dir()


async def test_an_unknown_charset_is_not_json(client, task_factory):
    path = task_factory("t1")
    headers = {"Content-Type": "application/json; charset=no-such-charset"}
    status, body = await delete_raw(client, '{"task_ids": ["t1"], "confirm": true}', headers)
    assert_400(status, body, "请求体必须是JSON对象")
    assert path.is_dir()


async def test_a_strict_body_still_deletes(client, task_factory):
    path = task_factory("t1")
    status, body = await delete_raw(client, '{"task_ids": ["t1"], "confirm": true, "o": {"a": 1}}')
    assert_400(status, body, "未知参数: o", unknown_params=["o"])
    status, body = await delete_raw(client, '{"task_ids": ["t1"], "confirm": true}')
    assert status == 200 and body["data"]["summary"]["successfully_deleted"] == 1
    assert not path.exists()


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=5&limit=500", "limit"),
        ("limit=5&limit=5", "limit"),
        ("offset=0&offset=10", "offset"),
        ("status=completed&status=failed", "status"),
        ("directory_exists=true&directory_exists=false", "directory_exists"),
    ],
)
async def test_a_repeated_query_parameter_is_refused(client, schema, query, name):
    r = await client.get(f"{URL}?{query}")
    assert_400(r.status, await r.json(), f"重复的查询参数: {name}", invalid_params=[name])


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("offset", "99999999999999", "offset 必须在 0 到 2147483647 之间"),
        ("offset", "2147483648", "offset 必须在 0 到 2147483647 之间"),
        ("offset", "-99999999999999", "offset 必须在 0 到 2147483647 之间"),
        ("offset", "9" * 5000, "offset 必须在 0 到 2147483647 之间"),
        ("limit", "1" + "0" * 30, "limit 必须在 1 到 100 之间"),
        ("limit", "-" + "1" * 20, "limit 必须在 1 到 100 之间"),
        ("offset", "1e3", "offset 必须是整数"),
        ("offset", "--1", "offset 必须是整数"),
    ],
)
async def test_a_huge_integer_is_told_its_range(client, schema, name, value, message):
    r = await client.get(f"{URL}?{name}={value}")
    assert_400(r.status, await r.json(), message, invalid_params=[name])


async def test_leading_zeros_are_the_same_integer(client, schema):
    r = await client.get(f"{URL}?limit={'0' * 40}5&offset={'0' * 40}")
    body = await r.json()
    assert r.status == 200, body
    assert (body["data"]["limit"], body["data"]["offset"]) == (5, 0)
