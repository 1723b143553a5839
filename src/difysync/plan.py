"""The planner: what to do with one folder, decided from plain values and nothing else.

Inputs are the local snapshot, what the state store remembers, the remote listing and the
unsettled journal; the output is a list of frozen actions. No I/O, no clock, no client:
dry runs, ``--json``, the delete guards and the tests all read the same plan, and crash
recovery is ordinary planning (unsettled journal rows are one more input).
"""

from __future__ import annotations

import math
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from typing import NamedTuple

from .models import FileState, JournalEntry, LocalFile, RemoteDocument, SkipCode
from .naming import document_name
from .tags import expected as expected_tags


class Kind(str, Enum):
    CREATE = "create"      # upload a new document
    UPDATE = "update"      # new content, same document id (update-by-file)
    RENAME = "rename"      # same content, new path: update in place with the new name
    RECREATE = "recreate"  # remote copy is in error: delete it, create again
    DELETE = "delete"      # local file gone: delete the document difysync made
    ADOPT = "adopt"        # a remote document already holds this file (lost state, crash)
    FORGET = "forget"      # drop a state row whose document is gone or no longer ours to delete
    SKIP = "skip"          # refused (type, size, empty, quarantined): recorded, never sent
    WAIT = "wait"          # the document is queued/indexing: send nothing until it settles
    TAG = "tag"            # content in step, difysync's metadata on the document missing or stale

    def __str__(self) -> str:
        return self.value


MUTATING = frozenset({Kind.CREATE, Kind.UPDATE, Kind.RENAME, Kind.RECREATE, Kind.DELETE, Kind.TAG})
UPLOADS = frozenset({Kind.CREATE, Kind.UPDATE, Kind.RENAME, Kind.RECREATE})


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    rel_path: str
    document_name: str | None = None
    document_id: str | None = None
    old_rel_path: str | None = None  # for RENAME: the path the document belonged to
    sha256: str | None = None
    size: int | None = None
    reason: str = ""  # for people; code branches on ``code`` and ``leftover``
    code: SkipCode | None = None  # why a SKIP is a skip
    # A DELETE of a document an interrupted create left behind (the journal says it is
    # ours): outside the mass-delete guards, which protect documents that were synced.
    leftover: bool = False
    # (field id, name, value) of other people's metadata on the document: written back
    # with ours, for servers that replace a document's whole set of values.
    keep_metadata: tuple[tuple[str, str, str | None], ...] = ()
    renames: bool = False  # an UPDATE that also gives the document a new name
    # What a dry run knows of an edit's segments ("update 1 segment"), for locally chunked files.
    segments: str = ""

    @property
    def mutating(self) -> bool:
        return self.kind in MUTATING

    def describe(self) -> str:
        if self.kind is Kind.RENAME and self.old_rel_path and self.old_rel_path != self.rel_path:
            text = f"{self.kind:<8} {self.old_rel_path} -> {self.rel_path}"
        elif self.segments:
            text = f"{self.kind:<8} {self.rel_path}: {self.segments}"
        else:
            text = f"{self.kind:<8} {self.rel_path}"
        return f"{text} ({self.reason})" if self.reason else text


@dataclass(frozen=True, slots=True)
class MaxDelete:
    """The mass-deletion guard: an absolute count or a share of the tracked documents."""

    count: int | None = None
    percent: float | None = 50.0

    @classmethod
    def parse(cls, text: str) -> MaxDelete:
        """``"10"`` -> at most 10 deletes; ``"25%"`` -> at most a quarter of tracked docs."""
        text = text.strip()
        if text.endswith("%"):
            value = float(text[:-1])
            if not 0 <= value <= 100:
                raise ValueError("a percentage between 0% and 100%")
            return cls(count=None, percent=value)
        value_int = int(text)
        if value_int < 0:
            raise ValueError("a count of 0 or more")
        return cls(count=value_int, percent=None)

    def limit(self, tracked: int) -> int:
        if self.count is not None:
            return self.count
        # A share of a small folder rounds down to nothing; one delete is never "mass".
        return max(1, math.floor(tracked * (self.percent or 0.0) / 100.0 + 1e-9)) if self.percent else 0


