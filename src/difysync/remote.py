"""How a pass sees Dify: the folder's dataset (resolved once and remembered), the listing
with settled files left out, lookups by name for a targeted pass, the probe of a quiet
pass, and the one indexing poller that `reconcile --wait` and the service share.

Everything a pass *asks* Dify goes through here, and the cost of each question follows
the change, not the size of the dataset. It never changes anything remotely (apply.py
does) and never decides what to do (plan.py does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .dify import PAGE_LIMIT, DifyClient
from . import tags
from .errors import DatasetMissing, NotFoundError, RefusedError
from .events import NOBODY, Observer
from .logs import log_fields
from .marks import FLAGGED_STATUSES, ListingRecorder, RemoteFingerprint, fingerprint
from .models import FileState, JournalEntry, LocalFile, RemoteDocument
from .naming import document_name
from .plan import Adoptions, Policy, is_settled
from .state import InFlight, StateBackend

if TYPE_CHECKING:  # pragma: no cover
    from .candidates import Candidates
    from .config import FolderSettings

log = logging.getLogger("difysync")

# A targeted pass looks names up one request each; past this many a listing is cheaper.
MAX_NAME_LOOKUPS = 20


# --- the dataset ------------------------------------------------------------------------


def resolve_dataset(client: DifyClient, store: StateBackend | None, folder: FolderSettings, *,
                    create: bool, remember: bool = True, recall: bool = True) -> str | None:
    """The folder's dataset: its configured id, or the id its name was resolved to before
    (kept in the state DB; not with ``recall=False``), or found by name now (created when
    absent and ``create``; kept when ``remember``). After a remembered id answered
    "dataset not found" (``stale_dataset``), the caller resolves with ``recall=False``:
    the name is looked up again and what it finds replaces the remembered id."""
    if folder.dataset_id:
        return folder.dataset_id
    known = store.known_dataset(folder.key, folder.dataset_name) if recall and store is not None else None
    if known:
        return known
    if create:
        found: str | None = client.ensure_dataset(folder.dataset_name, folder.indexing_technique)
    else:
        hit = client.find_dataset(folder.dataset_name)
        found = str(hit["id"]) if hit else None
    if found and remember and store is not None:
        store.remember_dataset(folder.key, folder.dataset_name, found)
    return found


def stale_dataset(store: StateBackend, folder: FolderSettings, error: BaseException) -> bool:
    """After ``error``: True when it says that the remembered id of the folder's dataset
    is one Dify no longer knows, so that resolving the name again is worth a try."""
    if folder.dataset_id or not isinstance(error, DatasetMissing):
        return False
    return store.known_dataset(folder.key, folder.dataset_name) is not None


# --- difysync's metadata fields ----------------------------------------------------------


def metadata_fields(client: DifyClient, store: StateBackend, folder: str, dataset_id: str, *,
                    recheck_after: float, verify: bool = False, label: str = "") -> dict[str, str] | None:
    """The ids of difysync's four fields in the dataset (name -> id), made where missing
    and remembered in the state DB; None when the server has no metadata API (then it is
    asked again only after ``recheck_after`` seconds: a server can be upgraded). With
    ``verify`` the remembered ids are checked against Dify's list (a person may have
    deleted a field: writing its old id binds nothing anyone can see). ``label`` names the
    folder in log lines (default: its key)."""
    label = label or folder
    known = store.known_metadata(dataset_id)
    if known is not None and known.supported and tags.NAMES <= known.fields.keys() and not verify:
        return known.fields
    if known is not None and not known.supported and time.time() - known.checked_at < recheck_after:
        return None
    listed = client.metadata_fields(dataset_id)
    if listed is None:
        log.info("%s: this server has no metadata API; difysync's metadata fields are off for dataset %s",
                 label, dataset_id, extra=log_fields(folder=label))
        store.remember_metadata(dataset_id, False, {})
        return None
    by_name = {str(f.get("name")): str(f.get("id")) for f in listed}
    by_name.update(_create_fields(client, store, folder, dataset_id,
                                  [(name, kind) for name, kind in tags.FIELDS if name not in by_name], label))
    fields = {name: by_name[name] for name in tags.NAMES}
    store.remember_metadata(dataset_id, True, fields)
    return fields


def _create_fields(client: DifyClient, store: StateBackend, folder: str, dataset_id: str,
                   missing: Sequence[tuple[str, str]], label: str) -> dict[str, str]:
    """Make the missing fields side by side, journaled (on this thread) before they are sent."""
    if not missing:
        return {}
    journal = store.journal_begin_many(folder, dataset_id, "field", [("", name, None, None) for name, _ in missing])
    try:
        with ThreadPoolExecutor(max_workers=len(missing), thread_name_prefix="difysync-fields") as pool:
            made = list(pool.map(lambda field: _create_field(client, dataset_id, *field), missing))
    finally:
        store.clear_journal(journal)
    for name, _ in missing:
        log.info("%s: made the metadata field %s in dataset %s", label, name, dataset_id,
                 extra=log_fields(folder=label))
    return {name: field_id for (name, _), field_id in zip(missing, made)}


def _create_field(client: DifyClient, dataset_id: str, name: str, kind: str) -> str:
    """Make one field; a name taken meanwhile (another host made it) is found again."""
    try:
        return str(client.create_metadata_field(dataset_id, name, kind)["id"])
    except RefusedError:
        again = {str(f.get("name")): str(f.get("id")) for f in client.metadata_fields(dataset_id) or ()}
        if name not in again:
            raise
        return again[name]


# --- the listing ----------------------------------------------------------------------------


@dataclass
class Unsettled:
    """A full listing with the settled files taken out of all three inputs."""

    remote: list[RemoteDocument]
    files: list[LocalFile]
    rows: dict[str, FileState]
    adopted: Adoptions = field(default_factory=Adoptions)  # certain while listing (adoptions.py)
    settled: int = 0
    settled_journaled: set[str] = field(default_factory=set)  # settled paths with journal rows
    status_changes: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    fingerprint: RemoteFingerprint | None = None


class RemoteView:
    """One dataset as one pass sees it."""

    def __init__(self, client: DifyClient, dataset_id: str,
                 name_of: Callable[[str], str] = document_name) -> None:
        self.client = client
        self.dataset_id = dataset_id
        self.name_of = name_of  # the folder's path -> document name (its name_prefix included)

    def everything(self) -> list[RemoteDocument]:
        return self.client.list_documents(self.dataset_id)

    def unsettled(self, files: list[LocalFile], rows: dict[str, FileState],
                  journal: Sequence[JournalEntry], policy: Policy,
                  unchanged: Candidates | None = None) -> Unsettled:
        """The listing minus the documents of settled files, and the files and rows minus
        the settled ones: on a folder where nothing changed that is everything, and it is
        let go page by page as the listing arrives, so a no-op pass never holds the
        dataset twice. ``files`` and ``rows`` are consumed; ``unchanged`` holds the
        unchanged files' rows as columns, and only those it does not settle come back as
        a file and a row. Settled files cannot change any decision (tests/test_plan.py
        proves it)."""
        local = {f.rel_path: f for f in files}
        files.clear()  # from here on each record lives in ``local`` alone, and goes when settled
        out = Unsettled([], [], rows)
        settling = _Settling(local, rows, unchanged, journal, policy, out)
        recorder = ListingRecorder()
        out.remote = self.client.list_documents(self.dataset_id, keep=settling.keep, on_page=recorder.on_page)
        settling.finish()
        out.fingerprint = recorder.fingerprint()
        return out

    def for_paths(self, rows: Mapping[str, FileState], files: Sequence[LocalFile]) -> list[RemoteDocument]:
        """The documents a targeted pass can touch: listing the whole dataset for a
        handful of paths would defeat the point on big datasets, so look them up by name
        (one request each, side by side), unless the listing takes fewer requests. A
        listing keeps only those documents (by name, id or our path tag) as it arrives: a
        targeted pass over a few thousand paths of a 100k dataset holds those, not all."""
        names = sorted({row.document_name for row in rows.values() if row.document_name}
                       | {self.name_of(f.rel_path) for f in files})
        if len(names) > MAX_NAME_LOOKUPS:
            wanted = _Wanted(set(names), {row.document_id for row in rows.values() if row.document_id},
                             set(rows) | {f.rel_path for f in files})
            first, total = self.client.document_page(self.dataset_id, 1)
            if total is not None and total <= len(first):
                return [d for d in first if wanted(d)]  # the whole dataset was one page
            if total is None or -(-total // PAGE_LIMIT) <= len(names):
                return self.client.list_documents(self.dataset_id, keep=wanted)
        out: dict[str, RemoteDocument] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.client.list_workers),
                                thread_name_prefix="difysync-lookup") as pool:
            for found in pool.map(lambda name: self.client.find_documents(self.dataset_id, name), names):
                out.update((doc.id, doc) for doc in found)
        return list(out.values())

    def probe(self) -> RemoteFingerprint | None:
        """The dataset's fingerprint now (see marks.py), from the first page and one
        filtered listing per flagged status, sent side by side. None when the server
        ignores the filter or sends no ``total``."""
        client, dataset_id = self.client, self.dataset_id

        def flagged(status: str) -> list[RemoteDocument] | None:
            return filtered_listing(client, dataset_id, status)

        workers = max(1, min(1 + len(FLAGGED_STATUSES), client.list_workers))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="difysync-probe") as pool:
            first = pool.submit(client.document_page, dataset_id, 1)
            lists = list(pool.map(flagged, FLAGGED_STATUSES))
            head, total = first.result()
        if total is None or any(docs is None for docs in lists):
            return None
        return fingerprint(total, head, {s: [d.id for d in docs or ()] for s, docs in zip(FLAGGED_STATUSES, lists)})


class _Settling:
    """One listing's ``keep``: each document is settled (it and its file and row leave the
    pass), taken as an adoption, or kept for the planner. Runs on the listing's threads:
    the pops are atomic, and the adoption stream has its lock."""

    def __init__(self, local: dict[str, LocalFile], rows: dict[str, FileState], unchanged: Candidates | None,
                 journal: Sequence[JournalEntry], policy: Policy, out: Unsettled) -> None:
        from .adoptions import AdoptionStream  # (a quiet pass never lists: it starts without either)
        from .candidates import Tracked

        self.local, self.rows, self.unchanged, self.policy, self.out = local, rows, unchanged, policy, out
        self.by_doc = {row.document_id: row for row in rows.values() if row.document_id}
        self.journaled = {e.rel_path for e in journal}
        self.stream = AdoptionStream(Tracked(rows, unchanged), self.journaled | {e.document_name for e in journal},
                                     policy)

    def keep(self, doc: RemoteDocument) -> bool:
        """False when the document leaves the listing."""
        i = self.unchanged.index_of_document(doc.id) if self.unchanged is not None else None
        if i is not None:
            return self._keep_candidate(i, doc)
        row = self.by_doc.get(doc.id)
        if row is None:
            f = self._tagged_file(doc)
            if self.stream.offer(doc, f):
                self.local.pop(f.rel_path, None)  # type: ignore[union-attr]
                return False
            return True
        if not is_settled(self.local.get(row.rel_path), row, doc, self.policy):
            self.stream.offer(doc, None)  # its name is taken in the listing
            return True
        self.by_doc.pop(doc.id, None)
        self.rows.pop(row.rel_path, None)
        self.local.pop(row.rel_path, None)
        self._settled(row, doc)
        return False

    def _keep_candidate(self, i: int, doc: RemoteDocument) -> bool:
        unchanged = self.unchanged
        assert unchanged is not None
        row = unchanged.row(i)
        if not is_settled(unchanged.file(i), row, doc, self.policy):
            self.stream.offer(doc, None)  # its name is taken in the listing
            return True
        unchanged.settle(i)
        self._settled(row, doc)
        return False

    def _settled(self, row: FileState, doc: RemoteDocument) -> None:
        out = self.out
        if row.indexing_status != doc.indexing_status:
            out.status_changes[doc.id] = (doc.indexing_status, doc.error)
        out.settled += 1
        if row.rel_path in self.journaled:
            out.settled_journaled.add(row.rel_path)

    def _tagged_file(self, doc: RemoteDocument) -> LocalFile | None:
        """The walked file a document's path tag names, unless its row was settled already."""
        path = doc.tags.path if doc.tags is not None else None
        if not path:
            return None
        f = self.local.get(path)
        if f is None and self.unchanged is not None:
            i = self.unchanged.index_of_path(path)
            f = self.unchanged.file(i) if i is not None else None
        return f

    def finish(self) -> None:
        """After the listing: the adoptions that stood, the documents given back to the
        planner, and the files left unsettled (the candidates' made a file and a row
        again), sorted by path."""
        out, local = self.out, self.local
        for doc, f in self.stream.given_back():
            out.remote.append(doc)
            local[f.rel_path] = f
        out.adopted = self.stream.adopted()
        out.files = list(local.values())
        if self.unchanged is not None:
            for i in self.unchanged.unsettled():
                out.files.append(self.unchanged.file(i))
                self.rows[self.unchanged.found.paths[i]] = self.unchanged.row(i)
            out.files.sort()


