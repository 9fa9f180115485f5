"""``dptask`` (= ``python run.py``): the operator commands, apart from the request path.

dptask [--config PATH] [serve] [--host HOST] [--port PORT]  serve the API
dptask demo [--count N]                                     create sample tasks
dptask restore ARCHIVE                                      put an archived task back
dptask reconcile [--fix [--force]]                          records vs. disk, and the trash
dptask config                                               the effective settings, with origins
dptask tasks | delete | cleanup | jobs                      the HTTP client (``client.py``)

The operator commands read the settings: one module each, with
``run(settings, ...) -> exit status``; ``--config`` works before or after the
command, and every start-up problem (settings, database, port) ends in one line
on stderr and a non-zero exit. A command that sets ``handler`` (the client's)
runs with its parsed arguments alone, reading no settings.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
from pathlib import Path

from service.commands import client, config, demo, reconcile, restore, serve
from service.commands.fail import fail
from service.db import DatabaseError
from service.logs import configure_logging
from service.settings import SettingsError, check_exposure, load_settings


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
    # `dptask serve` (the default with no command) and `dptask config`.
    listen = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    listen.add_argument("--host", help="listen address (overrides server.host)")
    listen.add_argument("--port", type=int, help="listen port (overrides server.port)")
    commands.add_parser("serve", parents=[on_command, listen], help="serve the API (default)")
    config.add_parser(
        commands, argparse.ArgumentParser(add_help=False, parents=[on_command, listen])
    )
    demo_cmd = commands.add_parser("demo", parents=[on_command], help="create sample tasks")
    demo_cmd.add_argument("--count", type=int, default=10, help="how many (default 10)")
    restore_cmd = commands.add_parser(
        "restore", parents=[on_command], help="put a task archived by plugins/archive back"
    )
    restore_cmd.add_argument("archive", type=Path, help="the archive file")
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
    client.add_commands(commands)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if handler := getattr(args, "handler", None):
        return int(handler(args))
    try:
        overrides = {"server": {"host": args.host, "port": args.port}}
        if args.command == "config":
            return config.run(args.config, overrides)
        settings = load_settings(args.config, overrides=overrides)
        configure_logging(level=settings.log_level)
        if args.command == "demo":
            return asyncio.run(demo.run(settings, args.count))
        if args.command == "restore":
            return asyncio.run(restore.run(settings, args.archive))
        if args.command == "reconcile":
            return asyncio.run(reconcile.run(settings, args.fix, args.force))
        check_exposure(settings)
        return serve.run(settings)
    except SettingsError as e:
        return fail(str(e))
    except DatabaseError as e:
        return fail("database unavailable: " + " ".join(str(e).split()))
    except subprocess.CalledProcessError as e:  # the embedded server's initdb or pg_ctl
        said = " ".join(str(e.stderr or "").split()) or str(e)
        return fail(f"cannot start the embedded database: {said}")
