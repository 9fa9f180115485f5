"""Benchmark: the task list and the clean-up dry run over 100,000 task records
(issue 12, scenario 6).

Run from the repository root (it prints results; it is not a test)::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test python bench/bench_list.py
    python bench/bench_list.py --records 20000 --requests 50

It creates a throwaway database on the server at ``DATABASE_URL`` (dropped at
the end), fills it with ``--records`` task records shaped like a busy
pipeline's year (creation times over 365 days, a few without one; mostly
completed or failed; four steps each, a running step on the tasks in
progress; a third of the directories gone), vacuumed as autovacuum leaves
it, starts the real service (``run.py`` on a
free port, which makes its schema and indexes on the existing tables as it
would on a pipeline's database), and times ``--requests`` sequential
requests of each kind after a few warm-up requests:

- ``GET …/tasks?limit=100`` (the first page), at offset 90,000, and with a
  filter (``status=completed&directory_exists=true``);
- ``POST …/tasks/cleanup`` as a dry run (``older_than_days=30, keep_last=10``).

Each response is checked: the list's ``total`` against a ``count(*)`` of
the same filter, and its page size.
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
from pathlib import Path
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


def start(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    (workdir / "data_pipeline" / "training_data").mkdir(parents=True)
    (workdir / "settings.toml").write_text("")
    port = free_port()
    log = (workdir / "service.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "--config", str(workdir / "settings.toml"),
         "--port", str(port)],
        cwd=workdir, env={**os.environ, "DATABASE_URL": url}, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "service.log").read_text()[-2000:])
        try:
            requests.get(f"{base}{URL}?limit=1", timeout=1)
            return proc, base
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the service did not start")


def timed(session: requests.Session, n: int, call: object) -> tuple[float, float]:
    for _ in range(5):
        call()  # type: ignore[operator]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * len(times)) - 1)]
    return statistics.median(times), p99


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200)
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
    proc = None
    try:
        fill(url, args.records)
        proc, base = start(url, workdir)
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

        def page(query: str, total: int, size: int) -> object:
            def call() -> None:
                r = session.get(f"{base}{URL}?{query}", timeout=30)
                data = r.json()["data"]
                assert r.status_code == 200, r.text
                assert data["total"] == total, (data["total"], total)
                assert len(data["tasks"]) == size, len(data["tasks"])

            return call

        def dry_run() -> None:
            r = session.post(
                f"{base}{URL}/cleanup",
                json={"older_than_days": 30, "keep_last": 10, "dry_run": True},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert r.json()["data"]["matched"] > 0

        rows = [
            ("first page (limit=100)", page("limit=100", total_all, 100)),
            (f"offset {offset:,}", page(f"limit=100&offset={offset}", total_all, 100)),
            (
                "status=completed&directory_exists=true",
                page("limit=100&status=completed&directory_exists=true", total_filtered, 100),
            ),
            ("clean-up dry run", dry_run),
        ]
        print(f"\n{args.records:,} records, {args.requests} requests each, {os.cpu_count()} cores")
        print(f"| {'request':<40} | {'p50 ms':>7} | {'p99 ms':>7} |")
        print(f"|{'-' * 42}|{'-' * 9}|{'-' * 9}|")
        for label, call in rows:
            p50, p99 = timed(session, args.requests, call)
            print(f"| {label:<40} | {p50:7.1f} | {p99:7.1f} |")
    finally:
        if proc is not None:
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
