"""Request validation: the list query and the DELETE body (``docs/design.md``,
"Choices the contract leaves open").

Each bad input raises ``BadRequest`` (or ``MissingParams``) with a message
that names the parameter; nothing is read by truthiness. Nothing ambiguous is
guessed at either: a key twice in a JSON object (at any depth: which one would
win is the parser's whim, and ``"confirm": false, "confirm": true`` must not
mean true), ``NaN``/``Infinity`` (not JSON), and a query parameter given twice
are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from service.errors import BadRequest, MissingParams
from service.pipeline import DeleteOptions
from service.schema import TASK_STATUSES

REQUIRED = ("task_ids", "confirm")
# Optional booleans and their defaults: the contract's two, then this service's.
OPTIONS = {
    "delete_database_records": False,
    "continue_on_error": True,
    "force": False,
    "dry_run": False,
    "allow_missing": False,
}
TASK_IDS_MESSAGE = "task_ids必须是非空的任务ID列表"


def _encodable(value: Any) -> bool:
    """A string that can be written out: JSON allows lone surrogates ("\\ud800"), UTF-8 not."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


_INT = re.compile(r"-?[0-9]+")  # ASCII digits only; used with fullmatch
# More significant digits than this is out of any bound (and int() of it needs no limit).
_MAX_DIGITS = 18


@dataclass(frozen=True)
class IntParam:
    default: int
    minimum: int
    maximum: int | None = None

    def parse(self, name: str, raw: str) -> int:
        if not _INT.fullmatch(raw):
            raise BadRequest(f"{name} 必须是整数", invalid_params=[name])
        if len(raw.lstrip("-").lstrip("0")) > _MAX_DIGITS:
            # A huge number is still an integer: out of range, and told the range.
            value = -(10**_MAX_DIGITS) if raw.startswith("-") else 10**_MAX_DIGITS
        else:
            value = int(raw)
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            bounds = (
                f"在 {self.minimum} 到 {self.maximum} 之间"
                if self.maximum is not None
                else f"不小于 {self.minimum}"
            )
            raise BadRequest(f"{name} 必须{bounds}", invalid_params=[name])
        return value

    def schema(self) -> dict[str, Any]:
        bounds = {"maximum": self.maximum} if self.maximum is not None else {}
        return {"type": "integer", "default": self.default, "minimum": self.minimum, **bounds}


@dataclass(frozen=True)
class ChoiceParam:
    choices: tuple[str, ...]
    default: None = None

    def parse(self, name: str, raw: str) -> str:
        if raw not in self.choices:
            message = f"{name} 必须是以下之一: {', '.join(self.choices)}"
            raise BadRequest(message, invalid_params=[name])
        return raw

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.choices)}


# A naive local timestamp, as the API writes them; a date alone means its midnight.
# A real day (leap years included), then an optional time.
_DATE = (
    r"(?:[1-9][0-9]{3}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    r"|(?:[1-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[13579][26])00)-02-29)"
)
_TIMESTAMP = rf"^{_DATE}([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{{1,6}})?)?)?$"
TIMESTAMP_MESSAGE = "必须是不带时区的本地时间，如 2025-07-01T00:00:00"


def parse_timestamp(name: str, raw: Any) -> datetime:
    if not isinstance(raw, str) or not re.fullmatch(_TIMESTAMP, raw):
        raise BadRequest(f"{name} {TIMESTAMP_MESSAGE}", invalid_params=[name])
    try:
        return datetime.fromisoformat(raw)
    except ValueError:  # 2025-02-30: the right shape, no such day
        raise BadRequest(f"{name} {TIMESTAMP_MESSAGE}", invalid_params=[name]) from None


@dataclass(frozen=True)
class TimestampParam:
    default: None = None

    def parse(self, name: str, raw: str) -> datetime:
        return parse_timestamp(name, raw)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": _TIMESTAMP}


