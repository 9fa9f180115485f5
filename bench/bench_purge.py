"""Benchmark: ``rm -rf`` against ``service.fs.walk_tree`` on identical trees.

Run from the repository root (it prints results; it is not a test)::

    python bench/bench_purge.py                   # 100,000 files, 2 rounds (~4 min here)
    python bench/bench_purge.py --files 20000 --rounds 5 --dir /mnt/other-fs
    python bench/bench_purge.py --shapes folders --threads 1,8,32   # the disk's floor

Every tree is built first (same names, same sizes, real data blocks), in a
temporary directory under --dir (default: the repository, so the same file
system), then synced. Each round removes one copy of a shape with ``rm -rf``
and an identical copy with ``purge``, alternating which goes first. Before
each removal the bench runs ``sync``, so that neither pays for the other's
write-back; caches are NOT dropped unless --drop-caches is given (root only:
``sync; echo 3 > /proc/sys/vm/drop_caches`` before each removal, both start
cold).

``purge`` runs in a fresh child process, timed around the call alone, as the
service would call it, with a pool of ``--threads`` workers (several: one
tree each per round, all in the rotation, to find where more threads stop
helping); its counts are checked against the tree that was
built, and the child reports its peak RSS growth (getrusage). ``rm -rf`` is
timed around the subprocess (its start-up costs about a millisecond). The
memory table adds trees of N/10 files and the peak of Python allocations
(tracemalloc, in separate, untimed runs): flat memory means 10x the files
does not take 10x the memory.

Shapes:
  task   a task directory: task_config.json, data_pipeline.log (1 MiB),
         *.ddl, *_detail.md, qs_*_pair.json at the top (half the files),
         vector_bak/ (two CSVs of 2 and 3 MiB and 10 % of the files), four
         file_bak_<ts>/ backups (40 %); small files of 0.2-4 KiB
  folders  N/100 files of 0.2-4 KiB in each of 100 folders (the issue's task:
         100 x 1,000); each folder's names must be shared by every thread
  flat   one directory of N files of 100 bytes
  mixed  N/10 files of 0.2-4 KiB in 4x5 nested directories, 32 files of 1-4 MiB
  empty  (not by default) one directory of N empty files: no data blocks to
         free, so the pure cost of the directory operations
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import fs  # noqa: E402

MiB = 1 << 20
_BUF = memoryview(b"x" * MiB)

# ------------------------------------------------------------------ shapes
# A shape yields (directory relative to the task root, file name, size).


def shape_task(n: int) -> Iterator[tuple[str, str, int]]:
    rnd = random.Random(1)
    yield "", "task_config.json", 1200
    yield "", "data_pipeline.log", MiB
    yield "vector_bak", "langchain_pg_collection_20250702_223802.csv", 2 * MiB
    yield "vector_bak", "langchain_pg_embedding_20250702_223802.csv", 3 * MiB
    backups = [f"file_bak_20250702_2{h}0000" for h in range(4)]
    for i in range(n - 4):
        table = f"bss_business_day_data_{i}"
        kind = i % 10
        if kind < 5:
            name = (f"{table}.ddl", f"{table}_detail.md", f"qs_db_{i}_pair.json")[i % 3]
            yield "", name, rnd.randint(200, 4096)
        elif kind == 5:
            yield "vector_bak", f"embedding_{i}.json", rnd.randint(200, 4096)
        else:
            name = f"{table}.ddl" if i % 2 else f"{table}_detail.md"
            yield backups[kind - 6], name, rnd.randint(200, 4096)


def shape_folders(n: int) -> Iterator[tuple[str, str, int]]:
    rnd = random.Random(3)
    for i in range(n):
        yield f"file_bak_{i % 100:03d}", f"qs_db_{i}_pair.json", rnd.randint(200, 4096)


def shape_flat(n: int) -> Iterator[tuple[str, str, int]]:
    for i in range(n):
        yield "", f"qs_db_{i}_pair.json", 100


def shape_mixed(n: int) -> Iterator[tuple[str, str, int]]:
    rnd = random.Random(2)
    dirs = [f"part_{a}/sub_{b}" for a in range(4) for b in range(5)]
    for i in range(32):
        yield dirs[i % len(dirs)], f"blob_{i}.bin", rnd.randint(1, 4) * MiB
    for i in range(max(n // 10 - 32, 0)):
        yield dirs[i % len(dirs)], f"item_{i}_result.json", rnd.randint(200, 4096)


def shape_empty(n: int) -> Iterator[tuple[str, str, int]]:
    for i in range(n):
        yield "", f"qs_db_{i}_pair.json", 0


SHAPES = {
    "task": shape_task,
    "folders": shape_folders,
    "flat": shape_flat,
    "mixed": shape_mixed,
    "empty": shape_empty,
}


def build(shape: str, n: int, task_dir: Path) -> tuple[int, int]:
    """Create the tree; return (files, bytes) as ``purge`` must count them."""
    files = size_total = 0
    dir_fds: dict[str, int] = {}
    try:
        for rel, name, size in SHAPES[shape](n):
            if rel not in dir_fds:
                (task_dir / rel).mkdir(parents=True, exist_ok=True)
                dir_fds[rel] = os.open(task_dir / rel, os.O_RDONLY | os.O_DIRECTORY)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fds[rel])
            try:
                left = size
                while left:
                    left -= os.write(fd, _BUF[: min(left, MiB)])
            finally:
                os.close(fd)
            files += 1
            size_total += size
    finally:
        for fd in dir_fds.values():
            os.close(fd)
    return files, size_total


def build_all(trees: list[tuple[Path, str, int]]) -> dict[Path, tuple[int, int]]:
    """Build every tree before any removal, a few at a time.

    Before any removal, because ext4 without a journal (as on the machine this
    was written on) makes a new file skip the inodes deleted in the last
    minutes: trees built after removals build many times slower.
    """
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        counts = pool.map(lambda t: build(t[1], t[2], t[0] / "task"), trees)
        expect = dict(zip([t[0] for t in trees], counts, strict=True))
    os.sync()
    files = sum(f for f, _ in expect.values())
    print(f"built {len(trees)} trees, {files:,} files, in {time.perf_counter() - t0:.0f}s")
    return expect


# ------------------------------------------------------------------ removal


def settle(drop_caches: bool) -> None:
    os.sync()
    if drop_caches:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def time_rm(holder: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["rm", "-rf", "--", str(holder)], check=True)
    return time.perf_counter() - t0


def run_purge(holder: Path, expect: tuple[int, int], mode: str = "rss", threads: int = 8) -> dict:
    """``purge`` in a fresh process; its seconds and memory, counts checked."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(holder), mode, str(threads)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    got = (result["files"], result["bytes"])
    if result["errors"] or got != expect:
        sys.exit(f"purge of {holder} miscounted: {got} != {expect}, errors {result['errors']}")
    if (holder / "task").exists():
        sys.exit(f"purge of {holder} left its tree behind")
    return result


