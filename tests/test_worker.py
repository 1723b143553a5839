"""The service's folder worker, driven step by step on a fake clock: when a full pass, a
targeted pass or an indexing poll is due, how requests coalesce, how outages back off,
and what follows an unexpected error. Real HTTP to the emulator, a real state DB; no
thread and no real sleeping for the timing itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from difysync.config import load_settings
from difysync.daemon import FolderWorker, Job
from difysync.dify import DifyClient
from difysync.emulator import EmulatorServer, FaultRule
from difysync.remote import IndexingPoller
from difysync.state import StateStore

from .sandbox import FakeClock, Sandbox

POLL, POLL_MAX, FULL_MINUTES = 2.0, 5.0, 1.0


@pytest.fixture
def emu():
    with EmulatorServer(indexing_delay=0.0) as server:
        yield server


@pytest.fixture
def world(tmp_path: Path, emu: EmulatorServer):
    """A folder with one file, a worker for it on a fake clock, and the emulator."""
    box = Sandbox(tmp_path, emu)
    box.config.write_text(box.config.read_text().replace(
        "[[folders]]", f"[schedule]\nstatus_poll_seconds = {POLL}\nstatus_poll_max_seconds = {POLL_MAX}\n"
                       f"full_reconcile_minutes = {FULL_MINUTES}\n[[folders]]"))
    box.write("a.md", "a")
    settings = load_settings(box.config)
    clock = FakeClock()
    client = DifyClient(emu.base_url, emu.api_key)
    store = StateStore(settings.state_db)
    worker = FolderWorker(settings.folders[0], settings, client, open_store=lambda: store,
                          poller=IndexingPoller(client), clock=clock)
    yield box, worker, clock
    store.close()
    client.close()


def test_nothing_is_due_until_something_asks(world):
    _box, worker, _clock = world
    assert worker.due() is None


def test_a_requested_full_pass_runs_and_the_next_one_is_scheduled_an_interval_later(world):
    box, worker, clock = world
    worker.request_full()
    assert worker.step() is Job.FULL
    assert "a.md" in box.docs()
    clock.advance(FULL_MINUTES * 60 * 0.99)
    due = worker.due()
    assert due is None or due[0] is Job.POLL
    clock.advance(FULL_MINUTES * 60 * 0.3)  # past the interval and its jitter (at most 25 %)
    assert worker.step() is Job.FULL


def test_path_requests_coalesce_into_one_targeted_pass(world):
    _box, worker, _clock = world
    worker.request_paths(["b.md"])
    worker.request_paths(["a.md", "b.md"])
    assert worker.due() == (Job.PATHS, ["a.md", "b.md"])
    assert worker.due() is None


def test_a_full_pass_request_takes_the_waiting_paths_with_it(world):
    _box, worker, _clock = world
    worker.request_paths(["a.md"])
    worker.request_full()
    assert worker.due() == (Job.FULL, None)
    assert worker.due() is None


def test_after_uploads_polls_stretch_until_nothing_is_in_flight(world, emu):
    box, worker, clock = world
    emu.store.indexing_delay = 3600  # stays in flight
    worker.request_full()
    worker.step()
    gaps = []
    for _ in range(4):
        waited = worker.seconds_to_next()
        clock.advance(waited)
        assert worker.step() is Job.POLL
        gaps.append(waited)
    assert gaps[0] == pytest.approx(POLL)
    assert gaps == sorted(gaps) and gaps[-1] == pytest.approx(POLL_MAX)
    emu.store.indexing_delay = 0.0
    clock.advance(worker.seconds_to_next())
    assert worker.step() is Job.POLL
    assert box.cli("status", "-c", str(box.config), "--json").json["in_flight"] == []
    clock.advance(POLL_MAX * 3)
    assert worker.due() is None  # nothing in flight: no more polls


def test_an_outage_backs_off_then_a_full_pass_catches_up(world, emu):
    box, worker, clock = world
    for _ in range(20):
        emu.faults.fail_next.append(FaultRule(status=503, body="<html>down</html>"))
    worker.request_full()
    assert worker.step() is Job.FULL
    assert worker.status.backoff_until > clock.now
    worker.request_paths(["a.md"])
    assert worker.due() is None  # backing off: nothing runs, the requests wait
    emu.faults.fail_next.clear()
    clock.advance(worker.status.backoff_until - clock.now)
    assert worker.step() is Job.FULL
    assert "a.md" in box.docs()
    assert worker.status.backoff_until == 0.0


def test_an_unexpected_error_in_a_pass_is_followed_by_a_full_pass(world, emu):
    _box, worker, clock = world
    # A listing item without an id: nothing in difysync expects that, so the pass crashes.
    emu.faults.fail_next.append(FaultRule(status=200, method="GET", content_type="application/json",
                                          body='{"data": [{"name": "x"}], "has_more": false, "limit": 100, '
                                               '"total": 1, "page": 1}'))
    worker.request_full()
    assert worker.step() is Job.FULL
    assert worker.status.backoff_until > clock.now
    clock.advance(worker.status.backoff_until - clock.now)
    assert worker.due() == (Job.FULL, None)


def test_a_stopped_worker_runs_nothing(world):
    _box, worker, _clock = world
    worker.request_full()
    worker.stop()
    assert worker.due() is None


def test_lost_events_bring_a_full_pass_once_the_folder_is_quiet_not_at_once(tmp_path, emu, monkeypatch):
    """An inotify overflow comes in the middle of a storm: a full pass started right away
    would walk a tree still being rewritten."""
    from difysync.daemon import Daemon
    from difysync.watch import DirtyTracker

    box = Sandbox(tmp_path, emu)
    for name, value in box.env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(box.config)
    daemon = Daemon(box.config, settings)
    clock = FakeClock()
    key = settings.folders[0].key
    tracker = daemon.trackers[key] = DirtyTracker(3.0, 10.0, 60.0, clock=clock)
    daemon._on_watch_error(key, OSError("inotify queue overflowed: events were lost"))
    tracker.touch("still/being/written.md")
    clock.advance(2.0)
    tracker.touch("still/being/written.md")
    clock.advance(2.0)
    assert tracker.due().full_rescan is False
    clock.advance(1.5)
    assert tracker.due().full_rescan is True
    daemon.client.close()
