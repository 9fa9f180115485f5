"""What the tests share that is not a fixture: constants, requests, set-up and checks.

The fixtures live in ``conftest.py``, which pytest loads by itself; a test module
imports everything else from here (``from tests.helpers import URL, delete``), never
from ``conftest.py``. A helper that two test modules would write belongs here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import requests

from service.embedded import start_embedded

ROOT = Path(__file__).resolve().parent.parent
URL = "/api/v0/data_pipeline/tasks"


# ---------------------------------------------------------------- requests


async def request_delete(client: Any, **body: Any) -> tuple[int, Any]:
    """DELETE with exactly this body (for the tests of the body's validation)."""
    resp = await client.request("DELETE", URL, json=body)
    return resp.status, await resp.json()


async def delete(client: Any, *task_ids: str, **options: Any) -> tuple[int, Any]:
    """DELETE these tasks, confirmed, with these options: ``(status, body)``."""
    return await request_delete(client, task_ids=list(task_ids), confirm=True, **options)


async def delete_ok(client: Any, *task_ids: str, **options: Any) -> Any:
    """The body of a DELETE that must answer 200 (as any batch does, even all failed)."""
    status, body = await delete(client, *task_ids, **options)
    assert status == 200, body
    return body


def send_in_background(url: str, body: dict) -> threading.Thread:
    """A DELETE from another thread, to a service process that may die under it."""

    def send() -> None:
        with contextlib.suppress(requests.RequestException):  # killed under it
            requests.delete(f"{url}{URL}", json=body, timeout=120)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def audit_lines(settings: Any) -> list[dict]:
    """Every line of the service's audit log, as JSON."""
    return [json.loads(line) for line in settings.audit_path.read_text().splitlines()]


# ---------------------------------------------------------------- database


def with_database(url: str, name: str) -> str:
    """The same server's URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class Pg:
    """A plain, synchronous connection for the tests' own set-up and checks."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True

    def rows(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, args)
            if cur.description is None:
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def task(self, task_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM data_pipeline_tasks WHERE task_id = %s", (task_id,))
        return rows[0] if rows else None

    def steps(self, task_id: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT * FROM data_pipeline_task_steps WHERE task_id = %s ORDER BY id", (task_id,)
        )

    def close(self) -> None:
        self.conn.close()


def insert_task(
    pg: Pg,
    task_id: str,
    *,
    status: str = "completed",
    created_at: datetime | None = None,
    steps: dict[str, str] | None = None,
    directory_exists: bool = True,
) -> None:
    created_at = created_at or datetime.now() - timedelta(days=3)
    pg.rows(
        "INSERT INTO data_pipeline_tasks (task_id, task_name, status, parameters, created_at,"
        " by_user, db_name, directory_exists) VALUES (%s, %s, %s, '{}', %s, 'tester', 'db', %s)",
        (task_id, f"name of {task_id}", status, created_at, directory_exists),
    )
    for name, state in (steps or {"ddl_generation": "completed"}).items():
        pg.rows(
            "INSERT INTO data_pipeline_task_steps (task_id, step_name, step_status)"
            " VALUES (%s, %s, %s)",
            (task_id, name, state),
        )


# ---------------------------------------------------------------- a PostgreSQL of a test's own


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat_line.rsplit(")", 1)[1].split()[1]) == parent:
            pids.append(int(entry))
    return pids


def server_pids(pgdata: Path) -> list[int]:
    """The postmaster and all its children."""
    postmaster = postmaster_pid(pgdata)
    return [postmaster, *children(postmaster)]


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class OwnServer:
    """An embedded PostgreSQL of a test's own, so that it can be stopped or frozen
    (the shared server never is)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.url = ""
        self._stop: Callable[[], None] | None = None

    def start(self) -> str:
        self.url, self._stop = start_embedded(self.pgdata)
        return self.url

    def stop(self) -> None:
        if self._stop:
            # A test may have left it frozen (SIGSTOP): thaw it, or it never stops.
            with contextlib.suppress(OSError, ValueError):
                signal_all(server_pids(self.pgdata), signal.SIGCONT)
            self._stop()
            self._stop = None


# ---------------------------------------------------------------- file system and settings


def write_settings(workdir: Path, text: str = "") -> Path:
    path = workdir / "settings.toml"
    path.write_text(text)
    return path


def make_task_dir(base_dir: Path, task_id: str, files: int = 5, size: int = 100) -> Path:
    path = base_dir / task_id
    (path / "vector_bak").mkdir(parents=True)
    (path / "task_config.json").write_text(json.dumps({"task_id": task_id}))
    for i in range(files - 2):
        (path / f"table_{i}.ddl").write_bytes(b"x" * size)
    (path / "vector_bak" / "embedding.csv").write_bytes(b"y" * size)
    return path


def tree_snapshot(path: Path) -> dict[str, bytes | str]:
    """Every entry under ``path`` with its content (files) or target (links)."""
    snap: dict[str, bytes | str] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            snap[rel] = "->" + os.readlink(p)
        elif p.is_file():
            snap[rel] = p.read_bytes()
        else:
            snap[rel] = "dir"
    return snap


@contextlib.contextmanager
def mounted(*args: str, at: Path) -> Iterator[Path]:
    """``mount ARGS at``, unmounted however the test ends; skips where it cannot mount."""
    result = subprocess.run(["mount", *args, str(at)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=True)


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def wait_for_empty_trash(base_dir: Path, timeout: float = 60) -> None:
    """Committed trees are purged in the background once a restarted service listens."""
    deadline = time.monotonic() + timeout
    while os.listdir(base_dir / ".trash"):
        assert time.monotonic() < deadline, "the background sweep never emptied the trash"
        time.sleep(0.05)


# ---------------------------------------------------------------- a real service process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_py(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python run.py ARGS`` to its end, as an operator runs a command."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class ServiceProcess:
    """``python run.py`` in a subprocess, as an operator runs it."""

    def __init__(self, config: Path, port: int, env: dict[str, str]) -> None:
        self.config, self.port, self.env = config, port, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.parent / f"service-{port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> ServiceProcess:
        # Whatever answers on a busy port is not this service: refuse to start.
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is already in use by another process")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), "--config", str(self.config),
                 "--port", str(self.port)],
                cwd=self.config.parent, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log.read_text()[-2000:]}")
            try:
                requests.get(f"{self.url}{URL}?limit=1", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"service did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------- tokens


def sha(token: str) -> str:
    """A token's SHA-256, as ``[auth] tokens`` stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


# An operator who may delete, and a viewer who may only read.
TOKENS = f"""
[auth]
tokens = [
  {{ name = "ops", token_sha256 = "{sha("ops-secret")}", scopes = ["read", "delete"] }},
  {{ name = "viewer", token_sha256 = "{sha("view-secret")}", scopes = ["read"] }},
]
"""
