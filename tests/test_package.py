"""The package as an operator installs it: a wheel built from this tree,
installed with its dependencies into a fresh venv (no system site packages),
its ``dptask`` command serving the test database; and the start-up checks that
do not need the source tree (a busy port before the embedded database, the
embedded database's data directory).

The dependencies come from a wheelhouse that ``pip wheel -r requirements.txt``
fills from pip's cache (the registry the first time), then are installed with
``--no-index``: a real dependency install, in seconds, offline after once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, URL, free_port, run_py, write_settings

pytestmark = pytest.mark.slow  # about 15 s; runs in CI once (see .ci/run)


def pip(*args: str, python: str = sys.executable) -> None:
    subprocess.run([python, "-m", "pip", "-q", *args], check=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    house = tmp_path_factory.mktemp("wheelhouse")
    pip("wheel", "--no-deps", "-w", str(house), str(ROOT))
    pip("wheel", "-r", str(ROOT / "requirements.txt"), "-w", str(house))
    (built,) = house.glob("dptask-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip("install", "--no-index", "--find-links", str(wheel.parent), str(wheel),
        python=str(venv / "bin" / "python"))  # fmt: skip
    return venv


def requirements(file: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in file.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-r")]


def normalized(requirement: str) -> str:
    from packaging.requirements import Requirement

    r = Requirement(requirement)
    return f"{r.name.lower()}{r.specifier}"


def test_the_wheel_declares_python_the_pins_and_the_test_extra(wheel):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(z.read(name).decode())
        entry_points = z.read(name.replace("METADATA", "entry_points.txt")).decode()
        files = z.namelist()
    # pip on Python 3.10 refuses: "requires a different Python: 3.10.x not in '>=3.11.4'".
    assert metadata["Requires-Python"] == ">=3.11.4"
    requires = metadata.get_all("Requires-Dist")
    runtime = sorted(normalized(r) for r in requires if "extra ==" not in r)
    test = sorted(normalized(r.split(";")[0]) for r in requires if 'extra == "test"' in r)
    assert runtime == sorted(map(normalized, requirements(ROOT / "requirements.txt")))
    assert test == sorted(map(normalized, requirements(ROOT / "requirements-test.txt")))
    assert "dptask = service.commands:main" in entry_points
    assert {"service/app.py", "service/builtin/records.py", "plugins/archive.py"} <= set(files)
    assert not any(f.startswith("tests/") for f in files)


def test_the_installed_dptask_serves_the_test_database_with_an_in_tree_plugin(
    venv, workdir, base_dir, database_url, pg
):
    dptask = str(venv / "bin" / "dptask")
    help_ = subprocess.run([dptask, "--help"], capture_output=True, text=True, timeout=60)
    assert help_.returncode == 0 and "serve" in help_.stdout and "config" in help_.stdout
    # The archive plugin is imported from the wheel: the source tree is not on the path.
    config = write_settings(workdir, '[plugins]\nenabled = ["archive"]\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"DATABASE_URL": database_url, "DPTASK_SERVER_PORT": str(port)}
    log = workdir / "installed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [dptask, "serve", "--config", str(config)], cwd=workdir, env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                response = requests.get(f"http://127.0.0.1:{port}{URL}?limit=1", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert response.status_code == 200 and response.json()["success"] is True
        imported = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import plugins.archive as a; print(a.__file__)"],
            cwd="/", capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert imported.stdout.startswith(str(venv))
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0, log.read_text()


# ---------------------------------------------------------------- start-up without the tree


def without_database_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}


def test_a_busy_port_is_reported_before_the_embedded_database_starts(workdir):
    pgdata = workdir / "pg"
    env = without_database_url() | {"DPTASK_DATABASE_EMBEDDED_DATA_DIR": str(pgdata)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        started = time.monotonic()
        result = run_py("--config", "settings.toml", "--port", port, cwd=workdir, env=env)
        took = time.monotonic() - started
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert not pgdata.exists()  # no initdb, no server: said at once
    assert took < 5, took


def test_the_embedded_database_keeps_its_data_where_the_setting_says(workdir):
    pgdata = workdir / "elsewhere" / "pgdata"
    write_settings(workdir, f'[database]\nembedded_data_dir = "{pgdata}"\n')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "--config", "settings.toml", "--port", str(port)],
        cwd=workdir, env=without_database_url(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                requests.get(f"http://127.0.0.1:{port}{URL}?limit=1", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert (pgdata / "PG_VERSION").exists()
        assert (pgdata / "postmaster.pid").exists()
        assert not (workdir / "var" / "pgdata").exists()
    finally:
        proc.terminate()
        proc.wait(30)
