"""Settings: one TOML file, validated strictly, so that a typo stops start-up.

Every key and its default is listed in ``DEFAULTS``; the README documents
each one. Relative paths are relative to the settings file's folder, so the
service behaves the same whatever the working directory is.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        "host": "127.0.0.1",
        "port": 8084,
        "header_timeout": 10.0,
        "body_timeout": 30.0,
        "max_connections": 512,
        "shutdown_grace": 30.0,
    },
    "tasks": {
        "base_dir": "data_pipeline/training_data",
        "id_pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        "protected": ["vector_bak"],
    },
    "database": {
        "url": "",
        "timeout": 5.0,
        "lock_timeout": 2.0,
        "schema_wait": 60.0,
        "embedded_data_dir": "var/pgdata",
    },
    "audit": {"path": "var/audit.log"},
    "limits": {
        "max_task_ids": 1000,
        "purge_threads": 8,
        "walk_descriptors": 256,
        "commit_group": 100,
        "tasks_in_flight": 200,
    },
    "plugins": {"enabled": [], "entry_points": True},
    "auth": {"tokens": [], "allow_anonymous": False},
    "jobs": {"concurrency": 2, "lease_seconds": 30.0, "retention_days": 30.0},
    "cleanup": {"schedules": []},
    "logging": {"level": "info"},
    "metrics": {"public": False},
}
SCOPES = ("read", "delete", "metrics")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
}


class SettingsError(Exception):
    """A settings problem, said in one line that names the key."""


@dataclass(frozen=True)
class Token:
    name: str
    sha256: str  # hex digest of the token; the token itself is never stored
    scopes: frozenset[str]


@dataclass(frozen=True)
class Settings:
    root: Path  # the settings file's folder; relative paths start here
    host: str
    port: int
    base_dir: Path
    id_pattern: re.Pattern[str]
    protected: frozenset[str]
    database_url: str
    audit_path: Path
    max_task_ids: int
    plugins_enabled: tuple[str, ...]
    plugins_entry_points: bool
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: tuple[Token, ...] = ()
    allow_anonymous: bool = False
    # Seconds: a slow client's headers and body are cut off after these.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 512
    # Seconds: every database call; a row or DDL lock wait; start-up DDL retries.
    db_timeout: float = 5.0
    db_lock_timeout: float = 2.0
    schema_wait: float = 60.0
    # The process-wide purge pool, and the descriptors all walks together may hold.
    purge_threads: int = 8
    walk_descriptors: int = 256
    # A batch's tasks committed together in one transaction, and deleted at once.
    commit_group: int = 100
    tasks_in_flight: int = 200
    # Seconds a running deletion may take to finish after SIGTERM.
    shutdown_grace: float = 30.0
    embedded_data_dir: Path = Path("var/pgdata")
    # Background jobs: run at once per instance; a lease not renewed for this
    # long lets another instance take the job over; finished jobs are kept.
    job_concurrency: int = 2
    job_lease_seconds: float = 30.0
    job_retention_days: float = 30.0
    # [cleanup] schedules, validated (service.cleanup owns their shape).
    cleanup_schedules: tuple[Any, ...] = ()
    log_level: str = "info"
    metrics_public: bool = False

    @property
    def var_dir(self) -> Path:
        return self.root / "var"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read ``path`` (default ``./settings.toml``; a missing default file means
    all defaults), then the environment, then ``overrides`` (command-line
    flags): flags > environment > file > defaults (see ``layered``)."""
    layers = layered(path, overrides=overrides, environ=environ)
    try:
        return _build(layers.root, layers.values, layers.plugins_raw)
    except SettingsError as e:
        # A range check on a value from the environment: name the variable.
        for (section, key), origin in layers.origins.items():
            if origin.startswith("env ") and f"{section}.{key} " in f"{e} ":
                raise SettingsError(f"environment: {origin[4:]}: {_without_prefix(e)}") from None
        raise


@dataclass
class Layers:
    """Every setting's value before ``_build`` and where it came from."""

    file: Path
    root: Path
    values: dict[str, dict[str, Any]]
    origins: dict[tuple[str, str], str]  # "default", "file PATH", "env VAR", "flag --X"
    plugins_raw: dict[str, Any]


