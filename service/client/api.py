"""One request at a time to a running service, over its HTTP API only.

The client never reads the settings, the database or ``base_dir``: everything it
knows comes from the service's envelope, so it works from any host that can reach
the URL. Plain ``urllib`` (a CLI waits for each answer anyway; no event loop, and
Ctrl-C is an ordinary ``KeyboardInterrupt``).

Every problem of the request itself becomes one ``ServiceError`` carrying the exit
status the CLI promises: 3 when the service could not be reached, refused
(401/403) or failed (503, any 5xx, an answer that is not the envelope); 2 when it
rejected what was asked (any other 4xx: a bad option, an unknown job), with the
service's own message.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8084"
PREFIX = "/api/v0/data_pipeline"
USAGE, UNAVAILABLE = 2, 3


class ServiceError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Api:
    def __init__(self, url: str, token: str | None, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """``(status, envelope, headers)`` of a 2xx answer; ``ServiceError`` otherwise."""
        url = self.url + PREFIX + path
        if query := {k: v for k, v in (query or {}).items() if v is not None}:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, _envelope(resp.read(), resp.status), dict(resp.headers)
        except urllib.error.HTTPError as e:
            with e:
                raise _refusal(e.code, e.read()) from None
        except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
            reason = getattr(e, "reason", e)
            raise ServiceError(
                f"cannot reach the service at {self.url}: {reason}", UNAVAILABLE
            ) from None


def _envelope(raw: bytes, status: int) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        raise ServiceError(f"the service answered {status} without its JSON envelope", UNAVAILABLE)
    return body


def _refusal(status: int, raw: bytes) -> ServiceError:
    try:
        message = str(_envelope(raw, status).get("message") or "")
    except ServiceError:
        message = ""
    exit_code = USAGE if 400 <= status < 500 and status not in (401, 403) else UNAVAILABLE
    return ServiceError(f"the service answered {status}: {message or 'no message'}", exit_code)
