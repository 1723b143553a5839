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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dify import DifyClient, Upload
from .errors import DifyError, Next, NotFoundError, verdict
from .models import ErrorKind, FileState, LocalFile, SkipCode
from .outcomes import Outcome, Result
from .tagging import Tagger
from .plan import UPLOADS, Action, Kind
from .scanner import FileTooLarge, read_for_upload
from .state import Skip, StateBackend

log = logging.getLogger("difysync")


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


@dataclass(frozen=True, slots=True)
class _Sent:
    upload: Upload | None
    sha256: str | None
    stat: os.stat_result | None  # None when the file moved under us during the read


class _Unreachable:
    """A request that ran out of retries on an outage-class error (not fatal by itself)."""

    def __init__(self, error: DifyError) -> None:
        self.error = error


class Stopped(Exception):
    """Raised by apply_actions after a fatal error, once in-flight work has settled."""

    def __init__(self, error: DifyError, outcomes: list[Outcome]) -> None:
        super().__init__(str(error))
        self.error = error
        self.outcomes = outcomes


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

    def done(outcome: Outcome) -> None:
        outcomes.append(outcome)
        _log_outcome(outcome)
        if on_outcome:
            on_outcome(outcome)

    # Bookkeeping actions first: they send nothing.
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
        elif a.kind is Kind.ADOPT:
            f = local.get(a.rel_path)
            store.settle_upload(None, ctx.key, ctx.dataset_id, a.rel_path, document_id=a.document_id or "",
                                document_name=a.document_name or "", batch=None, sha256=a.sha256,
                                size=f.size if f and a.sha256 else None,
                                mtime_ns=f.mtime_ns if f and a.sha256 else None,
                                inode=f.inode if f and a.sha256 else None, indexing_status=None)
            done(Outcome(a, Result.OK, a.reason, a.document_id))

    uploads = [a for a in actions if a.kind in UPLOADS]
    deletes = [a for a in actions if a.kind is Kind.DELETE]
    tagger = Tagger(ctx.key, ctx.dataset_id, ctx.owner, ctx.metadata_fields,
                    [a for a in actions if a.kind is Kind.TAG], local)
    fatal = _run_pool(uploads, ctx, client, store, rows, concurrency, done, should_stop, tagger)
    if fatal is None:
        tagger.flush(client, store, done, concurrency)
    if fatal is None and deletes:
        if any(o.result is Result.FAILED for o in outcomes):
            for a in deletes:
                done(Outcome(a, Result.FAILED, "not deleted: other actions of this pass failed"))
        else:
            fatal = _run_pool(deletes, ctx, client, store, rows, concurrency, done, should_stop)
    if fatal is not None:
        raise Stopped(fatal, outcomes)
    return outcomes


def _run_pool(actions: Sequence[Action], ctx: FolderContext, client: DifyClient, store: StateBackend,
              rows: Mapping[str, FileState], concurrency: int, done: Callable[[Outcome], None],
              should_stop: Callable[[], bool], tagger: Tagger | None = None) -> DifyError | None:
    """A sliding window of ``concurrency`` requests; journal rows are written only for
    requests about to be sent, so a crash leaves at most that many unsettled."""
    pending: dict[Future[_Sent], tuple[Action, int]] = {}
    queue = deque(actions)
    fatal: DifyError | None = None
    # Requests that ran out of retries in a row before the server is taken to be down:
    # one unlucky request under a flaky link fails alone, a real outage stops the pass.
    outage_after = max(3, concurrency)
    streak = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="difysync-io") as pool:
        while queue or pending:
            while queue and len(pending) < concurrency and fatal is None and not should_stop():
                action = queue.popleft()
                journal_id = store.journal_begin(ctx.key, ctx.dataset_id, str(action.kind), action.rel_path,
                                                 action.document_name, action.document_id, action.sha256)
                pending[pool.submit(_send, action, ctx, client)] = (action, journal_id)
            if not pending:
                break
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                action, journal_id = pending.pop(future)
                error = _settle(future, action, journal_id, ctx, store, rows, done, tagger)
                if isinstance(error, _Unreachable):
                    streak += 1
                    if streak >= outage_after and fatal is None:
                        fatal = error.error
                    continue
                streak = 0
                if error is not None and fatal is None:
                    fatal = error
        for action in queue:
            done(Outcome(action, Result.FAILED, "not attempted: the pass was stopped"))
    return fatal


def _send(action: Action, ctx: FolderContext, client: DifyClient) -> _Sent:
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
    return _Sent(upload, sha, after if stable else None)