def layered(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Layers:
    """Defaults, the file, the environment, the flags: each validated as it is
    applied, so that an error names the file's key or the variable."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        file = Path.cwd() / "settings.toml"
        raw = _read_toml(file) if file.exists() else {}
    else:
        file = Path(path)
        raw = _read_toml(file)
    values = _validate(raw)
    origins = {(section, key): "default" for section, keys in DEFAULTS.items() for key in keys}
    for section, table in raw.items():
        for key, value in table.items():
            if not (section == "plugins" and isinstance(value, dict)):
                origins[section, key] = f"file {file}"
    for var, section, key, value in _environment(env):
        values[section][key] = value
        origins[section, key] = f"env {var}"
    for section, keys in (overrides or {}).items():
        for key, value in keys.items():
            if value is not None:
                values[section][key] = value
                origins[section, key] = f"flag --{key.replace('_', '-')}"
    return Layers(file, file.resolve().parent, values, origins, raw.get("plugins", {}))


ENV_PREFIX = "DPTASK_"


def env_var(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _environment(env: Mapping[str, str]) -> list[tuple[str, str, str, Any]]:
    """``DPTASK_<SECTION>_<KEY>`` variables as (variable, section, key, value).

    A string setting takes the variable's text as it is (``DPTASK_SERVER_HOST=
    0.0.0.0``); any other is a TOML value (``DPTASK_SERVER_PORT=9000``,
    ``DPTASK_TASKS_PROTECTED='["a", "b"]'``, ``DPTASK_METRICS_PUBLIC=true``,
    tables inline), parsed by ``tomllib`` and checked by ``_validate``: one
    syntax and one set of rules for the file and the environment. Variables
    outside the sections (``DPTASK_URL``, the client's) are not settings.
    ``DATABASE_URL`` is honoured too; ``DPTASK_DATABASE_URL`` wins over it.
    """
    found: list[tuple[str, str, str, Any]] = []
    if env.get("DATABASE_URL"):
        found.append(("DATABASE_URL", "database", "url", env["DATABASE_URL"]))
    if env.get("DPTASK_DISABLE_PLUGIN_AUTOLOAD"):  # as pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD
        found.append(("DPTASK_DISABLE_PLUGIN_AUTOLOAD", "plugins", "entry_points", False))
    for var in sorted(env):
        name = var.upper()
        section = next((s for s in DEFAULTS if name.startswith(env_var(s, ""))), None)
        if section is None or name == "DPTASK_DISABLE_PLUGIN_AUTOLOAD":
            continue
        key = name[len(env_var(section, "")) :].lower()
        if key not in DEFAULTS[section]:
            raise SettingsError(f"environment: {var}: unknown setting {section}.{key}")
        text = env[var]
        if isinstance(DEFAULTS[section][key], str):
            value: Any = text
        else:
            try:
                value = tomllib.loads(f"value = {text}")["value"]
            except tomllib.TOMLDecodeError:
                raise SettingsError(
                    f"environment: {var}: not a TOML value: {text!r}"
                    ' (a number, true/false, ["a list"], or an {inline = "table"})'
                ) from None
        try:
            found.append((var, section, key, _validate({section: {key: value}})[section][key]))
        except SettingsError as e:
            raise SettingsError(f"environment: {var}: {_without_prefix(e)}") from None
    return found


def _without_prefix(e: SettingsError) -> str:
    return str(e).removeprefix("settings: ")


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise SettingsError(f"{file}: cannot read settings file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{file}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise SettingsError(f"{file}: not valid TOML: not UTF-8 at byte {e.start}") from None


def _validate(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = {section: dict(keys) for section, keys in DEFAULTS.items()}
    for section, table in raw.items():
        if section not in DEFAULTS:
            raise SettingsError(f"settings: unknown section [{section}]")
        if not isinstance(table, dict):
            raise SettingsError(f"settings: [{section}] must be a table")
        for key, value in table.items():
            if section == "plugins" and isinstance(value, dict):
                continue  # [plugins.<name>]: each plugin validates its own table
            if key not in DEFAULTS[section]:
                raise SettingsError(f"settings: unknown key {section}.{key}")
            if (section, key) == ("auth", "tokens"):
                values[section][key] = _tokens(value)
                continue
            if (section, key) == ("cleanup", "schedules"):
                if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                    raise SettingsError("settings: cleanup.schedules must be a list of tables")
                values[section][key] = value  # each table: service.cleanup validates it
                continue
            _check_type(f"{section}.{key}", value, type(DEFAULTS[section][key]))
            values[section][key] = value
    return values


def _tokens(value: Any) -> tuple[Token, ...]:
    if not isinstance(value, list):
        raise SettingsError("settings: auth.tokens must be a list of tables")
    tokens = []
    for i, table in enumerate(value):
        where = f"auth.tokens[{i}]"
        if not isinstance(table, dict) or set(table) != {"name", "token_sha256", "scopes"}:
            raise SettingsError(f"settings: {where} must have exactly name, token_sha256, scopes")
        _check_type(f"{where}.name", table["name"], str)
        _check_type(f"{where}.scopes", table["scopes"], list)
        digest = table["token_sha256"]
        if not isinstance(digest, str) or not _SHA256_HEX.match(digest):
            raise SettingsError(f"settings: {where}.token_sha256 must be 64 lowercase hex digits")
        if bad := set(table["scopes"]) - set(SCOPES):
            raise SettingsError(f"settings: {where}.scopes: unknown scope {min(bad)!r}")
        tokens.append(Token(table["name"], digest, frozenset(table["scopes"])))
    return tuple(tokens)


def check_exposure(settings: Settings) -> None:
    """Refuse to serve anonymously on a non-loopback address unless allowed."""
    if settings.tokens or settings.allow_anonymous or _is_loopback(settings.host):
        return
    raise SettingsError(
        f"settings: refusing to serve on {settings.host} with no [auth] tokens;"
        " configure auth.tokens, or set auth.allow_anonymous = true"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plugin_options(name: str, table: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Validate a plugin's ``[plugins.<name>]`` table against its ``OPTIONS`` defaults."""
    options = dict(defaults)
    for key, value in table.items():
        if key not in defaults:
            raise SettingsError(f"settings: unknown key plugins.{name}.{key}")
        _check_type(f"plugins.{name}.{key}", value, type(defaults[key]))
        options[key] = float(value) if isinstance(defaults[key], float) else value
    return options


def _check_type(name: str, value: Any, expected: type) -> None:
    # bool is a subclass of int: a port of `true` must not pass as 1.
    allowed = (int, float) if expected is float else expected
    ok = isinstance(value, allowed) and not (expected is not bool and isinstance(value, bool))
    if expected is list and ok:
        ok = all(isinstance(item, str) for item in value)
        if not ok:
            raise SettingsError(f"settings: {name} must be a list of strings")
    if not ok:
        raise SettingsError(
            f"settings: {name} must be {_TYPE_NAMES[expected]}, got {type(value).__name__}"
        )


def _build(root: Path, v: dict[str, dict[str, Any]], plugins_raw: dict[str, Any]) -> Settings:
    port = v["server"]["port"]
    if not 0 <= port <= 65535:
        raise SettingsError(f"settings: server.port must be 0..65535, got {port}")
    try:
        id_pattern = re.compile(v["tasks"]["id_pattern"])
    except re.error as e:
        raise SettingsError(f"settings: tasks.id_pattern is not a valid regex: {e}") from None
    max_ids = v["limits"]["max_task_ids"]
    if max_ids < 1:
        raise SettingsError(f"settings: limits.max_task_ids must be at least 1, got {max_ids}")
    _at_least(v, "limits", "purge_threads", 1)
    _at_least(v, "limits", "walk_descriptors", 16)
    _at_least(v, "limits", "commit_group", 1)
    _at_least(v, "limits", "tasks_in_flight", 1)
    _at_least(v, "server", "max_connections", 1)
    _at_least(v, "jobs", "concurrency", 1)
    if v["logging"]["level"] not in LOG_LEVELS:
        raise SettingsError(f"settings: logging.level must be one of {', '.join(LOG_LEVELS)}")
    for section, key in (
        ("server", "header_timeout"),
        ("server", "body_timeout"),
        ("database", "timeout"),
        ("database", "lock_timeout"),
        ("database", "schema_wait"),
        ("server", "shutdown_grace"),
        ("jobs", "lease_seconds"),
        ("jobs", "retention_days"),
    ):
        _at_least(v, section, key, 0.001, "positive")
    return Settings(
        root=root,
        host=v["server"]["host"],
        port=port,
        base_dir=_resolve(root, v["tasks"]["base_dir"]),
        id_pattern=id_pattern,
        protected=frozenset(v["tasks"]["protected"]),
        database_url=v["database"]["url"],
        audit_path=_resolve(root, v["audit"]["path"]),
        max_task_ids=max_ids,
        plugins_enabled=tuple(v["plugins"]["enabled"]),
        plugins_entry_points=v["plugins"]["entry_points"],
        plugin_options={k: t for k, t in plugins_raw.items() if isinstance(t, dict)},
        tokens=v["auth"]["tokens"],
        allow_anonymous=v["auth"]["allow_anonymous"],
        header_timeout=float(v["server"]["header_timeout"]),
        body_timeout=float(v["server"]["body_timeout"]),
        max_connections=v["server"]["max_connections"],
        db_timeout=float(v["database"]["timeout"]),
        db_lock_timeout=float(v["database"]["lock_timeout"]),
        schema_wait=float(v["database"]["schema_wait"]),
        purge_threads=v["limits"]["purge_threads"],
        walk_descriptors=v["limits"]["walk_descriptors"],
        commit_group=v["limits"]["commit_group"],
        tasks_in_flight=v["limits"]["tasks_in_flight"],
        shutdown_grace=float(v["server"]["shutdown_grace"]),
        embedded_data_dir=_resolve(root, v["database"]["embedded_data_dir"]),
        job_concurrency=v["jobs"]["concurrency"],
        job_lease_seconds=float(v["jobs"]["lease_seconds"]),
        job_retention_days=float(v["jobs"]["retention_days"]),
        cleanup_schedules=_schedules(v["cleanup"]["schedules"], max_ids),
        log_level=v["logging"]["level"],
        metrics_public=v["metrics"]["public"],
    )


def _at_least(
    v: dict[str, dict[str, Any]], section: str, key: str, minimum: float, what: str = ""
) -> None:
    value = v[section][key]
    if value < minimum:
        bound = what or f"at least {minimum}"
        raise SettingsError(f"settings: {section}.{key} must be {bound}, got {value}")


def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _schedules(raw: list[Any], max_task_ids: int) -> tuple[Any, ...]:
    """[cleanup] schedules, validated by ``service.cleanup`` (imported here:
    it needs the request validation, which imports the pipeline, which imports this)."""
    from service.cleanup import parse_schedules

    try:
        return parse_schedules(raw, max_task_ids)
    except ValueError as e:
        raise SettingsError(f"settings: {e}") from None
