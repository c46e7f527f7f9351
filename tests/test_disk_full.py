"""A full disk: ``/ready`` answers 503 once free space falls below ``storage.min_free_mb``, the
free space is a metric, a write that fails for lack of space ends the node with ONE clear
``disk_full`` line and exit status ``DISK_FULL_EXIT`` (not a traceback), and after space is freed
the node starts again and goes on from where it was. The real disk-full run mounts a small tmpfs
(root only; skipped with the reason otherwise); every wait is bounded and everything is removed."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest
import trio

from agent_world_node import config as cfg
from agent_world_node.daemon import DISK_FULL_EXIT, disk_full_error

from .node_harness import running_node, single_validator_home

TMPFS_MB = 24


def _sqlite_full() -> sqlite3.Error:
    """A real SQLITE_FULL error: a database capped at a few pages, written past its cap."""
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA max_page_count = 4")
    db.execute("CREATE TABLE t (b BLOB)")
    try:
        for _ in range(100):
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 4096,))
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("the capped database took every row")


def test_disk_full_errors_are_found_by_type_wherever_they_are_nested():
    full = _sqlite_full()
    assert disk_full_error(full) is full
    group = BaseExceptionGroup("nursery", [ValueError("other"), ExceptionGroup("inner", [full])])
    assert disk_full_error(group) is full
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("snapshot write failed") from inner
    except RuntimeError as outer:
        found = disk_full_error(outer)
        assert isinstance(found, OSError) and found.errno == errno.ENOSPC
    assert disk_full_error(sqlite3.OperationalError("database or disk is full")) is None  # text is no type
    assert disk_full_error(OSError(errno.EACCES, "denied")) is None


def test_ready_is_503_below_the_free_space_floor_and_the_metric_shows_it(tmp_path):
    home = single_validator_home(tmp_path / "solo", chain_id="disk")
    c = cfg.read_config(home.config_file)
    c.storage.min_free_mb = 2**40  # more than any disk has
    cfg.write_config(home.config_file, c)

    async def main() -> None:
        with trio.fail_after(30):
            async with running_node(home) as node:
                async with httpx.AsyncClient(base_url=f"http://{node.config.rpc.listen}", timeout=10) as client:
                    r = await client.get("/ready")
                    assert r.status_code == 503 and "min_free_mb" in r.json()["reason"], r.text
                    while True:  # the gauge is refreshed with each status heartbeat
                        metrics = (await client.get("/metrics")).text
                        line = [m for m in metrics.splitlines() if m.startswith("awnode_data_free_bytes ")]
                        if line and float(line[0].split()[1]) > 0:
                            break
                        await trio.sleep(0.2)

    trio.run(main)


@pytest.fixture
def small_disk(tmp_path):
    """A ``TMPFS_MB`` MiB tmpfs mounted for the test and unmounted after it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(mount)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _start(home: cfg.Home, out) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", AGENT_WORLD_LOG_LEVEL="info")
    return subprocess.Popen([sys.executable, "-m", "agent_world_tools.cli", "start", "--home", str(home.root)],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _height(home: cfg.Home) -> int:
    rpc = cfg.read_config(home.config_file).rpc.listen
    try:
        return httpx.get(f"http://{rpc}/v1/status", timeout=2).json()["height"]
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_a_full_disk_stops_the_node_with_one_line_and_it_resumes_after_space_is_freed(small_disk, tmp_path):
    home = single_validator_home(small_disk / "solo", chain_id="disk")
    c = cfg.read_config(home.config_file)
    c.log_format = "json"
    c.storage.min_free_mb = 0  # this test wants the write to fail
    cfg.write_config(home.config_file, c)
    log_path = tmp_path / "node.log"  # on the big disk: the log must survive the full one
    filler = small_disk / "filler"
    with open(log_path, "ab") as out:
        proc = _start(home, out)
        try:
            deadline = time.monotonic() + 60
            while _height(home) < 5:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            # take all but a little of the space left, then let the node write into the rest
            free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free - 64 * 1024))
            status = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log_path.read_text().splitlines()
    full = [line for line in lines if '"disk_full"' in line]
    assert status == DISK_FULL_EXIT, lines[-20:]
    assert len(full) == 1, full
    entry = json.loads(full[0])
    assert entry["level"] == "error" and entry["data_dir"] == str(home.data_dir) and "hint" in entry
    assert not any("Traceback" in line for line in lines), [line for line in lines if "Traceback" in line]
    # free the space: the node starts again from its store and commits further heights
    filler.unlink()
    before = sqlite3.connect(home.db_file).execute("SELECT MAX(height) FROM blocks").fetchone()[0]
    with open(log_path, "ab") as out:
        proc = _start(home, out)
        try:
            deadline = time.monotonic() + 60
            while _height(home) < before + 3:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    print(f"\nthe disk filled at height {before}; exit {status}; the one line: {full[0]}; after freeing space "
          f"the node went on past {before + 3}")
