"""Benchmark: the task list and the clean-up dry run over 100,000 task records
(issue 12, scenario 6).

Run from the repository root (it prints results; it is not a test)::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python bench/bench_list.py
    python bench/bench_list.py --records 20000 --requests 50
    git archive <rev> | tar -x -C /tmp/base && python bench/bench_list.py --baseline /tmp/base

It creates a throwaway database on the server at ``DATABASE_URL`` (dropped at
the end), fills it with ``--records`` task records shaped like a busy
pipeline's year (creation times over 365 days, a few without one; mostly
completed or failed; four steps each, a running step on the tasks in
progress; a third of the directories recorded as gone), vacuumed as
autovacuum leaves it. Most tasks have no directory on disk; ``--dirs`` gives
that many of them, spread over the year, a small one (5 files). It starts
the real service (``run.py`` on a free port, which makes its schema and
indexes on the existing tables as it would on a pipeline's database) and
times ``--requests`` sequential requests of each kind after a few warm-up
requests:

- ``GET …/tasks?limit=100`` (the first page), at offset 90,000, and with a
  filter (``status=completed&directory_exists=true``);
- ``POST …/tasks/cleanup`` as a dry run: the issue's (``older_than_days=1``,
  every default) and one with ``older_than_days=30, keep_last=10``.

With ``--baseline DIR`` (another checkout of the service) it also starts
that version, on the same database and ``base_dir``, and alternates the two
request by request, so both see the same load; it prints each one's p50/p99
and the ratio of the medians. The issue's targets are printed, never
asserted.

Each response is checked: the list's ``total`` against a ``count(*)`` of
the same filter, and its page size; a dry run's ``matched`` > 0 and its
files counted; with a baseline, both versions' answers must be equal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import requests

ROOT = Path(__file__).resolve().parent.parent
URL = "/api/v0/data_pipeline/tasks"

FILL = """
    INSERT INTO data_pipeline_tasks
        (task_id, task_name, task_type, status, parameters, result, created_at, started_at,
         completed_at, created_type, by_user, output_directory, db_name, directory_exists,
         updated_at)
    SELECT 'task_' || to_char(t, 'YYYYMMDD_HH24MISS') || '_' || lpad(i::text, 6, '0'),
           'task ' || i,
           CASE WHEN i %% 7 = 0 THEN 'complete_workflow' ELSE 'data_workflow' END,
           CASE WHEN i %% 50 = 0 THEN 'failed' WHEN i %% 97 = 0 THEN 'in_progress'
                WHEN i %% 89 = 0 THEN 'pending' WHEN i %% 83 = 0 THEN 'partial_completed'
                ELSE 'completed' END,
           jsonb_build_object('db_connection', 'postgresql://u@h/db', 'business_context',
                              repeat('x', 200)),
           '{"ok": true}'::jsonb,
           CASE WHEN i %% 1000 = 1 THEN NULL ELSE t END,
           t + interval '1 second', t + interval '10 minutes',
           'api', 'user' || (i %% 20),
           '/data/data_pipeline/training_data/task_' || i,
           'db_' || (i %% 12),
           CASE WHEN i %% 10 = 0 THEN NULL ELSE i %% 3 <> 0 END,
           t + interval '10 minutes'
    FROM generate_series(1, %(n)s) AS i,
         LATERAL (SELECT timestamp '2025-12-01' - interval '365 days'
                         + (i::float / %(n)s) * interval '365 days'
                         + (i %% 17) * interval '1 second' AS t) AS ts
    """
STEPS = """
    INSERT INTO data_pipeline_task_steps (task_id, execution_id, step_name, step_status)
    SELECT task_id, 'exec_' || task_id, s,
           CASE WHEN status = 'in_progress' AND s = 'training_load' THEN 'running'
                ELSE 'completed' END
    FROM data_pipeline_tasks,
         unnest(ARRAY['ddl_generation', 'qa_generation', 'sql_validation', 'training_load']) s
    """


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(url: str, n: int) -> None:
    """The pipeline's tables as the pipeline made them, with ``n`` records."""
    sys.path.insert(0, str(ROOT))
    from service import schema

    t0 = time.perf_counter()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(schema.CREATE_TASKS)
        cur.execute(schema.CREATE_STEPS)
        cur.execute(FILL, {"n": n})
        cur.execute(STEPS)
    conn.close()
    # What autovacuum has long done to a year's records: statistics, and the
    # visibility map that lets an index-only scan skip the table.
    conn = psycopg2.connect(url)
    conn.autocommit = True
    conn.cursor().execute("VACUUM ANALYZE")
    conn.close()
    print(f"filled {n:,} records in {time.perf_counter() - t0:.1f}s")


def make_dirs(url: str, base: Path, n: int) -> None:
    """A small directory (5 files) for ``n`` tasks spread evenly over the year."""
    if n <= 0:
        return
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT task_id FROM (SELECT task_id, row_number() OVER (ORDER BY task_id) AS r,"
            " count(*) OVER () AS total FROM data_pipeline_tasks) t"
            " WHERE r %% greatest(total / %s, 1) = 0 LIMIT %s",
            (n, n),
        )
        ids = [row[0] for row in cur.fetchall()]
    conn.close()
    for task_id in ids:
        (base / task_id / "vector_bak").mkdir(parents=True)
        for i in range(4):
            (base / task_id / f"table_{i}.ddl").write_bytes(b"x" * 100)
        (base / task_id / "vector_bak" / "embedding.csv").write_bytes(b"y" * 1000)
    print(f"made {len(ids):,} task directories")


