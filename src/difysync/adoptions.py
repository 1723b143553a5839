"""Adoptions decided while a listing streams in, so that an adopting pass does not hold
every document and every file until it plans.

A first pass over a big synced tree (a new host, a lost state DB) finds each of its files
already in Dify: at a million files, holding the listing (about 0.8 KB a document), the
files and the planner's indexes of both until the plan was made cost gigabytes. Most of
those documents admit one decision only, whatever else the listing holds: a document of
our owner, named for an untracked, unjournaled local file that may be sent, tagged with
that file's path and hash, healthy and settled, is adopted "by name and content hash".
Such a document and its file leave the listing at once, leaving an ADOPT action and a
compact record behind. If another document of the same name turns up in the listing, on
an earlier page or a later one, the first goes back (exactly as listed) and the planner
weighs the two, as it would have. tests/test_plan.py proves the plan is the same.

Pure: no I/O. One lock, because the listing's pages arrive on several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import NamedTuple

from .models import FileState, LocalFile, RemoteDocument, Tags
from .plan import Action, Kind, Policy, refusal

__all__ = ["SETTLED_STATUS", "AdoptionStream"]

ADOPT_REASON = "matched by name and content hash"
SETTLED_STATUS = "completed"  # the only indexing status a document taken here can have


class _Taken(NamedTuple):
    """What it takes to give a document and its file back to the planner, exactly."""

    action: Action
    file: LocalFile
    display_status: str | None
    size: int | None
    created_at: int
    uploaded_at: int
    tag_mtime: str | None
    other_metadata: tuple[tuple[str, str, str | None], ...]

    def document(self, owner: str) -> RemoteDocument:
        a = self.action
        return RemoteDocument(a.document_id or "", a.document_name or "", SETTLED_STATUS, self.display_status,
                              True, False, None, self.size, self.created_at, self.uploaded_at,
                              Tags(a.rel_path, a.sha256, owner, self.tag_mtime), self.other_metadata)


class AdoptionStream:
    """Takes documents out of a streaming listing when their adoption is already certain.

    ``offer(doc, file)`` for each listed document that no state row holds, with the local
    file its path tag names (or None): True when it is adopted here (drop the document and
    the file); else the document stays in the listing. ``given_back()`` at the end: the
    documents (and their files) taken and then contested by a second document of their name,
    which go back to the planner. ``adopted()``: the ADOPT actions for plan_folder.
    """

    def __init__(self, state: Mapping[str, FileState], journaled: Collection[str], policy: Policy) -> None:
        self._state, self._journaled, self._policy = state, journaled, policy
        self._taken: dict[str, _Taken] = {}      # by document name
        self._listed: set[str] = set()           # names of documents left in the listing
        self._back: list[_Taken] = []
        self._lock = threading.Lock()

    def offer(self, doc: RemoteDocument, file: LocalFile | None) -> bool:
        with self._lock:
            if doc.name in self._listed:
                return False
            contested = self._taken.pop(doc.name, None)
            if contested is not None:
                self._back.append(contested)
            action = None if contested is not None else self._certain(doc, file)
            if action is None or file is None:
                self._listed.add(doc.name)
                return False
            tags = doc.tags
            self._taken[doc.name] = _Taken(action, file, doc.display_status, doc.size,
                                           doc.created_at, doc.uploaded_at, tags.mtime if tags else None,
                                           doc.other_metadata)
            return True

    def adopted(self) -> list[Action]:
        return [t.action for t in self._taken.values()]

    def adopted_files(self) -> list[LocalFile]:
        return [t.file for t in self._taken.values()]

    def given_back(self) -> list[tuple[RemoteDocument, LocalFile]]:
        owner = self._policy.owner or ""
        return [(t.document(owner), t.file) for t in self._back]

    def _certain(self, doc: RemoteDocument, f: LocalFile | None) -> Action | None:
        """The adoption plan_folder would decide for ``doc`` whatever else is listed, if any."""
        policy, tags = self._policy, doc.tags
        if policy.owner is None or tags is None or tags.owner != policy.owner or f is None:
            return None
        rel = f.rel_path
        if tags.path != rel or f.sha256 is None or tags.sha256 != f.sha256:
            return None
        if rel in self._state or rel in self._journaled or doc.name in self._journaled:
            return None  # (a journal row changes nothing for a document tagged ours: left to the planner anyway)
        if doc.indexing_status != SETTLED_STATUS or doc.failed or not doc.enabled or doc.archived or doc.error:
            return None
        if doc.name != policy.name_of(rel) or refusal(rel, f.size, policy) is not None:
            return None
        return Action(Kind.ADOPT, rel, doc.name, doc.id, sha256=f.sha256, size=f.size, reason=ADOPT_REASON)
