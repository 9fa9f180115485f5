"""plugins/archive.py: archive before delete, verified, and restored byte for byte."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.helpers import delete_ok, insert_task, make_task_dir, run_py, tree_snapshot

ARCHIVE_SETTINGS = """
[plugins]
enabled = ["archive"]
[plugins.archive]
dir = "archives"
min_free_bytes = 0
"""


def rich_task(base_dir: Path, workdir: Path, task_id: str) -> Path:
    """A task tree with nesting, binary data, an empty dir and links out of it."""
    task_dir = make_task_dir(base_dir, task_id, files=12, size=3000)
    (task_dir / "file_bak_20250702").mkdir()
    (task_dir / "file_bak_20250702" / "qs_old_pair.json").write_bytes(os.urandom(70_000))
    (task_dir / "empty").mkdir()
    outside = workdir / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("not part of the task")
    (task_dir / "link_out").symlink_to(outside / "secret.txt")
    (task_dir / "link_in").symlink_to("task_config.json")
    return task_dir


def leftovers(directory: Path) -> list[str]:
    return (
        [p.name for p in directory.iterdir() if "partial" in p.name] if directory.exists() else []
    )


def run_restore(workdir: Path, database_url: str, archive: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return run_py("--config", str(workdir / "settings.toml"), "restore", archive, env=env)


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
async def test_archive_then_restore_is_byte_identical(
    client, schema, base_dir, workdir, database_url
):
    insert_task(schema, "task_arch")
    task_dir = rich_task(base_dir, workdir, "task_arch")
    before = tree_snapshot(task_dir)

    body = await delete_ok(client, "task_arch")

    (task,) = body["data"]["deleted_tasks"]
    archive = Path(task["archive_path"])
    assert archive.parent == workdir / "archives" and archive.name.startswith("task_arch-")
    assert archive.name.endswith(".tar.gz")
    assert task["archive_bytes"] == archive.stat().st_size > 0
    assert not task_dir.exists()
    assert leftovers(archive.parent) == []
    with tarfile.open(archive) as tar:
        link = tar.getmember("task_arch/link_out")
        assert link.issym() and link.linkname == str(workdir / "outside" / "secret.txt")
        assert all("secret" not in m.name for m in tar.getmembers())

    result = run_restore(workdir, database_url, str(archive))
    assert result.returncode == 0, result.stderr
    assert tree_snapshot(task_dir) == before
    assert schema.task("task_arch")["directory_exists"] is True
    assert (workdir / "outside" / "secret.txt").read_text() == "not part of the task"


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
async def test_restore_refuses_to_overwrite(client, task_factory, base_dir, workdir, database_url):
    task_factory("task_arch")
    body = await delete_ok(client, "task_arch")
    archive = body["data"]["deleted_tasks"][0]["archive_path"]
    make_task_dir(base_dir, "task_arch", files=3)
    before = tree_snapshot(base_dir / "task_arch")

    result = run_restore(workdir, database_url, archive)

    assert result.returncode != 0 and "拒绝覆盖" in result.stderr
    assert tree_snapshot(base_dir / "task_arch") == before


def test_restore_needs_the_archive_plugin(settings, base_dir, workdir, database_url):
    """``restore`` is the archive plugin's command: without the plugin, one clear line."""
    archive = evil_archive(workdir / "any.tar.gz", ["task_a/x.txt"])
    result = run_restore(workdir, database_url, str(archive))
    assert result.returncode == 2
    assert result.stderr == (
        'error: restore needs the archive plugin: [plugins] enabled = ["archive"]\n'
    )
    assert [p.name for p in base_dir.iterdir()] == []


