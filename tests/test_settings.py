"""settings.toml: every key and its default, relative paths, the environment
and the command line on top; a bad file stops start-up with one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from service.settings import SettingsError, load_settings
from tests.helpers import ROOT, run_py

DEFAULT_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


def values(s):
    """What a user configures, as plain values."""
    return {
        "host": s.host,
        "port": s.port,
        "base_dir": s.base_dir,
        "id_pattern": s.id_pattern.pattern,
        "protected": s.protected,
        "database_url": s.database_url,
        "audit_path": s.audit_path,
        "max_task_ids": s.max_task_ids,
        "plugins_enabled": s.plugins_enabled,
    }


def defaults(folder: Path):
    return {
        "host": "127.0.0.1",
        "port": 8084,
        "base_dir": folder / "data_pipeline" / "training_data",
        "id_pattern": DEFAULT_ID_PATTERN,
        "protected": frozenset({"vector_bak"}),
        "database_url": "",
        "audit_path": folder / "var" / "audit.log",
        "max_task_ids": 1000,
        "plugins_enabled": (),
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- keys and defaults


def test_an_empty_file_means_every_default(tmp_path):
    settings = load_settings(write(tmp_path / "settings.toml", ""), environ={})
    assert values(settings) == defaults(tmp_path)


def test_no_settings_file_in_the_working_directory_means_every_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert values(load_settings(environ={})) == defaults(tmp_path)


def test_settings_toml_in_the_working_directory_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "settings.toml", "[server]\nport = 9001\n")
    assert load_settings(environ={}).port == 9001


def test_the_shipped_settings_file_shows_the_defaults():
    settings = load_settings(ROOT / "settings.toml", environ={})
    assert values(settings) == defaults(ROOT)


def test_every_key_is_read_from_the_file(tmp_path):
    path = write(
        tmp_path / "settings.toml",
        """
[server]
host = "0.0.0.0"
port = 9000

[tasks]
base_dir = "/srv/pipeline/tasks"
id_pattern = "^task_[0-9_]+$"
protected = ["vector_bak", "shared"]

[database]
url = "postgresql://u@db.example:5433/pipeline"

[audit]
path = "/var/log/dptask/audit.log"

[limits]
max_task_ids = 20

