"""Adoptions decided while a listing streams in, so that an adopting pass does not hold
every document and every file until it plans.

A first pass over a big synced tree (a new host, a lost state DB) finds each of its files
already in Dify: at a million files, holding the listing (about 0.8 KB a document), the
files and the planner's indexes of both until the plan was made cost gigabytes. Most of
those documents admit one decision only, whatever else the listing holds: a document of
our owner, named for an untracked, unjournaled local file that may be sent, tagged with
that file's path and hash, healthy and settled, is adopted "by name and content hash".
Such a document and its file leave the listing at once, leaving a row of columns behind
(plan.Adoptions; and, while the listing runs, what giving it back would take). If another document of the same name turns up in the listing, on
an earlier page or a later one, the first goes back (exactly as listed) and the planner
weighs the two, as it would have. tests/test_plan.py proves the plan is the same.

Pure: no I/O. One lock, because the listing's pages arrive on several threads.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Collection, Container

from .models import LocalFile, RemoteDocument, Tags
from .plan import Adoptions, Policy, refusal

__all__ = ["SETTLED_STATUS", "AdoptionStream"]

SETTLED_STATUS = "completed"  # the only indexing status a document taken here can have


class _GiveBack:
    """What it takes to give a taken document back to the planner exactly as listed, in
    columns beside the adoptions' (index i in both): kept only while the listing runs."""

    __slots__ = ("display_statuses", "sizes", "created", "uploaded", "tag_mtimes", "other_metadata")

    def __init__(self) -> None:
        self.display_statuses: list[str | None] = []
        self.sizes = array("q")  # -1: none given
        self.created, self.uploaded = array("q"), array("q")
        self.tag_mtimes: list[str | None] = []
        self.other_metadata: list[tuple[tuple[str, str, str | None], ...]] = []

    def add(self, doc: RemoteDocument) -> None:
        self.display_statuses.append(doc.display_status)
        self.sizes.append(-1 if doc.size is None else doc.size)
        self.created.append(doc.created_at)
        self.uploaded.append(doc.uploaded_at)
        self.tag_mtimes.append(doc.tags.mtime if doc.tags else None)
        self.other_metadata.append(doc.other_metadata)

    def document(self, i: int, taken: Adoptions, owner: str) -> RemoteDocument:
        rel, size = taken.paths[i], self.sizes[i]
        return RemoteDocument(taken.document_ids[i], taken.name_of(rel), SETTLED_STATUS, self.display_statuses[i],
                              True, False, None, None if size < 0 else size, self.created[i], self.uploaded[i],
                              Tags(rel, taken.shas[i], owner, self.tag_mtimes[i]), self.other_metadata[i])


class AdoptionStream:
    """Takes documents out of a streaming listing when their adoption is already certain.

    ``offer(doc, file)`` for each listed document that no state row holds, with the local
    file its path tag names (or None): True when it is adopted here (drop the document and
    the file); else the document stays in the listing. ``given_back()`` at the end: the
    documents (and their files) taken and then contested by a second document of their name,
    which go back to the planner. ``adopted()``: the rest, for plan_folder.

    Names are remembered by their hash (a string each would be a tenth of a million-file
    pass): two names with one hash can only make a document stay in the listing, or come
    back to it, where the planner decides it as it would have anyway.
    """

    def __init__(self, state: Container[str], journaled: Collection[str], policy: Policy) -> None:
        self._state, self._journaled, self._policy = state, journaled, policy
        self._taken = Adoptions(policy.name_of)  # in the order taken; given-back ones included
        self._give_back = _GiveBack()
        self._by_name: dict[int, int] = {}   # hash of a taken document's name -> its index
        self._listed: set[int] = set()       # hashes of the names of documents left in the listing
        self._back: list[int] = []           # indexes of the documents given back
        self._lock = threading.Lock()

    def offer(self, doc: RemoteDocument, file: LocalFile | None) -> bool:
        key = hash(doc.name)
        with self._lock:
            if key in self._listed:
                return False
            contested = self._by_name.pop(key, None)
            if contested is not None:
                self._back.append(contested)
            if contested is not None or file is None or not self._certain(doc, file):
                self._listed.add(key)
                return False
            self._by_name[key] = len(self._taken)
            self._taken.add(file, doc.id)
            self._give_back.add(doc)
            return True

    def adopted(self) -> Adoptions:
        """The adoptions that stood, in path order."""
        taken, back = self._taken, set(self._back)
        out = Adoptions(taken.name_of)
        for i in sorted((i for i in range(len(taken)) if i not in back), key=taken.paths.__getitem__):
            out.add(taken.file(i), taken.document_ids[i])
        return out

    def given_back(self) -> list[tuple[RemoteDocument, LocalFile]]:
        owner = self._policy.owner or ""
        return [(self._give_back.document(i, self._taken, owner), self._taken.file(i)) for i in self._back]

    def _certain(self, doc: RemoteDocument, f: LocalFile) -> bool:
        """Whether plan_folder would adopt ``doc`` for ``f`` whatever else is listed."""
        policy, tags = self._policy, doc.tags
        if policy.owner is None or tags is None or tags.owner != policy.owner:
            return False
        rel = f.rel_path
        if tags.path != rel or f.sha256 is None or tags.sha256 != f.sha256:
            return False
        if rel in self._state or rel in self._journaled or doc.name in self._journaled:
            return False  # (a journal row changes nothing for a document tagged ours: left to the planner anyway)
        if doc.indexing_status != SETTLED_STATUS or doc.failed or not doc.enabled or doc.archived or doc.error:
            return False
        return doc.name == policy.name_of(rel) and refusal(rel, f.size, policy) is None
