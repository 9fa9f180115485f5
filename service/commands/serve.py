"""``python run.py``: serve the API until stopped."""

from __future__ import annotations

from service.app import create_app
from service.commands.fail import fail
from service.server import ListenError, serve
from service.settings import Settings
from service.trash import TrashUnsafe


def run(settings: Settings) -> int:
    try:
        serve(create_app(settings), settings)
    except ListenError as e:
        return fail(f"cannot listen on {settings.host}:{settings.port}: {e.strerror}")
    except TrashUnsafe as e:
        return fail(str(e))
    except OSError as e:  # at start-up: an embedded database, the audit file
        return fail(f"cannot start: {e}")
    return 0