@dataclass(frozen=True, slots=True)
class Policy:
    allowed_extensions: frozenset[str] = frozenset(
        {"txt", "markdown", "md", "pdf", "html", "htm", "xlsx", "docx", "csv"})
    max_bytes: int = 15 * 1024 * 1024
    delete: bool = True
    max_delete: MaxDelete = field(default_factory=MaxDelete)
    quarantine_after: int = 3  # a document that fails indexing this often is quarantined
    allow_empty: bool = False  # the user said --max-delete: an emptied folder may be emptied remotely
    # False for a targeted pass (a few paths): the whole-folder guards cannot judge it,
    # the caller judges its deletes against the folder instead.
    whole_folder: bool = True
    # Tracked files already proven settled and left out of the inputs (see is_settled):
    # they count as unchanged, as present and as tracked for the guards.
    settled_elsewhere: int = 0
    root_error: str | None = None
    # Who we are in difysync_owner; None: metadata is off, ownership is the state DB's alone.
    owner: str | None = None
    name_prefix: str = ""  # in front of every document name of the folder
    local_chunk_types: frozenset[str] = frozenset()  # extensions difysync splits itself (chunking = local)

    def chunks_locally(self, rel_path: str) -> bool:
        return bool(self.local_chunk_types) and extension(rel_path) in self.local_chunk_types

    def name_of(self, rel_path: str) -> str:
        """The document name of a file of this folder."""
        return document_name(self.name_prefix + rel_path)


ADOPT_REASON = "matched by name and content hash"


class Adoptions:
    """Adoptions decided before planning (adoptions.py, while the listing streams in), as
    columns: a path, a document id, a hash and three numbers each.

    A first pass over a million synced files adopts every one of them. As an Action, a
    hashed LocalFile and an Outcome each they were most of that pass's 1.35 GB; an
    adoption sends nothing, so nothing downstream needs them one by one: apply records
    them in batches and the report counts them. ``action(i)`` and ``file(i)`` make the
    objects again, one at a time, for whoever wants to show or record one. Filled once,
    in path order, then only read."""

    __slots__ = ("name_of", "paths", "document_ids", "shas", "sizes", "mtimes", "inodes")

    def __init__(self, name_of: Callable[[str], str] = document_name) -> None:
        self.name_of = name_of  # the folder's path -> document name: the names are not kept
        self.paths: list[str] = []
        self.document_ids: list[str] = []
        self.shas: list[str] = []
        self.sizes, self.mtimes, self.inodes = array("q"), array("q"), array("q")

    def add(self, file: LocalFile, document_id: str) -> None:
        """``file`` must be hashed."""
        self.paths.append(file.rel_path)
        self.document_ids.append(document_id)
        self.shas.append(file.sha256 or "")
        self.sizes.append(file.size)
        self.mtimes.append(file.mtime_ns)
        self.inodes.append(file.inode)

    def __len__(self) -> int:
        return len(self.paths)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Adoptions) and list(self.actions()) == list(other.actions())

    def __repr__(self) -> str:
        return f"<Adoptions of {len(self)} file(s)>"

    def file(self, i: int) -> LocalFile:
        return LocalFile(self.paths[i], self.sizes[i], self.mtimes[i], self.inodes[i], self.shas[i])

    def action(self, i: int) -> Action:
        rel = self.paths[i]
        return Action(Kind.ADOPT, rel, self.name_of(rel), self.document_ids[i], sha256=self.shas[i],
                      size=self.sizes[i], reason=ADOPT_REASON)

    def actions(self) -> Iterator[Action]:
        return (self.action(i) for i in range(len(self)))


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]
    unchanged: int = 0
    errors: tuple[str, ...] = ()     # guard refusals: the pass must report failure
    warnings: tuple[str, ...] = ()
    held_back: int = 0  # deletes a mass-delete guard refused (they are not in ``actions``)
    # Adoptions decided while listing (adoptions.py): not in ``actions``, which hold every
    # other decision, adoptions the planner made itself included.
    adopted: Adoptions = field(default_factory=Adoptions)

    def count(self, kind: Kind) -> int:
        return sum(1 for a in self.actions if a.kind is kind)

    @property
    def mutating(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.mutating)


class Refusal(NamedTuple):
    code: SkipCode
    text: str


