"""Optional bearer tokens (``[auth] tokens``). With none configured the API is
open (and the service serves only on loopback unless ``allow_anonymous``).
With any configured, every endpoint needs one: 401 without a valid token, 403
without the scope the method needs. Tokens are stored only as SHA-256 hashes
and compared in constant time against every configured hash.

The probes (``/healthz``, ``/readyz``) need no token: a load balancer or an
orchestrator has none, and they say nothing about tasks. ``/metrics`` needs
the ``metrics`` scope (a scraper's token need not read or delete tasks),
unless ``[metrics] public = true``."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from aiohttp import web

from service import appkeys
from service.errors import Forbidden, Unauthorized

# What each method needs: reading, or deleting.
_SCOPE = {"GET": "read", "HEAD": "read", "OPTIONS": "read", "DELETE": "delete"}
ANONYMOUS = "anonymous"
PROBES = frozenset({"/healthz", "/readyz"})
METRICS = "/metrics"


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    settings = request.app[appkeys.SETTINGS]
    tokens = settings.tokens
    public = request.path in PROBES or (request.path == METRICS and settings.metrics_public)
    if not tokens or public:
        request[appkeys.ACTOR] = ANONYMOUS
        return await handler(request)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    digest = hashlib.sha256(given.strip().encode()).hexdigest()
    token = None
    for candidate in tokens:  # no early exit: the time taken says nothing
        if hmac.compare_digest(candidate.sha256, digest) and scheme.lower() == "bearer":
            token = candidate
    if token is None:
        raise Unauthorized()
    scope = "metrics" if request.path == METRICS else _SCOPE.get(request.method, "delete")
    if scope not in token.scopes:
        raise Forbidden(f"访问令牌 {token.name} 缺少权限: {scope}")
    request[appkeys.ACTOR] = token.name
    return await handler(request)