# A JSON number, not negative (the schema's "number"); used with fullmatch.
_NUMBER = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class SecondsParam:
    """A duration in seconds: ``5``, ``0.25``."""

    default: float
    maximum: float

    def parse(self, name: str, raw: str) -> float:
        if len(raw) > 64 or not _NUMBER.fullmatch(raw) or float(raw) > self.maximum:
            message = f"{name} 必须是 0 到 {self.maximum:g} 之间的秒数（如 5 或 0.25）"
            raise BadRequest(message, invalid_params=[name])
        return float(raw)

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "default": self.default, "minimum": 0, "maximum": self.maximum}


Param = IntParam | ChoiceParam | TimestampParam | SecondsParam

# The list endpoint's query: validation here, and the OpenAPI description from it.
LIST_QUERY: dict[str, Param] = {
    "limit": IntParam(50, 1, 100),
    "offset": IntParam(0, 0, 2**31 - 1),
    "status": ChoiceParam(TASK_STATUSES),
    "directory_exists": ChoiceParam(("true", "false")),
    "created_before": TimestampParam(),
    "created_after": TimestampParam(),
}
JOB_STATUSES = ("queued", "running", "succeeded", "partial", "failed", "cancelled")
JOB_KINDS = ("delete", "cleanup")
# Whatever the queue's ids look like (a UUID, hex, a number), never more than this.
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
JOBS_QUERY: dict[str, Param] = {
    "limit": IntParam(50, 1, 100),
    "offset": IntParam(0, 0, 2**31 - 1),
    "status": ChoiceParam(JOB_STATUSES),
    "kind": ChoiceParam(JOB_KINDS),
}
# One job: ``wait`` answers once the job has finished, or after that many seconds.
JOB_QUERY: dict[str, Param] = {"wait": SecondsParam(0.0, 60.0)}


def query_values(query: MultiMapping[str], spec: dict[str, Param]) -> dict[str, Any]:
    """A query's values by name (``None`` for an absent filter). An unknown
    parameter is refused: a typo in a filter must not widen the selection."""
    if unknown := sorted(set(query) - set(spec)):
        raise BadRequest(f"未知参数: {', '.join(unknown)}", unknown_params=unknown)
    values = {}
    for name, param in spec.items():
        if len(query.getall(name, ())) > 1:  # which one would count is a guess: refuse
            raise BadRequest(f"重复的查询参数: {name}", invalid_params=[name])
        raw = query.get(name)
        values[name] = param.default if raw is None else param.parse(name, raw)
    return values


def list_query(query: MultiMapping[str]) -> dict[str, Any]:
    """The list query's values by name (``None`` for an absent filter)."""
    values = query_values(query, LIST_QUERY)
    if values["directory_exists"] is not None:
        values["directory_exists"] = values["directory_exists"] == "true"
    return values


def delete_body_schema(max_task_ids: int) -> dict[str, Any]:
    """The DELETE body as JSON Schema, from the same names ``delete_body`` checks."""
    return {
        "type": "object",
        "required": list(REQUIRED),
        "additionalProperties": False,
        "properties": {
            "task_ids": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "maxItems": max_task_ids,
            },
            "confirm": {"type": "boolean", "const": True},
            **{name: {"type": "boolean", "default": d} for name, d in OPTIONS.items()},
            "background": {"type": "boolean", "default": False},
        },
    }


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise BadRequest(f"重复的参数: {name}", invalid_params=[name])
        obj[name] = value
    return obj


def _constant(name: str) -> Any:
    raise BadRequest("请求体不是有效的JSON: 不允许 NaN/Infinity")