def extension(rel_path: str) -> str:
    """The file's extension, lower case, without the dot ("" for none; ".bashrc" has none)."""
    base = rel_path.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""


def refusal(rel_path: str, size: int, policy: Policy) -> Refusal | None:
    """Why this file will not be sent at all (checked before hashing), or None."""
    ext = extension(rel_path)
    if ext not in policy.allowed_extensions:
        shown = f".{ext}" if ext else "no extension"
        return Refusal(SkipCode.UNSUPPORTED_TYPE, f"unsupported file type ({shown})")
    if size > policy.max_bytes:
        return Refusal(SkipCode.TOO_LARGE, f"file too large ({size} bytes > limit {policy.max_bytes})")
    if size == 0:
        return Refusal(SkipCode.EMPTY, "empty file")
    return None


def plan_folder(local: Sequence[LocalFile], state: Mapping[str, FileState],
                remote: Sequence[RemoteDocument], journal: Sequence[JournalEntry] = (),
                policy: Policy = Policy(), adopted: Adoptions | None = None) -> Plan:
    """Decide every action for one folder.

    ``local`` holds every regular file the scan kept; eligible ones must carry their
    sha256 (the caller reuses the stored hash when size, mtime and inode are unchanged).
    ``adopted`` are adoptions already certain while the listing streamed in (their files
    and documents are in neither ``local`` nor ``remote``: see adoptions.py); the plan
    carries them beside its actions (``Plan.adopted``).
    The order of the steps matters: documents of files still present are claimed first,
    then renames are paired, then each file is decided, then the files that are gone,
    then the journal's leftovers; the delete guards judge the whole plan last.
    """
    if policy.root_error:
        return Plan(actions=(), errors=(f"{policy.root_error}: nothing synced, nothing deleted",))
    planner = _Planner(local, state, remote, policy, journal)
    planner.claim_present()
    planner.pair_renames()
    for rel in sorted(planner.local):
        planner.decide_file(rel)
    deletes = planner.decide_gone()
    leftovers = planner.leftovers(journal)
    plan = planner.finish(planner.guard(deletes), leftovers)
    return replace(plan, adopted=adopted) if adopted else plan


