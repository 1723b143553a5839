"""One writer per folder, across processes: scenarios with real subprocesses.

A running service (`difysync run`) holds each of its folders for its whole life, so a
second service on the same folder exits 75 at once, naming the first; every mutating pass
(the service's, a cron `reconcile`'s) holds the folder's write lease for its whole length,
so a one-shot waits its turn (up to `--lock-timeout`) and never writes at the same time
as the service; read-only commands (`status`, `reconcile --dry-run`) never wait; a
holder killed with SIGKILL leaves files behind but no lock. Every process a test starts
is killed at its end, pass or fail (the ``procs`` fixture).
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difysync.config import load_settings
from difysync.emulator import EmulatorServer
from difysync.emulator.faults import Faults
from difysync.lease import FolderLocks, locks_dir, read_holder

from .sandbox import Result, Sandbox
from .test_daemon import DEBOUNCE, DELETE_DELAY, Daemon, daemon_box, uploading, wait_until

EX_TEMPFAIL = 75
WAITING = "waiting for the folder's write lease"  # what a one-shot logs when it has to wait
HOST = socket.gethostname()


def held_by(what: str, pid: int) -> str:
    """The start of lease.Holder.describe() for that holder, as messages quote it."""
    return f"held by {what} (pid {pid} on {HOST} since "


def folder_locks(box: Sandbox, what: str = "test holder") -> FolderLocks:
    """The locks of the box's (only) folder, keyed as difysync keys them."""
    settings = load_settings(box.config)
    (folder,) = settings.folders
    return FolderLocks(Path(settings.state_db), folder.key, what=what)


def state_db(box: Sandbox) -> Path:
    return Path(load_settings(box.config).state_db)


def journal_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM journal").fetchone()[0]


