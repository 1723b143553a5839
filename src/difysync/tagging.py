"""Writes difysync's metadata for one pass: on the documents the pass uploaded and on
those whose metadata alone was stale (TAG actions), once the uploads are done, in batches
of up to 100 documents a request, journaled. A write that fails is deferred to a later
pass and never fails a file.

Other people's values on a document must survive. Servers from Dify 1.11 merge a write
marked ``partial_update``; older ones replace the document's whole set, so there the
others' values are read just before the write and sent along. Which kind a dataset's
server is gets learnt once, on the first document that carries others' values: write
ours alone, read the document back, and if the others' values are gone put them back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import tags
from .dify import DifyClient
from .errors import DifyError
from .logs import log_fields
from .models import LocalFile, Tags
from .outcomes import Outcome, Result
from .plan import Action, Kind
from .state import StateBackend

log = logging.getLogger("difysync")

Others = tuple[tuple[str, str, Any], ...]


class Tagger:
    """The metadata writes of one pass over one folder."""

    def __init__(self, key: str, dataset_id: str, owner: str | None,
                 fields: Callable[[bool], Mapping[str, str] | None], retags: Sequence[Action],
                 local: Mapping[str, LocalFile], *, label: str = "") -> None:
        self.key, self.dataset_id, self.owner, self._fields = key, dataset_id, owner, fields
        self.local = local
        self.label = label or key  # how log lines name the folder
        # document id -> (its TAG action, or None after an upload), the path, our values,
        # and whether the listing showed other people's values on it
        self.items: dict[str, tuple[Action | None, str, Tags, bool]] = {}
        for a in retags:
            f = local.get(a.rel_path)
            self._add(a, a.rel_path, a.document_id or "", a.sha256, f.mtime_ns if f else None, bool(a.keep_metadata))

    def uploaded(self, action: Action, document_id: str, sha256: str | None, mtime_ns: int | None) -> None:
        self._add(None, action.rel_path, document_id, sha256, mtime_ns, bool(action.keep_metadata))

    def _add(self, action: Action | None, rel: str, document_id: str, sha256: str | None,
             mtime_ns: int | None, others: bool) -> None:
        if self.owner is not None and document_id and sha256:
            self.items[document_id] = (action, rel, tags.expected(rel, sha256, self.owner, mtime_ns), others)

    def flush(self, client: DifyClient, store: StateBackend, done: Callable[[Outcome], None],
              concurrency: int = 1) -> None:
        """Send what was collected, ``concurrency`` requests at a time; failures wait for a
        later pass."""
        if not self.items:
            return
        try:
            # Documents whose metadata alone is stale may be so because a person deleted
            # one of our fields: then the remembered field ids are checked against Dify.
            fields = self._fields(any(action is not None for action, *_ in self.items.values()))
        except DifyError as exc:
            self._deferred(list(self.items), f"metadata fields not ready: {exc.describe()}", done)
            return
        if fields is None:  # no metadata API on this server (said once, at INFO, when learnt)
            for action, *_ in self.items.values():
                if action is not None:
                    done(Outcome(action, Result.DEFERRED, "this server has no metadata API"))
            return
        writer = _Writer(self, client, store, fields)
        pending = list(self.items)
        if writer.merges is None and any(self.items[d][3] for d in pending):
            first = next(d for d in pending if self.items[d][3])
            pending.remove(first)
            self._settle([first], writer.learn(first), done)
        batches = tags.batches(pending)
        journals = [writer.begin(batch) for batch in batches]  # all SQLite work stays on this thread
        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(batches) or 1)),
                                thread_name_prefix="difysync-tags") as pool:
            errors = list(pool.map(writer.send, batches))
        for batch, journal, error in zip(batches, journals, errors):
            store.clear_journal(journal)  # nothing to recover: the next listing shows what is missing
            self._settle(batch, error, done)

    def _settle(self, batch: list[str], error: DifyError | None, done: Callable[[Outcome], None]) -> None:
        if error is not None:
            self._deferred(batch, f"metadata not written: {error.describe()}", done)
            return
        for d in batch:
            action = self.items[d][0]
            if action is not None:
                done(Outcome(action, Result.OK, action.reason, d))

    def _deferred(self, batch: list[str], why: str, done: Callable[[Outcome], None]) -> None:
        log.warning("%s: %s (%d document(s)); a later pass tries again", self.label, why, len(batch),
                    extra=log_fields(folder=self.label, result=Result.DEFERRED))
        for d in batch:
            action = self.items[d][0]
            if action is not None:
                done(Outcome(action, Result.DEFERRED, why, d))


class _Writer:
    """One flush's requests: journaled writes, and whether the server merges."""

    def __init__(self, tagger: Tagger, client: DifyClient, store: StateBackend, fields: Mapping[str, str]) -> None:
        self.t, self.client, self.store, self.fields = tagger, client, store, fields
        known = store.known_metadata(tagger.dataset_id)
        self.merges: bool | None = known.merges if known is not None else None

    def begin(self, batch: list[str]) -> list[int]:
        return self.store.journal_begin_many(self.t.key, self.t.dataset_id, str(Kind.TAG), [
            (self.t.items[d][1], None, d, self.t.items[d][2].sha256) for d in batch])

    def send(self, batch: list[str]) -> DifyError | None:
        """Write ours on every document of ``batch``, with the others' values sent along
        where the server would otherwise drop them. Only HTTP: it runs on a worker."""
        try:
            operations = [tags.operation(d, self.t.items[d][2], self.fields, self._others(d)) for d in batch]
            self.client.set_document_metadata(self.t.dataset_id, operations)
        except DifyError as exc:
            return exc
        return None

    def learn(self, document_id: str) -> DifyError | None:
        """Write ours alone on a document that carries others' values and see whether they
        stayed: the server honours partial_update, or they are put back at once."""
        try:
            before = tags.others_now(self.client.document_metadata(self.t.dataset_id, document_id))
            error = self._write([document_id], [tags.operation(document_id, self.t.items[document_id][2], self.fields)])
            if error is not None or not before:
                return error
            after = {name for _, name, _ in tags.others_now(self.client.document_metadata(self.t.dataset_id,
                                                                                          document_id))}
        except DifyError as exc:
            return exc
        self.merges = all(name in after for _, name, _ in before)
        self.store.remember_merges(self.t.dataset_id, self.merges)
        log.info("%s: dataset %s %s", self.t.label, self.t.dataset_id,
                 "merges metadata writes (partial_update)" if self.merges
                 else "replaces a document's metadata on each write: others' values are sent along",
                 extra=log_fields(folder=self.t.label))
        if self.merges:
            return None
        return self._write([document_id], [tags.operation(document_id, self.t.items[document_id][2],
                                                           self.fields, before)])

    def _others(self, document_id: str) -> Others:
        """Other people's values, read just before the write (typed, and as they are now),
        for a server that replaces the whole set; none where it merges."""
        if self.merges or not self.t.items[document_id][3]:
            return ()
        return tags.others_now(self.client.document_metadata(self.t.dataset_id, document_id))

    def _write(self, batch: list[str], operations: list[dict[str, Any]]) -> DifyError | None:
        journal = self.begin(batch)
        try:
            self.client.set_document_metadata(self.t.dataset_id, operations)
        except DifyError as exc:
            return exc
        finally:  # nothing to recover either way: the next listing shows what is missing
            self.store.clear_journal(journal)
        return None


__all__ = ["Tagger"]