class _Planner:
    """The working state of one plan_folder call: its inputs indexed, the documents
    already spoken for, and the actions so far."""

    def __init__(self, local: Sequence[LocalFile], state: Mapping[str, FileState],
                 remote: Sequence[RemoteDocument], policy: Policy, journal: Sequence[JournalEntry]) -> None:
        self.state, self.policy = state, policy
        # Names our interrupted creates may have left (documents not tagged yet, but ours).
        self.journaled = {e.document_name for e in journal if e.op in ("create", "recreate")}
        self.local = {f.rel_path: f for f in local}
        self.remote_by_id = {doc.id: doc for doc in remote}
        self.by_name = _NameIndex(remote)
        self.refused = {f.rel_path: found for f in local if (found := refusal(f.rel_path, f.size, policy))}
        self.claimed: set[str] = set()  # remote document ids already spoken for in this plan
        self.renamed_from: dict[str, str] = {}  # new rel -> old rel
        self.actions: list[Action] = []
        self.errors: list[str] = []  # guard refusals
        self.warnings: list[str] = []
        self.held_back = 0  # deletes the guards refused
        self.unchanged = policy.settled_elsewhere

    def live_doc(self, row: FileState | None) -> RemoteDocument | None:
        if row is None or not row.document_id:
            return None
        return self.remote_by_id.get(row.document_id)

    def claim_present(self) -> None:
        """Documents that belong to a state row whose path still exists (eligible or
        refused) are claimed first, so name adoption can never steal them."""
        for rel, row in self.state.items():
            doc = self.live_doc(row)
            if doc is not None and rel in self.local:
                self.claimed.add(doc.id)

    def pair_renames(self) -> None:
        """A tracked document whose file vanished, and a new untracked file with the same
        content. Paired one-to-one in path order so the plan is deterministic."""
        vanished_by_sha: dict[str, list[str]] = defaultdict(list)
        for rel in sorted(self.state):
            row = self.state[rel]
            doc = self.live_doc(row)
            if rel not in self.local and doc is not None and row.sha256 and not doc.failed \
                    and doc.enabled and not doc.archived and _holder(doc, self.policy) is None:
                vanished_by_sha[row.sha256].append(rel)
        for rel in sorted(self.local) if vanished_by_sha else ():
            if rel in self.refused or self.live_doc(self.state.get(rel)) is not None:
                continue
            if self.by_name.get(self.policy.name_of(rel)):
                continue  # a document of that name exists: adoption wins over rename
            candidates = vanished_by_sha.get(self.local[rel].sha256 or "")
            if candidates:
                self.renamed_from[rel] = candidates.pop(0)

    def decide_file(self, rel: str) -> None:
        """One local file: skip, rename, the tracked cases, adoption or create."""
        f, row, name = self.local[rel], self.state.get(rel), self.policy.name_of(rel)
        if rel in self.refused:
            self.actions.append(Action(Kind.SKIP, rel, name, row.document_id if row else None, size=f.size,
                                       reason=self.refused[rel].text, code=self.refused[rel].code))
        elif rel in self.renamed_from:
            self.actions.append(self._rename(f, name))
        elif (doc := self.live_doc(row)) is not None:
            self._tracked(f, row, doc, name)  # type: ignore[arg-type]
        elif row is not None and row.refused_sha256 and row.refused_sha256 == f.sha256:
            self.actions.append(_refused_again(f, row, name, None))
        else:
            self.actions.append(self._adopt_or_create(f, row, name))

    def _tracked(self, f: LocalFile, row: FileState, doc: RemoteDocument, name: str) -> None:
        """The file is tracked and its document exists: act unless another owner took it."""
        holder = _holder(doc, self.policy)
        if holder is not None:
            self.actions.append(Action(Kind.SKIP, f.rel_path, name, doc.id, size=f.size, code=SkipCode.NAME_HELD,
                                       reason=f'document now held by owner "{holder}": left alone'))
            return
        action = _plan_tracked(f, row, doc, name, self.policy) or _rechunk(f, row, doc, name, self.policy) \
            or _retag(f, row, doc, name, self.policy)
        if action is None:
            self.unchanged += 1
        else:
            self.actions.append(action)

    def _rename(self, f: LocalFile, name: str) -> Action:
        old_rel = self.renamed_from[f.rel_path]
        doc = self.remote_by_id[self.state[old_rel].document_id or ""]
        self.claimed.add(doc.id)
        kind = Kind.WAIT if doc.in_flight else Kind.RENAME
        reason = "document is still indexing" if doc.in_flight else ""
        return Action(kind, f.rel_path, name, doc.id, old_rel_path=old_rel, sha256=f.sha256, size=f.size,
                      reason=reason, keep_metadata=doc.other_metadata)

    def _adopt_or_create(self, f: LocalFile, row: FileState | None, name: str) -> Action:
        """Not tracked, or its document is gone: adopt a document of the same name that is
        ours; a name that another owner (or a person) holds is not sent at all."""
        candidates = [d for d in self.by_name.get(name) if d.id not in self.claimed]
        mine = [d for d in candidates if self._may_adopt(d)]
        if mine:
            chosen = mine[0]
            self.claimed.add(chosen.id)
            if len(candidates) > 1:
                self.warnings.append(f"{f.rel_path}: {len(candidates)} documents named {name!r} in Dify; "
                                     f"adopted {chosen.id}, left the others alone")
            return _plan_adoption(f, chosen, name)
        if candidates:
            return _name_held(f, name, candidates[0])
        reason = "document missing in Dify" if row is not None and row.document_id else ""
        return Action(Kind.CREATE, f.rel_path, name, sha256=f.sha256, size=f.size, reason=reason)

    def _may_adopt(self, doc: RemoteDocument) -> bool:
        """Ours to take over by name: tagged with our owner, or (untagged) left by an
        interrupted create of ours; without metadata (off, or an old server), any, as
        the state DB alone cannot tell."""
        if self.policy.owner is None or doc.tags is None:
            return True
        if doc.tags.owner is None:
            return doc.name in self.journaled
        return doc.tags.owner == self.policy.owner

    def decide_gone(self) -> list[Action]:
        """Tracked rows whose file is gone (and was not renamed): forget them now; the
        deletes are returned for the guards to judge."""
        consumed_old = set(self.renamed_from.values())
        deletes: list[Action] = []
        for rel in sorted(self.state):
            if rel in self.local or rel in consumed_old:
                continue
            row = self.state[rel]
            doc = self.live_doc(row)
            if doc is None:
                self.actions.append(Action(Kind.FORGET, rel, row.document_name, row.document_id,
                                           reason="file and document both gone" if row.document_id else ""))
                continue
            if doc.id in self.claimed:
                self.actions.append(Action(Kind.FORGET, rel, doc.name, doc.id,
                                           reason="document now belongs to another path"))
                continue
            self.claimed.add(doc.id)
            holder = _holder(doc, self.policy)
            if holder is not None:
                self.actions.append(Action(Kind.FORGET, rel, doc.name, doc.id,
                                           reason=f'document now held by owner "{holder}"; left in place'))
            elif not self.policy.delete:
                self.actions.append(Action(Kind.FORGET, rel, doc.name, doc.id,
                                           reason="deletion disabled for this folder; document left in Dify"))
            elif doc.archived:
                self.actions.append(Action(Kind.FORGET, rel, doc.name, doc.id,
                                           reason="document archived in Dify; left in place"))
            else:
                deletes.append(Action(Kind.DELETE, rel, doc.name, doc.id))
        return deletes

    def leftovers(self, journal: Sequence[JournalEntry]) -> list[Action]:
        """A create that was sent but never settled may have produced a document whose
        file has since vanished: the journal says it is ours, so it goes too (outside the
        mass-delete guard, which protects documents that were synced, not our own leftovers)."""
        out: list[Action] = []
        for entry in journal:
            if entry.op not in ("create", "recreate") or entry.rel_path in self.local:
                continue
            for doc in self.by_name.get(entry.document_name):
                if doc.id in self.claimed or _holder(doc, self.policy) is not None:
                    continue
                self.claimed.add(doc.id)
                if self.policy.delete:
                    out.append(Action(Kind.DELETE, entry.rel_path, doc.name, doc.id,
                                      reason="left over from an interrupted create", leftover=True))
        return out

    def guard(self, deletes: list[Action]) -> list[Action]:
        """The whole-folder guards: an emptied folder, or more deletes than the limit,
        deletes nothing and says why (``self.errors``)."""
        policy = self.policy
        if not deletes or not policy.whole_folder:
            return deletes
        tracked = sum(1 for row in self.state.values() if self.live_doc(row) is not None) + policy.settled_elsewhere
        any_eligible = len(self.refused) < len(self.local)
        folder_empty = not any_eligible and not self.refused and not policy.settled_elsewhere
        if folder_empty and tracked and not policy.allow_empty:
            self.errors.append(f"the folder is empty but {tracked} documents are tracked "
                               f"(unmounted share?): refusing to delete them")
            self.held_back = len(deletes)
            return []
        limit = policy.max_delete.limit(tracked)
        if len(deletes) > limit:
            self.errors.append(f"this pass would delete {len(deletes)} of {tracked} tracked documents, "
                               f"more than the limit of {limit}: nothing deleted (use --max-delete to allow it)")
            self.held_back = len(deletes)
            return []
        return deletes

    def finish(self, deletes: list[Action], leftovers: list[Action]) -> Plan:
        return Plan(actions=tuple(self.actions + deletes + leftovers), unchanged=self.unchanged,
                    errors=tuple(self.errors), warnings=tuple(self.warnings), held_back=self.held_back)


