"""The Dify client's contract suite: run against the emulator (current and legacy servers)
always, and against a real Dify when DIFYSYNC_TEST_DIFY_URL and DIFYSYNC_TEST_DIFY_KEY name
one (DIFYSYNC_TEST_DIFY_DATASET optionally picks an existing dataset to work in). Tests that
need fault switches or the emulator's store run on the emulator only.

A real-Dify run creates documents (and, without DIFYSYNC_TEST_DIFY_DATASET, datasets) whose
names start with a random prefix, and deletes them again afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from difysync.dify import PAGE_LIMIT, DifyClient, RateLimiter, RetryPolicy, remote_document
from difysync.emulator import EmulatorServer, FaultRule
from difysync.emulator.faults import nginx_html
from difysync.errors import (AuthError, DatasetMissing, DifyError, FatalError, NotDifyAPI, NotFoundError,
                             NotReadyError, QuotaError, RefusedError, ServerUnreachable,
                             TransientError)
from difysync.models import RemoteDocument

KEY = "dataset-SeCrEt-k3y-for-the-contract-suite"
WRONG_KEY = "dataset-WrOnG-k3y-that-must-not-leak"
FAST = RetryPolicy(attempts=4, base_seconds=0.01, max_seconds=0.05)
DATA = {"indexing_technique": "economy", "process_rule": {"mode": "automatic"}}
HTML_PAGE = ("<!DOCTYPE html><html><head><title>Dify</title></head>"
             "<body><div id=\"__next\"></div></body></html>")

REAL_URL = os.environ.get("DIFYSYNC_TEST_DIFY_URL")
REAL_KEY = os.environ.get("DIFYSYNC_TEST_DIFY_KEY")
REAL_DATASET = os.environ.get("DIFYSYNC_TEST_DIFY_DATASET")
REAL_WAIT = 180.0  # seconds a real server may take to index a small file


def expect(cls: type[DifyError], call: Callable[..., Any], *args: Any, **kwargs: Any) -> DifyError:
    """Run ``call``, which must raise exactly ``cls``; its text must not hold a key."""
    with pytest.raises(DifyError) as info:
        call(*args, **kwargs)
    error = info.value
    assert type(error) is cls, f"{type(error).__name__}: {error}"
    for key in (KEY, WRONG_KEY, REAL_KEY):
        if key:
            assert key not in str(error) and key not in repr(error)
    return error


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------ targets
@dataclass
class Target:
    """One server to run the contract against, with a dataset to work in."""

    kind: str  # "current" | "legacy" | "real"
    base_url: str
    key: str
    dataset_id: str
    emu: EmulatorServer | None = None
    prefix: str = field(default_factory=lambda: f"dst-{uuid.uuid4().hex[:8]}-")
    documents: list[str] = field(default_factory=list)  # to delete afterwards (real)
    datasets: list[str] = field(default_factory=list)  # to delete afterwards (real)
    clients: list[DifyClient] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.emu is None

    def client(self, key: str | None = None, **options: Any) -> DifyClient:
        options.setdefault("retry", FAST)
        client = DifyClient(self.base_url, self.key if key is None else key, **options)
        self.clients.append(client)
        return client

    def name(self, base: str) -> str:
        return self.prefix + base

    def create(self, client: DifyClient, base: str, content: bytes = b"# hello\n"):
        upload = client.create_by_file(self.dataset_id, self.name(base), content, DATA)
        self.documents.append(upload.document.id)
        return upload

    def wait_available(self, client: DifyClient, doc_id: str) -> RemoteDocument:
        """The document once it may be updated (at once on the emulator)."""
        deadline = time.monotonic() + (REAL_WAIT if self.real else 5.0)
        while True:
            doc = next(d for d in client.list_documents(self.dataset_id) if d.id == doc_id)
            if doc.display_status == "available" or time.monotonic() > deadline:
                return doc
            time.sleep(1.0)

    def clean_up(self) -> None:
        if self.real:
            client = self.client()
            for doc in client.list_documents(self.dataset_id, keyword=self.prefix):
                self.documents.append(doc.id)
            for doc_id in dict.fromkeys(self.documents):
                _delete_patiently(client, self.dataset_id, doc_id)
            with httpx.Client(base_url=self.base_url, timeout=30,
                              headers={"Authorization": f"Bearer {self.key}"}) as http:
                for ds_id in self.datasets:
                    http.delete(f"/datasets/{ds_id}")
        for client in self.clients:
            client.close()


def _delete_patiently(client: DifyClient, dataset_id: str, doc_id: str) -> None:
    deadline = time.monotonic() + REAL_WAIT
    while True:
        try:
            client.delete_document(dataset_id, doc_id)
            return
        except NotReadyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2.0)


@pytest.fixture(params=["current", "legacy", "real"])
def target(request) -> Iterator[Target]:
    """The contract's server: the emulator as a current and as a legacy Dify, and a real
    Dify when the environment names one."""
    if request.param == "real":
        if not (REAL_URL and REAL_KEY):
            pytest.skip("set DIFYSYNC_TEST_DIFY_URL and DIFYSYNC_TEST_DIFY_KEY to run on a real Dify")
        t = Target("real", REAL_URL, REAL_KEY, dataset_id=REAL_DATASET or "")
        if not REAL_DATASET:
            with DifyClient(REAL_URL, REAL_KEY, retry=FAST) as client:
                t.dataset_id = client.create_dataset(t.name("contract"), "economy")["id"]
            t.datasets.append(t.dataset_id)
        try:
            yield t
        finally:
            t.clean_up()
        return
    with EmulatorServer(api_key=KEY, legacy=request.param == "legacy") as emu:
        t = Target(request.param, emu.base_url, KEY, emu.store.create_dataset("contract", "economy"),
                   emu=emu)
        try:
            yield t
        finally:
            t.clean_up()


@pytest.fixture
def emulator_only(target: Target) -> EmulatorServer:
    if target.emu is None:
        pytest.skip("needs the emulator's store or fault switches")
    return target.emu


@pytest.fixture
def client(target: Target) -> DifyClient:
    return target.client()


@pytest.fixture
def emu() -> Iterator[EmulatorServer]:
    """A current-Dify emulator for the fault tests."""
    with EmulatorServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def emu_client(emu: EmulatorServer) -> Iterator[DifyClient]:
    with DifyClient(emu.base_url, KEY, retry=FAST) as c:
        yield c


@pytest.fixture
def ds(emu: EmulatorServer) -> str:
    return emu.store.create_dataset("faults", "economy")


# ----------------------------------------------------------------------------- datasets
def test_list_datasets_includes_the_working_dataset(target, client):
    ids = [d["id"] for d in client.list_datasets()]
    assert target.dataset_id in ids


def test_find_dataset_matches_the_exact_name_only(target, client):
    wide = client.create_dataset(target.name("docs-archive"), "economy")["id"]
    exact = client.create_dataset(target.name("docs"), "economy")["id"]
    target.datasets += [wide, exact]
    assert client.find_dataset(target.name("docs"))["id"] == exact
    assert client.find_dataset(target.name("doc")) is None


def test_ensure_dataset_creates_once_then_finds(target, client):
    first = client.ensure_dataset(target.name("ensured"), "economy")
    target.datasets.append(first)
    assert client.ensure_dataset(target.name("ensured"), "economy") == first
    if target.emu is not None:
        assert target.emu.count("POST", "/datasets") == 1


def test_ensure_dataset_adopts_a_dataset_created_meanwhile(emulator_only, client):
    # given: the dataset exists, but the first listing (taken before it did) shows nothing
    existing = emulator_only.store.create_dataset("raced", "economy")
    empty = json.dumps({"data": [], "has_more": False, "limit": 100, "total": 0, "page": 1})
    emulator_only.faults.fail_next.append(FaultRule(
        status=200, body=empty, content_type="application/json", method="GET",
        path_contains="/datasets"))
    # when / then: the create answers 409 and the dataset is found instead
    assert client.ensure_dataset("raced", "economy") == existing
    assert emulator_only.count("POST", "/datasets") == 1


def test_check_key_with_a_wrong_key_is_an_auth_error(target):
    expect(AuthError, target.client(key=WRONG_KEY).check_key)


def test_check_key_with_the_right_key_passes(client):
    client.check_key()


def test_check_dataset_of_an_unknown_id_is_dataset_missing(target, client):
    client.check_dataset(target.dataset_id)
    expect(DatasetMissing, client.check_dataset, str(uuid.uuid4()))


# ---------------------------------------------------------------------------- documents
def test_create_by_file_returns_the_document_and_its_batch(target, client):
    upload = target.create(client, "a.md", b"# a\n")
    assert upload.document.name == target.name("a.md")
    assert upload.document.id
    assert upload.batch
    if target.emu is not None:
        assert [d.name for d in target.emu.store.documents(target.dataset_id)] == [
            target.name("a.md")]


def test_update_by_file_keeps_the_id_and_takes_the_new_name(target, client):
    created = target.create(client, "old.md", b"one")
    target.wait_available(client, created.document.id)
    updated = client.update_by_file(target.dataset_id, created.document.id, target.name("new.md"),
                                    b"two", DATA)
    assert updated.document.id == created.document.id
    assert updated.document.name == target.name("new.md")
    names = {d.id: d.name for d in client.list_documents(target.dataset_id)}
    assert names[created.document.id] == target.name("new.md")


def test_delete_document_is_true_then_false_once_gone(target, client):
    created = target.create(client, "gone.md")
    target.wait_available(client, created.document.id)
    assert client.delete_document(target.dataset_id, created.document.id) is True
    assert client.delete_document(target.dataset_id, created.document.id) is False
    if target.emu is not None:  # both server generations were seen answering
        deletes = [r.status for r in target.emu.requests if r.method == "DELETE"]
        assert deletes == [200 if target.kind == "legacy" else 204, 404]


def test_update_of_an_unknown_document_is_not_found(target, client):
    target.create(client, "exists.md")  # the dataset holds something (and a technique)
    expect(NotFoundError, client.update_by_file, target.dataset_id, str(uuid.uuid4()),
           target.name("x.md"), b"x", DATA)


def test_find_documents_matches_the_exact_name_amid_substring_matches(target, client):
    exact = target.create(client, "guide.md")
    target.create(client, "guide.md.bak.md")
    target.create(client, "old-guide.md")
    found = client.find_documents(target.dataset_id, target.name("guide.md"))
    assert [d.id for d in found] == [exact.document.id]


def test_listed_document_carries_the_uploaded_size(target, client):
    created = target.create(client, "sized.md", b"x" * 1234)
    listed = {d.id: d for d in client.list_documents(target.dataset_id)}
    assert listed[created.document.id].size == 1234
    assert created.document.size == 1234


def test_a_finished_response_does_not_wait_for_the_cycle_collector(target, client):
    """httpx's response and its stream refer to each other; a big listing's pages must not
    pile up until a collection (each is freed when the client is done with it)."""
    import gc

    client.list_documents(target.dataset_id)  # connections made, modules loaded
    gc.collect()
    gc.disable()
    try:
        before = sum(isinstance(o, httpx.Response) for o in gc.get_objects())
        client.list_documents(target.dataset_id)
        client.document_page(target.dataset_id, 1)
        after = sum(isinstance(o, httpx.Response) for o in gc.get_objects())
    finally:
        gc.enable()
    assert after == before


# ------------------------------------------------ what the indexing poller relies on (remote.py)
def _until_settled(target: Target, client: DifyClient, batch: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + (REAL_WAIT if target.real else 10.0)
    while True:
        statuses = client.indexing_status(target.dataset_id, batch)
        if all(s.get("indexing_status") in ("completed", "error", "paused") for s in statuses) \
                or time.monotonic() > deadline:
            return statuses
        time.sleep(0.5)


def test_indexing_status_of_a_batch_names_its_document_until_it_completes(target, client):
    created = target.create(client, "polled.md", b"# polled\n\nsome words to index\n")
    statuses = _until_settled(target, client, created.batch or "")
    assert [(s["id"], s["indexing_status"]) for s in statuses] == [(created.document.id, "completed")]


def test_an_update_is_polled_by_the_batch_it_answers(target, client):
    created = target.create(client, "updated.md", b"one")
    target.wait_available(client, created.document.id)
    updated = client.update_by_file(target.dataset_id, created.document.id, target.name("updated.md"),
                                    b"two, longer", DATA)
    if target.kind != "legacy":  # Dify 1.14.1 answers the document's own batch
        assert updated.batch == created.batch
        statuses = _until_settled(target, client, updated.batch or "")
        assert [(s["id"], s["indexing_status"]) for s in statuses] == [(created.document.id, "completed")]
    else:  # old servers answered a batch they never stored (langgenius/dify #9221)
        expect(NotFoundError, client.indexing_status, target.dataset_id, updated.batch or "")


def test_the_batch_of_a_deleted_document_is_not_found(target, client):
    created = target.create(client, "deleted.md")
    target.wait_available(client, created.document.id)
    client.delete_document(target.dataset_id, created.document.id)
    expect(NotFoundError, client.indexing_status, target.dataset_id, created.batch or "")


def test_a_status_filtered_page_holds_that_status_only_and_counts_it(target, client):
    created = target.create(client, "filtered.md")
    target.wait_available(client, created.document.id)
    docs, total = client.document_page(target.dataset_id, 1, status="available")
    if target.kind == "legacy":  # 0.x listings have no status filter: everything comes back
        assert total is not None and total >= 1
        return
    assert docs and all(d.display_status == "available" for d in docs) and total == len(docs)
    assert client.document_page(target.dataset_id, 1, status="error") == ([], 0)


def test_the_poller_follows_one_upload_to_completed(target, client):
    from difysync.remote import IndexingPoller
    from difysync.state import InFlight

    created = target.create(client, "poller.md", b"# poller\n")
    item = InFlight("/f", "poller.md", created.document.id, created.batch)
    poller = IndexingPoller(client)
    deadline = time.monotonic() + (REAL_WAIT if target.real else 10.0)
    while (found := poller.statuses(target.dataset_id, [item]))[created.document.id][0] != "completed":
        assert time.monotonic() < deadline, found
        time.sleep(0.5)


def test_remote_document_takes_the_size_from_the_upload_file_detail():
    raw = {"id": "d1", "name": "a.md", "indexing_status": "completed",
           "display_status": "available", "created_at": 1700000000,
           "data_source_detail_dict": {"upload_file": {"id": "f1", "name": "a.md", "size": 42}}}
    doc = remote_document(raw)
    assert (doc.id, doc.name, doc.size, doc.created_at) == ("d1", "a.md", 42, 1700000000)
    assert remote_document({"id": "d2", "name": "b.md"}).size is None
    assert remote_document({"id": "d3", "data_source_detail_dict": None}).size is None


# ------------------------------------------------ what segment-level sync relies on (segsync.py)
def _by_text(target: Target, client: DifyClient, chunks: list[str]):
    from difysync.segsync import LocalChunking, upload_whole

    chunking = LocalChunking(frozenset({"md"}), 500)
    upload, records = upload_whole(client, chunking, target.dataset_id, target.name("chunked.md"), chunks,
                                   {"indexing_technique": "economy"})
    target.documents.append(upload.document.id)
    doc = target.wait_available(client, upload.document.id)
    assert doc.display_status == "available", doc
    return upload.document.id, records


def _segment_chunks(n: int) -> list[str]:
    return ["Intro to the handbook."] + [f"## Part {i}\n\nBody of part {i}, with *marks* - and a list:\n\n- a\n- b"
                                         for i in range(1, n)]


def test_a_create_by_text_split_at_our_separator_gives_one_segment_per_chunk(target, client):
    if target.kind == "legacy":
        pytest.skip("old releases: segment API not modelled")
    from difysync.segments import pair

    chunks = _segment_chunks(12)
    doc_id, records = _by_text(target, client, chunks)
    held = client.list_segments(target.dataset_id, doc_id)
    assert held is not None and len(held) == len(chunks)
    # the server strips what it splits ("## Part 1" -> "Part 1"), so pairing goes by content_key
    assert held[1].content.startswith("Part 1")
    assert pair(records, held) is not None


def test_segment_add_and_update_answer_with_the_content_stored_as_sent(target, client):
    if target.kind == "legacy":
        pytest.skip("old releases: segment API not modelled")
    doc_id, _ = _by_text(target, client, _segment_chunks(4))
    held = client.list_segments(target.dataset_id, doc_id)
    assert held is not None
    updated = client.update_segment(target.dataset_id, doc_id, held[2].id, "## Part 2\n\nNew body.")
    assert (updated.id, updated.content) == (held[2].id, "## Part 2\n\nNew body.")
    added = client.add_segments(target.dataset_id, doc_id, ["## Part 9\n\nAdded.", "## Part 10\n\nAlso."])
    assert [s.content for s in added] == ["## Part 9\n\nAdded.", "## Part 10\n\nAlso."]
    after = client.list_segments(target.dataset_id, doc_id)
    assert after is not None and [s.id for s in after[-2:]] == [s.id for s in added]  # added ones go last
    assert client.delete_segment(target.dataset_id, doc_id, held[0].id) is True
    assert client.delete_segment(target.dataset_id, doc_id, held[0].id) is False  # already gone
    assert len(client.list_segments(target.dataset_id, doc_id) or []) == 5


def test_segment_calls_on_a_document_still_indexing_are_a_wait(target, client):
    if target.kind == "legacy":
        pytest.skip("old releases: segment API not modelled")
    from difysync.segsync import LocalChunking, upload_whole

    doc_id, _ = _by_text(target, client, _segment_chunks(3))
    upload_whole(client, LocalChunking(frozenset({"md"}), 500), target.dataset_id,
                 target.name("chunked.md"), _segment_chunks(40), {}, document_id=doc_id)
    if target.emu is not None:
        target.emu.store.indexing_delay = 30.0  # (a real server takes a moment of its own)
    error = expect(NotReadyError, client.add_segments, target.dataset_id, doc_id, ["x y z"])
    assert error.status == 404 and "not completed" in error.message.lower()


def test_an_unknown_segment_is_not_found(target, client):
    if target.kind == "legacy":
        pytest.skip("old releases: segment API not modelled")
    doc_id, _ = _by_text(target, client, _segment_chunks(2))
    unknown = str(uuid.uuid4())
    expect(NotFoundError, client.update_segment, target.dataset_id, doc_id, unknown, "abc")
    assert client.delete_segment(target.dataset_id, doc_id, unknown) is False


# --------------------------------------------------------------------------- pagination
class RecordingTransport(httpx.HTTPTransport):
    """The real transport, remembering each request's URL."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return super().handle_request(request)


