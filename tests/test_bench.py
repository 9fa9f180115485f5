"""The service benchmark's small form runs end to end, so that it cannot rot.

``bench/bench_service.py --small`` builds tiny fixtures, starts the real service
on the test server's PostgreSQL (a throwaway database of its own) and checks
every count it reports against its fixtures: it exits non-zero on a mismatch.
No timing is asserted; only that the counts held and the table was written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

FIGURES = [
    "1. service / rm -rf",
    "2. service / original",
    "one-file tasks: background job",
    "4. list p99 during 3",
    "one request, with list requests",
    "5. peak RSS during 1",
    "6. clean-up dry run p99",
]


def test_small_benchmark_checks_its_counts_and_writes_the_table(
    server_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_service.py"), "--small",
         "--out", str(out), "--dir", str(tmp_path)],
        env={**os.environ, "DATABASE_URL": server_url}, cwd=ROOT,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = out.read_text()
    assert "cores" in text and "file system" in text and "load average" in text
    for figure in FIGURES:
        assert figure in text, figure
        assert figure in result.stdout, figure
    # The temporary folder is gone: fixtures and service data removed at the end.
    assert not list(tmp_path.glob("dptask-bench-*"))


@pytest.mark.parametrize(
    "how", [[], ["--job"], ["--load"]], ids=["request", "job", "with list requests"]
)
def test_profile_script_deletes_its_batches_and_reports_each(
    server_url: str, how: list[str]
) -> None:
    """``bench/profile_tasks.py`` (without py-spy, beside the original approach;
    in one request or as a job): every batch deleted, counts checked."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "profile_tasks.py"), "--tasks", "20",
         "--batches", "2", "--original", *how],
        env={**os.environ, "DATABASE_URL": server_url}, cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert sum("tasks/s   service CPU" in line and " x" in line for line in lines) == 2
    assert lines[-1].startswith("median ") and lines[-1].endswith("x the original")
    if "--load" in how:  # the idle figures first, then each batch's
        assert sum(line.startswith("idle list p50 ") for line in lines) == 1
        assert sum("   list p50 " in line for line in lines) == 2


def test_profile_shares_count_each_sample_in_every_step_it_passes_through(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from profile_tasks import shares
    finally:
        sys.path.remove(str(ROOT / "bench"))
    raw = tmp_path / "raw.txt"
    raw.write_text(  # py-spy's raw format: frames from the root, then the sample count
        "_worker (concurrent/futures/thread.py:83);Thread.run (threading.py:982);"
        "Trash.purge (service/trash.py:210);walk_at (service/fs.py:300) 3\n"
        "run (asyncio/runners.py:190);AuditLog.write_many (service/audit.py:294) 1\n"
    )
    got = shares(raw)
    assert got["the walk (Trash.purge)"] == 75.0
    assert got["worker threads, all (Thread.run)"] == 75.0
    assert got["audit line and its log line (AuditLog.write_many)"] == 25.0
    assert got["the rename (Trash.detach)"] == 0.0
