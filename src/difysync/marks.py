"""Clean-pass marks: what a folder and its dataset looked like when a full pass found
nothing to send, as pure values: the scan's digest and the dataset's fingerprint. The
probe that takes a fingerprint now is remote.py's; this module sends nothing.

A no-op pass over a big folder is otherwise dominated by listing the whole dataset (950
round trips at 100k documents, each an OFFSET query on the server). When the local scan
is identical to the one the mark recorded, a handful of small requests show whether
anything that could change a decision happened remotely:

- any document created (by anyone) appears on the first page of the newest-first listing,
  and any deletion changes ``total``, so ``total`` plus the first page's ids, names and
  display statuses catch every creation and deletion;
- every document that is not plainly ``available`` (queued, indexing, paused, in error,
  disabled, archived) is listed by id, one ``status=`` query per display status, so a
  document leaving or entering any of those states is seen.

What the probe cannot see: a rename in Dify's UI of a document beyond the first page.
Renames change no content and are put back by the next full listing, which a mark forces
at least every ``schedule.full_listing_minutes``. A server that ignores the ``status``
filter is noticed (documents of other statuses come back) and gets full listings.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from . import __version__
from .dify import PAGE_LIMIT
from .models import RemoteDocument, ScanProblem, SkipCode
from .plan import Action, Kind, Policy

if TYPE_CHECKING:  # pragma: no cover
    from .scanner import FileColumns

# Every display status but "available"; Dify gives each document exactly one.
FLAGGED_STATUSES = ("queuing", "indexing", "paused", "error", "disabled", "archived")


@dataclass(frozen=True, slots=True)
class RemoteFingerprint:
    total: int
    head: tuple[tuple[str, str, str], ...]  # (id, name, display status) of the newest page
    flagged: tuple[tuple[str, tuple[str, ...]], ...]  # (display status, sorted ids), non-empty only

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "head": [list(h) for h in self.head],
                "flagged": {status: list(ids) for status, ids in self.flagged}}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RemoteFingerprint:
        return cls(int(raw["total"]), tuple((str(i), str(n), str(s)) for i, n, s in raw["head"]),
                   tuple((str(k), tuple(str(i) for i in v)) for k, v in sorted(raw["flagged"].items())))

    @property
    def pages(self) -> int:
        """List calls a full listing of this dataset takes."""
        return max(1, -(-self.total // PAGE_LIMIT))

    @property
    def probe_requests(self) -> int:
        return 1 + sum(max(1, -(-len(ids) // PAGE_LIMIT)) for _, ids in self.flagged) \
            + (len(FLAGGED_STATUSES) - len(self.flagged))


def fingerprint(total: int, head: Sequence[RemoteDocument],
                flagged: dict[str, list[str]]) -> RemoteFingerprint:
    """The fingerprint of a dataset from its ``total``, its newest page and the ids under
    each flagged display status."""
    return RemoteFingerprint(
        total, tuple((d.id, d.name, d.display_status or "") for d in head),
        tuple((status, tuple(sorted(ids))) for status, ids in sorted(flagged.items()) if ids))


class ListingRecorder:
    """Watches a full listing page by page (``DifyClient.list_documents(on_page=...)``) and
    makes the fingerprint a probe will compare with. Unusable (None) when the server
    sends no ``total`` or no ``display_status``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total: int | None = None
        self._head: list[RemoteDocument] | None = None
        self._flagged: dict[str, list[str]] = {}
        self._usable = True

    def on_page(self, number: int, total: int | None, docs: list[RemoteDocument]) -> None:
        with self._lock:
            if number == 1:
                self._total, self._head = total, list(docs)
            for doc in docs:
                status = doc.display_status
                if not status:
                    self._usable = False
                elif status != "available":
                    self._flagged.setdefault(status, []).append(doc.id)

    def fingerprint(self) -> RemoteFingerprint | None:
        with self._lock:
            if not self._usable or self._total is None or self._head is None:
                return None
            if any(s not in FLAGGED_STATUSES for s in self._flagged):
                return None  # a status this client does not know: the probe could not ask for it
            return fingerprint(self._total, self._head, self._flagged)


def scan_digest(found: FileColumns, problems: Iterable[ScanProblem]) -> str:
    """One value for a scan: equal digests, equal paths, sizes, mtimes, inodes and refusals.

    Taken over the walk's columns in the order the walk met the files, which the same
    directories give again; a directory listed in another order (its entries churned)
    only costs one full listing, after which the new digest is the mark's."""
    h = hashlib.blake2b(digest_size=20)
    h.update("\0".join(found.paths).encode("utf-8", "surrogateescape"))
    for column in (found.sizes, found.mtimes, found.inodes):
        h.update(b"\n\x01\n")
        h.update(column.tobytes())
    h.update(b"\n\x01\n")
    h.update("\n".join([f"{p.rel_path}\0{p.reason}" for p in problems]).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def policy_key(policy: Policy, dataset_id: str, include: Sequence[str], exclude: Sequence[str]) -> str:
    """Everything besides the files that decides a plan; a new difysync version counts too."""
    parts = (__version__, dataset_id, sorted(policy.allowed_extensions), policy.max_bytes,
             policy.delete, policy.quarantine_after, list(include), list(exclude), policy.owner,
             policy.name_prefix)
    return hashlib.blake2b(repr(parts).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


class SkipRow(NamedTuple):
    """A skip a clean pass reported, as a quiet pass reports it again: plain values, since a
    big tree can hold tens of thousands and a quiet pass only prints them."""

    rel_path: str
    document_name: str | None
    document_id: str | None
    size: int | None
    reason: str
    code: str | None  # a SkipCode's value

    @classmethod
    def of(cls, action: Action) -> SkipRow:
        return cls(action.rel_path, action.document_name, action.document_id, action.size, action.reason,
                   action.code.value if action.code else None)


@dataclass(frozen=True, slots=True)
class Mark:
    """A full pass that listed the dataset and found nothing to send."""

    policy_key: str
    scan_digest: str
    remote: RemoteFingerprint
    unchanged: int
    skips: tuple[SkipRow, ...]  # the pass's SKIP actions, reported again by a quiet pass
    taken_at: float

    def to_json(self) -> str:
        return json.dumps({
            "policy_key": self.policy_key, "scan_digest": self.scan_digest,
            "remote": self.remote.as_json(), "unchanged": self.unchanged, "taken_at": self.taken_at,
            "skips": [list(row) for row in self.skips]})

    @classmethod
    def from_json(cls, text: str) -> Mark | None:
        """None for anything unreadable: a damaged mark only costs one full listing."""
        try:
            raw = json.loads(text)
            return cls(str(raw["policy_key"]), str(raw["scan_digest"]),
                       RemoteFingerprint.from_json(raw["remote"]), int(raw["unchanged"]),
                       tuple(map(SkipRow._make, raw["skips"])), float(raw["taken_at"]))
        except (ValueError, KeyError, TypeError):
            return None

    def fresh(self, max_age_seconds: float, now: float | None = None) -> bool:
        age = (time.time() if now is None else now) - self.taken_at
        return 0 <= age < max_age_seconds

    @property
    def worth_probing(self) -> bool:
        """A probe is a handful of requests; on a small dataset the listing is fewer."""
        return self.remote.probe_requests < self.remote.pages


__all__ = ["FLAGGED_STATUSES", "ListingRecorder", "Mark", "RemoteFingerprint", "SkipRow", "fingerprint",
           "policy_key", "scan_digest"]
