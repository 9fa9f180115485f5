"""``python run.py`` as an operator runs it: the command-line flags, the demo
command, and the log it writes."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import structlog

from service.logs import configure_logging
from tests.helpers import ROOT, URL, free_port, run_py


@contextlib.contextmanager
def serving(workdir: Path, port: int, env: dict[str, str], *args: str) -> Iterator[Path]:
    """``python run.py ARGS`` until it answers on ``port``; yields its stdout
    file (stderr goes to ``stderr.log`` next to it)."""
    out, err = workdir / "stdout.log", workdir / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=workdir, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"exited: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "never answered"
            try:
                requests.get(f"http://127.0.0.1:{port}{URL}?limit=1", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield out
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def env(database_url: str, pg) -> dict[str, str]:
    """The environment of a service on the test database (emptied first)."""
    return {**os.environ, "DATABASE_URL": database_url}


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def wait_for_log(path: Path, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 5
    while True:
        lines = [e for e in log_lines(path) if e.get("request_id") == request_id]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# ---------------------------------------------------------------- --host and --port


def test_host_and_port_flags_win_over_the_settings_file(workdir, base_dir, env):
    file_port, flag_port = free_port(), free_port()
    (workdir / "settings.toml").write_text(
        f'[server]\nhost = "192.0.2.1"\nport = {file_port}\n'  # not an address of this host
    )
    args = ("--config", "settings.toml", "--host", "127.0.0.1", "--port", str(flag_port))
    with serving(workdir, flag_port, env, *args):
        resp = requests.get(f"http://127.0.0.1:{flag_port}{URL}", timeout=5)
        assert resp.status_code == 200 and resp.json()["success"] is True
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{file_port}{URL}", timeout=2)


def test_the_settings_file_gives_host_and_port_without_flags(workdir, base_dir, env):
    port = free_port()
    (workdir / "conf.toml").write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    with serving(workdir, port, env, "--config", "conf.toml"):
        assert requests.get(f"http://127.0.0.1:{port}{URL}", timeout=5).status_code == 200


def test_an_unreachable_database_stops_start_up_with_one_line(workdir):
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = run_py("--config", "settings.toml", "--port", str(free_port()), cwd=workdir, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_port_in_use_stops_start_up_with_one_line(workdir, base_dir, env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_py("--config", "settings.toml", "--port", port, cwd=workdir, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert port in line


# ---------------------------------------------------------------- python run.py demo


def test_demo_creates_tasks_that_the_service_lists(workdir, base_dir, env, pg, service_factory):
    result = run_py("--config", "settings.toml", "demo", "--count", "6", cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr

    records = pg.rows("SELECT * FROM data_pipeline_tasks ORDER BY created_at DESC")
    task_ids = [r["task_id"] for r in records]
    assert len(task_ids) == 6
    assert all(task_id in result.stdout for task_id in task_ids)
    assert len({r["status"] for r in records}) >= 3  # a mix of statuses
    for task_id in task_ids:
        assert len(pg.steps(task_id)) >= 1
        directory = base_dir / task_id
        assert json.loads((directory / "task_config.json").read_text())
        assert (directory / "data_pipeline.log").stat().st_size > 0
        assert list(directory.glob("*.ddl"))
        assert list(directory.glob("*_detail.md"))
        pairs = list(directory.glob("qs_*_pair.json"))
        assert pairs and json.loads(pairs[0].read_text())

    service = service_factory()
    body = requests.get(f"{service.url}{URL}", timeout=5).json()
    assert body["data"]["total"] == 6
    assert [t["task_id"] for t in body["data"]["tasks"]] == task_ids
    assert all(t["directory_exists"] is True for t in body["data"]["tasks"])
    for task_id in task_ids:
        detail = requests.get(f"{service.url}{URL}/{task_id}", timeout=5).json()
        assert detail["success"] is True and detail["data"]["steps"]

    # The sample tasks are there to try the API on: a finished one deletes.
    finished = next(r["task_id"] for r in records if r["status"] == "completed")
    body = requests.delete(
        f"{service.url}{URL}", json={"task_ids": [finished], "confirm": True}, timeout=30
    ).json()
    assert body["success"] is True, body
    assert body["data"]["deleted_tasks"][0]["deleted_files_count"] > 5
    assert not (base_dir / finished).exists()


# ---------------------------------------------------------------- the log


def test_one_json_access_line_per_request_with_the_responses_request_id(service_factory):
    service = service_factory()
    for path in (URL, f"{URL}?limit=abc", f"{URL}/task_none", "/nope"):
        resp = requests.get(f"{service.url}{path}", timeout=5)
        request_id = resp.headers["X-Request-ID"]
        lines = wait_for_log(service.log, request_id)
        (access,) = [e for e in lines if e.get("event") == "request"]
        assert access["method"] == "GET"
        assert access["path"] == path.split("?")[0]
        assert access["status"] == resp.status_code
        assert access["level"] == "info" and access["timestamp"]


def test_the_clients_request_id_is_kept(service_factory):
    service = service_factory()
    resp = requests.get(f"{service.url}{URL}", headers={"X-Request-ID": "trace-42.a_b"}, timeout=5)
    assert resp.headers["X-Request-ID"] == "trace-42.a_b"
    assert [e["status"] for e in wait_for_log(service.log, "trace-42.a_b")] == [200]


def test_an_unsafe_client_request_id_is_replaced(service_factory):
    service = service_factory()
    sent = 'x" injected="1'
    resp = requests.get(f"{service.url}{URL}", headers={"X-Request-ID": sent}, timeout=5)
    request_id = resp.headers["X-Request-ID"]
    assert request_id and request_id != sent
    assert len(wait_for_log(service.log, request_id)) == 1


def test_every_line_on_stdout_is_json_when_it_is_not_a_terminal(workdir, base_dir, env):
    port = free_port()
    with serving(workdir, port, env, "--port", str(port)) as stdout:
        requests.get(f"http://127.0.0.1:{port}{URL}", timeout=5)
        time.sleep(0.2)
        lines = stdout.read_text().splitlines()
    assert len(lines) >= 1
    not_json = [line for line in lines if not is_json_object(line)]
    assert not_json == []


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_stdlib_log_records_are_json_lines_with_their_traceback_inside():
    # asyncio and aiohttp log through the standard library: their records must
    # come out as the service's JSON lines, never as plain text.
    stream = io.StringIO()
    with logging_to(stream):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            logging.getLogger("asyncio").exception("socket.accept() out of system resource")
        logging.getLogger("aiohttp.server").warning("plain %s", "warning")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    accept, warning = (json.loads(line) for line in lines)
    assert accept["event"] == "socket.accept() out of system resource"
    assert accept["logger"] == "asyncio" and accept["level"] == "error"
    assert "Too many open files" in accept["exception"] and accept["timestamp"]
    assert warning == {**warning, "event": "plain warning", "level": "warning"}


class Unrenderable:
    def __repr__(self) -> str:
        raise RuntimeError("no text for this")


@contextlib.contextmanager
def logging_to(stream: io.StringIO) -> Iterator[None]:
    """The service's logging onto ``stream``; the test process's own restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_structlog = structlog.get_config()
    try:
        configure_logging(stream, json_lines=True)
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)


def test_a_log_line_that_cannot_be_rendered_is_reported_never_raised(capsys):
    """As the standard library's handlers do: what was being logged goes on,
    the failure's traceback goes to stderr, and the next line is written."""
    stream = io.StringIO()
    with logging_to(stream):
        log = structlog.get_logger("service")
        log.info("unrenderable", value=Unrenderable())  # must not raise
        log.info("next", task_id="t1")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["event"] == "next"
    err = capsys.readouterr().err
    assert "--- Logging error ---" in err and "no text for this" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_service_cleanly(workdir, base_dir, env, signum):
    port = free_port()
    out, err = workdir / "stdout.log", workdir / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--port", str(port)],
            cwd=workdir, env=env, stdout=stdout, stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "never answered"
            try:
                requests.get(f"http://127.0.0.1:{port}{URL}", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        proc.send_signal(signum)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err.read_text() == ""
    events = [json.loads(line)["event"] for line in out.read_text().splitlines()]
    assert "serving" in events and "request" in events
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}{URL}", timeout=2)
