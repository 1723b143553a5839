"""The executor: carries out a folder's plan through the client, journaling each remote
mutation before it is sent and settling it (with the file row) after.

Workers only read files and talk HTTP; every SQLite write happens on the calling thread,
so the store needs no locking and the journal row always exists before its request
leaves. Uploads run first, then difysync's metadata on what they touched (and on the
documents whose metadata alone was stale), in batches; deletes run last and only when
nothing else in the pass failed. A metadata write that fails is retried by a later pass
and never fails a file.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace as _replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from .dify import DifyClient, Upload
from .errors import DifyError, Next, NotFoundError, RefusedError, verdict
from .logs import log_fields
from .models import ErrorKind, FileState, LocalFile, SegmentRecord, SkipCode
from .outcomes import Outcome, Result, Stopped
from .tagging import Tagger
from .adoptions import SETTLED_STATUS
from .plan import UPLOADS, Action, Adoptions, Kind
from .scanner import FileTooLarge, read_for_upload
from .chunking import chunk_digest
from .segments import SegmentOp, pending_records
from .segsync import LocalChunking, Prepared, SegmentsSent, prepare_edit, send_segments, upload_whole
from .state import Settled, Skip, StateBackend

log = logging.getLogger("difysync")


ADOPT_BATCH = 5000  # adoptions recorded per transaction


@dataclass(frozen=True, slots=True)
class FolderContext:
    """Everything the executor needs to know about the folder it works on."""

    key: str             # the folder's identity in the state store (its absolute path)
    root: Path
    dataset_id: str
    create_data: Mapping[str, Any]  # the `data` form field for create-by-file
    update_data: Mapping[str, Any]  # ... and for update-by-file
    max_bytes: int
    owner: str | None = None  # write difysync's metadata as this owner; None: metadata is off
    # The dataset's ids of difysync's fields (made once, remembered; checked against Dify when
    # called with True), None without a metadata API.
    metadata_fields: Callable[[bool], Mapping[str, str] | None] = lambda verify: None
    chunking: LocalChunking | None = None  # the folder splits its text files itself
    label: str = ""  # how log lines name the folder (FolderSettings.label); "": by its key

    def chunks_locally(self, rel_path: str) -> bool:
        return self.chunking is not None and self.chunking.applies(rel_path)


@dataclass(frozen=True, slots=True)
class _Sent:
    upload: Upload | None
    sha256: str | None
    stat: os.stat_result | None  # None when the file moved under us during the read
    chunking: str | None = None  # "local": it went as the file's own chunks
    records: tuple[SegmentRecord, ...] | None = None  # its segments' records after this (None: unchanged)
    prepared: Prepared | None = None  # an edit planned segment by segment, still to be sent
    note: str = ""  # what went, for people ("update 1 segment")


@dataclass(frozen=True, slots=True)
class _Follow:
    """The segment requests of an edit, journaled and sent after their plan came back."""

    sent: _Sent
    journal_ids: list[int]
    before: tuple[SegmentRecord, ...]


class _Done(Protocol):
    """Hears of each outcome, with the time its requests took when there were any."""

    def __call__(self, outcome: Outcome, duration_ms: float | None = None) -> None: ...


class _Unreachable:
    """A request that ran out of retries on an outage-class error (not fatal by itself)."""

    def __init__(self, error: DifyError) -> None:
        self.error = error


def apply_actions(actions: Sequence[Action], ctx: FolderContext, client: DifyClient,
                  store: StateBackend, rows: Mapping[str, FileState], *, concurrency: int = 4,
                  local: Mapping[str, LocalFile] | None = None,
                  on_outcome: Callable[[Outcome], None] | None = None,
                  should_stop: Callable[[], bool] = lambda: False) -> list[Outcome]:
    """Apply one folder's actions; returns one outcome per action.

    Raises ``Stopped`` (carrying the outcomes so far) when an error says nothing more
    will work: a rejected key, a missing dataset, a quota, an unreachable server.
    """
    outcomes: list[Outcome] = []
    local = local or {}

    def done(outcome: Outcome, duration_ms: float | None = None) -> None:
        outcomes.append(outcome)
        _log_outcome(outcome, ctx.label or ctx.key, duration_ms)
        if on_outcome:
            on_outcome(outcome)

    _bookkeeping(actions, ctx, store, rows, local, done)
    uploads = [a for a in actions if a.kind in UPLOADS]
    deletes = [a for a in actions if a.kind is Kind.DELETE]
    tagger = Tagger(ctx.key, ctx.dataset_id, ctx.owner, ctx.metadata_fields,
                    [a for a in actions if a.kind is Kind.TAG], local, label=ctx.label)
    fatal = _run_pool(uploads, ctx, client, store, rows, concurrency, done, should_stop, tagger)
    if fatal is None:
        tagger.flush(client, store, done, concurrency)
    if fatal is None and deletes:
        if any(o.result is Result.FAILED for o in outcomes):
            for a in deletes:
                done(Outcome(a, Result.FAILED, "not deleted: other actions of this pass failed"))
        else:
            fatal = _run_pool(_still_gone(deletes, ctx, done), ctx, client, store, rows, concurrency, done,
                              should_stop)
    if fatal is not None:
        raise Stopped(fatal, outcomes)
    return outcomes


def _still_gone(deletes: Sequence[Action], ctx: FolderContext, done: Callable[[Outcome], None]) -> list[Action]:
    """The deletes whose file is still missing. The walk may have run while the tree was
    being rewritten (a ``git checkout`` unlinks a file and writes it again): a file that is
    there again keeps its document and its row, and the next pass (its event's, or the next
    full one) sees an edit, not a delete and a create."""
    gone = []
    for a in deletes:
        if os.path.isfile(ctx.root / a.rel_path):
            done(Outcome(a, Result.BACK, "not deleted: the file is there again"))
        else:
            gone.append(a)
    return gone


def _bookkeeping(actions: Sequence[Action], ctx: FolderContext, store: StateBackend,
                 rows: Mapping[str, FileState], local: Mapping[str, LocalFile],
                 done: Callable[[Outcome], None]) -> None:
    """The actions that send nothing, recorded first: skips, waits, forgotten rows and
    adoptions."""
    skips = [a for a in actions if a.kind is Kind.SKIP]
    known = {a.rel_path for a in skips if _skip_recorded(a, rows.get(a.rel_path), local.get(a.rel_path))}
    store.record_skips(ctx.key, ctx.dataset_id,
                       [Skip(local.get(a.rel_path), a.rel_path, a.reason, a.code or SkipCode.REFUSED)
                        for a in skips if a.rel_path not in known])
    for a in skips:
        done(Outcome(a, Result.SKIPPED, a.reason, repeat=a.rel_path in known))
    waits = [a for a in actions if a.kind is Kind.WAIT]
    store.record_waiting(ctx.key, [(a.rel_path, f"waiting: {a.reason}") for a in waits if a.rel_path in rows])
    for a in waits:
        done(Outcome(a, Result.WAITING, a.reason))
    for a in actions:
        if a.kind is Kind.FORGET:
            store.settle_removal(None, ctx.key, a.rel_path)
            done(Outcome(a, Result.OK, a.reason))
    _adopt([a for a in actions if a.kind is Kind.ADOPT], ctx, store, local, done)


def _adopt(adoptions: Sequence[Action], ctx: FolderContext, store: StateBackend,
           local: Mapping[str, LocalFile], done: Callable[[Outcome], None]) -> None:
    """Documents the server already holds, recorded as synced: in one transaction per
    ADOPT_BATCH (a first pass over a big synced tree adopts every file), each line at debug
    level and one line saying how many (an adoption changes nothing in Dify)."""
    for start in range(0, len(adoptions), ADOPT_BATCH):
        batch = adoptions[start:start + ADOPT_BATCH]
        store.settle_uploads(None, ctx.key, ctx.dataset_id, [_adopted(a, ctx, local.get(a.rel_path)) for a in batch])
        for a in batch:
            done(Outcome(a, Result.OK, a.reason, a.document_id))
    if adoptions:
        log.info("%s: %d document(s) already in Dify taken as synced (same name and content)", ctx.label,
                 len(adoptions), extra=log_fields(folder=ctx.label, action=Kind.ADOPT))


def record_adoptions(adopted: Adoptions, ctx: FolderContext, store: StateBackend) -> int:
    """The adoptions decided while listing (plan.Adoptions), recorded as synced, a batch
    per transaction, with their documents' settled status; no Outcome each (a first pass
    over a million synced files would hold a million): how many is what is reported."""
    for start in range(0, len(adopted), ADOPT_BATCH):
        batch = [adopted.action(i) for i in range(start, min(start + ADOPT_BATCH, len(adopted)))]
        store.settle_uploads(None, ctx.key, ctx.dataset_id,
                             [_adopted(a, ctx, adopted.file(start + n), SETTLED_STATUS) for n, a in enumerate(batch)])
        if log.isEnabledFor(logging.DEBUG):
            for a in batch:
                _log_outcome(Outcome(a, Result.OK, a.reason, a.document_id), ctx.label or ctx.key, None)
    if adopted:
        log.info("%s: %d document(s) already in Dify taken as synced (same name and content)", ctx.label,
                 len(adopted), extra=log_fields(folder=ctx.label, action=Kind.ADOPT))
    return len(adopted)


def _adopted(a: Action, ctx: FolderContext, f: LocalFile | None, status: str | None = None) -> Settled:
    records = _adopted_records(a, ctx)
    known = f is not None and a.sha256 is not None
    return Settled(a.rel_path, document_id=a.document_id or "", document_name=a.document_name or "", batch=None,
                   sha256=a.sha256, size=f.size if known and f else None,
                   mtime_ns=f.mtime_ns if known and f else None, inode=f.inode if known and f else None,
                   indexing_status=status, chunking="local" if records else None, segments=records)


def _run_pool(actions: Sequence[Action], ctx: FolderContext, client: DifyClient, store: StateBackend,
              rows: Mapping[str, FileState], concurrency: int, done: _Done,
              should_stop: Callable[[], bool], tagger: Tagger | None = None) -> DifyError | None:
    """A sliding window of ``concurrency`` requests; journal rows are written only for
    requests about to be sent, so a crash leaves at most twice that many unsettled (the
    window, and the answers just in). When every answer just in succeeded, the window is
    refilled before they are settled: the next requests do not wait for this thread's
    bookkeeping (state rows, log lines), which at concurrency 8 was a tenth of the
    throughput. An error is settled first, so that a fatal one stops the pass before more
    is sent. An edit of a locally chunked file comes back first as a plan of segment
    requests: those are journaled here and sent as a second job in the same window. An
    outcome's duration runs from its first request's submission to its settling."""
    pending: dict[Future[Any], tuple[Action, int, _Follow | None, float]] = {}
    queue = deque(actions)
    fatal: DifyError | None = None
    # Requests that ran out of retries in a row before the server is taken to be down:
    # one unlucky request under a flaky link fails alone, a real outage stops the pass.
    outage_after = max(3, concurrency)
    streak = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="difysync-io") as pool:
        def refill() -> None:
            while queue and len(pending) < concurrency and fatal is None and not should_stop():
                action = queue.popleft()
                records = _records_of(action, ctx, store)
                journal_id = store.journal_begin(ctx.key, ctx.dataset_id, str(action.kind), action.rel_path,
                                                 action.document_name, action.document_id, action.sha256)
                pending[pool.submit(_send, action, ctx, client, records)] = \
                    (action, journal_id, None, time.monotonic())

        while queue or pending:
            refill()
            if not pending:
                break
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            answers = [(future, *pending.pop(future)) for future in finished]
            if all(future.exception() is None for future, *_ in answers):
                refill()
            for future, action, journal_id, follow, started in answers:
                later = _segment_job(future, action, ctx, store) if follow is None else None
                if later is not None:
                    pending[pool.submit(send_segments, client, ctx.dataset_id, action.document_id or "",
                                        later.sent.prepared, later.before)] = (action, journal_id, later, started)
                    continue
                timed = partial(done, duration_ms=(time.monotonic() - started) * 1000)
                error = _settle(future, action, journal_id, ctx, store, rows, timed, tagger, follow)
                if isinstance(error, _Unreachable):
                    streak += 1
                    if streak >= outage_after and fatal is None:
                        fatal = error.error
                    continue
                streak = 0
                if error is not None and fatal is None:
                    fatal = error
        for action in queue:
            done(Outcome(action, Result.STOPPED, "not attempted: the pass was stopped"))
    return fatal


def _adopted_records(action: Action, ctx: FolderContext) -> tuple[SegmentRecord, ...] | None:
    """A document adopted (same content) in a folder that splits its files: taken to hold
    the file's chunks, to be paired with its segments at the first edit; if they do not
    pair (it was split otherwise), that edit goes whole."""
    if not action.sha256 or ctx.chunking is None or not ctx.chunks_locally(action.rel_path):
        return None
    try:
        chunks = ctx.chunking.chunks(action.rel_path, (ctx.root / action.rel_path).read_bytes())
    except OSError:
        return None
    return pending_records(chunks) if chunks else None


def _records_of(action: Action, ctx: FolderContext, store: StateBackend) -> tuple[SegmentRecord, ...]:
    """The segment records an edit of a locally chunked file is planned against."""
    if action.kind is Kind.UPDATE and action.document_id and ctx.chunks_locally(action.rel_path):
        return store.segments(action.document_id)
    return ()


def _segment_job(future: Future[Any], action: Action, ctx: FolderContext, store: StateBackend) -> _Follow | None:
    """An edit that came back as segment requests to send: journal them (one row each)."""
    if future.exception() is not None:
        return None
    sent = future.result()
    prepared = sent.prepared if isinstance(sent, _Sent) else None
    if prepared is None or not prepared.plan.actions:
        return None
    ids: list[int] = []
    for op in SegmentOp:
        items = [(action.rel_path, action.document_name, action.document_id,
                  chunk_digest(prepared.chunks[a.index]) if a.index is not None else None)
                 for a in prepared.plan.actions if a.op is op]
        if items:
            ids += store.journal_begin_many(ctx.key, ctx.dataset_id, f"segment_{op}", items)
    return _Follow(sent, ids, sent.records or ())


def _send(action: Action, ctx: FolderContext, client: DifyClient,
          records: tuple[SegmentRecord, ...] = ()) -> _Sent:
    """Runs on a worker: read the file, send the request. No SQLite here."""
    if action.kind is Kind.DELETE:
        client.delete_document(ctx.dataset_id, action.document_id or "")
        return _Sent(None, None, None)
    path = ctx.root / action.rel_path
    before = os.stat(path)
    content, sha = read_for_upload(path, max_bytes=ctx.max_bytes)
    after = os.stat(path)
    stable = (before.st_size, before.st_mtime_ns, before.st_ino) == \
        (after.st_size, after.st_mtime_ns, after.st_ino) and after.st_size == len(content)
    stat = after if stable else None
    local = ctx.chunks_locally(action.rel_path)
    chunks = ctx.chunking.chunks(action.rel_path, content) if ctx.chunking and local else None
    if chunks is not None:
        return _send_chunks(action, ctx, client, chunks, records, _Sent(None, sha, stat, chunking="local"))
    name = action.document_name or ""
    if action.kind is Kind.RECREATE:
        client.delete_document(ctx.dataset_id, action.document_id or "")
        upload = client.create_by_file(ctx.dataset_id, name, content, ctx.create_data, owner=ctx.owner)
    elif action.kind is Kind.CREATE:
        upload = client.create_by_file(ctx.dataset_id, name, content, ctx.create_data, owner=ctx.owner)
    else:
        try:
            upload = client.update_by_file(ctx.dataset_id, action.document_id or "", name, content,
                                           ctx.update_data)
        except NotFoundError:
            # Deleted in Dify between our listing and now: it has to be made again.
            upload = client.create_by_file(ctx.dataset_id, name, content, ctx.create_data, owner=ctx.owner)
    # (a file of a locally chunked type that cannot go as text goes as a file: "file")
    return _Sent(upload, sha, stat, chunking="file" if local else None)


def _send_chunks(action: Action, ctx: FolderContext, client: DifyClient, chunks: list[str],
                 records: tuple[SegmentRecord, ...], sent: _Sent) -> _Sent:
    """A locally chunked file: a content edit of a document whose segments are known goes
    segment by segment (planned here, sent once journaled); anything else goes whole, by text."""
    assert ctx.chunking is not None
    name, doc_id = action.document_name or "", action.document_id
    text_data = {k: v for k, v in ctx.create_data.items() if k != "process_rule"}
    if action.kind is Kind.RECREATE:
        client.delete_document(ctx.dataset_id, doc_id or "")
        doc_id = None
    elif action.kind is Kind.CREATE:
        doc_id = None
    note = ""
    try:
        if doc_id is not None and action.kind is Kind.UPDATE and not action.renames:
            prepared = prepare_edit(client, ctx.dataset_id, doc_id, chunks, records)
            if prepared.plan.fallback is None:
                return _replace(sent, records=prepared.plan.records if not prepared.plan.actions else records,
                                prepared=prepared, note=prepared.plan.describe())
            note = prepared.plan.describe()
        upload, fresh = upload_whole(client, ctx.chunking, ctx.dataset_id, name, chunks,
                                     text_data if doc_id is None else {}, document_id=doc_id, owner=ctx.owner)
    except NotFoundError:
        # Deleted in Dify between our listing and now: it has to be made again.
        upload, fresh = upload_whole(client, ctx.chunking, ctx.dataset_id, name, chunks, text_data, owner=ctx.owner)
    return _replace(sent, upload=upload, records=fresh, note=note)


def _settle(future: Future[Any], action: Action, journal_id: int, ctx: FolderContext,
            store: StateBackend, rows: Mapping[str, FileState], done: Callable[[Outcome], None],
            tagger: Tagger | None = None, follow: _Follow | None = None) -> DifyError | _Unreachable | None:
    """Record one finished request; returns an error that must stop the pass, if any."""
    try:
        result = future.result()
    except (OSError, FileTooLarge) as exc:  # the local file, not the server
        _settle_unreadable(exc, action, journal_id, ctx, store, rows, done)
        return None
    except DifyError as exc:
        return _settle_refusal(exc, action, journal_id, ctx, store, done)
    if follow is not None:
        return _settle_segments(result, follow, action, journal_id, ctx, store, rows, done, tagger)
    sent: _Sent = result
    if action.kind is Kind.DELETE:
        store.settle_removal(journal_id, ctx.key, action.rel_path)
        done(Outcome(action, Result.OK, action.reason, action.document_id))
        return None
    _settle_upload(sent, action, journal_id, ctx, store, rows)
    document_id = sent.upload.document.id if sent.upload is not None else action.document_id or ""
    _uploaded(tagger, action, document_id, sent)
    done(Outcome(action, Result.OK, sent.note or action.reason, document_id))
    return None


def _settle_segments(result: SegmentsSent, follow: _Follow, action: Action, journal_id: int,
                     ctx: FolderContext, store: StateBackend, rows: Mapping[str, FileState],
                     done: Callable[[Outcome], None], tagger: Tagger | None) -> DifyError | _Unreachable | None:
    """The segment requests of an edit came back: the records say what the server holds
    now. After an error they stay as they were, so the next pass sees the server differ
    and sends the document whole; after a refusal they are dropped, with the same effect."""
    document_id = action.document_id or ""
    if result.error is not None:
        kept = () if isinstance(result.error, RefusedError) else result.records
        store.settle_segments(follow.journal_ids, ctx.key, document_id, kept)
        return _settle_refusal(result.error, action, journal_id, ctx, store, done, refusable=False)
    store.settle_segments(follow.journal_ids, ctx.key, document_id, result.records)
    sent = _replace(follow.sent, records=None)
    _settle_upload(sent, action, journal_id, ctx, store, rows)
    _uploaded(tagger, action, document_id, sent)
    done(Outcome(action, Result.OK, sent.note, document_id))
    return None


def _uploaded(tagger: Tagger | None, action: Action, document_id: str, sent: _Sent) -> None:
    """Tell the tagger a document now holds this content (its metadata follows)."""
    if tagger is not None:
        f = tagger.local.get(action.rel_path)
        mtime = sent.stat.st_mtime_ns if sent.stat is not None else (f.mtime_ns if f else None)
        tagger.uploaded(action, document_id, sent.sha256, mtime)


def _settle_unreadable(exc: OSError | FileTooLarge, action: Action, journal_id: int, ctx: FolderContext,
                       store: StateBackend, rows: Mapping[str, FileState],
                       done: Callable[[Outcome], None]) -> None:
    """The file could not be read for sending: gone, grown past the limit, unreadable."""
    if isinstance(exc, FileNotFoundError):
        if action.rel_path in rows:
            store.settle_failure(journal_id, ctx.key, ctx.dataset_id, action.rel_path,
                                 "file vanished before upload", ErrorKind.VANISHED)
        else:
            store.clear_journal([journal_id])
        done(Outcome(action, Result.GONE, "file vanished before it could be sent"))
        return
    if isinstance(exc, FileTooLarge):
        reason, code = f"file too large: {exc}", SkipCode.TOO_LARGE
    else:
        reason, code = f"cannot read file: {exc.strerror or exc}", SkipCode.UNREADABLE
    store.settle_failure(journal_id, ctx.key, ctx.dataset_id, action.rel_path, reason,
                         ErrorKind.REQUEST_FAILED, skip=code)
    done(Outcome(action, Result.SKIPPED, reason, code=code))


def _settle_refusal(exc: DifyError, action: Action, journal_id: int, ctx: FolderContext,
                    store: StateBackend, done: Callable[[Outcome], None], *,
                    refusable: bool = True) -> DifyError | _Unreachable | None:
    """The server said no; ``errors.verdict`` says what that means for the file and the pass.
    A refused segment request (``refusable`` False) says nothing against the file itself."""
    meaning = verdict(exc)
    where = (journal_id, ctx.key, ctx.dataset_id, action.rel_path)
    if meaning.item is Next.SKIP and refusable:
        reason = f"refused by Dify: {exc.describe()}"
        store.settle_failure(*where, reason, ErrorKind.REQUEST_FAILED, refused_sha256=action.sha256,
                             skip=SkipCode.REFUSED)
        done(Outcome(action, Result.SKIPPED, reason, code=SkipCode.REFUSED))
        return None
    if meaning.item is Next.WAIT:
        store.settle_failure(*where, f"waiting: {exc.message}", ErrorKind.WAITING)
        done(Outcome(action, Result.WAITING, exc.message))
        return None
    store.settle_failure(*where, exc.describe(), ErrorKind.REQUEST_FAILED)
    done(Outcome(action, Result.FAILED, exc.describe()))
    if meaning.folder is Next.STOP:
        return exc
    if meaning.folder is Next.OUTAGE:
        # One request out of retries is not yet an outage: the pool decides (see _run_pool).
        return _Unreachable(exc)
    return None


def _settle_upload(sent: _Sent, action: Action, journal_id: int, ctx: FolderContext,
                   store: StateBackend, rows: Mapping[str, FileState]) -> None:
    """The server took the upload (or the segment requests): the row now describes what
    it holds. Segment requests are indexed before they answer: the document stays completed."""
    upload = sent.upload
    row = rows.get(action.rel_path)
    attempts = (row.attempts + 1) if (action.kind is Kind.RECREATE and row is not None) else 0
    stat = sent.stat
    store.settle_upload(journal_id, ctx.key, ctx.dataset_id, action.rel_path,
                        document_id=upload.document.id if upload else action.document_id or "",
                        document_name=action.document_name or "",
                        batch=upload.batch if upload else None, sha256=sent.sha256,
                        size=stat.st_size if stat else None, mtime_ns=stat.st_mtime_ns if stat else None,
                        inode=stat.st_ino if stat else None,
                        indexing_status=upload.document.indexing_status if upload else "completed",
                        attempts=attempts, chunking=sent.chunking, segments=sent.records)
    if action.kind is Kind.RENAME and action.old_rel_path and action.old_rel_path != action.rel_path \
            and action.old_rel_path in rows:
        store.settle_removal(None, ctx.key, action.old_rel_path)


def _skip_recorded(action: Action, row: FileState | None, f: LocalFile | None) -> bool:
    """The state already says this, for this very file: nothing to write or announce."""
    if row is None or f is None or row.skip_reason != action.reason:
        return False
    return (row.size, row.mtime_ns, row.inode) == (f.size, f.mtime_ns, f.inode) or \
        (row.refused_sha256 is not None and row.refused_sha256 == f.sha256)


def _log_outcome(outcome: Outcome, label: str, duration_ms: float | None = None) -> None:
    """One line per outcome, naming the folder by its label; JSON lines carry its fields."""
    level, text = _outcome_line(outcome)
    if not log.isEnabledFor(level):
        return
    a = outcome.action
    log.log(level, "%s: %s", label, text, extra=log_fields(
        folder=label, path=a.rel_path, action=a.kind, document_id=outcome.document_id or a.document_id,
        result=outcome.result, duration_ms=duration_ms, reason_code=outcome.code or a.code))


def _outcome_line(outcome: Outcome) -> tuple[int, str]:
    """The level and the text (after the folder's label) of an outcome's log line."""
    a = outcome.action
    if a.kind is Kind.WAIT:
        return logging.DEBUG, f"waiting  {a.rel_path} ({outcome.message})"
    doc = outcome.document_id or a.document_id
    if outcome.result is Result.OK:
        where = f"{a.old_rel_path} -> {a.rel_path}" if a.kind is Kind.RENAME and \
            a.old_rel_path != a.rel_path else a.rel_path
        level = logging.DEBUG if a.kind in (Kind.FORGET, Kind.ADOPT) else logging.INFO
        return level, f"{_DONE_VERBS.get(a.kind, str(a.kind))} {where}" + (f" (document {doc})" if doc else "")
    if outcome.result is Result.SKIPPED:
        return logging.DEBUG if outcome.repeat else logging.INFO, f"skipped {a.rel_path}: {outcome.message}"
    if outcome.result is Result.GONE:
        return logging.INFO, f"gone    {a.rel_path}: {outcome.message}"
    if outcome.result is Result.WAITING:
        return logging.INFO, f"waiting {a.rel_path}: {outcome.message}"
    if outcome.result is Result.DEFERRED:
        return logging.DEBUG, f"deferred {a.rel_path}: {outcome.message}"
    if outcome.result is Result.BACK:
        return logging.INFO, f"kept    {a.rel_path}: {outcome.message}"
    if outcome.result is Result.STOPPED:
        return logging.INFO, f"stopped  {a.kind} {a.rel_path}: {outcome.message}"
    return logging.WARNING, f"failed  {a.kind} {a.rel_path}: {outcome.message}"


_DONE_VERBS = {Kind.CREATE: "created", Kind.UPDATE: "updated", Kind.RENAME: "renamed",
               Kind.RECREATE: "recreated", Kind.DELETE: "deleted", Kind.ADOPT: "adopted",
               Kind.FORGET: "forgot", Kind.TAG: "tagged"}