def child(path: str, mode: str, threads: str) -> None:
    import resource
    import tracemalloc

    fs.configure(threads=int(threads), descriptors=256)
    holder = Path(path)
    if mode == "tracemalloc":
        tracemalloc.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    stats = fs.walk_tree(holder / "task", remove=True)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    traced = tracemalloc.get_traced_memory()[1] // 1024 if mode == "tracemalloc" else None
    result = {"files": stats.files, "bytes": stats.bytes, "errors": stats.errors}
    print(json.dumps({**result, "seconds": seconds, "rss_kib": rss, "traced_kib": traced}))


def contenders(threads: list[int]) -> list[str]:
    return ["rm", *(f"purge{t}" for t in threads)]


def run_shape(
    shape: str, rounds: int, work: Path, expect: dict, drop: bool, threads: list[int], pool: int
) -> dict:
    """Each round removes one tree per contender, the order rotating round by round.
    ``rss``: the runs with ``pool`` threads (memory is compared at one pool size)."""
    who_all = contenders(threads)
    times: dict[str, list[float]] = {who: [] for who in who_all}
    rss: list[int] = []
    for r in range(rounds):
        k = r % len(who_all)
        order = who_all[k:] + who_all[:k]
        for who in order:
            holder = work / f"{shape}_{r}_{who}"
            settle(drop)
            if who == "rm":
                times[who].append(time_rm(holder))
            else:
                result = run_purge(holder, expect[holder], threads=int(who.removeprefix("purge")))
                times[who].append(result["seconds"])
                if who == f"purge{pool}":
                    rss.append(result["rss_kib"])
        print(
            f"  {shape:7} round {r + 1}: "
            + "  ".join(f"{who} {times[who][-1]:.3f}s" for who in order),
            flush=True,
        )
    files, size = expect[work / f"{shape}_0_rm"]
    medians = {who: statistics.median(t) for who, t in times.items()}
    return {"shape": shape, "files": files, "bytes": size, "median": medians, "rss": rss}


