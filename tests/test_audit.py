"""The audit fails closed, on a real full file system (a tiny tmpfs, a
loop-mounted ext4): a line is written whole or not at all, the reservation
lets appends succeed on a full file system, and ``reserve()`` refuses once the
audit could not record a deletion, until there is room again."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.audit import AuditLog, AuditUnavailable, batch_record, encode_line, task_record
from service.pipeline import BatchContext, DeleteOptions
from tests.helpers import audit_lines

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs / loop ext4 (root)")


def umount(where: Path) -> None:
    """Unmount; if something still holds it open, detach it anyway (and fail the test)."""
    if subprocess.run(["umount", str(where)]).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], check=True)
        raise AssertionError(f"{where} was busy at teardown")


@contextlib.contextmanager
def mounted(kind: str, where: Path) -> Iterator[Path]:
    where.mkdir()
    image = where.with_suffix(".img")
    if kind == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True)
    else:
        with image.open("wb") as f:
            f.truncate(4 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True)
    try:
        yield where
    finally:
        umount(where)
        image.unlink(missing_ok=True)


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request, tmp_path: Path) -> Iterator[Path]:
    with mounted(request.param, tmp_path / "fs") as path:
        yield path


def fill(fs: Path) -> Path:
    """Fill the file system with a filler file until not one byte more fits."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"f" * 65536, b"f" * 4096, b"f"):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
        with pytest.raises(OSError) as e:
            os.write(fd, b"f")
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def lines(path: Path) -> list[dict]:
    """Every line of the file as JSON: fails on a partial or glued line."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"the file ends in a partial line: {data[-80:]!r}"
    return [json.loads(line) for line in data.decode().split("\n")[:-1]]


def record(i: int, pad: int = 0) -> dict:
    return {"event": "task_delete", "task_id": f"task_{i:06d}", "note": "x" * pad}


def open_log(path: Path, reserve: int = 16 * 1024, headroom: int = 4 * 1024) -> AuditLog:
    audit = AuditLog(path)
    audit.reserve_bytes, audit.min_headroom = reserve, headroom
    audit.open()
    return audit


@needs_root
def test_appends_into_the_reservation_succeed_on_a_full_file_system(small_fs: Path):
    audit = open_log(small_fs / "audit.log")
    try:
        audit.reserve()
        filler = fill(small_fs)
        written = 0
        with pytest.raises(AuditUnavailable):
            for i in range(1000):  # one reserve() per line, as the pipeline does per task
                audit.reserve()
                audit.write_line(record(i, pad=200))
                written += 1
        # The reservation (16 KiB, keeping 4 KiB) carried the lines the full fs had no room for.
        assert written >= 30
        assert [r["task_id"] for r in lines(audit.path)] == [
            f"task_{i:06d}" for i in range(written)
        ]
        assert audit.failed is None  # reserve() refused before any write could fail

        filler.unlink()
        audit.reserve()
        audit.write_line(record(written))
        assert len(lines(audit.path)) == written + 1
    finally:
        audit.close()


@needs_root
def test_a_short_write_leaves_no_partial_line_and_stops_deletions_until_there_is_room(
    small_fs: Path,
):
    audit = open_log(small_fs / "audit.log")
    try:
        audit.write_line(record(0))
        filler = fill(small_fs)  # no reservation: the file's last block is all there is
        i = 0
        with pytest.raises(AuditUnavailable):
            while True:
                i += 1
                audit.write_line(record(i, pad=150 + i % 7))
        st = os.stat(audit.path)
        # There was room for part of the failed line. A tmpfs takes part of it (a short
        # write, cut off again); ext4 refuses the whole page's part (ENOSPC, nothing written).
        assert st.st_blocks * 512 > st.st_size
        assert [r["task_id"] for r in lines(audit.path)] == [f"task_{n:06d}" for n in range(i)]
        assert audit.failed

        with pytest.raises(AuditUnavailable):
            audit.reserve()  # still full: no deletion may go on
        assert audit.failed

        filler.unlink()
        audit.reserve()
        assert audit.failed is None
        audit.write_line(record(i))
        tail = lines(audit.path)[-3:]
        assert [r.get("task_id") for r in tail] == [f"task_{i - 1:06d}", None, f"task_{i:06d}"]
        assert tail[1]["event"] == "audit_resumed" and tail[1]["after"]
    finally:
        audit.close()


@needs_root
def test_writers_sharing_the_file_never_leave_a_partial_line(small_fs: Path):
    # Two descriptors of their own, as two service processes have, taking turns.
    logs = [open_log(small_fs / "audit.log") for _ in range(2)]
    logs[0].reserve()  # 16 KiB for the two to share, then the end of the last block
    fill(small_fs)
    counts = [0, 0]
    try:
        for i in range(10000):
            audit = logs[i % 2]
            with contextlib.suppress(AuditUnavailable):
                audit.write_line(record(i, pad=100 + i % 13))
                counts[i % 2] += 1
            if all(audit.failed for audit in logs):
                break
        assert [r["task_id"] for r in lines(small_fs / "audit.log")] == [
            f"task_{i:06d}" for i in range(sum(counts))
        ]
        assert min(counts) > 10
    finally:
        for audit in logs:
            audit.close()


FSIZE_CHILD = """
import json, resource, sys
from pathlib import Path
from service.audit import AuditLog, AuditUnavailable

