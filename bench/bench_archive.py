"""Benchmark: plugins/archive.py keeps memory flat, and how its speed compares
with ``tar czf`` on the same tree, measured in one run.

    python bench/bench_archive.py [--files 100000] [--dir PATH]

Each archive is written in a fresh subprocess, so its peak resident memory
(ru_maxrss) belongs to that archive alone. Memory is flat when the peak for
the large tree is about the peak for a tree a tenth its size. Prints ratios;
it is not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from plugins.archive import write_archive
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
size = write_archive(Path(sys.argv[1]), Path(sys.argv[2]), "tar.gz", 1, 0)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = {{"seconds": seconds, "bytes": size, "rss_before_kb": before, "rss_peak_kb": peak}}
print(json.dumps(result))
"""


def make_tree(root: Path, files: int) -> None:
    """A pipeline-shaped tree: a few folders, many small files."""
    folders = [root / "vector_bak", root / "file_bak_20250702_223802", root]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    payload = b'{"question": "how many orders?", "sql": "SELECT count(*) FROM orders"}\n' * 3
    for i in range(files):
        (folders[i % 3] / f"qs_{i:06d}_pair.json").write_bytes(payload)


def archive_in_child(src: Path, dest: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=str(ROOT)), str(src), str(dest)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def tar_czf(src: Path, dest: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["tar", "-C", str(src.parent), "-czf", str(dest), src.name], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=args.dir))
    try:
        small, large = scratch / "task_small", scratch / "task_large"
        make_tree(small, args.files // 10)
        make_tree(large, args.files)
        out = scratch / "out"
        out.mkdir()

        small_run = archive_in_child(small, out / "small.tar.gz")
        large_run = archive_in_child(large, out / "large.tar.gz")
        tar_seconds = tar_czf(large, out / "large-tar.tar.gz")

        grow_small = small_run["rss_peak_kb"] - small_run["rss_before_kb"]
        grow_large = large_run["rss_peak_kb"] - large_run["rss_before_kb"]
        print(f"files: {args.files // 10} and {args.files}")
        print(f"peak RSS growth while archiving: {grow_small} KiB and {grow_large} KiB")
        print(f"peak RSS: {small_run['rss_peak_kb']} KiB and {large_run['rss_peak_kb']} KiB")
        flat = large_run["rss_peak_kb"] / small_run["rss_peak_kb"]
        print(f"memory ratio large/small (1.0 is flat): {flat:.2f}")
        seconds, size = large_run["seconds"], large_run["bytes"]
        print(f"archive of {args.files} files: {seconds:.2f} s, {size} bytes")
        print(f"tar czf of the same tree: {tar_seconds:.2f} s")
        print(f"speed ratio tar/ours (>1: we are faster): {tar_seconds / large_run['seconds']:.2f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
