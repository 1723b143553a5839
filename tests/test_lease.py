"""Folder leases: one daemon per folder, one writing pass at a time, fair to a waiting
one-shot, and safe to take over from a holder that was SIGKILLed.

The other holders are real processes (``sys.executable -c CHILD``) driven over stdin/stdout,
so nothing here depends on sleeping "long enough" except the fairness loop's pass length.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from difysync.errors import DifySyncError, exit_code
from difysync.lease import (
    HOLD_HINT,
    PASS_HINT,
    UNKNOWN_HOLDER,
    FolderLocks,
    Holder,
    LeaseAbandoned,
    LeaseBusy,
    locks_dir,
    read_holder,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

# argv: mode state_db folder what [counter_file cycle_seconds]
CHILD = r"""
import sys, time
from pathlib import Path
from difysync.lease import FolderLocks

mode, db, folder, what = sys.argv[1:5]
locks = FolderLocks(Path(db), folder, what=what)

def say(word):
    print(word, flush=True)

if mode == "hold":
    locks.hold()
    say("ready")
    sys.stdin.readline()
    locks.release_hold()
    say("done")
elif mode == "pass":
    with locks.pass_lease(None):
        say("ready")
        sys.stdin.readline()
    say("done")
elif mode == "both":
    locks.hold()
    with locks.pass_lease(None):
        say("ready")
        sys.stdin.readline()
elif mode == "wait":
    with locks.pass_lease(None, on_wait=lambda holder: say("waiting")):
        say("ready")
        sys.stdin.readline()
elif mode == "loop":
    counter, cycle = Path(sys.argv[5]), float(sys.argv[6])
    while True:
        with locks.pass_lease(None):
            with counter.open("a") as fh:
                fh.write("x\n")
            time.sleep(cycle)
"""


class Child:
    """One helper process holding (or waiting for) a lease; killed at teardown."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, word: str) -> None:
        line = self.proc.stdout.readline().strip()
        assert line == word, f"child said {line!r}, expected {word!r} (rc={self.proc.poll()})"

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def spawn() -> Iterator:
    children: list[Child] = []

    def start(*args: str) -> Child:
        child = Child(*args)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# -- the daemon hold -----------------------------------------------------------------------

def test_second_hold_fails_at_once_naming_the_first(db, spawn):
    first = spawn("hold", str(db), "/srv/docs", "difysync run")
    first.expect("ready")
    started = time.monotonic()
    with pytest.raises(LeaseBusy) as info:
        FolderLocks(db, "/srv/docs", what="difysync run").hold()
    assert time.monotonic() - started < 1.0
    err = info.value
    message = str(err)
    assert message.startswith("folder /srv/docs is held by difysync run (pid ")
    assert f"pid {first.pid} on {socket.gethostname()} since " in message
    assert HOLD_HINT in message
    assert err.folder == "/srv/docs"
    assert err.holder is not None and err.holder.pid == first.pid and err.holder.what == "difysync run"
    assert exit_code(err) == 75 and isinstance(err, DifySyncError)

    other = FolderLocks(db, "/srv/other", what="difysync run")
    other.hold()  # a different folder is independent
    assert other.daemon_holder() is not None and other.daemon_holder().pid == os.getpid()
    other.release_hold()

    first.go()
    first.expect("done")
    again = FolderLocks(db, "/srv/docs", what="difysync run")
    again.hold()
    again.hold()  # idempotent
    again.release_hold()
    again.release_hold()
    assert again.daemon_holder() is None


def test_hold_and_pass_lease_are_separate_locks(db):
    daemon = FolderLocks(db, "/srv/docs", what="difysync run")
    daemon.hold()
    oneshot = FolderLocks(db, "/srv/docs", what="difysync reconcile")
    with oneshot.pass_lease(timeout=0):  # the hold alone does not keep a one-shot out
        pass
    with daemon.pass_lease(timeout=0):
        with pytest.raises(LeaseBusy):
            with oneshot.pass_lease(timeout=0):
                pass
    daemon.release_hold()


# -- the write lease -----------------------------------------------------------------------

