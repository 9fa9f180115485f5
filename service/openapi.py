"""The OpenAPI 3.1 description served at ``/api/v0/openapi.json``.

Request parts come from ``service.params``, the definitions the handlers
validate with, so the description and the validation cannot drift; response
schemas describe the envelope of every status. Schemathesis fuzzes the live
service against this document in CI (``tests/test_openapi.py``).
"""

from __future__ import annotations

from typing import Any

from service.params import (
    JOB_ID,
    JOB_KINDS,
    JOB_QUERY,
    JOB_STATUSES,
    JOBS_QUERY,
    LIST_QUERY,
    cleanup_body_schema,
    delete_body_schema,
)
from service.settings import Settings

API = "/api/v0/data_pipeline"
TIMESTAMP = {"type": ["string", "null"], "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$"}
NULLABLE_STRING = {"type": ["string", "null"]}
STRINGS = {"type": "array", "items": {"type": "string"}}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


ERROR = _object(
    {"success": {"const": False}, "code": {"type": "integer"}, "message": {"type": "string"}},
    {
        "data": {"type": "null"},
        "missing_params": STRINGS,
        "invalid_params": STRINGS,
        "unknown_params": STRINGS,
    },
)
TASK = _object(
    {
        "task_id": {"type": "string"},
        "task_name": NULLABLE_STRING,
        "task_type": {"type": "string"},
        "status": {"type": "string"},
        "error_message": NULLABLE_STRING,
        "created_at": TIMESTAMP,
        "started_at": TIMESTAMP,
        "completed_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
        "directory_exists": {"type": "boolean"},
        "created_type": NULLABLE_STRING,
        "by_user": NULLABLE_STRING,
        "created_by": NULLABLE_STRING,
        "db_name": NULLABLE_STRING,
    }
)
STEP = _object(
    {
        "id": {"type": "integer"},
        "execution_id": NULLABLE_STRING,
        "step_name": {"type": "string"},
        "step_status": {"type": "string"},
        "started_at": TIMESTAMP,
        "completed_at": TIMESTAMP,
        "error_message": NULLABLE_STRING,
    }
)
TASK_DETAIL = {
    "allOf": [
        TASK,
        _object(
            {
                "parameters": {},
                "result": {},
                "output_directory": NULLABLE_STRING,
                "steps": {"type": "array", "items": STEP},
            }
        ),
    ]
}
DELETED = _object(
    {
        "success": {"const": True},
        "task_id": {"type": "string"},
        "directory_deleted": {"type": "boolean"},
        "database_records_deleted": {"type": "boolean"},
        "deleted_files_count": {"type": "integer", "minimum": 0},
        "deleted_size": {"type": "string", "pattern": r"^\d+(\.\d)? (B|KB|MB|GB)$"},
        "deleted_bytes": {"type": "integer", "minimum": 0},
        "deleted_at": TIMESTAMP,
        "dry_run": {"type": "boolean"},
    },
    {"duration_ms": {"type": "number"}},
)
FAILED = _object(
    {
        "task_id": {"type": "string"},
        "error": {"type": "string"},
        "error_code": {"type": "string"},
    },
    {
        "success": {"const": False},
        "vetoes": {"type": "array", "items": _object({"code": {}, "message": {}})},
        "duration_ms": {"type": "number"},
    },
)
DELETE_DATA = _object(
    {
        "deleted_at": TIMESTAMP,
        "dry_run": {"type": "boolean"},
        "deleted_tasks": {"type": "array", "items": DELETED},
        "failed_tasks": {"type": "array", "items": FAILED},
        "skipped_tasks": STRINGS,
        "summary": _object(
            {
                name: {"type": "integer", "minimum": 0}
                for name in ("total_requested", "successfully_deleted", "failed", "skipped")
            }
        ),
    }
)
LIST_DATA = _object(
    {
        "tasks": {"type": "array", "items": TASK},
        "total": {"type": "integer", "minimum": 0},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
    }
)
# Lets a stateful fuzzer follow a listed task to its detail.
LIST_LINKS = {
    "GetListedTask": {
        "operationId": "getTask",
        "parameters": {"task_id": "$response.body#/data/tasks/0/task_id"},
    }
}
PLUGINS_DATA = _object({"plugins": {"type": "array"}, "hooks": {"type": "object"}})
COUNT = {"type": "integer", "minimum": 0}
JOB = _object(
    {
        "job_id": {"type": "string"},
        "kind": {"enum": list(JOB_KINDS)},
        "status": {"enum": list(JOB_STATUSES)},
        "actor": NULLABLE_STRING,
        "request_id": NULLABLE_STRING,
        "client": NULLABLE_STRING,
        "created_at": TIMESTAMP,
        "started_at": TIMESTAMP,
        "finished_at": TIMESTAMP,
        "options": {"type": "object"},
        "selection": {"type": ["object", "null"]},
        "cancel_requested": {"type": "boolean"},
        "progress": _object(
            {name: COUNT for name in ("tasks_total", "tasks_done", "files", "bytes")}
        ),
        "result": {"oneOf": [{"type": "null"}, DELETE_DATA]},
    }
)
JOBS_DATA = _object(
    {
        "jobs": {"type": "array", "items": JOB},
        "total": COUNT,
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
    }
)
CLEANUP_DRY_RUN = _object(
    {
        "dry_run": {"const": True},
        "matched": COUNT,
        "sample_task_ids": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
        "more_remaining": {"type": "boolean"},
        "files": {"type": ["integer", "null"], "minimum": 0},
        "bytes": {"type": ["integer", "null"], "minimum": 0},
        "counted": {"type": "boolean"},
        "selection": {"type": "object"},
    }
)
JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/data/job_id"}}
}


