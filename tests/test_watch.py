"""The watcher: DirtyTracker on a fake clock, Watcher on a real watchdog observer."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from difysync.watch import DirtyTracker, Watcher, auto_watch_mode, filesystem_type

from .sandbox import FakeClock

# watchdog itself warns when a directory and its subdirectory are created faster than it
# adds their watches (mkdir -p); the watch is simply replaced.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> DirtyTracker:
    return DirtyTracker(3, 10, 60, folder_threshold=5, rescan_threshold=20, clock=clock)


# --- DirtyTracker -----------------------------------------------------------------------


def test_path_is_due_after_the_debounce(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("a.md")
    clock.advance(2.9)
    assert tracker.due().paths == []
    clock.advance(0.1)
    assert tracker.due().paths == ["a.md"]


def test_each_event_restarts_the_debounce(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("a.md")
    clock.advance(2)
    tracker.touch("a.md")
    clock.advance(2)
    assert not tracker.due()
    clock.advance(1)
    assert tracker.due().paths == ["a.md"]


def test_steady_trickle_is_due_at_the_ceiling(clock: FakeClock) -> None:
    tracker = DirtyTracker(3, 10, 60, clock=clock)
    due_at = None
    for _ in range(200):  # every 0.5 s for 100 s
        tracker.touch("busy.log")
        if tracker.due().paths == ["busy.log"] and due_at is None:
            due_at = clock.now - 1000.0
        clock.advance(0.5)
    assert due_at == 60.0


def test_delete_waits_the_delete_delay(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("gone.md", deleted=True)
    clock.advance(9.9)
    assert not tracker.due()
    clock.advance(0.1)
    assert tracker.due().paths == ["gone.md"]


def test_delete_then_recreate_is_a_change(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("a.md", deleted=True)
    clock.advance(1)
    tracker.touch("a.md")
    clock.advance(3)
    assert tracker.due().paths == ["a.md"]


def test_move_makes_source_and_destination_due_together(tracker: DirtyTracker,
                                                         clock: FakeClock) -> None:
    tracker.touch("new.md")
    clock.advance(2)
    tracker.moved("old.md", "renamed.md")
    clock.advance(1)
    assert tracker.due().paths == ["new.md"]
    clock.advance(1.9)
    assert not tracker.due()
    clock.advance(0.1)
    assert tracker.due().paths == ["old.md", "renamed.md"]


def test_unpaired_delete_and_create_close_together_are_due_together(tracker: DirtyTracker,
                                                                   clock: FakeClock) -> None:
    # inotify: a file moved into a just-created directory arrives as dir + later delete
    tracker.touch_dir("sub")
    clock.advance(0.5)
    tracker.touch("a.md", deleted=True)
    clock.advance(3)
    assert not tracker.due()
    clock.advance(7)
    assert tracker.due().paths == ["a.md", "sub"]


def test_events_far_apart_are_not_paired(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("new.md")
    clock.advance(3.5)
    tracker.touch("old.md", deleted=True)
    assert tracker.due().paths == ["new.md"]


def test_nothing_is_due_before_the_move_grace(clock: FakeClock) -> None:
    tracker = DirtyTracker(0.1, 0.1, 60, clock=clock)
    tracker.touch("a.md")
    clock.advance(0.5)
    assert not tracker.due()
    clock.advance(0.25)
    assert tracker.due().paths == ["a.md"]


def test_move_group_waits_for_its_latest_member(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.moved("a.md", "b.md")
    clock.advance(2)
    tracker.touch("b.md")  # still being written after the rename
    clock.advance(1)
    assert not tracker.due()
    assert tracker.next_deadline() == clock.now + 2
    clock.advance(2)
    assert tracker.due().paths == ["a.md", "b.md"]


def test_many_paths_in_one_directory_collapse_into_it(tracker: DirtyTracker,
                                                      clock: FakeClock) -> None:
    for i in range(6):
        tracker.touch(f"docs/f{i}.md")
    tracker.touch("docs/f9.md")  # later events below refresh the directory
    tracker.touch("other.md")
    assert tracker.pending() == 2
    clock.advance(3)
    assert tracker.due().paths == ["docs", "other.md"]


def test_collapse_keeps_the_ceiling_of_the_oldest_path(tracker: DirtyTracker,
                                                       clock: FakeClock) -> None:
    tracker.touch("docs/first.md")
    for i in range(6):
        clock.advance(2)
        for j in range(3):
            tracker.touch(f"docs/f{i}{j}.md")
    clock.advance(2)
    for _ in range(30):
        tracker.touch("docs/busy.md")
        clock.advance(2)
        if tracker.due().paths:
            break
    assert clock.now - 1000.0 == 60.0  # the first event + max_delay, not the last event


def test_too_many_paths_become_one_full_rescan(tracker: DirtyTracker, clock: FakeClock) -> None:
    for i in range(21):
        tracker.touch(f"d{i % 7}/f{i}.md")
    assert tracker.pending() == 1
    tracker.touch("late.md")
    clock.advance(2.9)
    assert not tracker.due()
    clock.advance(0.1)
    work = tracker.due()
    assert work.full_rescan and work.paths == []
    assert not tracker.due()


def test_root_crowded_becomes_a_full_rescan(tracker: DirtyTracker, clock: FakeClock) -> None:
    for i in range(6):
        tracker.touch(f"f{i}.md")
    clock.advance(3)
    assert tracker.due().full_rescan


def test_dir_touch_absorbs_paths_below(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("a/b/c.md")
    tracker.touch_dir("a")
    tracker.touch("a/d.md", deleted=True)  # refreshes "a", waits like a delete
    assert tracker.pending() == 1
    clock.advance(3)
    assert not tracker.due()
    clock.advance(7)
    assert tracker.due().paths == ["a"]


def test_next_deadline_is_exact(tracker: DirtyTracker, clock: FakeClock) -> None:
    assert tracker.next_deadline() is None
    tracker.touch("gone.md", deleted=True)
    clock.advance(4)
    tracker.touch("a.md")
    assert tracker.next_deadline() == 1007.0
    clock.now = 1007.0
    assert tracker.due().paths == ["a.md"]
    assert tracker.next_deadline() == 1010.0


def test_due_pops(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("a.md")
    clock.advance(5)
    assert tracker.due().paths == ["a.md"]
    assert tracker.due().paths == []
    assert tracker.pending() == 0


def test_note_takes_every_watcher_kind(clock: FakeClock) -> None:
    tracker = DirtyTracker(3, 10, 60, clock=clock)
    tracker.note("a.md", "changed")
    tracker.note("b.md", "deleted")
    tracker.note("c.md", "moved", "d.md")
    tracker.note("e", "dir_moved", "f")
    tracker.note("g", "dir_deleted")
    tracker.note("g/h.md", "deleted")  # absorbed by the dirty directory
    clock.advance(3)
    assert tracker.due().paths == ["c.md", "d.md", "e", "f"]
    clock.advance(7)  # a.md waits with the deletes next to it: they might be its rename
    assert tracker.due().paths == ["a.md", "b.md", "g"]


def test_clear_forgets_everything(tracker: DirtyTracker, clock: FakeClock) -> None:
    tracker.touch("a.md")
    tracker.request_full_rescan()
    tracker.clear()
    clock.advance(100)
    assert not tracker.due() and tracker.pending() == 0


# --- mount table ------------------------------------------------------------------------

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 27 0:50 / /mnt/share rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 40 8:2 / /mnt/share/local rw,relatime - ext4 /dev/sda2 rw
42 27 0:51 / /home/u/remote\040box rw,nosuid - fuse.sshfs u@box:/ rw
43 27 0:52 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw
"""


