"""``/healthz`` and ``/readyz``: what each proves, without a token, off the access log.

Not ready, for real: a PostgreSQL of the test's own stopped, ``base_dir``
moved away, the trash swapped for a symlink. (During a shutdown:
``tests/test_shutdown.py``.)"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
import requests

from service.app import create_app
from service.settings import load_settings
from tests.helpers import URL, write_settings

SHA = hashlib.sha256(b"s").hexdigest()
TOKENS = f'[auth]\ntokens = [{{ name = "ops", token_sha256 = "{SHA}", scopes = ["read"] }}]\n'


async def test_healthz_and_readyz_answer_ok_in_the_envelope(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {
        "success": True,
        "code": 200,
        "message": "服务运行中",
        "data": {"status": "alive"},
    }
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 200 and body["success"] is True, body
    assert body["data"] == {
        "ready": True,
        "checks": {k: "ok" for k in ("database", "base_dir", "trash", "audit", "shutdown")},
    }


@pytest.mark.parametrize("settings_text", [TOKENS])
async def test_probes_need_no_token_while_the_api_does(client):
    assert (await client.get(URL)).status == 401
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_readyz_is_503_with_the_database_stopped_and_healthz_still_200(
    aiohttp_client, own_server, workdir, base_dir
):
    settings = load_settings(
        write_settings(workdir, "[database]\ntimeout = 5.0\n"),
        environ={**os.environ, "DATABASE_URL": own_server.url},
    )
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/readyz")).status == 200
    own_server.stop()
    started = time.monotonic()
    resp = await client.get("/readyz")
    took = time.monotonic() - started
    body = await resp.json()
    assert resp.status == 503 and body["success"] is False, body
    assert body["message"].startswith("服务未就绪: 数据库")
    assert body["data"]["checks"]["database"] != "ok"
    assert body["data"]["checks"]["base_dir"] == "ok"
    assert took < 2.5, f"readyz took {took:.1f} s with database.timeout = 5"
    assert (await client.get("/healthz")).status == 200  # no database call


async def test_readyz_names_a_missing_base_dir_and_an_unsafe_trash(client, base_dir, tmp_path):
    trash = base_dir / ".trash"
    trash.rename(tmp_path / "elsewhere")
    trash.symlink_to(tmp_path / "elsewhere")
    resp = await client.get("/readyz")
    body = await resp.json()
    assert resp.status == 503, body
    assert "符号链接" in body["data"]["checks"]["trash"]
    assert body["data"]["checks"]["trash"] in body["message"]
    trash.unlink()
    (tmp_path / "elsewhere").rename(trash)
    assert (await client.get("/readyz")).status == 200

    base_dir.rename(tmp_path / "moved")
    body = await (await client.get("/readyz")).json()
    assert body["code"] == 503
    assert body["data"]["checks"]["base_dir"] == f"任务根目录不存在: {base_dir}"
    assert body["data"]["checks"]["database"] == "ok"


def test_probes_stay_off_the_access_log_at_the_default_level(service_factory):
    service = service_factory()
    for path in ("/healthz", "/readyz", URL):
        assert requests.get(service.url + path, timeout=5).status_code == 200
    time.sleep(0.3)
    paths = [
        json.loads(line).get("path")
        for line in service.log.read_text().splitlines()
        if '"event": "request"' in line
    ]
    assert paths == [f"{URL}", f"{URL}"]  # the start-up check of ServiceProcess, then ours