def test_pass_lease_waits_for_the_holder_then_gets_in(db, spawn):
    holder = spawn("pass", str(db), "/srv/docs", "difysync run")
    holder.expect("ready")
    seen: list[Holder | None] = []

    def on_wait(h: Holder | None) -> None:
        seen.append(h)
        holder.go()  # only now let the holder finish its pass

    locks = FolderLocks(db, "/srv/docs", what="difysync reconcile")
    with locks.pass_lease(timeout=10, on_wait=on_wait) as me:
        assert me.pid == os.getpid() and me.what == "difysync reconcile"
        holder.expect("done")  # it has left before we got in
        assert locks.current_holder() == read_holder(locks.pass_path) == me
    assert len(seen) == 1 and seen[0] is not None
    assert seen[0].pid == holder.pid and seen[0].what == "difysync run"
    assert locks.current_holder() is None


def test_pass_lease_timeout_names_the_holder(db, spawn):
    holder = spawn("pass", str(db), "/srv/docs", "difysync run")
    holder.expect("ready")
    locks = FolderLocks(db, "/srv/docs", what="difysync reconcile")
    assert locks.current_holder().pid == holder.pid
    started = time.monotonic()
    with pytest.raises(LeaseBusy) as info:
        with locks.pass_lease(timeout=0.3):
            pytest.fail("got in while held")
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.0
    assert info.value.holder.pid == holder.pid
    assert f"held by difysync run (pid {holder.pid} on " in str(info.value)
    assert str(info.value).endswith(PASS_HINT)


def test_zero_timeout_fails_without_waiting(db):
    a = FolderLocks(db, "/srv/docs", what="difysync run")
    b = FolderLocks(db, "/srv/docs", what="difysync reconcile")
    calls: list[Holder | None] = []
    with a.pass_lease(None):
        started = time.monotonic()
        with pytest.raises(LeaseBusy):
            with b.pass_lease(timeout=0, on_wait=calls.append):
                pass
        assert time.monotonic() - started < 0.2
    assert len(calls) == 1 and calls[0].what == "difysync run"


def test_back_to_back_passes_do_not_starve_a_waiter(db, spawn, tmp_path):
    counter = tmp_path / "passes"
    cycle = 0.15
    spawn("loop", str(db), "/srv/docs", "difysync run", str(counter), str(cycle))
    wait_for(lambda: lines(counter) >= 1)
    locks = FolderLocks(db, "/srv/docs", what="difysync reconcile")
    before = lines(counter)
    with locks.pass_lease(timeout=5):
        during = lines(counter)
        assert during - before <= 2, f"waited through {during - before} of the holder's passes"
        time.sleep(2 * cycle)
        assert lines(counter) == during  # the looping holder is kept out meanwhile
    wait_for(lambda: lines(counter) > during)  # and gets back in afterwards
    for _ in range(3):  # not a fluke: a second and third one-shot get in as promptly
        before = lines(counter)
        with locks.pass_lease(timeout=5):
            assert lines(counter) - before <= 2


def test_threads_with_their_own_locks_exclude_each_other(db):
    inside = []
    overlaps = []

    def worker() -> None:
        locks = FolderLocks(db, "/srv/docs", what="thread")
        for _ in range(10):
            with locks.pass_lease(timeout=10):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(True)
                time.sleep(0.002)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not overlaps and not any(t.is_alive() for t in threads)


def test_a_waiter_behind_a_waiter_names_the_one_next_in_line(db):
    # given a lease held by a thread, and a second one waiting for it (next in line)
    holder = FolderLocks(db, "/srv/docs", what="holder")
    next_in_line = FolderLocks(db, "/srv/docs", what="next in line")
    release = threading.Event()
    with holder.pass_lease(None):
        holder.pass_path.write_bytes(b"")  # between a release and the next poll: no record
        waiter = threading.Thread(target=lambda: _hold_until(next_in_line, release))
        waiter.start()
        time.sleep(0.3)  # it is through the turnstile, polling the pass lock
        # when a third one has to wait
        named: list = []
        with pytest.raises(LeaseBusy):
            with FolderLocks(db, "/srv/docs", what="third").pass_lease(0.5, on_wait=named.append):
                pass
    release.set()
    waiter.join(timeout=5)
    # then it names the one ahead of it
    assert [h.what if h else None for h in named] == ["next in line"]


def _hold_until(locks: FolderLocks, release: threading.Event) -> None:
    with locks.pass_lease(10):
        release.wait(5)


# -- crashes and stopping ------------------------------------------------------------------

