"""The delay schedules of difysync.backoff, and DifyClient's retries built on them.

The schedules are checked exactly (the random draw pinned to its low or high end) and by
sampling (every draw within bounds); the client is checked over real HTTP against the
emulator with an injected sleep that records the pauses, so nothing here really waits.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import httpx
import pytest
import tenacity

from difysync.backoff import Backoff, delay_after, outage_wait, poll_wait, request_wait
from difysync.dify import DifyClient, RetryPolicy
from difysync.emulator import EmulatorServer, FaultRule
from difysync.emulator.faults import nginx_html
from difysync.errors import RateLimited, ServerUnreachable, TransientError

KEY = "dataset-backoff-suite-key"
DATA = {"indexing_technique": "economy", "process_rule": {"mode": "automatic"}}
SAMPLES = 300


@pytest.fixture
def lowest(monkeypatch):
    """Every random draw lands on the low end of its range."""
    monkeypatch.setattr(random, "uniform", lambda a, b: min(a, b))
    monkeypatch.setattr(random, "random", lambda: 0.0)


@pytest.fixture
def highest(monkeypatch):
    """Every random draw lands on the high end of its range."""
    monkeypatch.setattr(random, "uniform", lambda a, b: max(a, b))
    monkeypatch.setattr(random, "random", lambda: 1.0)


def schedule(wait, n: int) -> list[float]:
    return [delay_after(wait, k) for k in range(1, n + 1)]


# ------------------------------------------------------------------------- request_wait
def test_request_wait_ceilings_double_from_base_up_to_max(highest):
    assert schedule(request_wait(0.5, 30.0, 120.0), 9) == pytest.approx(
        [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])


def test_request_wait_never_goes_below_half_the_ceiling(lowest):
    assert schedule(request_wait(0.5, 30.0, 120.0), 8) == pytest.approx(
        [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0])


def test_request_wait_draws_stay_within_bounds_and_spread():
    wait = request_wait(0.5, 30.0, 120.0)
    for n in range(1, 10):
        ceiling = min(30.0, 0.5 * 2 ** (n - 1))
        draws = [delay_after(wait, n) for _ in range(SAMPLES)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws)
        assert max(draws) - min(draws) > ceiling / 4  # jittered, not one fixed value


def test_request_wait_honours_retry_after_up_to_the_cap():
    wait = request_wait(0.5, 30.0, 5.0)
    assert delay_after(wait, 1, retry_after=1.0) == 1.0
    assert delay_after(wait, 6, retry_after=1.0) == 1.0  # not stretched by the attempt count
    assert delay_after(wait, 1, retry_after=0.0) == 0.0
    assert delay_after(wait, 1, retry_after=3600.0) == 5.0
    assert 0.25 <= delay_after(wait, 1, retry_after=None) <= 0.5


def test_request_wait_reads_retry_after_from_the_exception_inside_tenacity():
    # the real thing: tenacity hands the wait the RetryCallState of a failed attempt
    sleeps: list[float] = []
    errors = iter([RateLimited("slow down", status=429, retry_after=2.0),
                   RateLimited("slow down", status=429, retry_after=999.0),
                   ServerUnreachable("down", status=503)])

    call = _raising_then_ok(errors)

    retrying = tenacity.Retrying(wait=request_wait(0.5, 30.0, 60.0), sleep=sleeps.append,
                                 retry=tenacity.retry_if_exception_type(TransientError),
                                 stop=tenacity.stop_after_attempt(5), reraise=True)
    assert retrying(call) == "ok"
    assert sleeps[:2] == [2.0, 60.0]
    assert 1.0 <= sleeps[2] <= 2.0  # no Retry-After: the third retry's exponential pause


def test_an_exception_without_retry_after_gets_the_exponential_pause():
    sleeps: list[float] = []
    errors = iter([ValueError("no attribute at all")])

    call = _raising_then_ok(errors)

    retrying = tenacity.Retrying(wait=request_wait(0.5, 30.0, 60.0), sleep=sleeps.append,
                                 stop=tenacity.stop_after_attempt(2))
    assert retrying(call) == "ok"
    assert len(sleeps) == 1 and 0.25 <= sleeps[0] <= 0.5


def test_retry_policy_pause_is_request_wait(highest):
    policy = RetryPolicy(base_seconds=0.5, max_seconds=3.0, max_retry_after=2.0)
    assert [policy.pause(a, None) for a in range(5)] == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0])
    assert policy.pause(0, 3600.0) == 2.0
    assert policy.pause(3, 0.5) == 0.5


# -------------------------------------------------------------------------- outage_wait
def test_outage_wait_doubles_from_2s_to_300s(highest):
    assert schedule(outage_wait(), 11) == pytest.approx(
        [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300])


def test_outage_wait_jitter_takes_at_most_a_fifth_off(lowest):
    assert schedule(outage_wait(), 10) == pytest.approx(
        [1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 240, 240])


def test_outage_wait_draws_stay_within_bounds():
    wait = outage_wait(start=1.0, cap=20.0)
    for n in range(1, 8):
        ceiling = min(20.0, 2 ** (n - 1))
        draws = [delay_after(wait, n) for _ in range(SAMPLES)]
        assert all(0.8 * ceiling <= d <= ceiling for d in draws)
        assert max(draws) > min(draws)


def test_outage_wait_ignores_retry_after(highest):
    # a folder's outage schedule is ours; only the request schedule obeys the server
    assert delay_after(outage_wait(), 1, retry_after=100.0) == pytest.approx(2.0)


# ---------------------------------------------------------------------------- poll_wait
def test_poll_wait_stretches_by_half_up_to_the_cap():
    assert schedule(poll_wait(1.0, 10.0), 8) == pytest.approx(
        [1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0, 10.0])


def test_poll_wait_has_no_jitter_and_takes_other_factors():
    wait = poll_wait(5.0, 60.0, factor=2.0)
    assert schedule(wait, 6) == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert schedule(wait, 6) == schedule(wait, 6)
    assert delay_after(poll_wait(2.0, 30.0), 10_000) == 30.0  # no overflow far out


def test_delay_after_counts_failures_from_one():
    with pytest.raises(ValueError):
        delay_after(poll_wait(1.0, 10.0), 0)


# ------------------------------------------------------------------------------ Backoff
def test_backoff_advances_and_resets():
    backoff = Backoff(poll_wait(1.0, 10.0))
    assert backoff.attempts == 0
    assert [backoff.next_delay() for _ in range(4)] == pytest.approx([1.0, 1.5, 2.25, 3.375])
    assert backoff.attempts == 4
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 1.0
    assert backoff.attempts == 1


def test_backoff_passes_retry_after_to_the_strategy():
    backoff = Backoff(request_wait(0.5, 30.0, 10.0))
    assert backoff.next_delay(retry_after=7.0) == 7.0
    assert backoff.next_delay(retry_after=70.0) == 10.0
    assert 1.0 <= backoff.next_delay() <= 2.0  # third failure, no Retry-After
    assert backoff.attempts == 3


def test_backoff_outage_schedule_like_the_daemon(highest):
    backoff = Backoff(outage_wait())
    assert [backoff.next_delay() for _ in range(10)] == pytest.approx(
        [2, 4, 8, 16, 32, 64, 128, 256, 300, 300])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(2.0)


def test_backoff_counts_every_failure_from_many_threads():
    backoff = Backoff(poll_wait(1.0, 10.0))

    def fail() -> None:
        for _ in range(200):
            backoff.next_delay()

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backoff.attempts == 1600


# ------------------------------------------------------------- the client, over real HTTP
@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def ds(emu: EmulatorServer) -> str:
    return emu.store.create_dataset("backoff", "economy")


def client(emu: EmulatorServer, sleeps: list[float], **policy: float) -> DifyClient:
    settings = {"attempts": 4, "base_seconds": 0.5, "max_seconds": 30.0, "max_retry_after": 120.0}
    settings.update(policy)
    return DifyClient(emu.base_url, KEY, retry=RetryPolicy(**settings), sleep=sleeps.append)


def test_a_429_with_retry_after_1_waits_one_second(emu, ds):
    emu.faults.fail_next.append(FaultRule(status=429, code="too_many_requests", method="GET",
                                          path_contains="/documents", headers={"Retry-After": "1"}))
    sleeps: list[float] = []
    with client(emu, sleeps) as c:
        assert c.list_documents(ds) == []
        assert c.stats == {"requests": 2, "mutating": 0, "retries": 1}
    assert sleeps == [1.0]
    assert emu.count("GET", "/documents") == 2


def test_retry_after_past_the_cap_waits_the_cap(emu, ds):
    emu.faults.rate_limit_429, emu.faults.retry_after = 2, 3600
    sleeps: list[float] = []
    with client(emu, sleeps, max_retry_after=5.0) as c:
        c.list_documents(ds)
    assert sleeps == [5.0, 5.0]


def test_a_proxy_503_with_retry_after_is_honoured_too(emu, ds):
    emu.faults.fail_next.append(FaultRule(status=503, body=nginx_html(503), method="GET",
                                          headers={"Retry-After": "2"}))
    sleeps: list[float] = []
    with client(emu, sleeps) as c:
        c.list_documents(ds)
    assert sleeps == [2.0]


def test_retries_stop_after_the_configured_attempts(emu):
    emu.faults.error_rate, emu.faults.error_statuses = 1.0, [500]
    sleeps: list[float] = []
    notices: list[tuple[str, float]] = []
    with client(emu, sleeps, attempts=3) as c:
        c.on_retry = lambda about, error, pause: notices.append((about, pause))
        with pytest.raises(TransientError) as info:
            c.check_key()
        assert c.stats == {"requests": 3, "mutating": 0, "retries": 2}
    assert type(info.value) is TransientError  # ours, not tenacity.RetryError
    assert info.value.status == 500
    assert emu.count("GET", "/datasets") == 3
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0
    assert notices == [("API key check", sleeps[0]), ("API key check", sleeps[1])]


def test_a_request_sent_without_retries_is_sent_once(emu):
    emu.faults.fail_next.append(FaultRule(status=503, body=nginx_html(503), method="POST"))
    sleeps: list[float] = []
    with client(emu, sleeps) as c:
        with pytest.raises(ServerUnreachable):
            c.create_dataset("once", "economy")  # retry=False: a re-send could duplicate it
        assert c.stats == {"requests": 1, "mutating": 1, "retries": 0}
    assert sleeps == []


def test_a_lost_create_is_looked_up_after_the_pause_not_sent_again(emu, ds):
    emu.faults.fail_next.append(FaultRule(action="drop_after_commit", method="POST"))
    sleeps: list[float] = []
    with client(emu, sleeps) as c:
        upload = c.create_by_file(ds, "a.md", b"a", DATA)
        assert c.stats["mutating"] == 1 and c.stats["retries"] == 1
    assert len(sleeps) == 1
    assert [d.id for d in emu.store.documents(ds)] == [upload.document.id]
    assert emu.count("POST", "create_by_file") == 1


def _raising_then_ok(errors):
    """A call that raises each of ``errors`` in turn, then answers "ok"."""
    def call() -> str:
        error = next(errors, None)
        if error is not None:
            raise error
        return "ok"
    return call