@pytest.mark.parametrize(("path", "fstype", "mode"), [
    ("/home/u/docs", "ext4", "events"),
    ("/mnt/share/docs", "nfs4", "poll"),
    ("/mnt/share/local/docs", "ext4", "events"),  # the longest mount point wins
    ("/mnt/shared", "ext4", "events"),  # a prefix of the name, not of the path
    ("/home/u/remote box/notes", "fuse.sshfs", "poll"),
    ("/var/lib/docker/overlay2/x/merged/app", "overlay", "events"),
])
def test_mount_table_decides_auto_mode(path: str, fstype: str, mode: str) -> None:
    assert filesystem_type(path, MOUNTINFO) == fstype
    assert auto_watch_mode(path, MOUNTINFO) == mode


# --- Watcher on a real observer ---------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()

    def on_event(self, key: str, rel: str, kind: str, dest: str | None) -> None:
        with self._lock:
            self.events.append((kind, rel) if dest is None else (kind, rel, dest))

    def on_error(self, key: str, exc: BaseException) -> None:
        with self._lock:
            self.errors.append((key, exc))

    def wait_for(self, *wanted: tuple, timeout: float = 5.0) -> None:
        """Until one of ``wanted`` (equivalent hints) has arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(w in self.events for w in wanted):
                    return
            time.sleep(0.02)
        raise AssertionError(f"none of {wanted} in {self.events}")

    def settle(self, quiet: float) -> list[tuple]:
        """Wait until no new event arrived for ``quiet`` seconds; return all events."""
        seen = -1
        while True:
            with self._lock:
                count = len(self.events)
            if count == seen:
                return list(self.events)
            seen = count
            time.sleep(quiet)

    def reset(self) -> None:
        with self._lock:
            self.events.clear()


@pytest.fixture(params=["events", "poll"])
def watched(request: pytest.FixtureRequest, tmp_path: Path
            ) -> Iterator[tuple[Path, Recorder, Watcher, Callable[[], None]]]:
    root = tmp_path / "root"
    root.mkdir()
    rec = Recorder()
    watcher = Watcher(rec.on_event, rec.on_error, ignore_paths={root / "state.db"})
    watcher.add_folder("f", root, request.param, poll_interval=0.2)
    watcher.start()
    assert watcher.mode_of("f") == request.param
    quiet = 0.5 if request.param == "poll" else 0.2
    yield root, rec, watcher, lambda: rec.settle(quiet)
    watcher.stop(2)


def test_create_modify_delete_are_reported(watched) -> None:
    root, rec, _, _ = watched
    (root / "a.md").write_text("one")
    rec.wait_for(("changed", "a.md"))
    rec.reset()
    (root / "a.md").write_text("two, longer")
    rec.wait_for(("changed", "a.md"))
    (root / "a.md").unlink()
    rec.wait_for(("deleted", "a.md"))
    assert rec.errors == []


def test_move_inside_the_folder_is_one_move(watched) -> None:
    root, rec, _, _ = watched
    (root / "sub").mkdir()
    (root / "a.md").write_text("x")
    rec.wait_for(("changed", "a.md"))
    (root / "a.md").rename(root / "sub" / "b.md")
    rec.wait_for(("moved", "a.md", "sub/b.md"))


def test_directory_renamed_inside_is_one_dir_move(watched) -> None:
    root, rec, _, settle = watched
    (root / "old" / "deep").mkdir(parents=True)
    (root / "old" / "deep" / "x.md").write_text("x")
    rec.wait_for(("changed", "old/deep/x.md"), ("dir", "old"))  # polling names the new directory
    settle()  # a write's events come in more than one piece: the last may follow the first late
    rec.reset()
    (root / "old").rename(root / "new")
    rec.wait_for(("dir_moved", "old", "new"))
    assert settle() == [("dir_moved", "old", "new")]


def test_directory_moved_in_is_one_dir_event(watched, tmp_path: Path) -> None:
    root, rec, _, settle = watched
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.md").write_text("x")
    outside.rename(root / "inbox")
    rec.wait_for(("dir", "inbox"))


def test_save_by_rename_reports_the_destination(watched) -> None:
    root, rec, _, settle = watched
    (root / "note.md").write_text("v1")
    rec.wait_for(("changed", "note.md"))
    settle()
    rec.reset()
    for temp in (".note.md.swp", "note.md.tmp"):
        (root / temp).write_text("v2, saved")
        (root / temp).rename(root / "note.md")
        rec.wait_for(("changed", "note.md"))
    assert all(".swp" not in str(e) and ".tmp" not in str(e) for e in settle())


def test_ignored_and_state_files_alone_produce_nothing(watched) -> None:
    root, rec, _, settle = watched
    (root / ".hidden").write_text("x")
    (root / "scratch.tmp").write_text("x")
    (root / "backup~").write_text("x")
    (root / "state.db").write_text("x")
    (root / "state.db-wal").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("x")
    (root / "marker.md").write_text("x")  # proves the events above had time to arrive
    rec.wait_for(("changed", "marker.md"))
    assert {e[1] for e in settle()} == {"marker.md"}


def test_non_utf8_name_is_kept_surrogate_escaped(watched) -> None:
    root, rec, _, _ = watched
    fd = os.open(os.path.join(os.fsencode(root), b"caf\xe9.md"), os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    rec.wait_for(("changed", "caf\udce9.md"))


def _inotify_masks(directory: Path) -> list[int]:
    """The event masks this process's inotify watches on ``directory`` ask the kernel for."""
    ino = os.stat(directory).st_ino
    masks = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            lines = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = dict(f.split(":", 1) for f in line.split()[1:] if ":" in f) if line.startswith("inotify") else {}
            if fields and int(fields["ino"], 16) == ino:
                masks.append(int(fields["mask"], 16))
    return masks