[plugins]
enabled = ["archive"]
""",
    )
    assert values(load_settings(path, environ={})) == {
        "host": "0.0.0.0",
        "port": 9000,
        "base_dir": Path("/srv/pipeline/tasks"),
        "id_pattern": "^task_[0-9_]+$",
        "protected": frozenset({"vector_bak", "shared"}),
        "database_url": "postgresql://u@db.example:5433/pipeline",
        "audit_path": Path("/var/log/dptask/audit.log"),
        "max_task_ids": 20,
        "plugins_enabled": ("archive",),
    }


def test_the_id_pattern_is_used_as_a_regex(tmp_path):
    settings = load_settings(write(tmp_path / "settings.toml", ""), environ={})
    assert settings.id_pattern.fullmatch("task_20250702_223802")
    assert settings.id_pattern.fullmatch("a" * 64)
    for bad in ("a" * 65, "_task", "bad.id", "..", "a/b", ""):
        assert not settings.id_pattern.fullmatch(bad), bad


# ---------------------------------------------------------------- paths


def test_relative_paths_are_relative_to_the_settings_files_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(
        tmp_path / "conf" / "settings.toml",
        '[tasks]\nbase_dir = "../pipeline/tasks"\n[audit]\npath = "logs/audit.log"\n',
    )
    settings = load_settings(Path("..") / "conf" / "settings.toml", environ={})
    assert settings.base_dir.resolve() == (tmp_path / "pipeline" / "tasks").resolve()
    assert settings.audit_path.resolve() == (tmp_path / "conf" / "logs" / "audit.log").resolve()
    assert settings.base_dir.is_absolute() and settings.audit_path.is_absolute()


def test_default_paths_follow_the_settings_file_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(write(tmp_path / "conf" / "settings.toml", ""), environ={})
    assert settings.base_dir == tmp_path / "conf" / "data_pipeline" / "training_data"
    assert settings.audit_path == tmp_path / "conf" / "var" / "audit.log"


# ---------------------------------------------------------------- environment and command line


def test_database_url_from_the_environment_wins_over_the_file(tmp_path):
    path = write(tmp_path / "settings.toml", '[database]\nurl = "postgresql://file/db"\n')
    assert load_settings(path, environ={}).database_url == "postgresql://file/db"
    settings = load_settings(path, environ={"DATABASE_URL": "postgresql://env/db"})
    assert settings.database_url == "postgresql://env/db"


def test_database_url_from_the_environment_without_one_in_the_file(tmp_path):
    path = write(tmp_path / "settings.toml", "")
    settings = load_settings(path, environ={"DATABASE_URL": "postgresql://env/db"})
    assert settings.database_url == "postgresql://env/db"


def test_command_line_host_and_port_win_over_the_file(tmp_path):
    path = write(tmp_path / "settings.toml", '[server]\nhost = "192.0.2.1"\nport = 9000\n')
    settings = load_settings(path, overrides={"server": {"host": "127.0.0.1", "port": 9100}})
    assert (settings.host, settings.port) == ("127.0.0.1", 9100)
    # A flag not given leaves the file's value.
    settings = load_settings(path, overrides={"server": {"host": None, "port": 9100}})
    assert (settings.host, settings.port) == ("192.0.2.1", 9100)


# ---------------------------------------------------------------- a bad file stops start-up


def start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python run.py ARGS`` as an operator runs it; a bad file must stop it."""
    env = {**os.environ}
    env["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/never"  # never reached
    try:
        return run_py(*args, cwd=tmp_path, env=env, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the service started instead of refusing its settings")


def assert_one_line(result: subprocess.CompletedProcess[str], *names: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("[server]\nprot = 80\n", "server.prot"),
        ("[sever]\nport = 80\n", "sever"),
        ('[server]\nport = "80"\n', "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ('[tasks]\nid_pattern = "(task_"\n', "tasks.id_pattern"),
        ("[server\nport = 80\n", "bad.toml"),  # not TOML
    ],
)
def test_a_bad_settings_file_stops_start_up_with_one_line_naming_the_key(tmp_path, text, name):
    write(tmp_path / "bad.toml", text)
    assert_one_line(start(tmp_path, "--config", "bad.toml"), name)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("[tasks]\nbasedir = 'x'\n", "tasks.basedir"),
        ("port = 80\n", "port"),
        ("[server]\nport = 80.5\n", "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nhost = 127\n", "server.host"),
        ('[tasks]\nprotected = "vector_bak"\n', "tasks.protected"),
        ("[tasks]\nprotected = [1]\n", "tasks.protected"),
        ("[database]\nurl = 5\n", "database.url"),
        ("[audit]\npath = false\n", "audit.path"),
        ('[limits]\nmax_task_ids = "1000"\n', "limits.max_task_ids"),
        ("[limits]\nmax_task_ids = 0\n", "limits.max_task_ids"),
        ('[plugins]\nenabled = "archive"\n', "plugins.enabled"),
        ("[server]\nport = \n", "line 2"),
        ("[server]\nport = 1\nport = 2\n", "line 3"),
    ],
)
def test_every_bad_value_is_refused_in_one_line_naming_the_key(tmp_path, text, name):
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(SettingsError) as refused:
        load_settings(path, environ={})
    message = str(refused.value)
    assert name in message and "\n" not in message, message


def test_a_missing_config_file_stops_start_up_with_one_line(tmp_path):
    assert_one_line(start(tmp_path, "--config", "missing.toml"), "missing.toml")


def test_a_bad_settings_toml_in_the_working_directory_stops_start_up(tmp_path):
    write(tmp_path / "settings.toml", "[server]\nprot = 80\n")
    assert_one_line(start(tmp_path), "server.prot")


def test_a_bad_key_stops_the_demo_command_too(tmp_path):
    write(tmp_path / "bad.toml", '[server]\nport = "80"\n')
    assert_one_line(start(tmp_path, "--config", "bad.toml", "demo", "--count", "1"), "server.port")


def test_a_port_out_of_range_on_the_command_line_stops_start_up(tmp_path):
    write(tmp_path / "settings.toml", "")
    assert_one_line(start(tmp_path, "--port", "70000"), "port")


def test_a_settings_file_that_is_not_utf8_stops_start_up_with_one_line(tmp_path):
    (tmp_path / "bad.toml").write_bytes("# 服务设置\n[server]\nport = 8084\n".encode("gbk"))
    assert_one_line(start(tmp_path, "--config", "bad.toml"), "bad.toml")


# -------------------------------------------- the environment: DPTASK_<SECTION>_<KEY>

SHA = "a" * 64


def test_every_kind_of_setting_can_come_from_the_environment(tmp_path):
    path = write(tmp_path / "settings.toml", "[server]\nport = 9000\n")
    settings = load_settings(
        path,
        environ={
            "DPTASK_SERVER_PORT": "9100",  # a TOML integer, over the file's
            "DPTASK_SERVER_HOST": "0.0.0.0",  # a string setting: the text as it is
            "DPTASK_TASKS_PROTECTED": '["a", "b"]',
            "DPTASK_METRICS_PUBLIC": "true",
            "DPTASK_DATABASE_TIMEOUT": "2.5",
            "DPTASK_TASKS_BASE_DIR": "elsewhere/tasks",
            "DPTASK_AUTH_TOKENS": f'[{{name = "ci", token_sha256 = "{SHA}", scopes = ["read"]}}]',
            "DPTASK_URL": "http://127.0.0.1:8084",  # the client's, not a setting
            "DPTASK_TOKEN": "secret",
        },
    )
    assert (settings.host, settings.port) == ("0.0.0.0", 9100)
    assert settings.protected == frozenset({"a", "b"})
    assert settings.metrics_public is True
    assert settings.db_timeout == 2.5
    assert settings.base_dir == tmp_path / "elsewhere" / "tasks"
    assert [(t.name, t.sha256, t.scopes) for t in settings.tokens] == [
        ("ci", SHA, frozenset({"read"}))
    ]


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path):
    path = write(tmp_path / "settings.toml", '[server]\nport = 9000\nhost = "127.0.0.2"\n')
    env = {"DPTASK_SERVER_PORT": "9100", "DPTASK_SERVER_HOST": "127.0.0.3"}
    settings = load_settings(path, environ=env, overrides={"server": {"port": 9200, "host": None}})
    assert (settings.host, settings.port) == ("127.0.0.3", 9200)


