"""Faults from the server: an import followed by a round of edits converges to an exact
mirror after a few `difysync reconcile` runs, whatever the server (or its proxy) does
wrong, one fault at a time and all at once.

Every scenario imports N_FILES files (300 here, 200 with all faults at once; not 500, to keep this module well under
90 s on a shared 2-core CI machine; the code paths are the same), then modifies 10%,
renames a few and deletes a few, and checks after each phase:

- every run exits 0 or 1, the last one 0 with failed == 0;
- the dataset is an exact mirror (names and contents), without duplicate names;
- no request was tried more than dify.retries + 1 times (counted client side, per call,
  and server side per (method, path) of each run for paths naming one document);
- `difysync status --json` lists only the expected skip.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import httpx
import pytest

from difysync import dify as dify_module
from difysync.emulator import EmulatorServer
from difysync.emulator.faults import FaultRule, Faults
from difysync.naming import document_name

from .sandbox import Sandbox

N_FILES = 300
ALL_AT_ONCE_FILES = 200          # hangs cost a client timeout each: fewer files there
RETRIES = 5                      # dify.retries: at most RETRIES + 1 tries per request
SKIPPED = {"skip.png": "unsupported file type (.png)"}
MAX_RUNS = 5


# --------------------------------------------------------------------------- helpers

class AttemptCounter:
    """Counts, for every DifyClient._request call, how many HTTP requests it sent itself
    (a nested look-up made by before_retry counts for the look-up, not for the create)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, int]] = []

    def stack(self) -> list[list[int]]:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def worst(self) -> tuple[str, str, int]:
        with self.lock:
            return max(self.calls, key=lambda c: c[2], default=("", "", 0))


@pytest.fixture
def attempts(monkeypatch):
    counter = AttemptCounter()
    real_request = dify_module.DifyClient._request
    real_http = httpx.Client.request

    def counted_request(self, method, path, **kwargs):
        stack = counter.stack()
        stack.append([0])
        try:
            return real_request(self, method, path, **kwargs)
        finally:
            n = stack.pop()[0]
            with counter.lock:
                counter.calls.append((method, path, n))

    def counted_http(self, *args, **kwargs):
        stack = counter.stack()
        if stack:
            stack[-1][0] += 1
        return real_http(self, *args, **kwargs)

    monkeypatch.setattr(dify_module.DifyClient, "_request", counted_request)
    monkeypatch.setattr(httpx.Client, "request", counted_http)
    return counter


def make_box(tmp_path, emu, *, timeout: float = 5, extra_dify: str = "") -> Sandbox:
    box = Sandbox(tmp_path, emu, extra_dify=f"retries = {RETRIES}\n{extra_dify}")
    if timeout != 5:
        box.config.write_text(box.config.read_text().replace("timeout_seconds = 5",
                                                             f"timeout_seconds = {timeout}"))
    return box


def populate(box: Sandbox, n: int = N_FILES) -> None:
    for i in range(n):
        box.write(f"dir{i % 12}/sub{i % 3}/file-{i}.md", f"# file {i}\n" + "body line\n" * (i % 7))
    box.write("skip.png", "not an image the server accepts")


def edit(box: Sandbox, n: int = N_FILES) -> None:
    """Modify 10%, rename 5, delete 5 (a folder's worth of renames included)."""
    for i in range(0, n, 10):
        box.write(f"dir{i % 12}/sub{i % 3}/file-{i}.md", f"# file {i}, edited\n")
    for i in (1, 13, 25, 37, 49):
        box.move(f"dir{i % 12}/sub{i % 3}/file-{i}.md", f"renamed/r-{i}.md")
    for i in (3, 15, 27, 39, 51):
        box.remove(f"dir{i % 12}/sub{i % 3}/file-{i}.md")


def expected(box: Sandbox) -> dict[str, bytes]:
    out = {}
    for path in box.root.rglob("*"):
        rel = path.relative_to(box.root).as_posix()
        if path.is_file() and rel not in SKIPPED:
            out[document_name(rel)] = path.read_bytes()
    return out


def own_traceback(stderr: str) -> bool:
    """A traceback through difysync's own code (the in-process emulator logs its own when
    a client gives up mid-upload: ClientDisconnect; that is not difysync's)."""
    return re.search(r'File "[^"]*/difysync/(?!emulator/)', stderr) is not None


