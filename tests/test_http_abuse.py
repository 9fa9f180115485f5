"""Header and URL abuse gets a 400 (in the envelope where a handler runs), never a 500."""

from __future__ import annotations

import pytest
import requests

API = "/api/v0/data_pipeline"


@pytest.mark.parametrize(
    "path",
    [
        f"{API}/tasks/{'a' * 5000}",
        f"{API}/tasks/a%00b",
        f"{API}/tasks/%FF%FE",
        f"{API}/tasks/..%2F..%2Fetc",
        f"{API}/tasks/%2e%2e",
        f"{API}/tasks?limit=%00",
        f"{API}/tasks?status=%FF",
        f"{API}/tasks?offset=1e3",
        f"{API}/tasks?directory_exists=TRUE",
    ],
)
def test_odd_urls_get_400_in_the_envelope(service_factory, path):
    service = service_factory()
    resp = requests.get(f"{service.url}{path}", timeout=10)
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == 400 and body["success"] is False and body["message"]


def test_oversized_headers_get_400_not_500(service_factory):
    service = service_factory()
    resp = requests.get(f"{service.url}{API}/tasks", headers={"X-Big": "a" * 9000}, timeout=10)
    assert resp.status_code == 400