audit = AuditLog(Path(sys.argv[1]))
audit.open()
audit.reserve()
audit.write_line({"event": "task_delete", "task_id": "before"})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (audit.path.stat().st_size + 300, hard))
out = {"written": 0}
try:
    for i in range(100):
        audit.write_line({"event": "task_delete", "task_id": f"t{i}", "pad": "x" * 70})
        out["written"] += 1
except AuditUnavailable as e:
    out["failed"] = audit.failed
try:
    audit.reserve()  # there is space: only a real line shows the file is not writable
    out["reserved_while_limited"] = True
except AuditUnavailable:
    out["reserved_while_limited"] = False
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
audit.reserve()
out["failed_after"] = audit.failed
print(json.dumps(out))
"""


def test_a_file_size_limit_fails_the_log_until_a_real_line_can_be_written(tmp_path: Path):
    # A real RLIMIT_FSIZE in a process of its own: the write past it is short (EFBIG after
    # the bytes up to the limit), and fallocate(KEEP_SIZE) still succeeds under it.
    path = tmp_path / "audit.log"
    child = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, str(path)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    out = json.loads(child.stdout.splitlines()[-1])
    assert out["failed"].startswith("只写入了") and out["written"] == 2  # then a short write
    assert out["reserved_while_limited"] is False
    assert out["failed_after"] is None
    records = lines(path)
    assert [r.get("task_id") for r in records] == ["before", "t0", "t1", None]
    assert records[-1]["event"] == "audit_resumed"


@needs_root
def test_reserve_refuses_on_a_full_file_system_without_a_reservation(small_fs: Path):
    fill(small_fs)
    audit = open_log(small_fs / "audit.log")
    try:
        with pytest.raises(AuditUnavailable, match="审计日志不可写"):
            audit.reserve()
    finally:
        audit.close()


def test_reserve_reopens_a_file_that_was_moved_or_deleted(tmp_path: Path):
    audit = open_log(tmp_path / "audit.log")
    try:
        audit.write_line(record(1))
        audit.path.rename(tmp_path / "audit.log.1")
        audit.reserve()
        audit.write_line(record(2))
        audit.path.unlink()
        audit.reserve()
        audit.write_line(record(3))
        assert [r["task_id"] for r in lines(tmp_path / "audit.log.1")] == ["task_000001"]
        assert [r["task_id"] for r in lines(audit.path)] == ["task_000003"]
    finally:
        audit.close()


# ---------------------------------------------------------------- one record, one line

BREAKS = "a\x1cb\x1dc\x1ed\x85e\u2028f\u2029g\vh\fi\nj\rk"


def test_line_breaks_of_line_based_readers_are_escaped():
    line = encode_line({"error": BREAKS, "task_id": "\u2028"})
    text = line.decode()
    assert text.splitlines() == [text.rstrip("\n")]
    assert "\\u2028" in text and "\\u2029" in text and "\\u0085" in text
    assert json.loads(text) == {"error": BREAKS, "task_id": "\u2028"}


async def test_a_message_with_line_separators_is_one_audit_line(tmp_path: Path, settings):
    audit = open_log(tmp_path / "audit.log")
    options = DeleteOptions()
    batch = BatchContext(["task_1"], options, "req-1", "127.0.0.1")
    try:
        failure = {"error": BREAKS, "error_code": "PLUGIN_ERROR"}
        await audit.write("task_delete", **task_record(batch, "task_1", failure, "failed"))
        deleted = {"deleted_files_count": 1}
        await audit.write("task_delete", **task_record(batch, "task_1", deleted, "deleted"))
        await audit.write("delete_request", **batch_record(batch, {"summary": {"failed": 1}}))
    finally:
        audit.close()
    text = audit.path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["event"] for r in records] == ["task_delete", "task_delete", "delete_request"]
    assert records[0]["error"] == BREAKS


async def test_an_id_with_line_separators_is_one_audit_line_per_record(client, schema, settings):
    bad = "task\u2028x\u2029y\x85z"
    r = await client.delete(
        "/api/v0/data_pipeline/tasks", json={"task_ids": [bad, "t\x1e"], "confirm": True}
    )
    assert (await r.json())["data"]["summary"]["failed"] == 2
    records = audit_lines(settings)
    assert [r["event"] for r in records] == ["task_delete", "task_delete", "delete_request"]
    assert {r["task_id"] for r in records[:2]} == {bad, "t\x1e"}


# ---------------------------------------------------------------- through the service


class TestThroughTheService:
    """The audit log on a tiny tmpfs of its own, under a real HTTP server."""

    @pytest.fixture
    def audit_fs(self, tmp_path: Path, monkeypatch) -> Iterator[Path]:
        """A 1 MiB tmpfs for the audit log; a small reservation, so that it runs out soon."""
        monkeypatch.setattr(AuditLog, "reserve_bytes", 16 * 1024)
        monkeypatch.setattr(AuditLog, "min_headroom", 4 * 1024)
        where = tmp_path / "auditfs"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
        try:
            yield where
        finally:
            umount(where)

    @pytest.fixture
    def settings_text(self, audit_fs: Path) -> str:
        return f'[audit]\npath = "{audit_fs / "audit.log"}"\n'

    @needs_root
    async def test_no_task_is_deleted_without_its_audit_line(
        self, audit_fs, client, task_factory, base_dir
    ):
        # audit_fs comes first: set up before the server, it is unmounted after the server closed.
        ids = [f"task_{i:03d}" for i in range(80)]
        for task_id in ids:
            task_factory(task_id, files=3)

        async def delete(batch: list[str]) -> None:
            r = await client.delete(
                "/api/v0/data_pipeline/tasks", json={"task_ids": batch, "confirm": True}
            )
            assert r.status in (200, 503), await r.text()

        await delete(ids[:1])
        filler = fill(audit_fs)
        for start in range(1, len(ids), 10):
            await delete(ids[start : start + 10])

        audited = {
            r["task_id"]
            for r in lines(audit_fs / "audit.log")
            if r["event"] == "task_delete" and r["outcome"] == "deleted"
        }
        gone = {task_id for task_id in ids if not (base_dir / task_id).exists()}
        assert gone - audited == set()  # no directory gone without its line
        assert len(gone) < len(ids)  # the audit's file system did fill up: deletions stopped

        filler.unlink()  # room again: deletions go on, each with its line
        await delete(sorted(set(ids) - gone))
        assert not any((base_dir / task_id).exists() for task_id in ids)
        audited = {
            r["task_id"] for r in lines(audit_fs / "audit.log") if r["event"] == "task_delete"
        }
        assert audited >= set(ids)