def is_settled(f: LocalFile | None, row: FileState, doc: RemoteDocument, policy: Policy) -> bool:
    """A tracked file whose content, name and healthy document all agree with the state:
    nothing to do for it, and nothing else in a plan can involve it (its name is its own,
    its document is claimed by it). A full pass over a big folder drops such files, rows
    and documents before planning, which is what keeps a no-op pass small in memory;
    ``Policy.settled_elsewhere`` carries their count. The planner's tests prove that
    leaving them out changes no decision."""
    return (f is not None and f.rel_path == row.rel_path and row.sha256 is not None
            and f.sha256 == row.sha256 and doc.indexing_status == "completed"
            and doc.enabled and not doc.archived and not doc.failed
            and doc.name == policy.name_of(row.rel_path)
            and refusal(f.rel_path, f.size, policy) is None
            and _holder(doc, policy) is None and not _stale_tags(row, doc, policy)
            and not _chunking_stale(row, policy))


def _chunking_stale(row: FileState, policy: Policy) -> bool:
    """The document was split otherwise than the folder now says: sent as a file where
    difysync now splits it, or as chunks where the server now does. ("file": the folder
    splits it, but this content could not go as text, so it went as a file: not stale.)"""
    if policy.chunks_locally(row.rel_path):
        return row.chunking is None
    return row.chunking == "local"


