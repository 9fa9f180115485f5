"""``dptask config``: the effective settings, and where each one came from.

One line per setting, ``section.key = value  # origin``, the value in TOML
syntax (so a line can be pasted into settings.toml) and paths resolved as the
service uses them. The origin is ``default``, ``file PATH``, ``env VAR`` or
``flag --X``: precedence is flags > environment > file > defaults. Secrets are
masked: the password in the database URL and the token hashes. The settings
are validated first, as ``serve`` does: a bad one is the usual single line.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from service.settings import DEFAULTS, _resolve, layered, load_settings

MASK = "***"
PATH_KEYS = {("tasks", "base_dir"), ("audit", "path"), ("database", "embedded_data_dir")}


def add_parser(commands: Any, on_command: argparse.ArgumentParser) -> None:
    commands.add_parser(
        "config",
        parents=[on_command],
        help="print the effective settings and where each came from (secrets masked)",
    )


def run(path: str | None, overrides: dict[str, dict[str, Any]]) -> int:
    load_settings(path, overrides=overrides)  # SettingsError: the caller's one line
    layers = layered(path, overrides=overrides)
    print(f"# settings file: {layers.file.resolve()}", end="")
    print("" if layers.file.exists() else " (absent: defaults)")
    for section, keys in DEFAULTS.items():
        for key in keys:
            value = layers.values[section][key]
            if (section, key) in PATH_KEYS:
                value = str(_resolve(layers.root, value))
            shown = _toml(mask(section, key, value))
            print(f"{section}.{key} = {shown}  # {layers.origins[section, key]}")
    for name, table in layers.plugins_raw.items():
        if isinstance(table, dict):
            print(f"plugins.{name} = {_toml(table)}  # file {layers.file}")
    return 0


def mask(section: str, key: str, value: Any) -> Any:
    if (section, key) == ("database", "url"):
        return mask_url(value)
    if (section, key) == ("auth", "tokens"):
        return [{"name": t.name, "token_sha256": MASK, "scopes": sorted(t.scopes)} for t in value]
    return value


def mask_url(url: str) -> str:
    """The password of a URL (``user:PASSWORD@``, ``?password=``) or of a
    libpq keyword string (``password=...``) replaced by ``***``."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", rf"\g<1>{MASK}", url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    query = re.sub(r"(^|&)(password=)[^&]*", rf"\1\2{MASK}", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _toml(value: Any) -> str:
    """A TOML value: JSON's strings, numbers and lists are TOML's too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