def test_lease_of_a_sigkilled_holder_is_taken_over_at_once(db, spawn):
    holder = spawn("both", str(db), "/srv/docs", "difysync run")
    holder.expect("ready")
    waiter = spawn("wait", str(db), "/srv/docs", "difysync reconcile")
    waiter.expect("waiting")  # it now holds the turnstile, waiting on the pass lock
    waiter.kill()
    holder.kill()

    locks = FolderLocks(db, "/srv/docs", what="difysync run")
    locks.hold()  # no waiting: the kernel dropped the dead holder's locks
    assert locks.daemon_holder().pid == os.getpid()
    with locks.pass_lease(timeout=0):
        named = read_holder(locks.pass_path)
        assert named is not None and named.pid == os.getpid() and named.what == "difysync run"
    locks.release_hold()


def test_should_stop_ends_a_wait_promptly(db):
    holder = FolderLocks(db, "/srv/docs", what="difysync reconcile")
    daemon = FolderLocks(db, "/srv/docs", what="difysync run")
    stop = threading.Event()
    with holder.pass_lease(None):
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        started = time.monotonic()
        with pytest.raises(LeaseAbandoned) as info:
            with daemon.pass_lease(None, should_stop=stop.is_set):
                pytest.fail("got in while held")
        assert time.monotonic() - started < 0.6
        assert info.value.folder == "/srv/docs"
        assert not isinstance(info.value, LeaseBusy)
    with daemon.pass_lease(None, should_stop=stop.is_set):  # a free lease is taken regardless
        pass


# -- what the files say --------------------------------------------------------------------

@pytest.mark.parametrize("junk", [b"", b"\xff\xfe garbage", b"[1, 2]", b'{"pid": "x"}', b"{\"pid\": 5"])
def test_garbage_in_a_lock_file_still_gives_a_readable_message(db, junk):
    holder = FolderLocks(db, "/srv/docs", what="difysync run")
    other = FolderLocks(db, "/srv/docs", what="difysync reconcile")
    holder.hold()
    with holder.pass_lease(None):
        holder.pass_path.write_bytes(junk)
        holder.hold_path.write_bytes(junk)
        with pytest.raises(LeaseBusy) as info:
            with other.pass_lease(timeout=0):
                pass
        assert info.value.holder is None
        assert str(info.value) == f"folder /srv/docs is held by another process: {PASS_HINT}"
        assert other.current_holder() is UNKNOWN_HOLDER
        assert UNKNOWN_HOLDER.describe() == "another process"
        with pytest.raises(LeaseBusy, match="held by another process: stop that service first"):
            other.hold()
    holder.release_hold()
    assert other.current_holder() is None


def test_release_clears_the_record(db):
    locks = FolderLocks(db, "/srv/docs", what="difysync run")
    with locks.pass_lease(None):
        assert read_holder(locks.pass_path).pid == os.getpid()
    assert locks.pass_path.read_bytes() == b""


def test_locks_directory_is_private(db):
    old = os.umask(0)
    try:
        locks = FolderLocks(db, "/srv/docs", what="difysync run")
        locks.hold()
        with locks.pass_lease(None):
            directory = locks_dir(db)
            assert directory == db.parent / "state.db.locks"
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
            names = sorted(p.name for p in directory.iterdir())
            assert len(names) == 3  # hold, turnstile, pass
            for path in directory.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        locks.release_hold()
        os.chmod(directory, 0o755)
        os.chmod(locks.pass_path, 0o644)
        with locks.pass_lease(None):  # loose modes are tightened again
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
            assert stat.S_IMODE(locks.pass_path.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_status_probe_creates_nothing_and_any_path_works(db):
    weird = "/srv/dökü ments/" + "x" * 400 + "/\u2028\nend"
    locks = FolderLocks(db, weird, what="difysync run")
    assert locks.current_holder() is None and locks.daemon_holder() is None
    assert not locks_dir(db).exists()
    with locks.pass_lease(timeout=0):
        assert locks.current_holder().pid == os.getpid()
    assert len(locks.pass_path.name) < 40
    assert FolderLocks(db, "/srv/docs", what="x").pass_path != locks.pass_path


def test_holder_describe_and_lease_busy_message():
    since = time.mktime((2026, 12, 1, 20, 15, 2, 0, 0, -1))
    holder = Holder(pid=1234, host="host-a", since=since, what="difysync run")
    assert holder.describe() == "difysync run (pid 1234 on host-a since 2026-12-01 20:15:02)"
    err = LeaseBusy("/srv/docs", holder, HOLD_HINT)
    assert str(err) == ("folder /srv/docs is held by difysync run (pid 1234 on host-a since "
                        "2026-12-01 20:15:02): stop that service first, or run `difysync "
                        "reconcile` instead, which waits its turn")