def _settle(future: Future[_Sent], action: Action, journal_id: int, ctx: FolderContext,
            store: StateBackend, rows: Mapping[str, FileState],
            done: Callable[[Outcome], None], tagger: Tagger | None = None) -> DifyError | _Unreachable | None:
    """Record one finished request; returns an error that must stop the pass, if any."""
    try:
        sent = future.result()
    except (OSError, FileTooLarge) as exc:  # the local file, not the server
        _settle_unreadable(exc, action, journal_id, ctx, store, rows, done)
        return None
    except DifyError as exc:
        return _settle_refusal(exc, action, journal_id, ctx, store, done)
    if action.kind is Kind.DELETE:
        store.settle_removal(journal_id, ctx.key, action.rel_path)
        done(Outcome(action, Result.OK, action.reason, action.document_id))
        return None
    _settle_upload(sent, action, journal_id, ctx, store, rows)
    assert sent.upload is not None
    if tagger is not None:
        f = tagger.local.get(action.rel_path)
        mtime = sent.stat.st_mtime_ns if sent.stat is not None else (f.mtime_ns if f else None)
        tagger.uploaded(action, sent.upload.document.id, sent.sha256, mtime)
    done(Outcome(action, Result.OK, action.reason, sent.upload.document.id))
    return None


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
                    store: StateBackend, done: Callable[[Outcome], None]) -> DifyError | _Unreachable | None:
    """The server said no; ``errors.verdict`` says what that means for the file and the pass."""
    meaning = verdict(exc)
    where = (journal_id, ctx.key, ctx.dataset_id, action.rel_path)
    if meaning.item is Next.SKIP:
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
    """The server took the upload: the row now describes what it holds."""
    upload = sent.upload
    assert upload is not None
    row = rows.get(action.rel_path)
    attempts = (row.attempts + 1) if (action.kind is Kind.RECREATE and row is not None) else 0
    stat = sent.stat
    store.settle_upload(journal_id, ctx.key, ctx.dataset_id, action.rel_path,
                        document_id=upload.document.id, document_name=action.document_name or "",
                        batch=upload.batch, sha256=sent.sha256,
                        size=stat.st_size if stat else None, mtime_ns=stat.st_mtime_ns if stat else None,
                        inode=stat.st_ino if stat else None,
                        indexing_status=upload.document.indexing_status, attempts=attempts)
    if action.kind is Kind.RENAME and action.old_rel_path and action.old_rel_path != action.rel_path \
            and action.old_rel_path in rows:
        store.settle_removal(None, ctx.key, action.old_rel_path)


def _skip_recorded(action: Action, row: FileState | None, f: LocalFile | None) -> bool:
    """The state already says this, for this very file: nothing to write or announce."""
    if row is None or f is None or row.skip_reason != action.reason:
        return False
    return (row.size, row.mtime_ns, row.inode) == (f.size, f.mtime_ns, f.inode) or \
        (row.refused_sha256 is not None and row.refused_sha256 == f.sha256)


def _log_outcome(outcome: Outcome) -> None:
    a = outcome.action
    if a.kind is Kind.WAIT:
        log.debug("waiting  %s (%s)", a.rel_path, outcome.message)
        return
    doc = outcome.document_id or a.document_id
    if outcome.result is Result.OK:
        where = f"{a.old_rel_path} -> {a.rel_path}" if a.kind is Kind.RENAME and \
            a.old_rel_path != a.rel_path else a.rel_path
        level = logging.DEBUG if a.kind is Kind.FORGET else logging.INFO
        log.log(level, "%s %s%s", _DONE_VERBS.get(a.kind, str(a.kind)), where,
                f" (document {doc})" if doc else "")
    elif outcome.result is Result.SKIPPED:
        log.log(logging.DEBUG if outcome.repeat else logging.INFO, "skipped %s: %s", a.rel_path,
                outcome.message)
    elif outcome.result is Result.GONE:
        log.info("gone    %s: %s", a.rel_path, outcome.message)
    elif outcome.result is Result.WAITING:
        log.info("waiting %s: %s", a.rel_path, outcome.message)
    elif outcome.result is Result.DEFERRED:
        log.debug("deferred %s: %s", a.rel_path, outcome.message)
    else:
        log.warning("failed  %s %s: %s", a.kind, a.rel_path, outcome.message)


_DONE_VERBS = {Kind.CREATE: "created", Kind.UPDATE: "updated", Kind.RENAME: "renamed",
               Kind.RECREATE: "recreated", Kind.DELETE: "deleted", Kind.ADOPT: "adopted",
               Kind.FORGET: "forgot", Kind.TAG: "tagged"}