def _ok(
    data: dict[str, Any], description: str, links: dict[str, Any] | None = None
) -> dict[str, Any]:
    schema = _object(
        {
            "success": {"type": "boolean"},
            "code": {"const": 200},
            "message": {"type": "string"},
            "data": data,
        }
    )
    ok = {"description": description, "content": {"application/json": {"schema": schema}}}
    return {"200": {**ok, "links": links} if links else ok}


def _accepted() -> dict[str, Any]:
    """202: the job, at the URL in ``Location``."""
    schema = _object(
        {
            "success": {"const": True},
            "code": {"const": 202},
            "message": {"type": "string"},
            "data": JOB,
        }
    )
    return {
        "202": {
            "description": "queued as a background job (body background: true, or"
            " Prefer: respond-async)",
            "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
            "content": {"application/json": {"schema": schema}},
            "links": JOB_LINKS,
        }
    }


def _errors(*statuses: int) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": ERROR}}}
    # A request line or headers over 8 KiB is refused by aiohttp's HTTP parser
    # itself, before any handler or middleware: a plain-text 400.
    parser = {"text/plain": {"schema": {"type": "string"}}}
    words = {
        400: "bad input, named in the message",
        401: "no valid token",
        403: "the token lacks the scope",
        404: "not found",
        413: "body over 1 MiB",
        500: "unexpected fault",
        503: "database unavailable",
    }
    responses = {str(s): {"description": words[s], **error} for s in statuses}
    if "400" in responses:
        responses["400"] = {
            "description": words[400] + "; plain text for a request line or headers over 8 KiB",
            "content": {**error["content"], **parser},
        }
    return responses


def openapi(settings: Settings) -> dict[str, Any]:
    auth = bool(settings.tokens)
    common = (401, 403, 500, 503) if auth else (500, 503)
    query = [
        {"name": name, "in": "query", "required": False, "schema": param.schema()}
        for name, param in LIST_QUERY.items()
    ]
    jobs_query = [
        {"name": name, "in": "query", "required": False, "schema": param.schema()}
        for name, param in JOBS_QUERY.items()
    ]
    job_query = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": param.schema(),
            "description": "answer once the job has finished, or after this many seconds",
        }
        for name, param in JOB_QUERY.items()
    ]
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{JOB_ID.pattern}$"},
    }
    prefer = {
        "name": "Prefer",
        "in": "header",
        "required": False,
        # Only respond-async acts; other preferences are ignored (RFC 7240).
        "schema": {"type": "string"},
    }
    task_id = {
        "name": "task_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": settings.id_pattern.pattern},
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Data-pipeline task service",
            "version": "0",
            "description": "Lists a data pipeline's tasks and deletes their directories safely.",
        },
        "paths": {
            f"{API}/tasks": {
                "get": {
                    "operationId": "listTasks",
                    "parameters": query,
                    "responses": {
                        **_ok(LIST_DATA, "tasks, newest first", links=LIST_LINKS),
                        **_errors(400, *common),
                    },
                },
                "delete": {
                    "operationId": "deleteTasks",
                    "parameters": [prefer],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": delete_body_schema(settings.max_task_ids)
                            }
                        },
                    },
                    "responses": {
                        **_ok(DELETE_DATA, "per-task results; success false when all failed"),
                        **_accepted(),
                        **_errors(400, 413, *common),
                    },
                },
            },
            f"{API}/tasks/cleanup": {
                "post": {
                    "operationId": "cleanupTasks",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": cleanup_body_schema(settings.max_task_ids)
                            }
                        },
                    },
                    "responses": {
                        **_ok(CLEANUP_DRY_RUN, "dry run: what a real run would select"),
                        **_accepted(),
                        **_errors(400, 413, *common),
                    },
                }
            },
            f"{API}/jobs": {
                "get": {
                    "operationId": "listJobs",
                    "parameters": jobs_query,
                    "responses": {**_ok(JOBS_DATA, "jobs, newest first"), **_errors(400, *common)},
                }
            },
            f"{API}/jobs/{{job_id}}": {
                "get": {
                    "operationId": "getJob",
                    "parameters": [job_id, *job_query],
                    "responses": {**_ok(JOB, "one job"), **_errors(400, 404, *common)},
                }
            },
            f"{API}/jobs/{{job_id}}/cancel": {
                "post": {
                    "operationId": "cancelJob",
                    "parameters": [job_id],
                    "responses": {
                        **_ok(JOB, "cancel requested; the job as it is now"),
                        **_errors(404, *common),
                    },
                }
            },
            f"{API}/tasks/{{task_id}}": {
                "get": {
                    "operationId": "getTask",
                    "parameters": [task_id],
                    "responses": {**_ok(TASK_DETAIL, "one task"), **_errors(400, 404, *common)},
                }
            },
            f"{API}/plugins": {
                "get": {
                    "operationId": "listPlugins",
                    "responses": {**_ok(PLUGINS_DATA, "plugins"), **_errors(*common)},
                }
            },
        },
    }
    if auth:
        doc["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
        doc["security"] = [{"bearer": []}]
    return doc