# ------------------------------------------------------------------ main


def describe_fs(path: Path) -> str:
    try:
        out = subprocess.run(
            ["findmnt", "-no", "FSTYPE,OPTIONS", "--target", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return f"{out[0]} ({out[1]})"
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def pool_sizes(text: str) -> list[int]:
    """``--threads``: distinct pool sizes, each 1 or more, in increasing order."""
    try:
        sizes = sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if sizes[0] < 1:
        raise argparse.ArgumentTypeError("each pool size must be 1 or more")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="files per task/flat tree")
    parser.add_argument("--rounds", type=int, default=2, help="the order rotates each round")
    parser.add_argument(
        "--shapes", default="task,folders,flat,mixed", help=f"of {','.join(SHAPES)}"
    )
    parser.add_argument("--dir", type=Path, default=ROOT, help="where to build (default: repo)")
    parser.add_argument("--drop-caches", action="store_true", help="start cold (root)")
    parser.add_argument(
        "--threads",
        type=pool_sizes,
        default=[8],
        help="purge pool sizes to compare, e.g. 1,8,32 (default 8)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    threads: list[int] = args.threads
    work = Path(tempfile.mkdtemp(prefix=".bench_purge_", dir=args.dir))
    caches = "sync, then drop_caches" if args.drop_caches else "sync only, caches warm"
    rm_version = subprocess.run(["rm", "--version"], capture_output=True, text=True).stdout
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f},"
        f" {rm_version.splitlines()[0]}"
        f"\nfs: {describe_fs(work)}; before each removal: {caches}"
        f"\npurge: workers {','.join(map(str, threads))} (process-wide), chunk={fs._CHUNK};"
        f" building in {work}",
        flush=True,
    )
    shapes = args.shapes.split(",")
    pool = 8 if 8 in threads else threads[-1]  # the pool size memory is measured at
    small = max(args.files // 10, 1)
    trees = [
        (work / f"{shape}_{r}_{who}", shape, args.files)
        for shape in shapes
        for r in range(args.rounds)
        for who in contenders(threads)
    ]
    extra = [
        (work / "mem_task_small", "task", small),
        (work / "mem_flat_small", "flat", small),
        *[
            (work / f"traced_{shape}_{n}", shape, n)
            for shape in ("task", "flat")
            for n in (small, args.files)
        ],
    ]
    try:
        expect = build_all(trees + extra)
        results = [
            run_shape(s, args.rounds, work, expect, args.drop_caches, threads, pool) for s in shapes
        ]

        print(f"\nmedian of {args.rounds} rounds; ratio = purge_time / rm_time, <1: purge faster")
        print(
            f"{'shape':7} {'files':>8} {'MiB':>7} {'rm -rf':>9}"
            + "".join(f" {f'purge x{t}':>11} {'ratio':>6}" for t in threads)
        )
        for r in results:
            m = r["median"]
            print(
                f"{r['shape']:7} {r['files']:8,} {r['bytes'] / MiB:7.1f} {m['rm']:8.3f}s"
                + "".join(
                    f" {m[f'purge{t}']:10.3f}s {m[f'purge{t}'] / m['rm']:6.2f}" for t in threads
                )
            )

        print(f"\npeak memory of purge with {pool} threads (KiB): RSS growth (max over rounds;")
        print("it includes the malloc arenas of the threads), and Python allocations (tracemalloc)")
        print(f"{'shape':6} {'files':>8} {'RSS growth':>11} {'tracemalloc':>12}")
        mem = {(r["shape"], r["files"]): max(r["rss"]) for r in results}
        for shape in ("task", "flat"):
            holder = work / f"mem_{shape}_small"
            settle(args.drop_caches)
            mem[shape, expect[holder][0]] = run_purge(holder, expect[holder], threads=pool)[
                "rss_kib"
            ]
        traced = {}
        for holder, shape, n in extra[2:]:
            settle(args.drop_caches)
            traced[shape, n] = run_purge(holder, expect[holder], "tracemalloc", pool)["traced_kib"]
        for (shape, files), rss in sorted(mem.items()):
            t = traced.get((shape, files))
            print(f"{shape:6} {files:8,} {rss:11,} {'' if t is None else f'{t:,}':>12}")
        print(f"load at the end: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