def test_dptask_database_url_wins_over_database_url(tmp_path):
    path = write(tmp_path / "settings.toml", '[database]\nurl = "postgresql://file/db"\n')
    env = {"DATABASE_URL": "postgresql://plain/db", "DPTASK_DATABASE_URL": "postgresql://ours/db"}
    assert load_settings(path, environ=env).database_url == "postgresql://ours/db"


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("DPTASK_SERVER_PORT", "x", "not a TOML value"),
        ("DPTASK_SERVER_PORT", "true", "server.port must be an integer"),
        ("DPTASK_SERVER_PORT", "70000", "server.port must be 0..65535"),
        ("DPTASK_SERVER_PORTT", "9000", "unknown setting server.portt"),
        ("DPTASK_TASKS_PROTECTED", '["a", 1]', "tasks.protected must be a list of strings"),
        ("DPTASK_METRICS_PUBLIC", "yes", "not a TOML value"),
        ("DPTASK_JOBS_CONCURRENCY", "0", "jobs.concurrency must be at least 1"),
        ("DPTASK_AUTH_TOKENS", '[{name = "x"}]', "auth.tokens[0] must have exactly"),
    ],
)
def test_a_bad_environment_variable_is_refused_in_one_line_naming_it(tmp_path, var, value, says):
    path = write(tmp_path / "settings.toml", "")
    with pytest.raises(SettingsError) as raised:
        load_settings(path, environ={var: value})
    assert str(raised.value).startswith(f"environment: {var}: ")
    assert says in str(raised.value)
    # And the service itself stops with that line.
    env = {**os.environ, var: value}
    result = run_py("--config", str(path), env=env, timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {raised.value}"]


# ---------------------------------------------------------------- dptask config


def config_lines(stdout: str) -> dict[str, tuple[str, str]]:
    """``section.key = value  # origin`` lines as {name: (value, origin)}."""
    lines = [line for line in stdout.splitlines() if not line.startswith("#")]
    return {
        name: tuple(rest.rsplit("  # ", 1))
        for name, rest in (line.split(" = ", 1) for line in lines)
    }


def test_config_prints_each_setting_with_where_it_came_from_and_masks_secrets(tmp_path):
    path = write(
        tmp_path / "settings.toml",
        "[limits]\nmax_task_ids = 50\n"
        f'[[auth.tokens]]\nname = "ops"\ntoken_sha256 = "{SHA}"\nscopes = ["read", "delete"]\n',
    )
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://svc:hunter2@db.example:5432/tasks?sslmode=require",
        "DPTASK_SERVER_HOST": "127.0.0.5",
        "DPTASK_SERVER_PORT": "9000",
    }
    result = run_py("--config", str(path), "config", "--port", "9100", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = config_lines(result.stdout)
    assert shown["server.port"] == ("9100", "flag --port")
    assert shown["server.host"] == ('"127.0.0.5"', "env DPTASK_SERVER_HOST")
    assert shown["limits.max_task_ids"] == ("50", f"file {path}")
    assert shown["limits.purge_threads"] == ("8", "default")
    assert shown["tasks.base_dir"] == (f'"{tmp_path}/data_pipeline/training_data"', "default")
    assert shown["database.url"] == (
        '"postgresql://svc:***@db.example:5432/tasks?sslmode=require"',
        "env DATABASE_URL",
    )
    assert shown["auth.tokens"][0] == (
        '[{name = "ops", token_sha256 = "***", scopes = ["delete", "read"]}]'
    )
    assert "hunter2" not in result.stdout and SHA not in result.stdout
    # Every setting is shown, once.
    from service.settings import DEFAULTS

    assert set(shown) == {f"{s}.{k}" for s, keys in DEFAULTS.items() for k in keys}


def test_config_masks_a_libpq_keyword_password():
    from service.commands.config import mask_url

    assert mask_url("host=db user=svc password=hunter2 dbname=t") == (
        "host=db user=svc password=*** dbname=t"
    )
    assert mask_url("postgresql://svc@db/t?password=hunter2&x=1") == (
        "postgresql://svc@db/t?password=***&x=1"
    )


def test_config_refuses_bad_settings_in_one_line(tmp_path):
    path = write(tmp_path / "settings.toml", "")
    env = {**os.environ, "DPTASK_SERVER_PORT": "nine"}
    result = run_py("--config", str(path), "config", env=env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "DPTASK_SERVER_PORT" in result.stderr