def evil_archive(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
@pytest.mark.parametrize(
    "names",
    [
        ["task_evil/ok.txt", "task_evil/../escaped.txt"],
        ["task_evil/ok.txt", "other_task/x.txt"],
        ["task_evil/ok.txt", "/tmp/absolute.txt"],
    ],
)
def test_restore_refuses_members_outside_the_task(settings, base_dir, workdir, database_url, names):
    archive = evil_archive(workdir / "evil.tar.gz", names)
    result = run_restore(workdir, database_url, str(archive))
    assert result.returncode != 0 and "拒绝恢复" in result.stderr
    assert not (base_dir / "task_evil").exists()
    assert not (base_dir / "escaped.txt").exists() and not (base_dir / "other_task").exists()
    assert nothing_restored(base_dir)


def nothing_restored(base_dir: Path) -> bool:
    """No task directory, and no half-extracted tree left in the trash."""
    return [p.name for p in base_dir.iterdir()] == [".trash"] and not any(
        (base_dir / ".trash").iterdir()
    )


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
def test_restore_refuses_a_member_written_through_a_symlink(
    settings, base_dir, workdir, database_url
):
    archive = workdir / "through.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("task_evil/out")
        link.type, link.linkname = tarfile.SYMTYPE, str(workdir)
        tar.addfile(link)
        info = tarfile.TarInfo("task_evil/out/planted.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    result = run_restore(workdir, database_url, str(archive))
    assert result.returncode != 0 and "拒绝恢复" in result.stderr
    assert not (workdir / "planted.txt").exists()
    assert nothing_restored(base_dir)


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
@pytest.mark.parametrize("up", ["..", "../..", ".", "task_evil"])
async def test_restore_never_writes_through_a_symlink_member(
    schema, base_dir, workdir, database_url, up
):
    """A member that is a link to its own tree (or above it), then a member
    under that link: nothing is written anywhere, and the failure is all that
    happened (the record is unchanged, no tree is left)."""
    pg = schema
    insert_task(pg, "task_evil", directory_exists=False)
    archive = workdir / "up.tar"
    with tarfile.open(archive, "w") as tar:
        root = tarfile.TarInfo("task_evil")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        link = tarfile.TarInfo("task_evil/up")
        link.type, link.linkname = tarfile.SYMTYPE, up
        tar.addfile(link)
        info = tarfile.TarInfo("task_evil/up/escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    before = tree_snapshot(workdir)

    result = run_restore(workdir, database_url, str(archive))

    assert result.returncode != 0
    assert "'task_evil/up/escaped.txt' 要经过符号链接或文件 up，拒绝恢复" in result.stderr
    assert not [p for p in workdir.rglob("escaped.txt")]
    assert nothing_restored(base_dir)
    assert tree_snapshot(workdir) == before
    assert pg.task("task_evil")["directory_exists"] is False


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
async def test_restore_keeps_modes_links_and_refuses_nothing_legitimate(
    schema, base_dir, workdir, database_url
):
    """Members in any order (a file before its directory's member), an
    absolute link kept verbatim and never followed, modes as tar keeps them."""
    pg = schema
    insert_task(pg, "task_ok", directory_exists=False)
    archive = workdir / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        root = tarfile.TarInfo("task_ok")
        root.type, root.mode = tarfile.DIRTYPE, 0o750
        tar.addfile(root)
        script = tarfile.TarInfo("task_ok/sub/run.sh")
        script.size, script.mode = 3, 0o4777  # setuid and world-writable: dropped
        tar.addfile(script, io.BytesIO(b"run"))
        sub = tarfile.TarInfo("task_ok/sub")
        sub.type, sub.mode = tarfile.DIRTYPE, 0o500
        tar.addfile(sub)
        link = tarfile.TarInfo("task_ok/sub/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    result = run_restore(workdir, database_url, str(archive))

    assert result.returncode == 0, result.stderr
    task = base_dir / "task_ok"
    assert tree_snapshot(task) == {
        "sub": "dir",
        "sub/passwd": "->/etc/passwd",
        "sub/run.sh": b"run",
    }
    assert (task / "sub" / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (task / "sub").stat().st_mode & 0o777 == 0o500
    assert task.stat().st_mode & 0o777 == 0o750
    assert pg.task("task_ok")["directory_exists"] is True
    assert not any((base_dir / ".trash").iterdir())


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
async def test_dry_run_names_the_archive_and_writes_nothing(client, task_factory, workdir):
    task_factory("task_arch")
    body = await delete_ok(client, "task_arch", dry_run=True)
    (task,) = body["data"]["deleted_tasks"]
    assert Path(task["archive_path"]).parent == workdir / "archives"
    assert not (workdir / "archives").exists() or list((workdir / "archives").iterdir()) == []


# ---------------------------------------------------------------- a disk that cannot take it


@pytest.fixture
def small_disk(workdir):
    """A real 64 KiB file system for the archives: it fills up."""
    mount = workdir / "archives"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
async def test_archive_disk_full_keeps_the_task(client, schema, base_dir, small_disk):
    insert_task(schema, "task_big")
    task_dir = make_task_dir(base_dir, "task_big", files=3)
    (task_dir / "noise.bin").write_bytes(os.urandom(300_000))  # does not compress
    before = tree_snapshot(task_dir)

    body = await delete_ok(client, "task_big")

    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "ARCHIVE_FAILED"
    assert tree_snapshot(task_dir) == before
    assert schema.task("task_big")["directory_exists"] is True
    assert list(small_disk.iterdir()) == []  # no partial archive


@pytest.mark.parametrize("settings_text", [ARCHIVE_SETTINGS])
async def test_archive_dir_not_writable_keeps_the_task(client, task_factory, workdir, schema):
    archives = workdir / "archives"
    archives.mkdir()
    subprocess.run(["chattr", "+i", str(archives)], check=True)  # even root cannot write
    try:
        task_dir = task_factory("task_a")
        before = tree_snapshot(task_dir)
        body = await delete_ok(client, "task_a")
    finally:
        subprocess.run(["chattr", "-i", str(archives)], check=True)
    assert body["data"]["failed_tasks"][0]["error_code"] == "ARCHIVE_FAILED"
    assert tree_snapshot(task_dir) == before
    assert schema.task("task_a")["directory_exists"] is True
    assert list(archives.iterdir()) == []


MIN_FREE_SETTINGS = ARCHIVE_SETTINGS.replace(
    "min_free_bytes = 0", "min_free_bytes = 1000000000000000"
)


@pytest.mark.parametrize("settings_text", [MIN_FREE_SETTINGS])
async def test_min_free_bytes_refuses_before_writing(client, task_factory, workdir):
    task_dir = task_factory("task_a")
    body = await delete_ok(client, "task_a")
    failed = body["data"]["failed_tasks"][0]
    assert failed["error_code"] == "ARCHIVE_FAILED" and "min_free_bytes" in failed["error"]
    assert task_dir.is_dir()
    assert leftovers(workdir / "archives") == []


def test_an_entry_swapped_for_a_symlink_while_archiving_is_not_followed(tmp_path):
    """The archive walk opens what it lstat-ed, or fails: never a link's target."""
    from plugins.archive import ArchiveError, _open_same, write_archive

    task = make_task_dir(tmp_path, "task_swap", files=3)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the task")
    victim = task / "table_0.ddl"
    st = os.lstat(victim)
    victim.unlink()
    victim.symlink_to(secret)  # swapped after the lstat
    dir_fd = os.open(task, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises((ArchiveError, OSError)):
            _open_same("table_0.ddl", dir_fd, st, os.O_RDONLY | os.O_NOFOLLOW)
    finally:
        os.close(dir_fd)

    link = tmp_path / "task_link"
    link.symlink_to(task)
    with pytest.raises(ArchiveError):
        write_archive(link, tmp_path / "out.tar.gz", "tar.gz", 1, 0)
    assert list(tmp_path.glob("*.tar.gz")) == [] and list(tmp_path.glob(".*partial")) == []
