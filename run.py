"""Run the data-pipeline task service, or one of its operator commands.

python run.py [--config PATH] [--host HOST] [--port PORT]   serve the API
python run.py demo [--count N]                              create sample tasks
python run.py restore ARCHIVE                               put an archived task back
python run.py reconcile [--fix [--force]]                   records vs. disk, and the trash

``--config`` works before or after the command. Every start-up problem
(settings, database, port) ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from service.app import create_app, open_database
from service.db import DatabaseError
from service.demo import create_demo_tasks
from service.logs import configure_logging
from service.reconcile import BaseDirSuspect, reconcile
from service.server import ListenError, serve
from service.settings import Settings, SettingsError, check_exposure, load_settings
from service.trash import TrashUnsafe


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="settings file (default: ./settings.toml)")
    # On the commands, absent options must not override what came before the command.
    on_command = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    on_command.add_argument("--config", help="settings file (default: ./settings.toml)")

    parser = argparse.ArgumentParser(
        description="The data-pipeline task service.", parents=[common]
    )
    parser.add_argument("--host", help="listen address (overrides server.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port)")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", parents=[on_command], help="create sample tasks")
    demo.add_argument("--count", type=int, default=10, help="how many (default 10)")
    restore = commands.add_parser(
        "restore", parents=[on_command], help="put a task archived by plugins/archive back"
    )
    restore.add_argument("archive", type=Path, help="the archive file")
    reconcile_cmd = commands.add_parser(
        "reconcile",
        parents=[on_command],
        help="report where records and directories disagree; exit 1 if they do",
    )
    reconcile_cmd.add_argument(
        "--fix", action="store_true", help="set directory_exists to the truth and sweep the trash"
    )
    reconcile_cmd.add_argument(
        "--force",
        action="store_true",
        help="fix even when base_dir is missing, empty, or on another file system than last time",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = {"server": {"host": args.host, "port": args.port}}
        settings = load_settings(args.config, overrides=overrides)
        configure_logging()
        if args.command == "demo":
            return asyncio.run(_demo(settings, args.count))
        if args.command == "restore":
            return asyncio.run(_restore(settings, args.archive))
        if args.command == "reconcile":
            return asyncio.run(_reconcile(settings, args.fix, args.force))
        check_exposure(settings)
        return _serve(settings)
    except SettingsError as e:
        return _fail(str(e))
    except DatabaseError as e:
        return _fail("database unavailable: " + " ".join(str(e).split()))


def _serve(settings: Settings) -> int:
    try:
        serve(create_app(settings), settings)
    except ListenError as e:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {e.strerror}")
    except TrashUnsafe as e:
        return _fail(str(e))
    except OSError as e:  # at start-up: an embedded database, the audit file
        return _fail(f"cannot start: {e}")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


async def _demo(settings: Settings, count: int) -> int:
    async with open_database(settings) as db:
        task_ids = await create_demo_tasks(settings, db, count)
    print(f"created {len(task_ids)} demo tasks under {settings.base_dir}:")
    for task_id in task_ids:
        print(f"  {task_id}")
    return 0


async def _restore(settings: Settings, archive: Path) -> int:
    from plugins.archive import ArchiveError, restore

    try:
        async with open_database(settings) as db:
            print(await restore(settings, db, archive))
        return 0
    except (ArchiveError, TrashUnsafe) as e:
        return _fail(str(e))


async def _reconcile(settings: Settings, fix: bool, force: bool) -> int:
    try:
        async with open_database(settings) as db:
            found = await reconcile(settings, db, fix=fix, force=force)
    except (TrashUnsafe, BaseDirSuspect) as e:
        return _fail(str(e))
    print("\n".join(found.lines()))
    return 0 if found.consistent else 1


if __name__ == "__main__":
    sys.exit(main())
