"""The OpenAPI description, and schemathesis fuzzing the live service against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from service.params import LIST_QUERY, OPTIONS, REQUIRED
from tests.helpers import insert_task, make_task_dir


async def test_the_description_is_generated_from_the_validation(client):
    resp = await client.get("/api/v0/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    tasks = doc["paths"]["/api/v0/data_pipeline/tasks"]
    body = tasks["delete"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {*REQUIRED, *OPTIONS, "background"}
    assert (
        body["additionalProperties"] is False and body["properties"]["task_ids"]["maxItems"] == 1000
    )
    assert {p["name"] for p in tasks["get"]["parameters"]} == set(LIST_QUERY)
    for method in ("get", "delete"):
        assert {"200", "400", "500", "503"} <= set(tasks[method]["responses"])


@pytest.mark.parametrize("option", sorted(OPTIONS))
async def test_every_described_option_is_accepted(client, schema, option):
    body = {"task_ids": ["task_none"], "confirm": True, option: False}
    resp = await client.request("DELETE", "/api/v0/data_pipeline/tasks", json=body)
    assert resp.status == 200


def test_schemathesis_finds_no_fault(service_factory, pg, base_dir, tmp_path):
    """No 5xx, no response off its schema, no schema-invalid request accepted."""
    if shutil.which("schemathesis", path=os.path.dirname(sys.executable)) is None:
        pytest.fail("schemathesis is not installed (requirements-test.txt)")
    service = service_factory()
    for i in range(3):  # something real for the fuzzer to list and delete
        insert_task(pg, f"task_{i}")
        make_task_dir(base_dir, f"task_{i}")
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "schemathesis"),
            "run",
            f"{service.url}/api/v0/openapi.json",
            "--checks", "all",
            "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "40"),
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-time", "90",
            "--seed", "1",
            "--warnings", "off",
            "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    failures = result.stdout[result.stdout.find("FAILURES") :]
    assert result.returncode == 0, failures[:8000] + result.stderr[-2000:]