def _fill(emu: EmulatorServer, dataset_id: str, count: int) -> None:
    for i in range(count):
        emu.store.add_document(dataset_id, f"doc-{i:04d}.md", b"x", match_by_name=False)


@pytest.mark.parametrize("count, pages", [(230, 3), (200, 3), (100, 2), (99, 1), (0, 1)])
def test_list_documents_pages_through_everything(emulator_only, target, count, pages):
    # given: documents registered straight into the store (no HTTP: fast)
    _fill(emulator_only, target.dataset_id, count)
    transport = RecordingTransport()
    client = target.client(transport=transport)
    # when
    docs = client.list_documents(target.dataset_id)
    # then: every document once; a full last page costs one more (empty) page
    assert len({d.id for d in docs}) == len(docs) == count
    assert emulator_only.count("GET", "/documents") == pages
    assert [int(u.params["page"]) for u in transport.urls] == list(range(1, pages + 1))


def test_list_documents_never_asks_for_more_than_the_server_cap(emulator_only, target):
    _fill(emulator_only, target.dataset_id, 150)
    transport = RecordingTransport()
    target.client(transport=transport).list_documents(target.dataset_id)
    assert transport.urls and all(int(u.params["limit"]) <= PAGE_LIMIT == 100
                                  for u in transport.urls)


