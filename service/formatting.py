"""How values look in responses: sizes as the contract shows them, and
timestamps as naive ISO strings (``docs/design.md``, "The data model")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

_UNITS = ("B", "KB", "MB", "GB")


def format_size(n: int) -> str:
    """``2621440`` -> ``"2.5 MB"``: 1024 steps, one decimal, GB at most."""
    if n == 0:
        return "0 B"
    size, unit = float(n), 0
    while size >= 1024 and unit < len(_UNITS) - 1:
        size /= 1024
        unit += 1
    return f"{size:.1f} {_UNITS[unit]}"


def iso(value: datetime | None) -> str | None:
    """Naive local time, always with microseconds: ``2025-07-02T22:57:21.317708``."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone().replace(tzinfo=None)
    return value.isoformat(timespec="microseconds")


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A database row with its timestamps as naive ISO strings."""
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
