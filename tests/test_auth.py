"""[auth] tokens: who may read and who may delete; loopback-only when anonymous."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from tests.helpers import ROOT, TOKENS, URL, audit_lines, free_port, sha, write_settings


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("settings_text", [TOKENS])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(""),
        {"Authorization": "Basic ops-secret"},
        {"Authorization": "ops-secret"},
    ],
)
async def test_no_valid_token_is_401_for_every_endpoint(client, task_factory, base_dir, headers):
    task_factory("task_a")
    for method, path, body in [
        ("GET", URL, None),
        ("GET", f"{URL}/task_a", None),
        ("GET", "/api/v0/data_pipeline/plugins", None),
        ("DELETE", URL, {"task_ids": ["task_a"], "confirm": True}),
    ]:
        resp = await client.request(method, path, json=body, headers=headers)
        assert resp.status == 401, (method, path)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        envelope = await resp.json()
        assert envelope["code"] == 401 and envelope["success"] is False
    assert (base_dir / "task_a").is_dir()


@pytest.mark.parametrize("settings_text", [TOKENS])
async def test_a_read_token_cannot_delete(client, task_factory, base_dir):
    task_factory("task_a")
    resp = await client.get(URL, headers=bearer("view-secret"))
    assert resp.status == 200
    resp = await client.request(
        "DELETE", URL, json={"task_ids": ["task_a"], "confirm": True}, headers=bearer("view-secret")
    )
    body = await resp.json()
    assert resp.status == 403 and body["code"] == 403 and "delete" in body["message"]
    assert (base_dir / "task_a").is_dir()


@pytest.mark.parametrize("settings_text", [TOKENS])
async def test_the_tokens_name_is_the_actor_in_the_audit(client, task_factory, base_dir, settings):
    task_factory("task_a")
    resp = await client.request(
        "DELETE", URL, json={"task_ids": ["task_a"], "confirm": True}, headers=bearer("ops-secret")
    )
    assert (await resp.json())["message"] == "任务目录删除成功"
    lines = audit_lines(settings)
    assert {line["actor"] for line in lines} == {"ops"}


def serve(workdir, settings_text: str, *args: str) -> subprocess.Popen:
    config = write_settings(workdir, settings_text)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "--config", str(config), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DATABASE_URL": "postgresql://unused/x"},
    )  # fmt: skip


def test_anonymous_service_refuses_a_non_loopback_address(workdir):
    proc = serve(workdir, "", "--host", "0.0.0.0", "--port", str(free_port()))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    (line,) = err.strip().splitlines()
    assert "0.0.0.0" in line and "allow_anonymous" in line


@pytest.mark.parametrize(
    "settings_text",
    [
        '[auth]\ntokens = [{ name = "x", token_sha256 = "abc", scopes = ["read"] }]\n',
        f'[auth]\ntokens = [{{ name = "x", token_sha256 = "{sha("t")}", scopes = ["admin"] }}]\n',
        f'[auth]\ntokens = [{{ name = "x", token = "{sha("t")}", scopes = ["read"] }}]\n',
    ],
)
def test_a_bad_token_entry_stops_start_up_with_one_line(workdir, settings_text):
    proc = serve(workdir, settings_text, "--port", str(free_port()))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    (line,) = err.strip().splitlines()
    assert "auth.tokens[0]" in line


def test_allow_anonymous_serves_on_any_address(service_factory):
    service = service_factory(
        settings_text='[auth]\nallow_anonymous = true\n[server]\nhost = "0.0.0.0"\n'
    )
    assert requests.get(f"{service.url}{URL}", timeout=5).status_code == 200
