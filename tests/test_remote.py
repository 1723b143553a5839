"""remote.py: how a pass sees Dify. The indexing poller's cost follows the number of
documents in flight, not the size of the dataset; the folder's dataset is resolved once
and remembered; a targeted pass looks names up; a full listing drops settled files.

Real HTTP to the emulator, a real SQLite state DB, a real client: the request log is the
cost, ``emu.store`` arranges what Dify holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from difysync.candidates import Candidates
from difysync.config import Settings, load_settings
from difysync.dify import DifyClient
from difysync.emulator import EmulatorServer
from difysync.errors import DatasetMissing, NotFoundError
from difysync.models import FileState, LocalFile
from difysync.naming import document_name
from difysync.reconcile import Env, policy_for, reconcile_folder, with_hashes
from difysync.remote import (MAX_NAME_LOOKUPS, POLL_STATUSES, IndexingPoller, RemoteView, poll_folder,
                             resolve_dataset, stale_dataset, wait_for_indexing)
from difysync.scanner import scan_tree
from difysync.state import InFlight, StateStore

FOLDER = "/srv/docs"  # the state DB's key of the folder the poller tests track
BIG = 5000


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[DifyClient]:
    with DifyClient(emulator.base_url, emulator.api_key) as c:
        yield c


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state.db") as s:
        yield s


@pytest.fixture
def dataset(emulator: EmulatorServer) -> str:
    return emulator.store.create_dataset("Docs", "high_quality")


def asked(emu: EmulatorServer) -> list[str]:
    """The requests sent, one word each: "batch" (indexing-status), "status=<s>" (a filtered
    listing), "keyword=<name>", "listing" (a plain listing page), "datasets"."""
    out = []
    for r in emu.requests:
        query = parse_qs(r.query)
        if r.method != "GET":
            out.append(f"{r.method} {r.path}")
        elif r.path.endswith("/indexing-status"):
            out.append("batch")
        elif r.path == "/v1/datasets":
            out.append("datasets")
        elif "status" in query:
            out.append(f"status={query['status'][0]}")
        elif "keyword" in query:
            out.append(f"keyword={query['keyword'][0]}")
        else:
            out.append("listing")
    return out


def preload(emu: EmulatorServer, ds: str, count: int) -> None:
    """``count`` other documents, indexed long ago."""
    for i in range(count):
        emu.store.add_document(ds, f"other-{i:05d}.md", b"settled", match_by_name=False)


def uploaded(emu: EmulatorServer, ds: str, name: str, **pin: object) -> InFlight:
    """A document just uploaded, in its own batch; ``pin`` holds its indexing status (or
    error) where the test wants it (the emulator indexes instantly otherwise)."""
    doc, batch = emu.store.add_document(ds, name, b"new content")
    if pin:
        emu.store.set_document(ds, doc.id, **pin)
    return InFlight(FOLDER, name, doc.id, batch)


def track(store: StateStore, ds: str, item: InFlight) -> InFlight:
    """The state row an upload leaves: queued, with its batch."""
    store.settle_upload(None, FOLDER, ds, item.rel_path, document_id=item.document_id,
                        document_name=item.rel_path, batch=item.batch, sha256="0" * 64, size=1,
                        mtime_ns=1, inode=1, indexing_status="waiting")
    return item


def statuses_in_state(store: StateStore) -> dict[str, str | None]:
    return {rel: row.indexing_status for rel, row in store.load_folder(FOLDER).items()}


def local(rel: str) -> LocalFile:
    return LocalFile(rel, 1, 0, 0)


def settings_for(tmp_path: Path, emu: EmulatorServer, dataset_line: str) -> Settings:
    (tmp_path / "docs").mkdir(exist_ok=True)
    config = tmp_path / "sync.toml"
    config.write_text('state_db = "state.db"\n'
                      "[dify]\n"
                      f'base_url = "{emu.base_url}"\n'
                      "[[folders]]\n"
                      'path = "docs"\n'
                      f"{dataset_line}\n", encoding="utf-8")
    return load_settings(config)


class Clock:
    """A fake clock that moves only when slept on; each sleep may move the world too."""

    def __init__(self, on_sleep: Callable[[], None] = lambda: None) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        self.on_sleep()


# --- the poller: a few batches --------------------------------------------------------------


@pytest.mark.parametrize("others", [0, BIG])
def test_a_few_batches_cost_one_indexing_status_request_each_whatever_the_dataset_size(
        emulator, client, dataset, others):
    # given four documents in flight, each in its own batch, next to `others` settled ones
    preload(emulator, dataset, others)
    done = uploaded(emulator, dataset, "done.md")
    queued = uploaded(emulator, dataset, "queued.md", indexing_status="waiting")
    busy = uploaded(emulator, dataset, "busy.md", indexing_status="indexing")
    failed = uploaded(emulator, dataset, "failed.md", error="boom")
    items = [done, queued, busy, failed]
    emulator.reset_requests()
    # when
    found = IndexingPoller(client).statuses(dataset, items)
    # then
    assert found == {done.document_id: ("completed", None), queued.document_id: ("waiting", None),
                     busy.document_id: ("indexing", None), failed.document_id: ("error", "boom")}
    assert asked(emulator) == ["batch"] * 4
    assert sorted(r.path for r in emulator.requests) == sorted(
        f"/v1/datasets/{dataset}/documents/{i.batch}/indexing-status" for i in items)


# --- the poller: many batches ---------------------------------------------------------------


@pytest.mark.parametrize("others", [0, BIG])
def test_many_batches_cost_the_four_status_listings_whatever_the_dataset_size(
        emulator, client, dataset, others):
    # given twelve documents just uploaded (eight already indexed), next to `others`
    preload(emulator, dataset, others)
    queued = uploaded(emulator, dataset, "queued.md", indexing_status="waiting")
    busy = uploaded(emulator, dataset, "busy.md", indexing_status="indexing")
    paused = uploaded(emulator, dataset, "paused.md", indexing_status="paused")
    failed = uploaded(emulator, dataset, "failed.md", error="boom")
    done = [uploaded(emulator, dataset, f"done-{i}.md") for i in range(8)]
    emulator.reset_requests()
    poller = IndexingPoller(client)
    # when
    found = poller.statuses(dataset, [queued, busy, paused, failed, *done])
    # then
    assert found == {queued.document_id: ("waiting", None), busy.document_id: ("indexing", None),
                     paused.document_id: ("paused", None), failed.document_id: ("error", "boom"),
                     **{d.document_id: ("completed", None) for d in done}}
    assert sorted(asked(emulator)) == sorted(f"status={s}" for s in POLL_STATUSES)
    assert poller.filters_work is True


# --- the poller: batches that answer 404 -----------------------------------------------------


def test_a_batch_that_answers_404_falls_back_to_the_status_listings(emulator, client, dataset):
    # given one document uploaded again (its old batch no longer finds it), one deleted,
    # and one that is fine
    fine = uploaded(emulator, dataset, "fine.md")
    moved = uploaded(emulator, dataset, "moved.md")
    uploaded(emulator, dataset, "moved.md", indexing_status="indexing")  # same document, new batch
    deleted = uploaded(emulator, dataset, "deleted.md")
    emulator.store.delete_document(dataset, deleted.document_id)
    emulator.reset_requests()
    # when
    found = IndexingPoller(client).statuses(dataset, [fine, moved, deleted])
    # then the lost ones are looked up in the listings; one in none of them has left every
    # in-flight state (the next full pass sees that it was deleted)
    assert found == {fine.document_id: ("completed", None), moved.document_id: ("indexing", None),
                     deleted.document_id: ("completed", None)}
    assert asked(emulator) == ["batch"] * 3 + [f"status={s}" for s in POLL_STATUSES]
    answers = sorted(r.status for r in emulator.requests if r.path.endswith("/indexing-status"))
    assert answers == [200, 404, 404]


def test_a_document_found_nowhere_in_the_listing_is_gone(tmp_path):
    with EmulatorServer(status_filter=False) as emu, DifyClient(emu.base_url, emu.api_key) as client:
        # given a server without the status filter, and a document deleted since its upload
        ds = emu.store.create_dataset("Docs", "high_quality")
        preload(emu, ds, 3)
        deleted = uploaded(emu, ds, "deleted.md")
        emu.store.delete_document(ds, deleted.document_id)
        emu.reset_requests()
        # when
        found = IndexingPoller(client).statuses(ds, [deleted])
        # then: its batch 404s, the filter is found ignored, the plain listing lacks it
        assert found == {deleted.document_id: ("gone", None)}
        assert asked(emu) == ["batch", "status=queuing", "listing"]


# --- the poller: a server that ignores the status filter ------------------------------------


def test_a_server_that_ignores_the_status_filter_is_noticed_and_never_trusted_again(tmp_path):
    with EmulatorServer(legacy=True) as emu, DifyClient(emu.base_url, emu.api_key) as client:
        # given an old server and twelve documents just uploaded
        ds = emu.store.create_dataset("Docs", "high_quality")
        preload(emu, ds, 30)
        queued = uploaded(emu, ds, "queued.md", indexing_status="waiting")
        busy = uploaded(emu, ds, "busy.md", indexing_status="indexing")
        failed = uploaded(emu, ds, "failed.md", error="boom")
        done = [uploaded(emu, ds, f"done-{i}.md") for i in range(9)]
        many = [queued, busy, failed, *done]
        expected = {queued.document_id: ("waiting", None), busy.document_id: ("indexing", None),
                    failed.document_id: ("error", "boom"),
                    **{d.document_id: ("completed", None) for d in done}}
        poller = IndexingPoller(client)
        emu.reset_requests()
        # when it is first polled, then polled again, then for three batches only
        first = poller.statuses(ds, many)
        first_asked = asked(emu)
        emu.reset_requests()
        second = poller.statuses(ds, many)
        second_asked = asked(emu)
        emu.reset_requests()
        third = poller.statuses(ds, [queued, busy, failed])
        # then one filtered listing gives it away, and from then on no answer to a filter is read
        assert first == expected and second == expected
        assert third == {k: expected[k] for k in (queued.document_id, busy.document_id, failed.document_id)}
        assert poller.filters_work is False
        assert first_asked == ["status=queuing", "listing"]
        assert second_asked == ["listing"]
        assert asked(emu) == ["batch"] * 3


# --- the poller: adopted documents (no batch) ------------------------------------------------


@pytest.mark.parametrize("legacy, cost", [(False, [f"status={s}" for s in POLL_STATUSES]),
                                          (True, ["status=queuing", "listing"])])
def test_documents_without_a_batch_are_polled_by_listing(tmp_path, legacy, cost):
    with EmulatorServer(legacy=legacy) as emu, DifyClient(emu.base_url, emu.api_key) as client:
        # given an adopted document (no batch) and an uploaded one, both in flight
        ds = emu.store.create_dataset("Docs", "high_quality")
        adopted = uploaded(emu, ds, "adopted.md", indexing_status="indexing")._replace(batch=None)
        fresh = uploaded(emu, ds, "fresh.md")
        emu.reset_requests()
        # when
        found = IndexingPoller(client).statuses(ds, [adopted, fresh])
        # then no indexing-status request is sent (least of all for batch "None")
        assert found == {adopted.document_id: ("indexing", None), fresh.document_id: ("completed", None)}
        assert asked(emu) == cost


# --- poll_folder: what the poll writes --------------------------------------------------------


def test_a_poll_writes_each_status_into_the_state_and_completed_documents_leave_the_in_flight_list(
        emulator, client, store, dataset):
    # given three rows in flight
    done = track(store, dataset, uploaded(emulator, dataset, "done.md"))
    busy = track(store, dataset, uploaded(emulator, dataset, "busy.md", indexing_status="indexing"))
    failed = track(store, dataset, uploaded(emulator, dataset, "failed.md", error="boom"))
    # when
    found = poll_folder(IndexingPoller(client), store, FOLDER, dataset)
    # then
    assert found == {done.document_id: ("completed", None), busy.document_id: ("indexing", None),
                     failed.document_id: ("error", "boom")}
    assert statuses_in_state(store) == {"done.md": "completed", "busy.md": "indexing", "failed.md": "error"}
    assert store.load_folder(FOLDER)["failed.md"].last_error == "indexing failed in Dify: boom"
    assert store.in_flight(FOLDER) == [busy]


def test_a_poll_of_some_documents_asks_and_writes_only_about_those(emulator, client, store, dataset):
    # given two rows in flight whose documents have both been indexed
    asked_for = track(store, dataset, uploaded(emulator, dataset, "asked.md"))
    other = track(store, dataset, uploaded(emulator, dataset, "other.md"))
    emulator.reset_requests()
    # when
    found = poll_folder(IndexingPoller(client), store, FOLDER, dataset, only={asked_for.document_id})
    # then
    assert found == {asked_for.document_id: ("completed", None)}
    assert asked(emulator) == ["batch"]
    assert statuses_in_state(store) == {"asked.md": "completed", "other.md": "waiting"}
    assert store.in_flight(FOLDER) == [other]


def test_a_poll_writes_nothing_for_a_gone_document(tmp_path, store):
    with EmulatorServer(status_filter=False) as emu, DifyClient(emu.base_url, emu.api_key) as client:
        # given a row in flight whose document was deleted
        ds = emu.store.create_dataset("Docs", "high_quality")
        preload(emu, ds, 1)
        gone = track(store, ds, uploaded(emu, ds, "gone.md"))
        emu.store.delete_document(ds, gone.document_id)
        # when
        found = poll_folder(IndexingPoller(client), store, FOLDER, ds)
        # then the next full pass, not the poll, deals with it
        assert found == {gone.document_id: ("gone", None)}
        assert statuses_in_state(store) == {"gone.md": "waiting"}
        assert store.in_flight(FOLDER) == [gone]


# --- wait_for_indexing ---------------------------------------------------------------------


def test_waiting_ends_with_the_tally_once_every_document_settles(emulator, client, store, dataset):
    # given two documents still indexing; each pause lets one of them finish
    first = track(store, dataset, uploaded(emulator, dataset, "first.md", indexing_status="indexing"))
    second = track(store, dataset, uploaded(emulator, dataset, "second.md", indexing_status="indexing"))
    unfinished = [first, second]
    clock = Clock(on_sleep=lambda: emulator.store.set_document(
        dataset, unfinished.pop(0).document_id, indexing_status=None))
    # when
    finished, tally = wait_for_indexing(
        IndexingPoller(client), store, {(FOLDER, dataset): {first.document_id, second.document_id}},
        timeout=60, pauses=lambda: 5.0, sleep=clock.sleep, clock=clock)
    # then
    assert (finished, tally) == (True, {"completed": 2})
    assert clock.slept == [5.0, 5.0]
    assert store.in_flight(FOLDER) == []


def test_waiting_times_out_with_the_tally_so_far(emulator, client, store, dataset):
    # given one document indexed and one that never finishes
    done = track(store, dataset, uploaded(emulator, dataset, "done.md"))
    stuck = track(store, dataset, uploaded(emulator, dataset, "stuck.md", indexing_status="indexing"))
    clock = Clock()
    # when
    finished, tally = wait_for_indexing(
        IndexingPoller(client), store, {(FOLDER, dataset): {done.document_id, stuck.document_id}},
        timeout=10, pauses=lambda: 3.0, sleep=clock.sleep, clock=clock)
    # then it never sleeps past the deadline
    assert (finished, tally) == (False, {"completed": 1, "indexing": 1})
    assert clock.slept == [3.0, 3.0, 3.0, 1.0] and clock.now == 10


def test_a_document_in_error_counts_as_settled(emulator, client, store, dataset):
    # given a document whose indexing failed
    failed = track(store, dataset, uploaded(emulator, dataset, "failed.md", error="boom"))
    clock = Clock()
    # when
    finished, tally = wait_for_indexing(
        IndexingPoller(client), store, {(FOLDER, dataset): {failed.document_id}},
        timeout=60, pauses=lambda: 5.0, sleep=clock.sleep, clock=clock)
    # then
    assert (finished, tally) == (True, {"error": 1})
    assert clock.slept == []


def test_a_document_settled_before_the_first_poll_counts_as_completed_without_a_request(
        emulator, client, store, dataset):
    # given a touched document whose row is no longer in flight
    item = track(store, dataset, uploaded(emulator, dataset, "done.md"))
    store.refresh_statuses(FOLDER, {item.document_id: ("completed", None)})
    emulator.reset_requests()
    clock = Clock()
    # when
    finished, tally = wait_for_indexing(
        IndexingPoller(client), store, {(FOLDER, dataset): {item.document_id}},
        timeout=60, pauses=lambda: 5.0, sleep=clock.sleep, clock=clock)
    # then
    assert (finished, tally) == (True, {"completed": 1})
    assert asked(emulator) == []


# --- the dataset ------------------------------------------------------------------------------


def test_a_configured_dataset_id_is_used_as_is_without_a_request(tmp_path, emulator, client, store):
    folder = settings_for(tmp_path, emulator, 'dataset_id = "configured-id"').folders[0]
    assert resolve_dataset(client, store, folder, create=True) == "configured-id"
    assert asked(emulator) == []


def test_a_dataset_name_is_looked_up_once_and_remembered(tmp_path, emulator, client, store):
    # given a dataset found by name
    folder = settings_for(tmp_path, emulator, 'dataset_name = "Docs"').folders[0]
    ds = emulator.store.create_dataset("Docs", "high_quality")
    emulator.store.create_dataset("Docs archive", "high_quality")  # the keyword search finds it too
    # when it is resolved twice
    first = resolve_dataset(client, store, folder, create=True)
    first_asked = asked(emulator)
    emulator.reset_requests()
    second = resolve_dataset(client, store, folder, create=True)
    # then only the first asks Dify
    assert first == ds and first_asked == ["datasets"]
    assert second == ds and asked(emulator) == []
    assert store.known_dataset(folder.key, "Docs") == ds


def test_a_missing_dataset_is_created_and_remembered(tmp_path, emulator, client, store):
    folder = settings_for(tmp_path, emulator, 'dataset_name = "Docs"').folders[0]
    found = resolve_dataset(client, store, folder, create=True)
    assert [d["name"] for d in emulator.store.list_datasets(1, 100, None)["data"]] == ["Docs"]
    assert asked(emulator) == ["datasets", "POST /v1/datasets"]
    assert found is not None and store.known_dataset(folder.key, "Docs") == found


def test_a_dry_run_resolves_without_remembering(tmp_path, emulator, client, store):
    # given
    folder = settings_for(tmp_path, emulator, 'dataset_name = "Docs"').folders[0]
    ds = emulator.store.create_dataset("Docs", "high_quality")
    # when it is resolved twice without remembering
    results = [resolve_dataset(client, store, folder, create=False, remember=False) for _ in range(2)]
    # then both ask, and nothing is written
    assert results == [ds] * 2
    assert asked(emulator) == ["datasets"] * 2
    assert store.known_dataset(folder.key, "Docs") is None


def test_a_dry_run_never_creates_a_missing_dataset(tmp_path, emulator, client, store):
    folder = settings_for(tmp_path, emulator, 'dataset_name = "Docs"').folders[0]
    assert resolve_dataset(client, store, folder, create=False, remember=False) is None
    assert asked(emulator) == ["datasets"]
    assert store.known_dataset(folder.key, "Docs") is None


def test_after_the_dataset_is_recreated_a_resolve_without_recall_finds_the_new_one(
        tmp_path, emulator, client, store):
    # given a remembered id whose dataset was deleted and made again under the same name
    folder = settings_for(tmp_path, emulator, 'dataset_name = "Docs"').folders[0]
    old = emulator.store.create_dataset("Docs", "high_quality")
    resolve_dataset(client, store, folder, create=False)
    emulator.store.delete_dataset(old)
    new = emulator.store.create_dataset("Docs", "high_quality")
    assert resolve_dataset(client, store, folder, create=False) == old  # trusted till told
    with pytest.raises(DatasetMissing) as missing:
        RemoteView(client, old).everything()
    # when
    stale = stale_dataset(store, folder, missing.value)
    emulator.reset_requests()
    again = resolve_dataset(client, store, folder, create=False, recall=False)
    # then
    assert stale is True
    assert again == new and asked(emulator) == ["datasets"]
    assert store.known_dataset(folder.key, "Docs") == new


def test_a_remembered_id_is_stale_only_after_dataset_not_found(tmp_path, emulator, client, store):
    folder = settings_for(tmp_path, emulator, 'dataset_name = "Docs"').folders[0]
    ds = emulator.store.create_dataset("Docs", "high_quality")
    resolve_dataset(client, store, folder, create=False)
    with pytest.raises(NotFoundError) as not_found:
        client.indexing_status(ds, "no-such-batch")
    assert stale_dataset(store, folder, not_found.value) is False
    assert stale_dataset(store, folder, ValueError("not from Dify")) is False
    assert store.known_dataset(folder.key, "Docs") == ds


def test_a_configured_id_is_never_stale(tmp_path, emulator, client, store):
    folder = settings_for(tmp_path, emulator, 'dataset_id = "configured-id"').folders[0]
    with pytest.raises(DatasetMissing) as missing:
        RemoteView(client, "configured-id").everything()
    assert stale_dataset(store, folder, missing.value) is False


def test_nothing_remembered_is_never_stale(tmp_path, emulator, client, store):
    folder = settings_for(tmp_path, emulator, 'dataset_name = "Docs"').folders[0]
    with pytest.raises(DatasetMissing) as missing:
        RemoteView(client, "no-such-dataset").everything()
    assert stale_dataset(store, folder, missing.value) is False


# --- a targeted pass: names -------------------------------------------------------------------


def test_a_targeted_pass_looks_each_name_up_and_keeps_exact_matches_only(emulator, client, dataset):
    # given documents, one of whose names holds another as a substring
    for name in ("a.md", "xa.md", document_name("b/c.md"), "old.md", "unrelated.md"):
        emulator.store.add_document(dataset, name, b"x")
    rows = {"old.md": FileState("old.md", document_id="whatever", document_name="old.md")}
    emulator.reset_requests()
    # when
    found = RemoteView(client, dataset).for_paths(rows, [local("a.md"), local("b/c.md")])
    # then
    assert sorted(d.name for d in found) == sorted(["a.md", document_name("b/c.md"), "old.md"])
    assert sorted(asked(emulator)) == sorted(f"keyword={n}" for n in ("a.md", document_name("b/c.md"), "old.md"))


def test_up_to_the_lookup_limit_each_name_costs_one_request(emulator, client, dataset):
    names = [f"f{i:02d}.md" for i in range(MAX_NAME_LOOKUPS)]
    for name in names + ["unrelated.md"]:
        emulator.store.add_document(dataset, name, b"x")
    emulator.reset_requests()
    found = RemoteView(client, dataset).for_paths({}, [local(n) for n in names])
    assert sorted(d.name for d in found) == names
    assert sorted(asked(emulator)) == [f"keyword={n}" for n in names]  # sent side by side


def test_past_the_lookup_limit_the_dataset_is_listed_instead(emulator, client, dataset):
    names = [f"f{i:02d}.md" for i in range(MAX_NAME_LOOKUPS + 1)]
    for name in names + ["unrelated.md"]:
        emulator.store.add_document(dataset, name, b"x")
    emulator.reset_requests()
    found = RemoteView(client, dataset).for_paths({}, [local(n) for n in names])
    assert sorted(d.name for d in found) == names  # the paths' documents, not the whole dataset
    assert asked(emulator) == ["listing"]  # one page: the whole dataset


def test_a_listed_targeted_pass_keeps_only_its_documents_by_name_id_or_path_tag(emulator, client, dataset):
    # given a dataset of many pages, and a targeted pass over more paths than lookups pay for
    names = [f"f{i:03d}.md" for i in range(200)]
    for i in range(250):
        emulator.store.add_document(dataset, f"other-{i}.md", b"x", match_by_name=False)
    for name in names:
        emulator.store.add_document(dataset, name, b"x", match_by_name=False)
    renamed, _batch = emulator.store.add_document(dataset, "was-renamed-elsewhere.md", b"x", match_by_name=False)
    rows = {"moved.md": FileState("moved.md", document_id=renamed.id, document_name="moved.md")}
    emulator.reset_requests()
    # when
    found = RemoteView(client, dataset).for_paths(rows, [local(n) for n in names])
    # then the listing was paged through, and only the pass's documents were kept
    assert sorted(d.name for d in found) == sorted(names + ["was-renamed-elsewhere.md"])
    assert set(asked(emulator)) == {"listing"}


def test_past_the_lookup_limit_a_big_dataset_is_still_asked_by_name(emulator, client, dataset):
    names = [f"f{i:02d}.md" for i in range(MAX_NAME_LOOKUPS + 1)]
    for i in range(3000):
        emulator.store.add_document(dataset, f"other-{i}.md", b"x", match_by_name=False)
    for name in names:
        emulator.store.add_document(dataset, name, b"x")
    emulator.reset_requests()
    found = RemoteView(client, dataset).for_paths({}, [local(n) for n in names])
    assert sorted(d.name for d in found) == names
    # 30 listing pages would cost more than the first page plus 21 lookups
    assert sorted(asked(emulator)) == sorted(["listing"] + [f"keyword={n}" for n in names])


def test_a_targeted_pass_with_no_names_sends_nothing(emulator, client, dataset):
    assert RemoteView(client, dataset).for_paths({}, []) == []
    assert asked(emulator) == []


# --- a full pass: the listing without settled files -------------------------------------------


@pytest.fixture
def synced(tmp_path, emulator, client, store):
    """a.md, b.md and c.md mirrored by a real pass; returns (settings, folder, dataset id)."""
    ds = emulator.store.create_dataset("Docs", "high_quality")
    settings = settings_for(tmp_path, emulator, f'dataset_id = "{ds}"')
    folder = settings.folders[0]
    for name in ("a", "b", "c"):
        (folder.path / f"{name}.md").write_text(f"{name} content", encoding="utf-8")
    report = reconcile_folder(Env(settings, client, store), folder)
    assert report.ok and report.counts["created"] == 3, report.errors
    emulator.reset_requests()
    return settings, folder, ds


def pass_inputs(settings, folder, store):
    """What a full pass hands to ``unsettled``: hashed files, rows, journal, policy."""
    policy = policy_for(settings, folder, None)
    rows = store.load_folder(folder.key)
    files, _, _, _ = with_hashes(scan_tree(folder.path, folder.include, folder.exclude).files, rows,
                                 folder.path, policy)
    return files, rows, store.pending_journal(folder.key), policy


def test_the_listing_leaves_settled_files_out_of_files_rows_and_documents_and_counts_them(
        emulator, client, store, synced):
    # given c.md edited, and a document someone else uploaded
    settings, folder, ds = synced
    (folder.path / "c.md").write_text("edited", encoding="utf-8")
    emulator.store.add_document(ds, "foreign.md", b"theirs")
    emulator.reset_requests()
    # when
    out = RemoteView(client, ds).unsettled(*pass_inputs(settings, folder, store))
    # then
    assert out.settled == 2
    assert [f.rel_path for f in out.files] == ["c.md"]
    assert sorted(out.rows) == ["c.md"]
    assert sorted(d.name for d in out.remote) == ["c.md", "foreign.md"]
    assert asked(emulator) == ["listing"]


def test_on_an_unchanged_folder_the_listing_leaves_nothing_but_the_count(client, store, synced):
    settings, folder, ds = synced
    out = RemoteView(client, ds).unsettled(*pass_inputs(settings, folder, store))
    assert (out.remote, out.files, out.rows, out.settled) == ([], [], {}, 3)


def test_the_listing_reports_settled_documents_whose_status_the_state_has_not_seen(
        client, store, synced):
    # given rows that still say "waiting" (the upload's answer) for documents now indexed
    settings, folder, ds = synced
    rows = store.load_folder(folder.key)
    assert {r.indexing_status for r in rows.values()} == {"waiting"}
    # when
    out = RemoteView(client, ds).unsettled(*pass_inputs(settings, folder, store))
    # then
    assert out.status_changes == {r.document_id: ("completed", None) for r in rows.values()}


def test_the_listing_consumes_the_files_and_rows_it_is_given(client, store, synced):
    settings, folder, ds = synced
    files, rows, journal, policy = pass_inputs(settings, folder, store)
    out = RemoteView(client, ds).unsettled(files, rows, journal, policy)
    assert files == [] and rows == {} and out.rows is rows


# --- a full pass: unchanged files held as columns (candidates.py) ------------------------------


def candidate_inputs(settings, folder, store):
    """What a listing pass hands to ``unsettled`` (reconcile._load): the plain rows of
    unchanged files held as candidates; only the other files and rows as objects."""
    policy = policy_for(settings, folder, None)
    unchanged = Candidates(scan_tree(folder.path, folder.include, folder.exclude).found, policy)
    rows = store.load_folder(folder.key, unchanged=unchanged)
    files, _, _, _ = with_hashes(unchanged.others(), rows, folder.path, policy)
    return files, rows, store.pending_journal(folder.key), policy, unchanged


def test_unchanged_synced_files_are_held_as_candidates_not_as_files_and_rows(client, store, synced):
    # given c.md edited since the last pass
    settings, folder, ds = synced
    (folder.path / "c.md").write_text("edited", encoding="utf-8")
    # when the state is loaded beside the walk
    files, rows, _, _, unchanged = candidate_inputs(settings, folder, store)
    # then a.md and b.md are candidates; c.md is a file and a row as before
    assert len(unchanged) == 2
    assert [f.rel_path for f in files] == ["c.md"] and sorted(rows) == ["c.md"]


def test_a_first_pass_with_no_rows_makes_no_columns(tmp_path, emulator, store):
    settings = settings_for(tmp_path, emulator, 'dataset_id = "any"')
    folder = settings.folders[0]
    (folder.path / "a.md").write_text("a", encoding="utf-8")
    files, rows, _, _, unchanged = candidate_inputs(settings, folder, store)
    assert [f.rel_path for f in files] == ["a.md"] and rows == {}
    assert len(unchanged) == 0 and unchanged.by_path == {} and not unchanged.shas


def test_a_row_whose_hash_is_not_a_lower_case_sha256_stays_a_row(client, store, synced):
    # given b.md's row holds its hash in upper case (an adopted tag, say)
    settings, folder, ds = synced
    row = store.load_folder(folder.key)["b.md"]
    store.conn.execute("UPDATE files SET sha256 = ? WHERE rel_path = 'b.md'", [row.sha256.upper()])
    store.conn.commit()
    # when
    files, rows, _, _, unchanged = candidate_inputs(settings, folder, store)
    # then it is compared as a FileState, exactly as stored
    assert len(unchanged) == 2 and rows["b.md"].sha256 == row.sha256.upper()


def test_a_candidate_the_listing_does_not_settle_comes_back_as_the_file_and_row_it_was(
        emulator, client, store, synced):
    # given b.md's document deleted in Dify (so the listing cannot settle b.md)
    settings, folder, ds = synced
    before = store.load_folder(folder.key)["b.md"]
    emulator.store.delete_document(ds, before.document_id)
    files, rows, journal, policy, unchanged = candidate_inputs(settings, folder, store)
    # when
    out = RemoteView(client, ds).unsettled(files, rows, journal, policy, unchanged)
    # then a.md and c.md were settled without ever becoming objects; b.md came back whole
    assert out.settled == 2
    assert [f.rel_path for f in out.files] == ["b.md"] and out.files[0].sha256 == before.sha256
    assert out.rows == {"b.md": before}


def test_candidates_change_nothing_the_listing_hands_the_planner(emulator, client, store, synced):
    """The same folder, listed with and without candidates, gives the same documents,
    files, rows, counts and status changes: holding unchanged files as columns is only
    about memory."""
    # given an edit, a local delete, a document lost in Dify, a new file and a foreign document
    settings, folder, ds = synced
    (folder.path / "a.md").write_text("edited", encoding="utf-8")
    (folder.path / "b.md").unlink()
    (folder.path / "new.md").write_text("new", encoding="utf-8")
    emulator.store.delete_document(ds, store.load_folder(folder.key)["c.md"].document_id)
    emulator.store.add_document(ds, "foreign.md", b"theirs")
    view = RemoteView(client, ds)
    # when
    plain = view.unsettled(*pass_inputs(settings, folder, store))
    held = view.unsettled(*candidate_inputs(settings, folder, store))
    # then
    assert sorted(d.id for d in held.remote) == sorted(d.id for d in plain.remote)
    assert held.files == sorted(plain.files) and held.rows == plain.rows
    assert (held.settled, held.status_changes, held.settled_journaled) == \
        (plain.settled, plain.status_changes, plain.settled_journaled)


# --- a pass whose remembered dataset is gone ---------------------------------------------------


def test_a_pass_whose_remembered_dataset_vanished_looks_the_name_up_again(tmp_path, emulator, client, store):
    from difysync.reconcile import Env, PassOptions, reconcile_folder

    settings = settings_for(tmp_path, emulator, 'dataset_name = "Team docs"')
    folder = settings.folders[0]
    (tmp_path / "docs" / "a.md").write_text("a")
    first = reconcile_folder(Env(settings, client, store), folder)
    old = first.dataset_id
    emulator.store.delete_dataset(old)
    new = emulator.store.create_dataset("Team docs", "high_quality")
    # a dry run finds the new one, and writes nothing
    dry = reconcile_folder(Env(settings, client, store), folder, PassOptions(dry_run=True))
    assert dry.fatal is None and dry.dataset_id == new
    assert store.known_dataset(folder.key, "Team docs") == old
    # a real pass forgets the old id and remembers the new one
    again = reconcile_folder(Env(settings, client, store), folder)
    assert again.fatal is None and again.dataset_id == new and again.counts["created"] == 1
    assert store.known_dataset(folder.key, "Team docs") == new


def test_a_dataset_deleted_in_dify_is_not_made_again_silently(tmp_path, emulator, client, store):
    from difysync.reconcile import Env, PassOptions, reconcile_folder

    settings = settings_for(tmp_path, emulator, 'dataset_name = "Team docs"')
    folder = settings.folders[0]
    (tmp_path / "docs" / "a.md").write_text("a")
    old = reconcile_folder(Env(settings, client, store), folder).dataset_id
    emulator.store.delete_dataset(old)
    # when a pass finds it gone and no dataset of that name
    stopped = reconcile_folder(Env(settings, client, store), folder)
    # then it stops, says why and how to go on, and makes nothing
    assert isinstance(stopped.fatal, DatasetMissing)
    assert "--recreate-dataset" in stopped.fatal.describe() and "deleted in Dify" in stopped.fatal.describe()
    assert emulator.store.list_datasets(1, 100, None)["total"] == 0
    assert isinstance(reconcile_folder(Env(settings, client, store), folder).fatal, DatasetMissing)  # every pass
    # and with --recreate-dataset it is made again, and the folder uploaded into it
    again = reconcile_folder(Env(settings, client, store), folder, PassOptions(recreate_dataset=True))
    assert again.fatal is None and again.dataset_id not in (None, old) and again.counts["created"] == 1
    assert store.known_dataset(folder.key, "Team docs") == again.dataset_id


def test_a_pass_refused_for_a_missing_root_makes_no_dataset(tmp_path, emulator, client, store):
    from difysync.reconcile import Env, reconcile_folder

    settings = settings_for(tmp_path, emulator, 'dataset_name = "Team docs"')
    (tmp_path / "docs").rmdir()
    report = reconcile_folder(Env(settings, client, store), settings.folders[0])
    assert report.errors and "does not exist" in " ".join(report.errors)
    assert emulator.store.list_datasets(1, 100, None)["total"] == 0


def test_a_paused_document_counts_as_settled_when_polled_by_listing(emulator, client, store, dataset):
    doc, batch = emulator.store.add_document(dataset, "p.md", b"x")
    emulator.store.set_document(dataset, doc.id, indexing_status="paused")
    store.settle_upload(None, "/f", dataset, "p.md", document_id=doc.id, document_name="p.md", batch=None,
                        sha256="x", size=1, mtime_ns=1, inode=1, indexing_status="indexing")
    poller = IndexingPoller(client)
    poller.filters_work = False  # as on a server without the status filter
    assert poller.statuses(dataset, store.in_flight("/f")) == {doc.id: ("paused", None)}


def test_a_long_listing_returns_every_document_and_leaves_nothing_frozen(emulator, client, dataset):
    # A listing collects cyclic garbage every 50 pages and freezes what survives, so that
    # each collection looks only at what is new (a full one each time grew with the square
    # of the dataset); when it ends, nothing stays out of the collector's reach.
    import gc

    for i in range(5_100):  # 51 pages
        emulator.store.add_document(dataset, f"doc-{i}.md", b"x")
    docs = client.list_documents(dataset)
    assert len({d.id for d in docs}) == 5_100
    assert gc.get_freeze_count() == 0