@dataclass(frozen=True)
class _Wanted:
    """A targeted pass's documents in a listing: those of its names, of its rows' ids, or
    tagged with one of its paths (what a lookup by name would have found, and no less)."""

    names: set[str]
    ids: set[str]
    paths: set[str]

    def __call__(self, doc: RemoteDocument) -> bool:
        return doc.name in self.names or doc.id in self.ids or \
            (doc.tags is not None and doc.tags.path in self.paths)


def filtered_listing(client: DifyClient, dataset_id: str, status: str) -> list[RemoteDocument] | None:
    """Every document of one display status, or None when the server ignores the filter
    (then it answers with documents of other statuses: noticed on the first page, so a
    server that lists everything is not paged through for nothing)."""
    docs, total = client.document_page(dataset_id, 1, status=status)
    out = list(docs)
    page = 2
    while docs and total is not None and len(out) < total and all(d.display_status == status for d in out):
        docs, _ = client.document_page(dataset_id, page, status=status)
        out.extend(docs)
        page += 1
    return out if all(d.display_status == status for d in out) else None


# --- the indexing poller ------------------------------------------------------------------

# The display statuses a document passes through or ends in before "available"; one
# filtered listing each tells every in-flight document's state at once.
POLL_STATUSES = ("queuing", "indexing", "paused", "error")
SETTLED = frozenset({"completed", "error", "paused"})

