"""A veto example: refuse to delete tasks younger than ``min_age_hours``, or
whose status is in ``keep_statuses``, with ``RETENTION_GUARD``.

``force`` does not override it unless ``allow_force = true``: ``force`` is
for running tasks, and a retention policy is not a running task. A directory
without a record has no age or status to judge, so the guard lets it pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from service.plugin_api import Settings, SettingsError, TaskContext, Veto, hookimpl

RETENTION_GUARD = "RETENTION_GUARD"
OPTIONS = {"min_age_hours": 24.0, "keep_statuses": [], "allow_force": False}


def create_plugin(options: dict[str, Any], settings: Settings) -> RetentionGuard:
    if options["min_age_hours"] < 0:
        raise SettingsError("settings: plugins.retention_guard.min_age_hours must be >= 0")
    return RetentionGuard(**options)


class RetentionGuard:
    def __init__(self, min_age_hours: float, keep_statuses: list[str], allow_force: bool) -> None:
        self.min_age = timedelta(hours=min_age_hours)
        self.keep_statuses = frozenset(keep_statuses)
        self.allow_force = allow_force

    @hookimpl
    def dptask_check_delete(self, task: TaskContext) -> list[Veto]:
        record = task.record
        if record is None or (task.options.force and self.allow_force):
            return []
        vetoes = []
        created = record["created_at"]
        if created is not None and datetime.now() - created < self.min_age:
            hours = self.min_age.total_seconds() / 3600
            vetoes.append(
                Veto(
                    RETENTION_GUARD,
                    f"任务创建于 {created:%Y-%m-%d %H:%M:%S}，未满保留期 {hours:g} 小时，不可删除",
                )
            )
        if record["status"] in self.keep_statuses:
            vetoes.append(
                Veto(RETENTION_GUARD, f"状态为 {record['status']} 的任务按保留策略不可删除")
            )
        return vetoes