def test_listing_stops_on_a_short_page_even_if_has_more_says_otherwise(emu, ds):
    # a server that says has_more on a short page (as when it caps an echoed limit)
    _fill(emu, ds, 30)

    def lying(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        items = [{"id": f"d{page}-{i}", "name": f"n{i}"} for i in range(30 if page == 1 else 0)]
        return httpx.Response(200, json={"data": items, "has_more": True, "limit": 100,
                                         "page": page, "total": 999})

    with DifyClient(emu.base_url, KEY, retry=FAST, transport=httpx.MockTransport(lying)) as c:
        assert len(c.list_documents(ds)) == 30


# ------------------------------------------------------------------------------ retries
def test_503_html_then_success_is_one_success_with_one_retry(emu, emu_client, ds):
    emu.faults.fail_next.append(FaultRule(status=503, body=nginx_html(503), method="GET",
                                          path_contains="/documents"))
    assert emu_client.list_documents(ds) == []
    assert emu_client.stats["retries"] == 1
    assert emu.count("GET", "/documents") == 2


def test_429_retry_after_is_honoured(emu, ds):
    emu.faults.rate_limit_429 = 1
    emu.faults.retry_after = 1
    policy = RetryPolicy(attempts=4, base_seconds=0.01, max_seconds=0.05, max_retry_after=5)
    with DifyClient(emu.base_url, KEY, retry=policy) as c:
        started = time.monotonic()
        c.list_documents(ds)
        elapsed = time.monotonic() - started
    assert elapsed >= 0.95
    assert c.stats["retries"] == 1


def test_retry_after_is_capped_by_the_policy():
    policy = RetryPolicy(max_retry_after=2.0)
    assert policy.pause(0, 3600.0) == 2.0
    assert policy.pause(0, 0.5) == 0.5


def test_403_rate_limit_message_is_retried(emu, emu_client, ds):
    emu.faults.rate_limit_403 = 1
    upload = emu_client.create_by_file(ds, "a.md", b"a", DATA)
    assert [d.id for d in emu.store.documents(ds)] == [upload.document.id]
    assert emu.count("POST", "create_by_file") == 2
    assert emu_client.stats["retries"] == 1


def test_retries_are_bounded_by_the_policy(emu, emu_client):
    emu.faults.error_rate = 1.0
    emu.faults.error_statuses = [500]
    expect(TransientError, emu_client.check_key)
    assert emu.count("GET", "/datasets") == FAST.attempts == 4
    assert emu_client.stats["retries"] == 3


def test_a_hang_past_the_timeout_is_server_unreachable_after_retries(emu):
    policy = RetryPolicy(attempts=3, base_seconds=0.01, max_seconds=0.05)
    emu.faults.fail_next.extend(FaultRule(action="hang", hang_seconds=3, method="GET")
                                for _ in range(3))
    with DifyClient(emu.base_url, KEY, retry=policy, timeout=0.5) as c:
        error = expect(ServerUnreachable, c.check_key)
        assert c.stats["retries"] == 2
    assert "timeout" in str(error)
    assert emu.count("GET", "/datasets") == 3


def test_a_hang_once_is_survived(emu, ds):
    emu.faults.fail_next.append(FaultRule(action="hang", hang_seconds=3, method="GET"))
    with DifyClient(emu.base_url, KEY, retry=FAST, timeout=0.5) as c:
        assert c.list_documents(ds) == []


def test_connection_refused_is_server_unreachable_quickly():
    with DifyClient(f"http://127.0.0.1:{closed_port()}/v1", KEY, retry=FAST) as c:
        started = time.monotonic()
        error = expect(ServerUnreachable, c.check_key)
        assert time.monotonic() - started < 3.0
        assert c.stats["requests"] == FAST.attempts
    assert "cannot reach 127.0.0.1" in str(error)


def test_a_dropped_get_is_retried(emu, emu_client, ds):
    emu.faults.fail_next.append(FaultRule(action="drop", method="GET"))
    assert emu_client.list_documents(ds) == []
    assert emu_client.stats["retries"] == 1


def test_a_create_lost_after_commit_is_found_not_sent_again(emulator_only, target, client):
    # given: the server registers the first create, then the connection drops
    emulator_only.faults.fail_next.append(FaultRule(action="drop_after_commit", method="POST",
                                                    path_contains="create_by_file"))
    # when
    upload = client.create_by_file(target.dataset_id, "landed.md", b"once", DATA)
    # then: the document that landed, exactly one of it (legacy servers match no names)
    docs = [d for d in emulator_only.store.documents(target.dataset_id) if d.name == "landed.md"]
    assert [d.id for d in docs] == [upload.document.id]
    assert emulator_only.count("POST", "create_by_file") == 1


def test_a_create_dropped_before_commit_is_sent_again(emulator_only, target, client):
    emulator_only.faults.fail_next.append(FaultRule(action="drop", method="POST",
                                                    path_contains="create_by_file"))
    upload = client.create_by_file(target.dataset_id, "resent.md", b"once", DATA)
    docs = [d for d in emulator_only.store.documents(target.dataset_id) if d.name == "resent.md"]
    assert [d.id for d in docs] == [upload.document.id]
    assert emulator_only.count("POST", "create_by_file") == 2


# ----------------------------------------------------------- terminal answers: one request
def test_unsupported_type_415_is_not_retried(emu, emu_client, ds):
    expect(RefusedError, emu_client.create_by_file, ds, "tool.exe", b"MZ", DATA)
    assert emu.count("POST") == 1


def test_too_large_413_is_not_retried():
    with EmulatorServer(api_key=KEY, max_file_size_mb=0.001) as server:
        ds = server.store.create_dataset("small", "economy")
        with DifyClient(server.base_url, KEY, retry=FAST) as c:
            expect(RefusedError, c.create_by_file, ds, "big.md", b"x" * 5000, DATA)
        assert server.count("POST") == 1


def test_html_413_from_a_proxy_is_not_retried(emu, emu_client, ds):
    emu.faults.fail_next.append(FaultRule(status=413, body=nginx_html(413), method="POST"))
    expect(RefusedError, emu_client.create_by_file, ds, "big.md", b"x", DATA)
    assert emu.count("POST") == 1


def test_bare_400_on_create_is_a_refusal_not_retried():
    with EmulatorServer(api_key=KEY, bare_400_on_create=True) as server:
        ds = server.store.create_dataset("bare", "economy")
        with DifyClient(server.base_url, KEY, retry=FAST) as c:
            error = expect(RefusedError, c.create_by_file, ds, "tool.exe", b"MZ", DATA)
        assert server.count("POST") == 1
    assert "refused the file" in str(error)


def test_wrong_key_401_is_not_retried(emu, ds):
    with DifyClient(emu.base_url, WRONG_KEY, retry=FAST) as c:
        expect(AuthError, c.create_by_file, ds, "a.md", b"a", DATA)
    assert emu.count() == 1


def test_provider_quota_is_not_retried(emu, emu_client, ds):
    emu.faults.quota_exceeded = True
    expect(QuotaError, emu_client.create_by_file, ds, "a.md", b"a", DATA)
    assert emu.count("POST") == 1


def test_document_count_limit_is_not_retried(emu, emu_client, ds):
    emu.faults.document_limit = True
    expect(QuotaError, emu_client.create_by_file, ds, "a.md", b"a", DATA)
    assert emu.count("POST") == 1


def test_invalid_file_name_is_refused_once(emu, emu_client, ds):
    expect(RefusedError, emu_client.create_by_file, ds, "a:b.md", b"a", DATA)
    assert emu.count("POST") == 1


# ------------------------------------------------------------------------ busy documents
def test_update_of_a_document_still_indexing_is_not_ready():
    with EmulatorServer(api_key=KEY, indexing_delay=30) as server:
        ds = server.store.create_dataset("slow", "economy")
        with DifyClient(server.base_url, KEY, retry=FAST) as c:
            doc = c.create_by_file(ds, "a.md", b"a", DATA).document
            expect(NotReadyError, c.update_by_file, ds, doc.id, "a.md", b"b", DATA)
        assert server.count("POST", "update_by_file") == 1


def test_delete_while_indexing_on_a_refusing_server_is_not_ready():
    with EmulatorServer(api_key=KEY, legacy=True) as server:
        ds = server.store.create_dataset("old", "economy")
        with DifyClient(server.base_url, KEY, retry=FAST) as c:
            doc = c.create_by_file(ds, "a.md", b"a", DATA).document
            server.store.set_document(ds, doc.id, indexing_status="indexing")
            expect(NotReadyError, c.delete_document, ds, doc.id)
        assert server.count("DELETE") == 1
        assert [d.id for d in server.store.documents(ds)] == [doc.id]


def test_delete_while_indexing_on_a_current_server_succeeds(emu, emu_client, ds):
    doc = emu_client.create_by_file(ds, "a.md", b"a", DATA).document
    emu.store.set_document(ds, doc.id, indexing_status="indexing")
    assert emu_client.delete_document(ds, doc.id) is True


def test_delete_into_a_vanished_dataset_is_dataset_missing_not_done(emu, emu_client, ds):
    doc = emu_client.create_by_file(ds, "a.md", b"a", DATA).document
    emu.store.delete_dataset(ds)
    expect(DatasetMissing, emu_client.delete_document, ds, doc.id)


# ------------------------------------------------------------------- wrong server answers
def test_html_200_on_a_listing_says_to_check_the_base_url(emu, emu_client, ds):
    emu.faults.fail_next.append(FaultRule(status=200, body=HTML_PAGE, method="GET"))
    error = expect(NotDifyAPI, emu_client.list_documents, ds)
    assert "dify.base_url" in str(error)
    assert error.__cause__ is None and error.__suppress_context__


def test_html_200_on_a_create_says_to_check_the_base_url(emu, emu_client, ds):
    emu.faults.fail_next.append(FaultRule(status=200, body=HTML_PAGE, method="POST"))
    error = expect(NotDifyAPI, emu_client.create_by_file, ds, "a.md", b"a", DATA)
    assert "dify.base_url" in str(error)


def test_json_without_a_data_list_is_fatal(emu, emu_client, ds):
    emu.faults.fail_next.append(FaultRule(status=200, body='{"result": "success"}',
                                          content_type="application/json", method="GET"))
    expect(FatalError, emu_client.list_documents, ds)


# ---------------------------------------------------------------------------- secrets
def test_repr_of_the_client_holds_no_key(emu):
    with DifyClient(emu.base_url, KEY) as c:
        assert KEY not in repr(c) and KEY not in str(c)


def test_the_key_appears_in_no_log_record_or_retry_notice(emu, ds, caplog):
    caplog.set_level(logging.DEBUG)
    notices: list[str] = []
    emu.faults.fail_next.extend([
        FaultRule(status=503, body=nginx_html(503), method="GET"),
        FaultRule(status=500, method="GET"),
        FaultRule(action="drop", method="POST"),
    ])
    with DifyClient(emu.base_url, KEY, retry=FAST,
                    on_retry=lambda about, err, pause: notices.append(f"{about} {err}")) as c:
        c.list_documents(ds)
        c.create_by_file(ds, "a.md", b"a", DATA)
        expect(NotFoundError, c.update_by_file, ds, "nope", "a.md", b"a", DATA)
        emu.faults.error_rate, emu.faults.error_statuses = 1.0, [500]
        expect(TransientError, c.check_key)
    emu.faults.error_rate = 0.0
    with DifyClient(emu.base_url, WRONG_KEY, retry=FAST) as c:
        expect(AuthError, c.check_key)
    assert len(notices) >= 3
    texts = notices + [r.getMessage() for r in caplog.records] + [str(r.args) for r in caplog.records]
    assert any("retrying" in t for t in texts)  # the DEBUG retry lines were captured
    for text in texts:
        assert KEY not in text and WRONG_KEY not in text


# ------------------------------------------------------------------------- rate limiter
class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_acquisitions_a_second_apart_at_60_per_minute():
    fake = FakeTime()
    limiter = RateLimiter(60, clock=fake.clock, sleep=fake.sleep)
    for _ in range(5):
        limiter.acquire()
    assert fake.sleeps == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert fake.now == pytest.approx(1004.0)


def test_rate_limiter_does_not_sleep_after_an_idle_spell():
    fake = FakeTime()
    limiter = RateLimiter(60, clock=fake.clock, sleep=fake.sleep)
    limiter.acquire()
    fake.now += 5.0
    limiter.acquire()
    assert fake.sleeps == []


def test_rate_limiter_counts_time_already_spent_between_requests():
    fake = FakeTime()
    limiter = RateLimiter(60, clock=fake.clock, sleep=fake.sleep)
    limiter.acquire()
    fake.now += 0.25
    limiter.acquire()
    assert fake.sleeps == pytest.approx([0.75])


def test_rate_limiter_at_zero_is_off():
    fake = FakeTime()
    limiter = RateLimiter(0, clock=fake.clock, sleep=fake.sleep)
    for _ in range(100):
        limiter.acquire()
    assert fake.sleeps == []


def test_a_failed_create_over_a_same_named_document_still_sends_the_new_content(emu, emu_client,
                                                                                ds):
    # given: an enabled "a.md" already there (current servers re-index it on create)
    old, _ = emu.store.add_document(ds, "a.md", b"old")
    emu.faults.fail_next.append(FaultRule(status=503, body=nginx_html(503), method="POST"))
    # when: the create fails before reaching the application and is retried
    upload = emu_client.create_by_file(ds, "a.md", b"new content", DATA)
    # then: the look-up did not mistake the old document for the one that landed
    assert upload.document.id == old.id
    assert emu.store.content(ds, old.id) == b"new content"
    assert emu.count("POST", "create_by_file") == 2
