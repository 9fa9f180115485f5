"""The service log as a log pipeline takes it (a real process, stdout a file):
one JSON object per line even when aiohttp itself logs a traceback, a
``logger`` field and an offset timestamp on every line, ``[logging] level``
obeyed; and the audit log reopened on SIGHUP after logrotate's rename."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import URL, insert_task, make_task_dir, wait_for

OFFSET_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def lines_of(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_stdout_is_json_only_under_an_aiohttp_level_error(service_factory):
    service = service_factory()
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        # A header line without a colon: aiohttp's parser fails and aiohttp
        # logs the error with its traceback, outside any handler of ours.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
        assert b" 400 " in sock.recv(4096).split(b"\r\n")[0]
    time.sleep(0.3)
    raw = lines_of(service.log)
    records = [json.loads(line) for line in raw]  # every line is JSON
    assert all(isinstance(r, dict) for r in records)
    (error,) = [r for r in records if r.get("logger") == "aiohttp.server"]
    assert error["level"] == "error" and "Traceback" in error["exception"]
    for record in records:
        assert record["logger"], record
        assert OFFSET_TIMESTAMP.match(record["timestamp"]), record["timestamp"]
    # The API's own timestamps stay naive, as the contract shows them.
    body = requests.get(f"{service.url}{URL}?limit=1", timeout=5).json()
    assert body["success"] is True


@pytest.mark.parametrize(
    ("level", "serving", "probe_lines"), [("warning", 0, 0), ("info", 1, 0), ("debug", 1, 1)]
)
def test_the_log_level_setting(service_factory, level, serving, probe_lines):
    service = service_factory(settings_text=f'[logging]\nlevel = "{level}"\n')
    requests.get(f"{service.url}/healthz", timeout=5)
    time.sleep(0.3)
    records = [json.loads(line) for line in lines_of(service.log)]
    assert [r["event"] for r in records].count("serving") == serving
    probes = [r for r in records if r["event"] == "request" and r["path"] == "/healthz"]
    assert len(probes) == probe_lines
    assert all(r["level"] == "debug" for r in probes)


def test_the_audit_log_is_reopened_on_sighup(service_factory, pg, base_dir, workdir):
    service = service_factory()
    audit, rotated = workdir / "var" / "audit.log", workdir / "var" / "audit.log.1"
    insert_task(pg, "task_before")
    make_task_dir(base_dir, "task_before")
    body = {"task_ids": ["task_before"], "confirm": True}
    assert requests.delete(f"{service.url}{URL}", json=body, timeout=10).status_code == 200
    assert "task_before" in audit.read_text()

    audit.rename(rotated)  # logrotate without copytruncate
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    wait_for(audit, timeout=5)  # reopened at once, before any new line
    assert service.proc.poll() is None
    # An id refused before anything is reserved: its line goes where the file is open.
    body = {"task_ids": [".hidden"], "confirm": True}
    assert requests.delete(f"{service.url}{URL}", json=body, timeout=10).status_code == 200
    assert ".hidden" in audit.read_text()
    assert ".hidden" not in rotated.read_text()
    events = [json.loads(line)["event"] for line in lines_of(service.log)]
    assert "audit_reopened" in events
