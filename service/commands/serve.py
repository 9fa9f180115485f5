"""``dptask serve``: serve the API until stopped.

The port is tried before anything starts: the app's start-up (an embedded
PostgreSQL takes seconds) comes before the server listens, so a busy port
would otherwise be reported only after it. The test binds every address the
host resolves to, as the server will, with ``SO_REUSEADDR`` as the server
sets it (a previous run's TIME_WAIT connections are not "busy"), and lets
go; a port taken in between still ends in the same one line.
"""

from __future__ import annotations

import socket

from service.app import create_app
from service.commands.fail import fail
from service.server import ListenError, serve
from service.settings import Settings
from service.trash import TrashUnsafe


def run(settings: Settings) -> int:
    try:
        check_port(settings.host, settings.port)
        serve(create_app(settings), settings)
    except ListenError as e:
        return fail(f"cannot listen on {settings.host}:{settings.port}: {e.strerror}")
    except TrashUnsafe as e:
        return fail(str(e))
    except OSError as e:  # at start-up: an embedded database, the audit file
        return fail(f"cannot start: {e}")
    return 0


def check_port(host: str, port: int) -> None:
    """Raise ``ListenError`` if ``host:port`` cannot be bound now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(e.errno, e.strerror) from e
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as e:
                raise ListenError(e.errno, e.strerror or str(e)) from e
