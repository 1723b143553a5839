"""Every delay schedule of difysync, as tenacity wait strategies.

There are three kinds of waiting in the program, and each has one function here:

``request_wait``
    between re-sends of one HTTP request (``DifyClient._request``): honours the server's
    Retry-After (up to a cap), and otherwise backs off exponentially with jitter.
``outage_wait``
    between passes of a folder whose Dify is down (the daemon): 2 s doubling to 300 s,
    each pause drawn from the last 20 % below its ceiling, so folders drift apart.
``poll_wait``
    between indexing-status polls (the daemon, ``wait_for_indexing``): the interval
    stretches by ``factor`` per poll, up to a cap; no jitter.

A retry loop hands the strategy to ``tenacity.Retrying(wait=...)``. A caller that is not
a retry loop (a worker that only needs "how long until the next try?") keeps a
``Backoff``, which counts the attempts and asks the strategy.

This module only computes delays. It never sleeps, never reads the clock, never retries
or catches anything, and never decides *whether* to try again: that stays with the caller.
"""

from __future__ import annotations

import threading

from tenacity import Future, RetryCallState
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

__all__ = ["Backoff", "delay_after", "outage_wait", "poll_wait", "request_wait"]


class _RetryAfterOr(wait_base):
    """The ``retry_after`` (seconds) of the exception that caused this retry, capped at
    ``cap``; ``otherwise`` when there is none (no exception, or ``retry_after`` is None).
    difysync's TransientError carries ``retry_after``; any exception with that attribute
    does."""

    def __init__(self, cap: float, otherwise: wait_base) -> None:
        self.cap = cap
        self.otherwise = otherwise

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(max(0.0, float(retry_after)), self.cap)
        return self.otherwise(retry_state)


def _jittered(start: float, cap: float, floor: float) -> wait_base:
    """Exponential, doubling from ``start`` to ``cap`` (the ceiling c of retry n is
    min(cap, start * 2**(n-1))), each pause drawn uniformly from [floor * c, c].

    Written as fixed part + random part because tenacity's wait_random_exponential alone
    only draws from [0, c] (full jitter): floor*c from wait_exponential plus a draw from
    [0, (1-floor)*c] from wait_random_exponential is exactly uniform on [floor*c, c], and
    works the same on every tenacity since 8.2 (both keep min=0)."""
    return (wait_exponential(multiplier=start * floor, max=cap * floor)
            + wait_random_exponential(multiplier=start * (1 - floor), max=cap * (1 - floor)))


def request_wait(base_seconds: float, max_seconds: float, max_retry_after: float) -> wait_base:
    """The pause before a re-send of one request.

    If the exception that caused the retry has a ``retry_after`` (seconds), that, capped at
    ``max_retry_after``. Otherwise retry n waits between c/2 and c, c = min(max_seconds,
    base_seconds * 2**(n-1)): base_seconds/2..base_seconds first, doubling, never more
    than max_seconds (difysync's schedule since 0.1; RetryPolicy's fields feed it)."""
    return _RetryAfterOr(max_retry_after, _jittered(base_seconds, max_seconds, floor=0.5))


def outage_wait(start: float = 2.0, cap: float = 300.0) -> wait_base:
    """The pause of a folder in outage backoff: failure n waits between 0.8*c and c,
    c = min(cap, start * 2**(n-1)) (2 s, 4 s, 8 s ... 300 s with the defaults)."""
    return _jittered(start, cap, floor=0.8)


def poll_wait(first: float, cap: float, factor: float = 1.5) -> wait_base:
    """The interval before poll n+1: min(cap, first * factor**(n-1)), no jitter
    (first, first*1.5, first*2.25 ... cap)."""
    return wait_exponential(multiplier=first, exp_base=factor, max=cap)


class _RetryAfter(Exception):
    """Stands for "the server asked for this many seconds" in a synthetic call state."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def delay_after(wait: wait_base, failures: int, retry_after: float | None = None) -> float:
    """What ``wait`` says to pause after ``failures`` failed attempts (1 = after the first),
    as if the last one had failed with this ``retry_after``.

    tenacity hands a wait strategy a RetryCallState, which only its retry loop builds.
    Callers outside such a loop (Backoff, RetryPolicy.pause) get one from here and nowhere
    else, so the few fields our strategies read (attempt_number, outcome) are filled in one
    place, and a tenacity release that changes RetryCallState's constructor breaks one
    function, not every caller."""
    if failures < 1:
        raise ValueError("failures counts failed attempts and starts at 1")
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = failures
    if retry_after is not None:
        outcome = Future(failures)
        outcome.set_exception(_RetryAfter(retry_after))
        state.outcome = outcome
    return float(wait(state))


class Backoff:
    """One wait strategy and a count of the attempts made since the last success, for
    callers that are not a retry loop: ``next_delay()`` on each failure, ``reset()`` on
    success. Safe to share between threads."""

    def __init__(self, wait: wait_base) -> None:
        self.wait = wait
        self._attempts = 0
        self._lock = threading.Lock()

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset (consecutive failures)."""
        return self._attempts

    def next_delay(self, retry_after: float | None = None) -> float:
        """Count one more failure and return the pause before the next try; ``retry_after``
        is what the server asked for, if anything (only request_wait honours it)."""
        with self._lock:
            self._attempts += 1
            failures = self._attempts
        return delay_after(self.wait, failures, retry_after)

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        with self._lock:
            self._attempts = 0

    def __repr__(self) -> str:
        return f"Backoff(attempts={self._attempts})"
