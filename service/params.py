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


# The list endpoint's query: validation here, and the OpenAPI description from it.
LIST_QUERY: dict[str, IntParam | ChoiceParam] = {
    "limit": IntParam(50, 1, 100),
    "offset": IntParam(0, 0, 2**31 - 1),
    "status": ChoiceParam(TASK_STATUSES),
    "directory_exists": ChoiceParam(("true", "false")),
}


def list_query(query: MultiMapping[str]) -> dict[str, Any]:
    """The list query's values by name (``None`` for an absent filter)."""
    values = {}
    for name, param in LIST_QUERY.items():
        if len(query.getall(name, ())) > 1:  # which one would count is a guess: refuse
            raise BadRequest(f"重复的查询参数: {name}", invalid_params=[name])
        raw = query.get(name)
        values[name] = param.default if raw is None else param.parse(name, raw)
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


async def delete_body(request: web.Request, max_task_ids: int) -> tuple[list[str], DeleteOptions]:
    try:
        body: Any = parse_json(await request.text())
    # Not JSON, not in its charset (or an unknown charset), empty, or nested too deep.
    except (ValueError, LookupError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise BadRequest("请求体必须是JSON对象")
    if not all(map(_encodable, body)):
        raise BadRequest("参数名必须是有效的 Unicode 文本")
    if missing := [name for name in REQUIRED if name not in body]:
        raise MissingParams(missing)
    task_ids = body["task_ids"]
    if not isinstance(task_ids, list) or not task_ids or not all(map(_encodable, task_ids)):
        raise BadRequest(TASK_IDS_MESSAGE, invalid_params=["task_ids"])
    if body["confirm"] is not True:
        raise BadRequest("confirm 必须为 true 才能执行删除", invalid_params=["confirm"])
    if unknown := sorted(set(body) - set(REQUIRED) - set(OPTIONS)):
        # A typo in a destructive call must not be silently ignored.
        raise BadRequest(f"未知参数: {', '.join(unknown)}", unknown_params=unknown)
    for name in OPTIONS:
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"{name} 必须是布尔值 true 或 false", invalid_params=[name])
    if len(task_ids) > max_task_ids:
        raise BadRequest(
            f"task_ids 最多 {max_task_ids} 个（limits.max_task_ids），收到 {len(task_ids)} 个",
            invalid_params=["task_ids"],
        )
    return task_ids, DeleteOptions(**{name: body.get(name, d) for name, d in OPTIONS.items()})
