"""Test fixtures: a real PostgreSQL, a real file system, a real HTTP server.

Only fixtures live here; the helpers they use, and that the tests import, are in
``tests/helpers.py``.

The database: ``TEST_DATABASE_URL`` or ``DATABASE_URL`` when set, otherwise an
embedded server started once per session. Either way the suite creates its
own database on that server (and drops it at the end), so it never touches
the data of the database the URL names. Each test starts from empty tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from service import appkeys
from service.app import create_app
from service.embedded import start_embedded
from service.settings import load_settings
from tests.helpers import (
    OwnServer,
    Pg,
    ServiceProcess,
    free_port,
    insert_task,
    make_task_dir,
    with_database,
    write_settings,
)

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


@pytest.fixture
def pg(database_url: str) -> Iterator[Pg]:
    """The test database, with the service's tables, emptied."""
    pg = Pg(database_url)
    pg.rows(
        "DROP TABLE IF EXISTS data_pipeline_task_steps, data_pipeline_tasks, dptask_jobs,"
        " dptask_job_results, dptask_schedules CASCADE"
    )
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def pipeline_session(database_url: str) -> Iterator[Any]:
    """A session of the pipeline's own (psycopg2), with a transaction it keeps open."""
    conn = psycopg2.connect(database_url)
    yield conn
    conn.rollback()
    conn.close()


@pytest.fixture
def own_server() -> Iterator[OwnServer]:
    """An embedded PostgreSQL of this test's own, started; stopped (thawed first) after.
    Its data lives outside pytest's temporary folder, which another pytest run on this
    machine may make private (0700) again, shutting out the server's own user."""
    server = OwnServer(Path(tempfile.mkdtemp(prefix="dptask-own-")) / "pgdata")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.pgdata.parent, ignore_errors=True)


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


@pytest.fixture
def settings_text() -> str:
    """Extra settings.toml content for the ``settings`` fixture; override per test."""
    return ""


@pytest.fixture
def settings(workdir: Path, base_dir: Path, database_url: str, settings_text: str, pg: Pg):
    path = write_settings(workdir, settings_text)
    return load_settings(path, environ={**os.environ, "DATABASE_URL": database_url})


@pytest.fixture
def plugins() -> list[Any]:
    """Plugins to register on the app's plugin manager before it starts; override per test."""
    return []


@pytest.fixture
async def client(aiohttp_client: Any, settings: Any, plugins: list[Any]) -> Any:
    """A real HTTP server on a real socket, running the app."""
    app = create_app(settings)
    for plugin in plugins:
        app[appkeys.PLUGINS].register(plugin)
    return await aiohttp_client(app)


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """Mark a path ``chattr +i``: even root cannot unlink it (a real fault, no mock).
    Skips the test where the file system cannot."""

    def mark(path: Path) -> Path:
        result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"chattr +i not supported here: {result.stderr.strip()}")
        return path

    yield mark
    # Wherever a marked entry ended up (put back, or left in the trash), free it.
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], capture_output=True)


# ---------------------------------------------------------------- tasks


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
