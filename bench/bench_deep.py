"""Benchmark: deep trees, ``rm -rf`` against ``service.fs.walk_tree`` (issue 8, finding 6).

Run from the repository root (it prints results; it is not a test)::

    python bench/bench_deep.py                        # 5,000 and 2,500 levels (~1 min)
    python bench/bench_deep.py --levels 20000 --dir /mnt/other-fs

Two measurements, in one run:

time    a chain of --levels directories (short names, one small file at each
        level), built twice; one copy removed with ``rm -rf``, the other with
        ``purge`` in a fresh child process (timed around the call alone), in
        alternating order over --rounds. Targets: purge at most 3x rm -rf, and
        its time per level flat as the depth doubles (linear, not quadratic):
        the run also times a chain of half the depth.
memory  a chain of --mem-levels directories of 255-character names (far
        deeper than PATH_MAX: built and checked with descriptors only),
        purged in a fresh child process that reports its peak RSS
        (getrusage ru_maxrss) before and after the walk. Target: under 150 MB.

The counts ``purge`` returns are checked against the tree that was built.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import fs  # noqa: E402

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def build_chain(task: Path, levels: int, name: str) -> tuple[int, int]:
    """``levels`` nested directories named ``name``, a file at each; (files, bytes)."""
    task.mkdir(parents=True)
    fd = os.open(task, DIR_FLAGS)
    size = 0
    try:
        for level in range(levels):
            f = os.open("level.md", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
            os.write(f, b"x" * (level % 100))
            os.close(f)
            size += level % 100
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return levels, size


def run_child(task: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(task)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def child(path: str) -> None:
    import resource

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    stats = fs.walk_tree(Path(path), remove=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "files": stats.files,
                "bytes": stats.bytes,
                "errors": stats.errors,
                "seconds": seconds,
                "baseline_kib": baseline,
                "peak_kib": peak,
            }
        )
    )


def checked(task: Path, expect: tuple[int, int]) -> dict:
    result = run_child(task)
    got = (result["files"], result["bytes"])
    if result["errors"] or got != expect or task.exists():
        sys.exit(f"purge of {task} miscounted: {got} != {expect}, errors {result['errors']}")
    return result


def time_rm(path: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["rm", "-rf", "--", str(path)], check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, default=5000)
    parser.add_argument("--mem-levels", type=int, default=2500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=ROOT, help="where to build (default: repo)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return

    work = Path(tempfile.mkdtemp(prefix=".bench_deep_", dir=args.dir))
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f};"
        f" building in {work}",
        flush=True,
    )
    try:
        half = max(args.levels // 2, 1)
        rows = []
        for levels in (half, args.levels):
            rm_t, ours_t = [], []
            for r in range(args.rounds):
                trees = {who: work / f"chain_{levels}_{r}_{who}" for who in ("rm", "purge")}
                expect = {who: build_chain(t / "task", levels, "d") for who, t in trees.items()}
                os.sync()
                for who in ("rm", "purge") if r % 2 == 0 else ("purge", "rm"):
                    if who == "rm":
                        rm_t.append(time_rm(trees["rm"]))
                    else:
                        ours_t.append(checked(trees["purge"] / "task", expect["purge"])["seconds"])
            rm_m, ours_m = min(rm_t), min(ours_t)
            rows.append((levels, rm_m, ours_m))
        print(f"\nchain of N levels, best of {args.rounds}; ratio = purge / rm -rf (target <= 3)")
        print(f"{'levels':>7} {'rm -rf':>9} {'purge':>9} {'ratio':>6} {'purge µs/level':>15}")
        for levels, rm_m, ours_m in rows:
            print(
                f"{levels:7,} {rm_m:8.3f}s {ours_m:8.3f}s {ours_m / rm_m:6.2f}"
                f" {ours_m / levels * 1e6:15.1f}"
            )
        (_, _, t_half), (_, _, t_full) = rows
        print(f"purge time x{t_full / t_half:.2f} for x{args.levels / half:.0f} the depth")

        task = work / "mem" / "task"
        expect = build_chain(task, args.mem_levels, "n" * 255)
        os.sync()
        result = checked(task, expect)
        print(
            f"\n{args.mem_levels:,} levels of 255-character names (~{args.mem_levels * 256:,}"
            f" bytes of path): purge {result['seconds']:.3f}s, peak RSS"
            f" {result['peak_kib'] / 1024:.1f} MB (process baseline before the walk"
            f" {result['baseline_kib'] / 1024:.1f} MB; target < 150 MB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if work.exists():
            subprocess.run(["rm", "-rf", "--", str(work)], check=False)


if __name__ == "__main__":
    main()
