"""Test fixtures: a real PostgreSQL, a real file system, a real HTTP server.

The database: ``TEST_DATABASE_URL`` or ``DATABASE_URL`` when set, otherwise an
embedded server started once per session. Either way the suite creates its
own database on that server (and drops it at the end), so it never touches
the data of the database the URL names. Each test starts from empty tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import requests

from service.app import create_app
from service.embedded import start_embedded
from service.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
# Installed packages' plugins stay out of the tests (in-process and subprocesses).
os.environ["DPTASK_DISABLE_PLUGIN_AUTOLOAD"] = "1"


# ---------------------------------------------------------------- database


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: the configured one, or an embedded one."""
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    pgdata = Path(tempfile.mkdtemp(prefix="dptask-pg-")) / "pgdata"
    url, stop = start_embedded(pgdata)
    try:
        yield url
    finally:
        stop()
        shutil.rmtree(pgdata.parent, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A database of the suite's own on that server, dropped at the end."""
    name = f"dptask_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield with_database(server_url, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


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


@pytest.fixture
def pg(database_url: str) -> Iterator[Pg]:
    """The test database, with the service's tables, emptied."""
    pg = Pg(database_url)
    pg.rows("DROP TABLE IF EXISTS data_pipeline_task_steps, data_pipeline_tasks CASCADE")
    try:
        yield pg
    finally:
        pg.close()


# ---------------------------------------------------------------- file system and settings


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with a settings file; the base dir and audit log live under it."""
    (tmp_path / "settings.toml").write_text("")
    return tmp_path


@pytest.fixture
def base_dir(workdir: Path) -> Path:
    path = workdir / "data_pipeline" / "training_data"
    path.mkdir(parents=True)
    return path


def write_settings(workdir: Path, text: str = "") -> Path:
    path = workdir / "settings.toml"
    path.write_text(text)
    return path


@pytest.fixture
def settings_text() -> str:
    """Extra settings.toml content for the ``settings`` fixture; override per test."""
    return ""


@pytest.fixture
def settings(workdir: Path, base_dir: Path, database_url: str, settings_text: str, pg: Pg):
    path = write_settings(workdir, settings_text)
    return load_settings(path, environ={**os.environ, "DATABASE_URL": database_url})


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any) -> Any:
    """A real HTTP server on a real socket, running the app."""
    return await aiohttp_client(create_app(settings))


# ---------------------------------------------------------------- tasks


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


@pytest.fixture
async def schema(client: Any, pg: Pg) -> Pg:
    """The tables exist (the app created them at start-up); returns ``pg``."""
    return pg


@pytest.fixture
def task_factory(schema: Pg, base_dir: Path):
    """Create a task: its record, its steps and its directory."""

    def make(task_id: str, *, files: int = 5, size: int = 100, **record: Any) -> Path:
        insert_task(schema, task_id, **record)
        return make_task_dir(base_dir, task_id, files=files, size=size)

    return make


# ---------------------------------------------------------------- a real service process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                requests.get(f"{self.url}/api/v0/data_pipeline/tasks?limit=1", timeout=1)
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


@pytest.fixture
def service_factory(workdir: Path, base_dir: Path, database_url: str, pg: Pg):
    started: list[ServiceProcess] = []

    def start(
        port: int | None = None, settings_text: str = "", env: dict[str, str] | None = None
    ) -> ServiceProcess:
        config = write_settings(workdir, settings_text)
        env = {**os.environ, "DATABASE_URL": database_url, **(env or {})}
        service = ServiceProcess(config, port or free_port(), env).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def send_in_background(url: str, body: dict) -> threading.Thread:
    def send():
        with contextlib.suppress(requests.RequestException):  # killed under it
            requests.delete(f"{url}/api/v0/data_pipeline/tasks", json=body, timeout=120)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