Status = tuple[str, "str | None"]  # (indexing_status, error text)


class IndexingPoller:
    """Learns the indexing status of the documents in flight, at a cost that follows the
    number in flight, not the size of the dataset:

    - a few batches: one ``indexing-status`` request per batch (exact, and what Dify
      offers for this);
    - more: one ``status=`` listing per display status that is not yet "available"
      (queuing, indexing, paused, error); a document in none of them has completed;
    - a server that has neither (an unknown batch and an ignored filter): the listing.
    """

    def __init__(self, client: DifyClient) -> None:
        self.client = client
        self.filters_work: bool | None = None  # learnt from the first filtered listing

    def statuses(self, dataset_id: str, items: Sequence[InFlight]) -> dict[str, Status]:
        """document id -> (indexing status, error) for each of ``items``."""
        if not items:
            return {}
        found: dict[str, Status] = {}
        rest = list(items)
        batches = {i.batch for i in items}
        if None not in batches and len(batches) <= len(POLL_STATUSES):
            found, rest = self._by_batch(dataset_id, items)
        if rest and self.filters_work is not False:
            by_filter = self._by_filters(dataset_id, rest)
            if by_filter is not None:
                return {**found, **by_filter}
        if rest:
            found.update(self._by_listing(dataset_id, rest))
        return found

    def _by_batch(self, dataset_id: str, items: Sequence[InFlight]) -> tuple[dict[str, Status], list[InFlight]]:
        found: dict[str, Status] = {}
        lost: list[InFlight] = []
        for batch in sorted({i.batch for i in items if i.batch}):
            wanted = [i for i in items if i.batch == batch]
            try:
                answer = self.client.indexing_status(dataset_id, batch)
            except NotFoundError:  # deleted, or an old server that lost the batch (dify #9221)
                lost.extend(wanted)
                continue
            by_id = {str(s.get("id")): s for s in answer}
            for item in wanted:
                status = by_id.get(item.document_id)
                if status is None:
                    lost.append(item)
                else:
                    found[item.document_id] = (str(status.get("indexing_status") or "waiting"),
                                               status.get("error") or None)
        return found, lost

    def _by_filters(self, dataset_id: str, items: Sequence[InFlight]) -> dict[str, Status] | None:
        wanted = {i.document_id for i in items}
        found: dict[str, Status] = {}
        for status in POLL_STATUSES:
            docs = filtered_listing(self.client, dataset_id, status)
            if docs is None:
                log.info("this server ignores the listing's status filter: polling by listing instead")
                self.filters_work = False
                return None
            for d in docs:
                if d.id in wanted:
                    found[d.id] = ("paused" if status == "paused" else d.indexing_status, d.error)
        self.filters_work = True
        # In none of the lists: it left every in-flight state, so it has completed (or
        # was deleted meanwhile, which the next full pass sees).
        return {i: found.get(i, ("completed", None)) for i in wanted}

    def _by_listing(self, dataset_id: str, items: Sequence[InFlight]) -> dict[str, Status]:
        wanted = {i.document_id for i in items}
        docs = {d.id: d for d in self.client.list_documents(dataset_id) if d.id in wanted}
        return {i: (_status_of(docs[i]), docs[i].error) if i in docs else ("gone", None) for i in wanted}


