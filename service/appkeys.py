"""Typed application keys (aiohttp ``web.AppKey``)."""

from __future__ import annotations

import pluggy
from aiohttp import web

from service.db import Database
from service.jobs import JobQueue
from service.pipeline import Deleter
from service.settings import Settings
from service.trash import Trash

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
PLUGINS = web.AppKey("plugins", pluggy.PluginManager)
DELETER = web.AppKey("deleter", Deleter)
TRASH = web.AppKey("trash", Trash)
JOBS = web.AppKey("jobs", JobQueue)
REQUEST_ID = web.RequestKey("request_id", str)
ACTOR = web.RequestKey("actor", str)  # the token's name, or "anonymous"