def parse_json(text: str) -> Any:
    """Strict JSON: ``BadRequest`` for a duplicate key (at any depth) or NaN/Infinity;
    ``ValueError`` or ``RecursionError`` for text that is not JSON."""
    return json.loads(text, object_pairs_hook=_object, parse_constant=_constant)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body: Any = parse_json(await request.text())
    # Not JSON, not in its charset (or an unknown charset), empty, or nested too deep.
    except (ValueError, LookupError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise BadRequest("请求体必须是JSON对象")
    if not all(map(_encodable, body)):
        raise BadRequest("参数名必须是有效的 Unicode 文本")
    return body


def _refuse_unknown(body: dict[str, Any], known: set[str]) -> None:
    if unknown := sorted(set(body) - known):
        # A typo in a destructive call must not be silently ignored.
        raise BadRequest(f"未知参数: {', '.join(unknown)}", unknown_params=unknown)


def _booleans(body: dict[str, Any], names: Any) -> None:
    for name in names:
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"{name} 必须是布尔值 true 或 false", invalid_params=[name])


async def delete_body(
    request: web.Request, max_task_ids: int
) -> tuple[list[str], DeleteOptions, bool]:
    """The task ids, the options, and whether the body asks for a background job."""
    body = await _json_object(request)
    if missing := [name for name in REQUIRED if name not in body]:
        raise MissingParams(missing)
    task_ids = body["task_ids"]
    if not isinstance(task_ids, list) or not task_ids or not all(map(_encodable, task_ids)):
        raise BadRequest(TASK_IDS_MESSAGE, invalid_params=["task_ids"])
    if body["confirm"] is not True:
        raise BadRequest("confirm 必须为 true 才能执行删除", invalid_params=["confirm"])
    _refuse_unknown(body, {*REQUIRED, *OPTIONS, "background"})
    _booleans(body, [*OPTIONS, "background"])
    if len(task_ids) > max_task_ids:
        raise BadRequest(
            f"task_ids 最多 {max_task_ids} 个（limits.max_task_ids），收到 {len(task_ids)} 个",
            invalid_params=["task_ids"],
        )
    options = DeleteOptions(**{name: body.get(name, d) for name, d in OPTIONS.items()})
    return task_ids, options, body.get("background", False)


# ---------------------------------------------------------------- the clean-up selection

# What selects the tasks (the clean-up body and a [cleanup] schedule share it).
# ``in_progress`` can never be selected: a running task's directory is in use.
CLEANABLE_STATUSES = tuple(s for s in TASK_STATUSES if s != "in_progress")
SELECTION_DEFAULTS: dict[str, Any] = {
    "older_than_days": None,
    "created_before": None,
    "statuses": ["completed", "failed"],
    "db_name": None,
    "task_id_prefix": None,
    "directory_exists": True,
    "keep_last": 0,
    "max_tasks": None,  # limits.max_task_ids
}
# The clean-up's own options; force is not one of them (not accepted here).
CLEANUP_OPTIONS = {"delete_database_records": False, "dry_run": True, "confirm": False}
_MAX_DAYS = 100_000