def _holder(doc: RemoteDocument, policy: Policy) -> str | None:
    """The other owner whose tag the document carries; None when it is ours, untagged,
    or metadata is off."""
    if policy.owner is None or doc.tags is None or doc.tags.owner is None:
        return None
    return doc.tags.owner if doc.tags.owner != policy.owner else None


def _stale_tags(row: FileState, doc: RemoteDocument, policy: Policy) -> bool:
    """Our metadata on the document is missing or says something other than the state."""
    if policy.owner is None or doc.tags is None or row.sha256 is None:
        return False
    return doc.tags != expected_tags(row.rel_path, row.sha256, policy.owner, row.mtime_ns)


def _retag(f: LocalFile, row: FileState, doc: RemoteDocument, name: str, policy: Policy) -> Action | None:
    """Content and name in step: a metadata-only action if our values on it are stale."""
    if doc.archived or not doc.enabled or doc.failed or not _stale_tags(row, doc, policy):
        return None
    return Action(Kind.TAG, f.rel_path, name, doc.id, sha256=row.sha256, size=f.size,
                  reason="difysync's metadata missing or out of date", keep_metadata=doc.other_metadata)


def _name_held(f: LocalFile, name: str, doc: RemoteDocument) -> Action:
    who = f'owner "{doc.owner}"' if doc.owner else "a document difysync did not make (uploaded by hand?)"
    return Action(Kind.SKIP, f.rel_path, name, None, size=f.size, code=SkipCode.NAME_HELD,
                  reason=f"name held by {who}: not sent; set this folder's name_prefix (or rename the file) "
                         "to mirror it beside that document")


def _plan_tracked(f: LocalFile, row: FileState, doc: RemoteDocument, name: str,
                  policy: Policy) -> Action | None:
    """The file is tracked and its document exists: None when nothing needs doing."""
    content_same = row.sha256 is not None and row.sha256 == f.sha256
    name_same = doc.name == name
    if doc.archived or not doc.enabled:
        if content_same and name_same:
            return None
        state_word = "archived" if doc.archived else "disabled"
        return Action(Kind.SKIP, f.rel_path, name, doc.id, size=f.size,
                      reason=f"document {state_word} in Dify; enable it to sync changes",
                      code=SkipCode.ARCHIVED if doc.archived else SkipCode.DISABLED)
    if doc.failed:
        if row.refused_sha256 and row.refused_sha256 == f.sha256:
            return _refused_again(f, row, name, doc.id)
        if content_same and row.attempts >= policy.quarantine_after:
            return Action(Kind.SKIP, f.rel_path, name, doc.id, size=f.size,
                          reason=f"quarantined: indexing failed {row.attempts} times"
                                 + (f" ({doc.error})" if doc.error else "")
                                 + "; change the file or run `difysync retry`",
                          code=SkipCode.QUARANTINED)
        return Action(Kind.RECREATE, f.rel_path, name, doc.id, sha256=f.sha256, size=f.size,
                      reason=f"indexing failed in Dify: {doc.error}" if doc.error else
                      "indexing failed in Dify", keep_metadata=doc.other_metadata)
    if content_same and name_same:
        return None
    if row.refused_sha256 and row.refused_sha256 == f.sha256:
        # The server refused this very content (an update over its size limit, say) and
        # still holds the previous version: sending it again can only be refused again.
        return _refused_again(f, row, name, doc.id)
    if doc.in_flight:
        return Action(Kind.WAIT, f.rel_path, name, doc.id, sha256=f.sha256, size=f.size,
                      reason="document is still indexing")
    if content_same:
        return Action(Kind.RENAME, f.rel_path, name, doc.id, old_rel_path=f.rel_path,
                      sha256=f.sha256, size=f.size, reason="document name out of date",
                      keep_metadata=doc.other_metadata)
    return Action(Kind.UPDATE, f.rel_path, name, doc.id, sha256=f.sha256, size=f.size,
                  keep_metadata=doc.other_metadata, renames=not name_same)