def converge(box: Sandbox, attempts: AttemptCounter, *, pause: float = 0.0,
             codes: tuple[int, ...] = (0, 1)) -> list:
    """Reconcile until the dataset mirrors the tree; at most MAX_RUNS runs, each exiting
    with one of ``codes``; the last must exit 0."""
    want = expected(box)
    results = []
    for _ in range(MAX_RUNS):
        box.emu.reset_requests()
        result = box.reconcile()
        results.append(result)
        assert result.code in codes, (result.code, result.stderr[-2000:])
        assert not own_traceback(result.stderr), result.stderr[-3000:]
        per_path = Counter((r.method, r.path) for r in box.emu.requests
                           if r.method in ("POST", "DELETE") and "/documents/" in r.path)
        if per_path:
            (where, count), = per_path.most_common(1)
            # a document's update/delete may also be re-sent once per pass by a rename+update
            assert count <= RETRIES + 1, (where, count)
        if result.code == 0 and result.json["failed"] == 0 and result.json["waiting"] == 0 \
                and box.contents() == want:
            break
        if pause:
            time.sleep(pause)
    last = results[-1]
    assert last.code == 0, (len(results), last.stderr[-2000:], last.json["errors"])
    assert last.json["failed"] == 0
    got = box.contents()   # asserts no duplicate names
    assert set(got) == set(want), (set(want) - set(got), set(got) - set(want))
    assert got == want
    method, path, worst = attempts.worst()
    assert worst <= RETRIES + 1, (method, path, worst)
    status = box.cli("status", "-c", str(box.config), "--json")
    assert status.code == 0
    problems = {p["rel_path"]: (p["kind"], p["reason"]) for p in status.json["problems"]}
    assert problems == {rel: ("skipped", reason) for rel, reason in SKIPPED.items()}
    assert [f["journal"] for f in status.json["folders"]] == [0]  # nothing left unsettled
    return results


def import_then_edit(box: Sandbox, attempts: AttemptCounter, *, pause: float = 0.0) -> None:
    populate(box)
    first = converge(box, attempts, pause=pause)
    assert len(first) <= MAX_RUNS
    edit(box)
    converge(box, attempts, pause=pause)


# --------------------------------------------------------------------- one at a time

@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_5xx_on_ten_percent_of_requests(tmp_path, attempts, legacy):
    faults = Faults(error_rate=0.10, error_statuses=[500, 502, 503], seed=1)
    with EmulatorServer(legacy=legacy, faults=faults) as emu:
        box = make_box(tmp_path, emu)
        import_then_edit(box, attempts)
        assert emu.count() > 0


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_hangs_past_the_client_timeout(tmp_path, attempts, legacy):
    # A hung request is still carried out by the server once the hang is over, after the
    # client gave up: on a legacy server a create re-sent meanwhile is a duplicate unless
    # the client (or the next pass) deals with it.
    faults = Faults(hang_rate=0.05, hang_seconds=1.3, seed=2)
    with EmulatorServer(legacy=legacy, faults=faults) as emu:
        box = make_box(tmp_path, emu, timeout=1)
        import_then_edit(box, attempts)


def test_bursts_of_the_403_rate_limit_answer(tmp_path, attempts):
    faults = Faults(rate_limit_403=20, seed=3)
    with EmulatorServer(faults=faults) as emu:
        box = make_box(tmp_path, emu)
        populate(box)
        converge(box, attempts)
        emu.faults.rate_limit_403 = 20
        edit(box)
        converge(box, attempts)


def test_429_with_retry_after(tmp_path, attempts):
    faults = Faults(rate_limit_429=2, retry_after=1, seed=4)
    with EmulatorServer(faults=faults) as emu:
        box = make_box(tmp_path, emu)
        populate(box)
        converge(box, attempts)
        emu.faults.rate_limit_429 = 2
        edit(box)
        converge(box, attempts)


def test_backoff_honours_retry_after(tmp_path, attempts):
    faults = Faults(rate_limit_429=2, retry_after=1)
    with EmulatorServer(faults=faults) as emu:
        box = make_box(tmp_path, emu)
        box.write("a.md", "a")
        started = time.monotonic()
        result = box.reconcile()
        elapsed = time.monotonic() - started
        assert result.code == 0 and result.json["created"] == 1
        assert elapsed >= 1.9, elapsed  # two 429s, one second each (not backoff_max 0.1 s)
        listing = [r for r in emu.requests if r.method == "GET" and r.path.endswith("/documents")]
        assert len(listing) == 3  # the listing: 429, 429, 200


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_connections_dropped_before_the_server_acts(tmp_path, attempts, legacy):
    faults = Faults(drop_rate=0.05, seed=5)
    with EmulatorServer(legacy=legacy, faults=faults) as emu:
        box = make_box(tmp_path, emu)
        import_then_edit(box, attempts)


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_connections_dropped_after_the_server_committed(tmp_path, attempts, legacy):
    faults = Faults(drop_rate=0.05, drop_after_commit=True, seed=6)
    with EmulatorServer(legacy=legacy, faults=faults) as emu:
        box = make_box(tmp_path, emu)
        import_then_edit(box, attempts)
        # no create landed twice (contents() asserts unique names; count documents too)
        assert len(emu.store.documents(box.dataset)) == len(expected(box))


