"""Scenario 3 alone, repeated, optionally under py-spy: where a small task's time goes.

    python bench/profile_tasks.py                  # tasks/s and CPU per task, batch by batch
    python bench/profile_tasks.py --profile        # the same under py-spy (pip install py-spy)
    python bench/profile_tasks.py --original       # each batch beside the original approach
    python bench/profile_tasks.py --job            # each batch as a background job
    python bench/profile_tasks.py --load           # list requests during each batch (scenario 4)

It starts the real service as ``bench_service.py`` does, deletes one warm-up
batch, then ``--batches`` batches of ``--tasks`` one-file tasks in one request
each, and prints each batch's tasks per second and the service's CPU per task.
With ``--profile``, py-spy samples the service (only while a thread holds the
interpreter lock: the CPU that bounds a small task) and the script prints the
share of the samples spent inside each of the pipeline's main steps. The
walks themselves run in the purge helper (``service/purger.py``), another
process that py-spy does not sample: "the walk" is the service's share of
handing them over. With ``--original``, each batch is followed by the
original approach on as many tasks (``bench_service.original``), and the
ratio of the two rates is printed.
With ``--job``, each batch is a background job, timed to the answer of
``GET …/jobs/{id}?wait=60``, which comes as it ends. With ``--load``, a list
request every 20 ms runs during each batch, as in scenario 4, and its p50 and
p99 are printed beside those of the same requests on the idle service
(measured first).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_service as bench

# The steps a profile is summed by: a sample counts for each step its stack passes through.
STEPS = {
    "the walk (Trash.purge)": "Trash.purge",
    "audit line and its log line (AuditLog.write_many)": "AuditLog.write_many",
    "audit write in its thread (AuditLog.write_lines)": "AuditLog.write_lines",
    "path and mount checks (directory_problem)": "directory_problem",
    "the rename (Trash.detach)": "Trash.detach",
    "the group's database work (Database.tasks_transaction)": "Database.tasks_transaction",
    "worker threads, all (Thread.run)": "Thread.run",
}


def shares(raw: Path) -> dict[str, float]:
    """Per step, the share of py-spy's samples (``--format raw``) inside it."""
    total, inside = 0, collections.Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        names = {frame.split(" (")[0] for frame in stack.split(";")}
        for step, function in STEPS.items():
            if function in names:
                inside[step] += n
    return {step: 100 * inside[step] / max(total, 1) for step in STEPS}


def build(url: str, base: Path, prefix: str, tasks: int) -> dict[str, bench.Tree]:
    """``tasks`` one-file tasks, records and trees."""
    ids = [f"{prefix}{i}" for i in range(tasks)]
    bench.insert_records(url, ids)
    trees = bench.build_many([(base / i, 1, 1, n, False) for n, i in enumerate(ids)])
    return dict(zip(ids, trees, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="one-file tasks per batch")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="sample the service with py-spy")
    parser.add_argument(
        "--original", action="store_true", help="after each batch, the original approach"
    )
    parser.add_argument("--job", action="store_true", help="each batch as a background job")
    parser.add_argument("--load", action="store_true", help="list requests during each batch")
    args = parser.parse_args()
    beside = Path(sys.executable).with_name("py-spy")  # a venv's, when it is not on PATH
    spy_exe = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if args.profile and not spy_exe:
        parser.error("--profile needs py-spy: pip install py-spy")

    with tempfile.TemporaryDirectory(prefix="dptask-profile-") as tmp:
        work = Path(tmp)
        with bench.throwaway_database(work) as url:
            base = work / "base"
            base.mkdir()
            service = bench.Service(work, base, url).start()
            try:
                fixtures, originals = [], []
                for b in range(args.batches + 1):
                    fixtures.append(build(url, base, f"p{b}_", args.tasks))
                    if args.original and b:
                        originals.append(build(url, base, f"o{b}_", args.tasks))
                bench.check(service.delete(list(fixtures[0])), fixtures[0], "warm-up")
                spy = None
                raw, spy_log = work / "profile.txt", work / "py-spy.log"
                if args.profile:
                    assert service.proc and spy_exe
                    with spy_log.open("wb") as errors:  # the child keeps its own copy
                        spy = subprocess.Popen(
                            [spy_exe, "record", "-p", str(service.proc.pid), "-f", "raw",
                             "-o", str(raw), "-r", "1000", "--gil", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=errors,
                        )  # fmt: skip
                    time.sleep(1)
                rates, ratios = [], []
                if args.load:
                    with bench.Poller(service.url) as poll:
                        time.sleep(3)
                    idle = poll.latencies
                    print(f"idle list p50 {bench.pct(idle, 50) * 1000:.1f} ms,"
                          f" p99 {bench.pct(idle, 99) * 1000:.1f} ms")  # fmt: skip
                for b, trees in enumerate(fixtures[1:]):
                    cpu = service.cpu_seconds()
                    with contextlib.ExitStack() as during:
                        poll = bench.Poller(service.url) if args.load else None
                        if poll is not None:
                            during.enter_context(poll)
                        took, data = bench.sync_then(
                            service.delete, list(trees), background=args.job
                        )
                    bench.check(data, trees, "batch")
                    cpu_ms = (service.cpu_seconds() - cpu) / len(trees) * 1000
                    rates.append(len(trees) / took)
                    line = f"{rates[-1]:7.0f} tasks/s   service CPU {cpu_ms:.2f} ms a task"
                    if poll is not None:
                        line += f"   list p50 {bench.pct(poll.latencies, 50) * 1000:.1f}"
                        line += f" p99 {bench.pct(poll.latencies, 99) * 1000:.1f} ms"
                    if originals:
                        old = list(originals[b].values())
                        took, _ = bench.sync_then(bench.original, old, url)
                        ratios.append(rates[-1] * took / len(old))
                        line += f"   original {len(old) / took:4.0f} tasks/s: {ratios[-1]:.2f} x"
                    print(line)
                print(f"median {statistics.median(rates):.0f} tasks/s", end="")
                print(f", {statistics.median(ratios):.2f} x the original" if ratios else "")
                if spy:
                    spy.send_signal(2)  # SIGINT: py-spy writes its file and exits
                    try:
                        spy.wait(60)
                    finally:
                        spy.kill()
                    if not raw.exists():
                        sys.exit(f"py-spy wrote no profile: {spy_log.read_text()}")
                    for step, share in shares(raw).items():
                        print(f"{share:5.1f} %  {step}")
            finally:
                service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