def _status_of(doc: RemoteDocument) -> str:
    """A listed document's indexing status; pausing shows only in its display status."""
    return "paused" if doc.display_status == "paused" else doc.indexing_status


def poll_folder(poller: IndexingPoller, store: StateBackend, folder: str, dataset_id: str,
                only: set[str] | None = None) -> dict[str, Status]:
    """Ask about the folder's documents in flight (``only`` these, if given) and write
    what comes back into the state DB. Returns what was learnt."""
    items = [i for i in store.in_flight(folder) if only is None or i.document_id in only]
    found = poller.statuses(dataset_id, items)
    store.refresh_statuses(folder, {d: s for d, s in found.items() if s[0] != "gone"})
    return found


def wait_for_indexing(poller: IndexingPoller, store: StateBackend,
                      touched: Mapping[tuple[str, str], set[str]], *, timeout: float,
                      pauses: Callable[[], float], sleep: Callable[[float], None],
                      clock: Callable[[], float], observer: Observer = NOBODY) -> tuple[bool, dict[str, int]]:
    """Poll until every touched document is completed, paused, in error or gone, or
    ``timeout`` passes. Returns (finished, counts by status). After each poll of a folder
    the ``observer`` hears its counts and the time waited so far."""
    started = clock()
    deadline = started + timeout
    statuses: dict[str, str] = {}
    while True:
        for (folder, dataset_id), ids in touched.items():
            for doc_id, (status, _) in poll_folder(poller, store, folder, dataset_id, only=ids).items():
                statuses[doc_id] = status
            for doc_id in ids:
                statuses.setdefault(doc_id, "completed")  # settled before the first poll
            observer.indexing(folder, _tally({i: statuses[i] for i in ids}), clock() - started)
        if all(s in SETTLED or s == "gone" for s in statuses.values()):
            return True, _tally(statuses)
        if clock() >= deadline:
            return False, _tally(statuses)
        sleep(min(pauses(), max(0.0, deadline - clock())))


def _tally(statuses: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses.values():
        out[s] = out.get(s, 0) + 1
    return out


__all__ = ["IndexingPoller", "metadata_fields", "RemoteView", "Unsettled", "filtered_listing", "poll_folder",
           "resolve_dataset", "stale_dataset", "wait_for_indexing"]