def selection(body: dict[str, Any], max_task_ids: int) -> dict[str, Any]:
    """The selection's values from ``body`` (its other keys are the caller's),
    JSON-safe: it is stored with the job. ``BadRequest`` names the parameter."""
    _booleans(body, ["directory_exists"])
    if null := sorted(name for name in SELECTION_DEFAULTS if name in body and body[name] is None):
        raise BadRequest(f"{null[0]} 不能为 null（不需要时省略）", invalid_params=null[:1])
    sel = {name: body.get(name, default) for name, default in SELECTION_DEFAULTS.items()}
    if (sel["older_than_days"] is None) == (sel["created_before"] is None):
        raise BadRequest(
            "older_than_days 与 created_before 必须且只能提供一个",
            invalid_params=["older_than_days", "created_before"],
        )
    days = sel["older_than_days"]
    if days is not None and (
        isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= _MAX_DAYS
    ):
        raise BadRequest(
            f"older_than_days 必须是大于 0、不超过 {_MAX_DAYS} 的数字",
            invalid_params=["older_than_days"],
        )
    if sel["created_before"] is not None:
        sel["created_before"] = parse_timestamp("created_before", sel["created_before"]).isoformat()
    statuses = sel["statuses"]
    if not isinstance(statuses, list) or not statuses or not all(map(_encodable, statuses)):
        raise BadRequest("statuses 必须是非空的状态列表", invalid_params=["statuses"])
    if "in_progress" in statuses:
        raise BadRequest(
            "statuses 不能包含 in_progress: 运行中的任务不能被清理", invalid_params=["statuses"]
        )
    if bad := sorted(set(statuses) - set(CLEANABLE_STATUSES)):
        message = f"statuses 只能包含: {', '.join(CLEANABLE_STATUSES)}（收到 {', '.join(bad)}）"
        raise BadRequest(message, invalid_params=["statuses"])
    sel["statuses"] = sorted(set(statuses))
    for name in ("db_name", "task_id_prefix"):
        value = sel[name]
        if value is not None and (
            not _encodable(value) or not value or len(value) > 255 or "\x00" in value
        ):
            raise BadRequest(f"{name} 必须是 1 到 255 个字符的字符串", invalid_params=[name])
    sel["keep_last"] = _whole("keep_last", sel["keep_last"], 0, 2**31 - 1)
    max_tasks = max_task_ids if sel["max_tasks"] is None else sel["max_tasks"]
    sel["max_tasks"] = _whole("max_tasks", max_tasks, 1, max_task_ids)
    return sel


def _whole(name: str, value: Any, minimum: int, maximum: int) -> int:
    if isinstance(value, float) and value.is_integer():  # JSON's 2.0 is the integer 2
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} 必须是整数", invalid_params=[name])
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} 必须在 {minimum} 到 {maximum} 之间", invalid_params=[name])
    return value


async def cleanup_body(
    request: web.Request, max_task_ids: int
) -> tuple[dict[str, Any], DeleteOptions]:
    """The clean-up request: its selection, and the options of the deletion it runs."""
    body = await _json_object(request)
    _refuse_unknown(body, {*SELECTION_DEFAULTS, *CLEANUP_OPTIONS})
    _booleans(body, CLEANUP_OPTIONS)
    sel = selection(body, max_task_ids)
    dry_run = body.get("dry_run", True)
    if not dry_run and body.get("confirm") is not True:
        raise BadRequest("dry_run 为 false 时 confirm 必须为 true", invalid_params=["confirm"])
    options = DeleteOptions(
        delete_database_records=body.get("delete_database_records", False), dry_run=dry_run
    )
    return sel, options


def cleanup_body_schema(max_task_ids: int) -> dict[str, Any]:
    """The clean-up body as JSON Schema, from the names ``cleanup_body`` checks."""
    optional_string = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00]*$"}
    return {
        "type": "object",
        "additionalProperties": False,
        "oneOf": [{"required": ["older_than_days"]}, {"required": ["created_before"]}],
        # A real run must be confirmed.
        "if": {"required": ["dry_run"], "properties": {"dry_run": {"const": False}}},
        "then": {"required": ["confirm"], "properties": {"confirm": {"const": True}}},
        "properties": {
            "older_than_days": {"type": "number", "exclusiveMinimum": 0, "maximum": _MAX_DAYS},
            "created_before": {"type": "string", "pattern": _TIMESTAMP},
            "statuses": {
                "type": "array",
                "items": {"enum": list(CLEANABLE_STATUSES)},
                "minItems": 1,
                "default": SELECTION_DEFAULTS["statuses"],
            },
            "db_name": optional_string,
            "task_id_prefix": optional_string,
            "directory_exists": {"type": "boolean", "default": True},
            "keep_last": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0},
            "max_tasks": {"type": "integer", "minimum": 1, "maximum": max_task_ids},
            **{name: {"type": "boolean", "default": d} for name, d in CLEANUP_OPTIONS.items()},
        },
    }
