"""``python run.py`` with no database configured: an embedded PostgreSQL under
var/pgdata, started with the service, stopped with it, data kept between runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.helpers import ROOT, URL, free_port, run_py, write_settings


def start(workdir, port):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "--config", str(workdir / "settings.toml"),
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            return proc, requests.get(f"http://127.0.0.1:{port}{URL}?limit=5", timeout=2)
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("the service did not start")


def postmaster_running(pgdata) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_service_runs_on_its_own_embedded_database(workdir):
    write_settings(workdir)
    pgdata = workdir / "var" / "pgdata"
    port = free_port()

    proc, resp = start(workdir, port)
    try:
        assert resp.status_code == 200 and resp.json()["data"]["total"] == 0
        assert (pgdata / "PG_VERSION").exists() and postmaster_running(pgdata)
        result = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), "--config", str(workdir / "settings.toml"),
             "demo", "--count", "3"],
            env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert requests.get(f"http://127.0.0.1:{port}{URL}", timeout=5).json()["data"]["total"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert not postmaster_running(pgdata)  # stopped with the service

    proc, resp = start(workdir, port)  # data kept between runs
    try:
        assert resp.json()["data"]["total"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_an_embedded_database_that_cannot_start_is_one_line(workdir):
    """initdb refuses a non-empty data directory: that is a start-up problem
    like any other, one line on stderr, not a traceback."""
    (workdir / "pgdata").mkdir()
    (workdir / "pgdata" / "stray").write_text("not a database")
    settings = write_settings(
        workdir, f'[server]\nport = {free_port()}\n[database]\nembedded_data_dir = "pgdata"\n'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    for command in ([], ["demo"]):
        done = run_py("--config", str(settings), *command, env=env)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "embedded database" in lines[0], done.stderr