def test_reading_and_walking_the_folder_is_no_event(watched) -> None:
    root, rec, watcher, settle = watched
    (root / "sub").mkdir()
    (root / "sub" / "a.md").write_text("x")
    rec.wait_for(("changed", "sub/a.md"), ("dir", "sub"))
    settle()
    rec.reset()
    for _ in range(3):  # what a pass does to a file it does not change: list, stat, read
        assert [e.name for e in os.scandir(root / "sub")] == ["a.md"]
        assert (root / "sub" / "a.md").read_text() == "x"
    assert settle() == []
    if watcher.mode_of("f") == "events":  # the kernel is not even asked for opens and plain closes
        in_open, in_close_nowrite = 0x20, 0x10
        masks = _inotify_masks(root) + _inotify_masks(root / "sub")
        assert masks and all(m & (in_open | in_close_nowrite) == 0 for m in masks)


def test_fifo_is_never_opened(watched) -> None:
    root, rec, _, settle = watched
    os.mkfifo(root / "pipe")
    (root / "marker.md").write_text("x")
    rec.wait_for(("changed", "marker.md"))
    # At most a hint: had anything opened the FIFO, the watcher would hang right here.
    assert {e for e in settle() if e[1] == "pipe"} <= {("changed", "pipe")}


def test_root_deleted_is_an_error(watched) -> None:
    root, rec, watcher, _ = watched
    os.rmdir(root)
    deadline = time.monotonic() + 5
    while not rec.errors and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rec.errors and isinstance(rec.errors[0][1], FileNotFoundError)
    assert not watcher.is_alive()