def dump(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


class Background:
    """A `python -m difysync ...` started without waiting; its output goes to files."""

    def __init__(self, box: Sandbox, args: tuple[str, ...], n: int) -> None:
        self.out_path, self.err_path = box.tmp / f"bg-{n}.out", box.tmp / f"bg-{n}.err"
        self.started = time.monotonic()
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "difysync", *args], stdout=out, stderr=err,
                                         cwd=box.tmp, env={**os.environ, **box.env})

    def result(self, timeout: float) -> Result:
        code = self.proc.wait(timeout=timeout)
        return Result(code, self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Processes:
    """Every daemon and background command a test starts, killed at the end."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []
        self.background: list[Background] = []
        self.others: list[subprocess.Popen] = []
        self._n = itertools.count()

    def daemon(self, box: Sandbox) -> Daemon:
        d = Daemon(box)
        self.daemons.append(d)
        return d

    def start(self, box: Sandbox, *args: str) -> Background:
        bg = Background(box, args, next(self._n))
        self.background.append(bg)
        return bg

    def track(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.others.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.others:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for bg in self.background:
            bg.kill()
        for d in self.daemons:
            d.kill()


@pytest.fixture
def procs():
    p = Processes()
    try:
        yield p
    finally:
        p.kill_all()


def timed(box: Sandbox, *args: str, timeout: float = 60) -> tuple[Result, float]:
    started = time.monotonic()
    result = box.subprocess(*args, timeout=timeout)  # subprocess.run kills the child on a timeout
    return result, time.monotonic() - started


# --- the hold: one service per folder --------------------------------------------------


def test_a_second_service_on_the_same_config_exits_75_at_once_naming_the_first(tmp_path, emulator, procs):
    # Given a service running on a folder, caught up
    box = daemon_box(tmp_path, emulator)
    box.write("a.md", "a")
    first = procs.daemon(box)
    first.wait_ready()
    wait_until(lambda: "a.md" in box.docs(), 10, what="first upload")
    emulator.reset_requests()

    # When a second `difysync run` is started on the same config
    second, elapsed = timed(box, "run", "-c", str(box.config), timeout=30)

    # Then it exits 75 within a few seconds, naming the first service, its pid and host,
    # and having sent nothing that writes
    assert second.code == EX_TEMPFAIL, second.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert held_by("difysync run", first.proc.pid) in second.stderr, second.stderr
    assert emulator.mutating_requests() == []
    # And the first keeps running and syncing
    assert first.proc.poll() is None, first.log
    box.write("b.md", "b")
    wait_until(lambda: box.contents().get("b.md") == b"b", DEBOUNCE + 10, what="sync after the refusal")
    assert first.stop() == 0


def test_two_services_on_different_folders_sharing_one_state_db_both_run(tmp_path, procs):
    # Given two configs with different folders (and datasets) but the same state DB
    with EmulatorServer() as emu_a, EmulatorServer() as emu_b:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        box_a, box_b = daemon_box(tmp_path / "a", emu_a), daemon_box(tmp_path / "b", emu_b)
        shared = state_db(box_a)
        box_b.config.write_text(box_b.config.read_text().replace('state_db = "state.db"',
                                                                 f'state_db = "{shared}"'))
        assert state_db(box_b) == shared
        box_a.write("a.md", "in a")
        box_b.write("b.md", "in b")

        # When a service is started on each
        daemon_a = procs.daemon(box_a)
        daemon_a.wait_ready()
        daemon_b = procs.daemon(box_b)
        daemon_b.wait_ready()

        # Then both run, each holding its own folder, and both sync
        assert daemon_a.proc.poll() is None and daemon_b.proc.poll() is None
        assert folder_locks(box_a).daemon_holder().pid == daemon_a.proc.pid
        assert folder_locks(box_b).daemon_holder().pid == daemon_b.proc.pid
        wait_until(lambda: box_a.contents() == {"a.md": b"in a"} and box_b.contents() == {"b.md": b"in b"},
                   10, what="first uploads")
        box_a.write("a2.md", "later a")
        box_b.write("b2.md", "later b")
        wait_until(lambda: set(box_a.docs()) == {"a.md", "a2.md"} and set(box_b.docs()) == {"b.md", "b2.md"},
                   DEBOUNCE + 10, what="watched changes in both folders")
        assert daemon_a.stop() == 0
        assert daemon_b.stop() == 0
        with sqlite3.connect(shared) as conn:
            folders = {r[0] for r in conn.execute("SELECT DISTINCT folder FROM files")}
        assert folders == {str(box_a.root), str(box_b.root)}


# --- the write lease: a one-shot waits its turn ----------------------------------------


def test_a_cron_reconcile_during_a_burst_waits_its_turn_and_nothing_is_doubled_or_missed(tmp_path, procs):
    with EmulatorServer(faults=Faults(latency=0.05)) as emu:
        # Given a service caught up on 20 files, behind a slow server
        box = daemon_box(tmp_path, emu)
        for i in range(20):
            box.write(f"old-{i}.md", f"old {i}")
        daemon = procs.daemon(box)
        daemon.wait_ready()
        wait_until(lambda: len(box.docs()) == 20, 30, what="the first 20 uploads")
        emu.reset_requests()
        # And in the middle of a burst: 200 new files, 5 edits, 5 deletes
        for i in range(200):
            box.write(f"new-{i}.md", f"new {i}")
        for i in range(5):
            box.write(f"old-{i}.md", f"edited {i}")
        for i in range(5, 10):
            box.remove(f"old-{i}.md")
        wait_until(lambda: emu.count(method="POST", path_contains="create") >= 5, 20, what="the burst under way")

        # When a cron-style `difysync reconcile` starts, and has to wait for the service's pass
        cron = procs.start(box, "reconcile", "-c", str(box.config))
        wait_until(lambda: WAITING in cron.err_path.read_text(errors="replace") or cron.proc.poll() is not None,
                   30, what="the cron reconcile to wait for the lease")
        # And a second wave lands while it waits, which both writers will want to handle
        for i in range(30):
            box.write(f"late-{i}.md", f"late {i}")
        for i in range(10, 13):
            box.write(f"old-{i}.md", f"edited again {i}")
        for i in range(13, 16):
            box.remove(f"old-{i}.md")
        result = cron.result(timeout=120)

        # Then it waited for the service's pass (naming it), ran its own, and succeeded
        assert result.code == 0, result.stderr
        assert held_by("difysync run", daemon.proc.pid) in result.stderr, result.stderr
        # And the dataset ends up holding every file exactly once (docs() refuses a duplicate name)
        expected = {f"new-{i}.md": f"new {i}".encode() for i in range(200)}
        expected.update({f"late-{i}.md": f"late {i}".encode() for i in range(30)})
        expected.update({f"old-{i}.md": f"edited {i}".encode() for i in range(5)})
        expected.update({f"old-{i}.md": f"edited again {i}".encode() for i in range(10, 13)})
        expected.update({f"old-{i}.md": f"old {i}".encode() for i in range(16, 20)})
        wait_until(lambda: box.contents() == expected, 60, interval=0.2, what="convergence")
        time.sleep(DEBOUNCE + DELETE_DELAY + 0.5)  # whatever either still had queued has run
        assert box.contents() == expected
        assert daemon.stop() == 0
        # And each change was sent once, by one writer or the other, and nothing is left open
        assert emu.count(method="POST", path_contains="create") == 230
        assert emu.count(method="POST", path_contains="update") == 8
        assert emu.count(method="DELETE") == 8
        assert journal_rows(state_db(box)) == 0


def test_reconcile_gives_up_after_lock_timeout_with_75_naming_the_holder(tmp_path, emulator):
    # Given a folder with work to do, and another process holding its write lease
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    with folder_locks(box, "test holder").pass_lease(timeout=5):
        # When a reconcile is allowed to wait one second
        result, elapsed = timed(box, "reconcile", "-c", str(box.config), "--lock-timeout", "1", timeout=30)

    # Then it waited about that second and exited 75, naming the holder and the option
    assert result.code == EX_TEMPFAIL, result.stderr
    assert 1.0 <= elapsed < 10, f"took {elapsed:.1f} s"
    assert held_by("test holder", os.getpid()) in result.stderr, result.stderr
    assert "--lock-timeout" in result.stderr, result.stderr
    # And it sent nothing that writes
    assert emulator.mutating_requests() == []


def test_dry_run_and_status_do_not_wait_for_a_held_lease(tmp_path, emulator):
    # Given a folder reconciled once, then changed, and another process holding its lease
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    assert box.subprocess("reconcile", "-c", str(box.config)).code == 0
    box.write("b.md", "b")
    emulator.reset_requests()
    with folder_locks(box, "test holder").pass_lease(timeout=5):
        # When a dry run (which could wait 20 s) and a status run meanwhile
        dry, dry_took = timed(box, "reconcile", "-c", str(box.config), "--dry-run", "--lock-timeout", "20")
        status, status_took = timed(box, "status", "-c", str(box.config), "--json")

    # Then both succeed without waiting for the lease
    assert dry.code == 0, dry.stderr
    assert WAITING not in dry.stderr
    assert dry_took < 15, f"took {dry_took:.1f} s"
    assert "b.md" in dry.stdout  # the plan is printed
    assert status.code == 0, status.stderr
    assert status_took < 15, f"took {status_took:.1f} s"
    (folder,) = status.json["folders"]
    assert folder["synced"] + folder["pending"] + folder["indexing"] == 1  # a.md, from the first pass
    assert (folder["writing"]["what"], folder["writing"]["pid"]) == ("test holder", os.getpid())  # names the writer
    assert folder["service"] is None
    # And neither wrote anything
    assert emulator.mutating_requests() == []
    assert set(box.docs()) == {"a.md"}


# --- a dead holder ----------------------------------------------------------------------


def test_a_sigkilled_services_lease_is_stale_and_taken_over_at_once(tmp_path, procs):
    # Given a service killed with SIGKILL in the middle of its uploads
    with uploading(tmp_path, files=40, latency=0.3, in_flight=3) as (emu, box, daemon):
        dead = daemon.proc.pid
        daemon.kill()
        assert daemon.proc.returncode == -signal.SIGKILL
        locks = folder_locks(box, "probe")
        # its lock files are left behind, still naming it...
        assert read_holder(locks.hold_path).pid == dead
        assert read_holder(locks.pass_path).pid == dead
        # ...but nobody holds the locks any more
        assert locks.daemon_holder() is None and locks.current_holder() is None
        emu.faults.latency = 0.0
        time.sleep(1.0)  # let the abandoned requests land on the server (latency was 0.3 s)

        # When a reconcile runs right after
        result, elapsed = timed(box, "reconcile", "-c", str(box.config), "--lock-timeout", "60", timeout=90)

        # Then it gets in at once (well under the lock timeout) and converges without duplicates
        assert result.code == 0, result.stderr
        assert WAITING not in result.stderr, result.stderr
        assert elapsed < 30, f"took {elapsed:.1f} s"
        assert sorted(box.docs()) == sorted(f"{i}.md" for i in range(40))
        assert journal_rows(state_db(box)) == 0

        # And a new service starts normally, takes the hold, and syncs
        fresh = procs.daemon(box)
        fresh.wait_ready()
        assert locks.daemon_holder().pid == fresh.proc.pid
        box.write("after.md", "after")
        wait_until(lambda: "after.md" in box.docs(), DEBOUNCE + 10, what="sync by the new service")
        assert fresh.stop() == 0
        assert len(box.docs()) == 41


# --- rebuild-state needs every folder to itself ----------------------------------------


def test_rebuild_state_while_a_service_runs_exits_75_and_leaves_the_state_db_alone(tmp_path, emulator, procs):
    # Given a service running and caught up on three files
    box = daemon_box(tmp_path, emulator)
    for name in ("a.md", "b.md", "c.md"):
        box.write(name, name)
    daemon = procs.daemon(box)
    daemon.wait_ready()
    wait_until(lambda: len(box.docs()) == 3, 10, what="uploads")
    db = state_db(box)

    def settled():
        rows = dump(db)
        done = len(rows["files"]) == 3 and not rows["journal"]
        with sqlite3.connect(db) as conn:
            statuses = {r[0] for r in conn.execute("SELECT indexing_status FROM files")}
        return done and statuses == {"completed"}

    wait_until(settled, 15, what="the state DB settled")
    time.sleep(0.5)
    before = dump(db)

    # When rebuild-state is run
    result, elapsed = timed(box, "rebuild-state", "-c", str(box.config), "--lock-timeout", "5", timeout=30)

    # Then it is refused with 75, naming the service, at once
    assert result.code == EX_TEMPFAIL, result.stdout + result.stderr
    assert held_by("difysync run", daemon.proc.pid) in result.stderr, result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    # And the state DB is untouched: not set aside, same rows
    assert not list(tmp_path.glob("state.db.broken*"))
    assert "kept the old state DB" not in result.stdout
    assert dump(db) == before
    # And the service goes on
    assert daemon.proc.poll() is None, daemon.log
    box.write("d.md", "d")
    wait_until(lambda: "d.md" in box.docs(), DEBOUNCE + 10, what="sync after the refusal")
    assert daemon.stop() == 0
    assert locks_dir(db).is_dir()


# --- naming who a waiter waits for ------------------------------------------------------

# `difysync reconcile`, for real, except that its first pause between two polls of the
# lease lasts until the test writes a line on its stdin: the <= 50 ms (POLL_INTERVAL) in
# which a waiter holds the turnstile while the pass lock is already free, made long enough
# to act in.
FROZEN_FIRST_PAUSE = r"""
import sys, time
real_sleep = time.sleep
first = [True]
def sleep(seconds):
    if first:
        first.clear()
        sys.stdin.readline()
    else:
        real_sleep(seconds)
time.sleep = sleep
from difysync.cli import main
sys.argv = ["difysync", *sys.argv[1:]]
main()
"""


def test_a_service_queued_behind_a_waiting_cron_reconcile_names_it(tmp_path, emulator, procs):
    # Given a cron reconcile waiting for a lease held by someone else (so it holds the turnstile)
    box = daemon_box(tmp_path, emulator)
    box.write("a.md", "a")
    err = tmp_path / "cron.err"
    with folder_locks(box, "test holder").pass_lease(timeout=5):
        with open(err, "wb") as err_file:
            cron = procs.track(subprocess.Popen(
                [sys.executable, "-c", FROZEN_FIRST_PAUSE, "reconcile", "-c", str(box.config)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err_file, cwd=tmp_path,
                env={**os.environ, **box.env}, text=True))
        wait_until(lambda: WAITING in err.read_text() or cron.poll() is not None, 20, what="the cron to wait")
        assert held_by("test holder", os.getpid()) in err.read_text()
    # ...and that holder has just let go, before the cron's next poll

    # When a service starts on the folder and its first pass has to queue behind the cron
    daemon = procs.daemon(box)
    wait_until(lambda: "waiting for the write lease" in daemon.log or daemon.proc.poll() is not None,
               20, what="the service to wait")
    cron.stdin.write("go\n")
    cron.stdin.flush()

    # Then the cron's pass runs, then the service's, with one upload in all
    assert cron.wait(timeout=30) == 0, err.read_text()
    daemon.wait_ready()
    assert set(box.docs()) == {"a.md"}
    assert emulator.count(method="POST", path_contains="create") == 1
    assert daemon.stop() == 0
    # And the service's log said whom it waited for: the cron reconcile, by its pid
    (line,) = [line for line in daemon.log.splitlines() if "waiting for the write lease" in line]
    assert held_by("difysync reconcile", cron.pid) in line, line


def test_a_reconcile_that_waited_for_the_lease_syncs_the_folder_as_it_is_when_it_gets_in(tmp_path, emulator, procs):
    """A one-shot begins its walk before it asks for the lease (cli.walks_ahead); a walk
    begun before a wait is dropped, so what changed during the wait is not missed."""
    # Given a folder of ten directories (enough for the walk to be shared), reconciled once
    box = Sandbox(tmp_path, emulator)
    for i in range(10):
        box.write(f"d{i}/f.md", f"f {i}")
    assert box.subprocess("reconcile", "-c", str(box.config)).code == 0
    with folder_locks(box, "test holder").pass_lease(timeout=5):
        # When a reconcile starts and has to wait for the lease another process holds
        cron = procs.start(box, "reconcile", "-c", str(box.config))
        wait_until(lambda: WAITING in cron.err_path.read_text(errors="replace") or cron.proc.poll() is not None,
                   30, what="the reconcile to wait for the lease")
        # And the folder changes while it waits
        box.write("d3/new.md", "new")
        box.write("d4/f.md", "edited")
        box.remove("d5/f.md")
    result = cron.result(timeout=60)

    # Then its pass saw the folder as it was when it got the lease
    assert result.code == 0, result.stderr
    expected = {f"d{i}∕f.md": f"f {i}".encode() for i in range(10) if i not in (4, 5)}  # (names use ∕)
    expected.update({"d3∕new.md": b"new", "d4∕f.md": b"edited"})
    assert box.contents() == expected