def _rechunk(f: LocalFile, row: FileState, doc: RemoteDocument, name: str, policy: Policy) -> Action | None:
    """Content in step, but split otherwise than the folder now says (its ``chunking``
    changed): the document goes again, whole, split the new way."""
    local = policy.chunks_locally(f.rel_path)
    if not _chunking_stale(row, policy) or doc.indexing_status != "completed" or row.sha256 is None:
        return None
    return Action(Kind.UPDATE, f.rel_path, name, doc.id, sha256=f.sha256, size=f.size,
                  reason="split locally now (chunking = local)" if local else "split by the server now",
                  keep_metadata=doc.other_metadata)


def _refused_again(f: LocalFile, row: FileState, name: str, document_id: str | None) -> Action:
    """The file holds content the server (or a quarantine) already refused."""
    return Action(Kind.SKIP, f.rel_path, name, document_id, size=f.size,
                  reason=row.skip_reason or "refused by the server",
                  code=row.skip_code or SkipCode.REFUSED)


def _plan_adoption(f: LocalFile, doc: RemoteDocument, name: str) -> Action:
    """A remote document of ours already carries this file's name: take it over, never
    duplicate. Its content hash decides where it carries one; else size and age do: a file
    newer than the upload behind the document is sent again even at the same size."""
    keep = doc.other_metadata
    if doc.failed:
        return Action(Kind.RECREATE, f.rel_path, name, doc.id, sha256=f.sha256, size=f.size,
                      reason="adopted document had failed indexing", keep_metadata=keep)
    tagged = doc.tags.sha256 if doc.tags is not None else None
    if tagged is not None and tagged == f.sha256:
        return Action(Kind.ADOPT, f.rel_path, name, doc.id, sha256=f.sha256, size=f.size,
                      reason=ADOPT_REASON)
    same_size = doc.size is not None and doc.size == f.size and tagged is None
    # (in whole seconds, as the server gives the upload's time: a file written in the very
    # second of its upload is not taken for an edit made after it)
    newer = bool(doc.uploaded_at) and f.mtime_ns // 1_000_000_000 > doc.uploaded_at
    if not doc.enabled or doc.archived or (same_size and not newer):
        return Action(Kind.ADOPT, f.rel_path, name, doc.id, sha256=f.sha256 if same_size and not newer else None,
                      size=f.size, reason="matched by name" + (" and size" if same_size else ""))
    if doc.in_flight:
        return Action(Kind.ADOPT, f.rel_path, name, doc.id, sha256=None, size=f.size,
                      reason="matched by name; content checked once indexing settles")
    why = "content differs" if tagged is not None else \
        "the file is newer than the upload" if same_size else "size differs"
    return Action(Kind.UPDATE, f.rel_path, name, doc.id, sha256=f.sha256, size=f.size,
                  reason=f"matched by name; {why}", keep_metadata=keep)


class _NameIndex:
    """Remote documents by name, best adoption candidate first. One entry per name, and a
    list only where a name is held more than once (old servers), so a 100k listing costs
    one dict, not a hundred thousand lists."""

    def __init__(self, docs: Sequence[RemoteDocument]) -> None:
        self._first: dict[str, RemoteDocument] = {}
        self._more: dict[str, list[RemoteDocument]] = {}
        for doc in docs:
            seen = self._first.setdefault(doc.name, doc)
            if seen is not doc:
                self._more.setdefault(doc.name, [seen]).append(doc)
        for name, group in self._more.items():
            group.sort(key=_adoption_rank)
            self._first[name] = group[0]

    def get(self, name: str) -> Sequence[RemoteDocument]:
        group = self._more.get(name)
        if group is not None:
            return group
        doc = self._first.get(name)
        return (doc,) if doc is not None else ()


def _adoption_rank(doc: RemoteDocument) -> tuple[int, int, str]:
    """Prefer an enabled, live document; among equals the oldest (stable across runs)."""
    return (0 if doc.enabled and not doc.archived else 1, doc.created_at, doc.id)