def start(root: Path, url: str, workdir: Path, base: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``run.py`` of the checkout at ``root``, on a free port."""
    workdir.mkdir()
    (workdir / "settings.toml").write_text(f'[tasks]\nbase_dir = "{base}"\n')
    port = free_port()
    log = (workdir / "service.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(root / "run.py"), "--config", str(workdir / "settings.toml"),
         "--port", str(port)],
        cwd=root, env={**os.environ, "DATABASE_URL": url}, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "service.log").read_text()[-2000:])
        try:
            requests.get(f"{base_url}{URL}?limit=1", timeout=1)
            return proc, base_url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not start")


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    p99 = times[min(len(times) - 1, round(0.99 * len(times)) - 1)]
    return statistics.median(times), p99


def timed(n: int, calls: list[Callable[[], Any]]) -> list[list[float]]:
    """Each call's latencies (ms), the calls alternated (in turn first), so
    that every version sees the same load; after a few warm-up calls each.
    Their answers must be equal."""
    for _ in range(5):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for i in range(n):
        answers = {}
        for j in range(len(calls)) if i % 2 == 0 else reversed(range(len(calls))):
            t0 = time.perf_counter()
            answers[j] = calls[j]()
            times[j].append((time.perf_counter() - t0) * 1000)
        assert all(a == answers[0] for a in answers.values()), answers
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--dirs", type=int, default=0, help="tasks given a directory on disk")
    ap.add_argument("--baseline", type=Path, help="another checkout to compare, alternating")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = ap.parse_args()
    server = os.environ.get("DATABASE_URL")
    if not server:
        print("DATABASE_URL must name a PostgreSQL server", file=sys.stderr)
        return 2
    name = f"bench_list_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(server)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    url = with_database(server, name)
    workdir = Path(tempfile.mkdtemp(prefix="bench_list_"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fill(url, args.records)
        base = workdir / "data_pipeline" / "training_data"
        base.mkdir(parents=True)
        make_dirs(url, base, args.dirs)
        versions = [("this", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
        urls = []
        for label, root in versions:
            proc, base_url = start(root.resolve(), url, workdir / label, base)
            procs.append(proc)
            urls.append(base_url)
        session = requests.Session()
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM data_pipeline_tasks")
            total_all = cur.fetchone()[0]
            cur.execute(
                "SELECT count(*) FROM data_pipeline_tasks"
                " WHERE status = 'completed' AND COALESCE(directory_exists, true)"
            )
            total_filtered = cur.fetchone()[0]
        conn.close()
        offset = min(90_000, max(args.records - 100, 0))

        def page(base_url: str, query: str, total: int, size: int) -> Callable[[], Any]:
            def call() -> Any:
                r = session.get(f"{base_url}{URL}?{query}", timeout=30)
                assert r.status_code == 200, r.text
                data = r.json()["data"]
                assert data["total"] == total, (data["total"], total)
                assert len(data["tasks"]) == size, len(data["tasks"])
                return data

            return call

        def dry_run(base_url: str, body: dict[str, Any]) -> Callable[[], Any]:
            def call() -> Any:
                r = session.post(f"{base_url}{URL}/cleanup", json=body, timeout=30)
                assert r.status_code == 200, r.text
                data = r.json()["data"]
                assert data["matched"] > 0 and data["counted"] is True, data
                return data

            return call

        # (label, target p99 ms, one call per version)
        rows: list[tuple[str, float | None, list[Callable[[], Any]]]] = [
            ("first page (limit=100)", 25, [page(u, "limit=100", total_all, 100) for u in urls]),
            (
                f"offset {offset:,}",
                25,
                [page(u, f"limit=100&offset={offset}", total_all, 100) for u in urls],
            ),
            (
                "status=completed&directory_exists=true",
                None,
                [
                    page(u, "limit=100&status=completed&directory_exists=true", total_filtered, 100)
                    for u in urls
                ],
            ),
            ("dry run older_than_days=1", 250, [dry_run(u, {"older_than_days": 1}) for u in urls]),
            (
                "dry run older_than_days=30, keep_last=10",
                None,
                [dry_run(u, {"older_than_days": 30, "keep_last": 10}) for u in urls],
            ),
        ]
        print(
            f"\n{args.records:,} records, {args.dirs:,} task directories, {args.requests} requests"
            f" each, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        columns = [f"{'request':<40}", "target p99"]
        columns += [f"{v + ' ' + p:>14}" for v, _ in versions for p in ("p50", "p99")]
        columns += ["this/baseline p50"] if args.baseline else []
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
        for label, target, calls in rows:
            times = timed(args.requests, calls)
            figures = [percentiles(t) for t in times]
            cells = [f"{label:<40}", f"{f'< {target:g} ms' if target else '':>10}"]
            cells += [f"{ms:14.1f}" for p50, p99 in figures for ms in (p50, p99)]
            cells += [f"{figures[0][0] / figures[1][0]:17.2f}"] if args.baseline else []
            print("| " + " | ".join(cells) + " |")
        print(f"load at the end {os.getloadavg()[0]:.1f}")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
        if args.keep:
            print(f"kept database {name}")
        else:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