def test_document_indexing_on_deletes_legacy_server_waits_then_deletes(tmp_path, attempts):
    """Legacy servers refuse DELETE while a document is indexing; FaultRules add the same
    answer on a few more deletes. Deletes wait and go through on a later run."""
    with EmulatorServer(legacy=True, indexing_delay=0.6) as emu:
        box = make_box(tmp_path, emu)
        populate(box, 60)
        converge_small = lambda: converge(box, attempts, pause=0.7)  # noqa: E731
        converge_small()
        for _ in range(3):
            emu.faults.fail_next.append(FaultRule(status=400, code="document_indexing",
                                                  message="Cannot delete document during indexing.",
                                                  method="DELETE"))
        # Re-index the documents about to be deleted so the server refuses for real too.
        for i in (3, 15, 27):
            doc = emu.store.document_by_name(box.dataset, document_name(f"dir{i % 12}/sub{i % 3}/file-{i}.md"))
            emu.store.set_document(box.dataset, doc.id, indexing_status="indexing")
        for i in (3, 15, 27, 39, 51):
            box.remove(f"dir{i % 12}/sub{i % 3}/file-{i}.md")
        first = box.reconcile()
        assert first.code in (0, 1) and not own_traceback(first.stderr)
        assert first.json["deleted"] < 5
        for i in (3, 15, 27):
            doc = emu.store.document_by_name(box.dataset, document_name(f"dir{i % 12}/sub{i % 3}/file-{i}.md"))
            if doc is not None:
                emu.store.set_document(box.dataset, doc.id, indexing_status=None)
        converge(box, attempts, pause=0.7)


def test_document_indexing_fault_rules_on_a_current_server(tmp_path, attempts):
    with EmulatorServer() as emu:
        box = make_box(tmp_path, emu)
        populate(box, 60)
        converge(box, attempts)
        for _ in range(4):
            emu.faults.fail_next.append(FaultRule(status=400, code="document_indexing",
                                                  message="Cannot delete document during indexing.",
                                                  method="DELETE"))
        for i in (3, 15, 27, 39, 51):
            box.remove(f"dir{i % 12}/sub{i % 3}/file-{i}.md")
        converge(box, attempts)


def test_slow_responses(tmp_path, attempts):
    faults = Faults(slow_rate=0.01, slow_seconds=2, seed=7)
    with EmulatorServer(faults=faults) as emu:
        box = make_box(tmp_path, emu, timeout=5)
        import_then_edit(box, attempts)


# ------------------------------------------------------------------------ all at once

@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_all_faults_at_once(tmp_path, attempts, legacy):
    faults = Faults(error_rate=0.10, hang_rate=0.05, hang_seconds=1.3, rate_limit_403=20,
                    rate_limit_429=2, retry_after=1, drop_rate=0.05, drop_after_commit=True,
                    slow_rate=0.01, slow_seconds=0.5, seed=8)
    with EmulatorServer(legacy=legacy, faults=faults) as emu:
        box = make_box(tmp_path, emu, timeout=1)
        populate(box, ALL_AT_ONCE_FILES)
        # With every fault on (and the emulator sharing this process's GIL, so a 1 s timeout
        # is tight), one request now and then exhausts its RETRIES + 1 tries on timeouts and
        # drops: that action fails alone (exit 1) and the next pass converges; only several
        # such requests in a row count as an outage (exit 69).
        converge(box, attempts, pause=0.1, codes=(0, 1))
        emu.faults.update(rate_limit_403=20, rate_limit_429=2)
        emu.faults.fail_next.append(FaultRule(status=400, code="document_indexing",
                                              message="Cannot delete document during indexing.",
                                              method="DELETE"))
        edit(box, ALL_AT_ONCE_FILES)
        converge(box, attempts, pause=0.1, codes=(0, 1))


# ------------------------------------------------------------- client-side limiter

def test_requests_per_minute_spaces_requests(tmp_path):
    with EmulatorServer() as emu:
        box = make_box(tmp_path, emu, extra_dify="requests_per_minute = 600")
        for i in range(20):
            box.write(f"{i}.md", str(i))
        started = time.monotonic()
        result = box.reconcile()
        elapsed = time.monotonic() - started
        assert result.code == 0 and result.json["created"] == 20
        assert elapsed >= 1.9, elapsed  # 21 requests (listing + 20 creates) at 10 per second


def test_requests_per_minute_zero_means_no_limiter(tmp_path):
    assert dify_module.RateLimiter(0).interval == 0
    with EmulatorServer() as emu:
        box = make_box(tmp_path, emu, extra_dify="requests_per_minute = 0")
        for i in range(20):
            box.write(f"{i}.md", str(i))
        started = time.monotonic()
        result = box.reconcile()
        elapsed = time.monotonic() - started
        assert result.code == 0 and result.json["created"] == 20
        assert elapsed < 1.5, elapsed
