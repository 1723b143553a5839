"""`difysync run` as a real subprocess against the emulator: changes show up within the
debounce plus a little, bursts settle into one upload per file, outages are ridden out,
signals and systemd notifications behave."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from difysync.emulator import EmulatorServer
from difysync.emulator.faults import Faults

from .sandbox import Sandbox

DEBOUNCE = 0.3
DELETE_DELAY = 0.6


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Daemon:
    """The daemon under test, with its stderr collected in a file."""

    def __init__(self, box: Sandbox, env: dict[str, str] | None = None) -> None:
        self.box = box
        self.log_path = box.tmp / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "difysync", "--log-level", "debug", "run", "-c", str(box.config)],
            stdout=subprocess.DEVNULL, stderr=self._log, cwd=box.tmp,
            env={**os.environ, **box.env, **(env or {})})

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15) -> None:
        wait_until(lambda: "ready:" in self.log or self.proc.poll() is not None, timeout, what="ready")
        assert self.proc.poll() is None, self.log

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 25) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def daemon_box(tmp_path: Path, emu: EmulatorServer, *, watch: str = "", schedule: str = "") -> Sandbox:
    box = Sandbox(tmp_path, emu)
    text = box.config.read_text()
    text = text.replace("[[folders]]",
                        f"[watch]\ndebounce_seconds = {DEBOUNCE}\ndelete_delay_seconds = {DELETE_DELAY}\n"
                        f"max_delay_seconds = 5\n{watch}\n"
                        f"[schedule]\nstatus_poll_seconds = 1\n{schedule}\n[[folders]]")
    box.config.write_text(text)
    return box


@pytest.fixture
def running(tmp_path, emulator):
    box = daemon_box(tmp_path, emulator)
    daemon = Daemon(box)
    try:
        daemon.wait_ready()
        yield box, daemon
    finally:
        daemon.kill()


def test_create_modify_move_delete_are_mirrored_within_seconds(running):
    box, daemon = running
    limit = DEBOUNCE + 2
    box.write("keep.md", "keeps the folder from being emptied (that is refused)")
    box.write("a.md", "one")
    wait_until(lambda: box.contents().get("a.md") == b"one", limit, what="create")
    doc_id = box.docs()["a.md"].id
    box.write("a.md", "two")
    wait_until(lambda: box.contents().get("a.md") == b"two", limit, what="update")
    assert box.docs()["a.md"].id == doc_id
    box.move("a.md", "sub/b.md")
    wait_until(lambda: set(box.docs()) == {"sub∕b.md", "keep.md"}, DELETE_DELAY + 2, what="rename")
    assert box.docs()["sub∕b.md"].id == doc_id
    box.remove("sub/b.md")
    wait_until(lambda: set(box.docs()) == {"keep.md"}, DELETE_DELAY + 2, what="delete")
    assert daemon.stop() == 0


def test_a_burst_of_500_files_uploads_each_once(running):
    box, daemon = running
    for i in range(500):
        box.write(f"burst/{i // 50}/{i}.md", f"file {i}")
    wait_until(lambda: len(box.docs()) == 500, 60, what="500 documents")
    time.sleep(1)
    creates = box.emu.count(method="POST", path_contains="create")
    updates = box.emu.count(method="POST", path_contains="update")
    assert (creates, updates) == (500, 0)
    assert daemon.stop() == 0


def test_a_file_still_being_written_is_not_uploaded_half_written(running):
    box, daemon = running
    path = box.root / "growing.md"
    with open(path, "wb") as f:
        for i in range(15):
            f.write(f"line {i}\n".encode() * 100)
            f.flush()
            time.sleep(0.1)
    final = path.read_bytes()
    wait_until(lambda: box.contents().get("growing.md") == final, DEBOUNCE + 3, what="upload")
    time.sleep(DEBOUNCE + 0.5)
    assert box.uploads() == 1  # one create, never a half-written version
    assert daemon.stop() == 0


def test_a_file_rewritten_20_times_in_2_seconds_is_updated_once(running):
    box, daemon = running
    box.write("hot.md", "v0")
    wait_until(lambda: "hot.md" in box.docs(), DEBOUNCE + 2, what="create")
    box.emu.reset_requests()
    for i in range(1, 21):
        box.write("hot.md", f"v{i}")
        time.sleep(0.1)
    wait_until(lambda: box.contents().get("hot.md") == b"v20", DEBOUNCE + 3, what="final update")
    time.sleep(DEBOUNCE + 0.5)
    assert box.emu.count(method="POST", path_contains="update") == 1
    assert daemon.stop() == 0


def test_server_down_for_30_seconds_then_back_catches_up_without_duplicates(tmp_path):
    emu = EmulatorServer().start()
    try:
        box = daemon_box(tmp_path, emu)
        box.config.write_text(box.config.read_text().replace("timeout_seconds = 5", "timeout_seconds = 2"))
        box.write("before.md", "b")
        daemon = Daemon(box)
        try:
            daemon.wait_ready()
            wait_until(lambda: "before.md" in box.docs(), 5, what="first upload")
            emu.stop()
            box.write("during-1.md", "d1")
            box.write("before.md", "changed while down")
            time.sleep(15)
            box.write("during-2.md", "d2")
            time.sleep(15)
            assert daemon.proc.poll() is None, "the daemon must keep running through the outage"
            emu.start()
            wait_until(lambda: box.contents() == {"before.md": b"changed while down", "during-1.md": b"d1",
                                                  "during-2.md": b"d2"}, 90, interval=0.5, what="catch-up")
            # The pass that caught up says so once it has ended, a moment after its last upload.
            wait_until(lambda: "Dify answers again" in daemon.log, 10, what="the all-clear line")
            backoff_lines = [line for line in daemon.log.splitlines() if "backing off" in line]
            assert len(backoff_lines) == 1, backoff_lines  # one line per state change, not per retry
            assert daemon.stop() == 0
        finally:
            daemon.kill()
    finally:
        emu.stop()


def test_without_events_the_periodic_full_pass_still_converges(tmp_path, emulator):
    box = daemon_box(tmp_path, emulator, watch='mode = "off"', schedule="full_reconcile_minutes = 0.05")
    daemon = Daemon(box)
    try:
        daemon.wait_ready()
        box.write("late.md", "arrives without an event")
        wait_until(lambda: "late.md" in box.docs(), 10, what="periodic pass")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_watch_mode_poll_mirrors_changes_and_a_rename_keeps_its_document(tmp_path, emulator):
    box = daemon_box(tmp_path, emulator, watch='mode = "poll"\npoll_interval_seconds = 0.5')
    daemon = Daemon(box)
    try:
        daemon.wait_ready()
        assert "(poll)" in daemon.log
        box.write("keep.md", "keeps the folder from being emptied (that is refused)")
        box.write("a.md", "one")
        wait_until(lambda: box.contents().get("a.md") == b"one", DEBOUNCE + 3, what="create")
        doc_id = box.docs()["a.md"].id
        box.move("a.md", "sub/b.md")
        wait_until(lambda: set(box.docs()) == {"sub∕b.md", "keep.md"}, DEBOUNCE + 3, what="rename")
        assert box.docs()["sub∕b.md"].id == doc_id
        box.remove("sub/b.md")
        wait_until(lambda: set(box.docs()) == {"keep.md"}, DELETE_DELAY + 3, what="delete")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


@contextmanager
def uploading(tmp_path: Path, *, files: int, latency: float, in_flight: int):
    """A daemon importing ``files`` files through a slow server, caught with
    ``in_flight`` uploads sent; yields (emulator, box, daemon), killed at the end."""
    with EmulatorServer(faults=Faults(latency=latency)) as emu:
        box = daemon_box(tmp_path, emu)
        for i in range(files):
            box.write(f"{i}.md", str(i))
        daemon = Daemon(box)
        try:
            wait_until(lambda: emu.count(method="POST") >= in_flight, 15, what="uploads in flight")
            yield emu, box, daemon
        finally:
            daemon.kill()


def test_sigterm_lets_requests_finish_settles_the_journal_and_exits_0(tmp_path):
    with uploading(tmp_path, files=40, latency=0.5, in_flight=2) as (_emu, box, daemon):
        started = time.monotonic()
        assert daemon.stop(timeout=25) == 0
        assert time.monotonic() - started < 20
        journal = sqlite3.connect(box.tmp / "state.db").execute("SELECT count(*) FROM journal").fetchone()[0]
        assert journal == 0
        assert 0 < len(box.docs()) < 40


def test_a_second_sigterm_exits_at_once_and_the_next_pass_makes_no_duplicates(tmp_path):
    with uploading(tmp_path, files=10, latency=3.0, in_flight=1) as (emu, box, daemon):
        daemon.signal(signal.SIGTERM)
        # Two signals sent before the first is handled are one signal (POSIX does not queue
        # them, and Python runs its handler once for both): the second comes after the first
        # has been seen, as an operator's second Ctrl-C or systemd's second stop does.
        wait_until(lambda: "stopping:" in daemon.log, 10, what="the first signal handled")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=5) == 130
        assert time.monotonic() - started < 2
        assert "second signal, exiting at once" in daemon.log
        emu.faults.latency = 0.0
        time.sleep(3.5)  # let the abandoned requests land on the server
        result = box.reconcile()
        assert result.code == 0, result.stdout
        assert sorted(box.docs()) == sorted(f"{i}.md" for i in range(10))  # docs() refuses duplicates


def test_systemd_notifications_arrive_on_the_notify_socket(tmp_path, emulator):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    messages: list[str] = []
    done = threading.Event()

    def collect():
        while not done.is_set():
            try:
                messages.append(sock.recv(4096).decode())
            except socket.timeout:
                continue

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    box = daemon_box(tmp_path, emulator)
    box.write("a.md", "a")
    daemon = Daemon(box, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
    try:
        wait_until(lambda: any("READY=1" in m for m in messages), 15, what="READY=1")
        wait_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 2, 5, what="watchdog pings")
        assert any(m.startswith("STATUS=watching 1 folder") or "\nSTATUS=watching 1 folder" in m
                   for m in messages)
        assert daemon.stop() == 0
        wait_until(lambda: any("STOPPING=1" in m for m in messages), 5, what="STOPPING=1")
    finally:
        done.set()
        reader.join(timeout=2)
        daemon.kill()
        sock.close()


def test_sighup_with_a_broken_config_keeps_running_on_the_old_one(running):
    box, daemon = running
    good = box.config.read_text()
    box.config.write_text(good + "\nbogus = true\n")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "config reload failed" in daemon.log, 5, what="reload error")
    assert daemon.proc.poll() is None
    box.write("still.md", "syncing")
    # (about the reload, not latency: generous limits, the machine may be busy)
    wait_until(lambda: "still.md" in box.docs(), 10, what="sync after failed reload")
    box.config.write_text(good.replace("debounce_seconds = 0.3", "debounce_seconds = 0.2"))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "reloading the configuration" in daemon.log, 5, what="reload")
    box.write("after.md", "reloaded")
    wait_until(lambda: "after.md" in box.docs(), 10, what="sync after reload")
    assert daemon.stop() == 0


def test_status_works_while_the_daemon_runs(running):
    box, daemon = running
    box.write("a.md", "a")
    wait_until(lambda: "a.md" in box.docs(), DEBOUNCE + 2, what="upload")
    result = box.cli("status", "-c", str(box.config), "--json")
    assert result.code == 0
    (folder,) = result.json["folders"]
    assert folder["last_full_reconcile"] is not None
    assert folder["service"]["what"] == "difysync run" and folder["service"]["pid"] == daemon.proc.pid
    assert daemon.stop() == 0
    (after,) = box.cli("status", "-c", str(box.config), "--json").json["folders"]
    assert after["service"] is None and after["writing"] is None


def test_log_lines_carry_no_timestamps_under_journald_and_never_the_key(tmp_path, emulator):
    box = daemon_box(tmp_path, emulator)
    box.write("a.md", "a")
    daemon = Daemon(box, env={"JOURNAL_STREAM": "8:1234"})
    try:
        daemon.wait_ready()
        wait_until(lambda: "created a.md" in daemon.log, 5, what="action line")
        assert daemon.stop() == 0
        line = next(line for line in daemon.log.splitlines() if "created a.md" in line)
        assert line.startswith("INFO ")
        assert emulator.api_key not in daemon.log
    finally:
        daemon.kill()