def test_is_alive_until_stopped_and_stop_is_quick(watched) -> None:
    _, _, watcher, _ = watched
    assert watcher.is_alive()
    started = time.monotonic()
    watcher.stop(2)
    assert time.monotonic() - started < 1.0
    assert not watcher.is_alive()


def test_auto_on_a_local_filesystem_uses_events(tmp_path: Path) -> None:
    watcher = Watcher(lambda *a: None, lambda *a: None)
    watcher.add_folder("f", tmp_path, "auto")
    assert watcher.mode_of("f") == "events"


def test_inotify_watch_limit_falls_back_to_polling(tmp_path: Path, monkeypatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    from watchdog.observers.inotify import InotifyObserver

    def refuse(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(InotifyObserver, "schedule", refuse)
    rec = Recorder()
    watcher = Watcher(rec.on_event, rec.on_error)
    watcher.add_folder("f", tmp_path, "auto", poll_interval=0.2)
    watcher.start()
    try:
        assert watcher.mode_of("f") == "poll"
        assert "fs.inotify.max_user_watches" in caplog.text
        (tmp_path / "a.md").write_text("x")
        rec.wait_for(("changed", "a.md"))
        assert watcher.is_alive()
    finally:
        watcher.stop(2)


def test_missing_root_is_reported_not_raised(tmp_path: Path) -> None:
    rec = Recorder()
    watcher = Watcher(rec.on_event, rec.on_error)
    watcher.add_folder("f", tmp_path / "nope", "events")
    watcher.start()
    try:
        assert watcher.mode_of("f") == "off"
        assert rec.errors and rec.errors[0][0] == "f"
        assert not watcher.is_alive()
    finally:
        watcher.stop(2)


def test_raising_callback_does_not_kill_the_watcher(tmp_path: Path) -> None:
    rec = Recorder()

    def boom(key: str, rel: str, kind: str, dest: str | None) -> None:
        raise RuntimeError("bug in the daemon")

    watcher = Watcher(boom, rec.on_error)
    watcher.add_folder("f", tmp_path, "events")
    watcher.start()
    try:
        (tmp_path / "a.md").write_text("x")
        deadline = time.monotonic() + 5
        while not rec.errors and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(rec.errors[0][1], RuntimeError)
        assert watcher.is_alive()
    finally:
        watcher.stop(2)
