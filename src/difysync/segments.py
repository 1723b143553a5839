"""Keeping a locally chunked document's segments in step: a pure planner.

A file synced with ``chunking = "local"`` is one Dify document whose segments are the
file's chunks (chunking.py), one each. When the file changes, its new chunks are compared
with the records of the segments as last synced (by content hash, keeping order, the way
``diff`` compares lines): unchanged chunks are left alone, a changed chunk updates its
segment in place, new chunks are added and removed ones deleted. The server's segments,
listed just before, must still be what the records say (same ids, same contents, all
enabled); otherwise someone changed the document in Dify, and the plan falls back to one
whole-document update, which re-splits it and restores the order. So does a server
without the segment API, a document with no records, and an edit that changed more than
half of the chunks (one re-split is then cheaper than many segment calls).

No I/O here: the inputs are plain values, the output a frozen ``SegmentPlan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from enum import Enum

from .chunking import chunk_digest, content_key
from .models import RemoteSegment, SegmentRecord


class SegmentOp(str, Enum):
    UPDATE = "update"  # new content for a segment, in place
    ADD = "add"        # a new chunk: appended to the document (Dify puts added segments last)
    DELETE = "delete"  # a chunk that is no longer in the file

    def __str__(self) -> str:
        return self.value


class Fallback(str, Enum):
    """Why a file's edit goes as one whole-document update instead of segment calls."""

    NOT_RECORDED = "not_recorded"      # no segments recorded (first local sync, or uploaded as a file)
    UNPAIRED = "unpaired"              # the server's segments do not pair with the chunks sent
    SERVER_CHANGED = "server_changed"  # someone changed the document's segments in Dify
    MOST_CHANGED = "most_changed"      # more than half of the chunks changed
    NO_SEGMENT_API = "no_segment_api"  # the server has no segment API

    def __str__(self) -> str:
        return self.value

    @property
    def text(self) -> str:
        return _FALLBACK_TEXTS[self]


_FALLBACK_TEXTS = {
    Fallback.NOT_RECORDED: "no segments recorded yet",
    Fallback.UNPAIRED: "the server's segments do not match the chunks sent",
    Fallback.SERVER_CHANGED: "the document's segments were changed in Dify",
    Fallback.MOST_CHANGED: "most of the file changed",
    Fallback.NO_SEGMENT_API: "the server has no segment API",
}


@dataclass(frozen=True, slots=True)
class SegmentAction:
    op: SegmentOp
    index: int | None = None       # the chunk it sends (UPDATE, ADD)
    segment_id: str | None = None  # the segment it changes (UPDATE, DELETE)


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """The segment requests for one edit, and the records once they are done (an added
    segment's id, and the server's content hash of what is sent, are filled in then)."""

    actions: tuple[SegmentAction, ...] = ()
    records: tuple[SegmentRecord, ...] = ()
    fallback: Fallback | None = None

    def count(self, op: SegmentOp) -> int:
        return sum(1 for a in self.actions if a.op is op)

    def describe(self) -> str:
        """"update 1 segment, add 2 segments", "no segment changed", or the fallback."""
        if self.fallback is not None:
            return f"whole document: {self.fallback.text}"
        parts = [f"{op} {n} segment{'s' if n != 1 else ''}" for op in SegmentOp if (n := self.count(op))]
        return ", ".join(parts) if parts else "no segment changed"


def pending_records(chunks: Sequence[str]) -> tuple[SegmentRecord, ...]:
    """The records of a document just uploaded whole: one per chunk, their segments not
    known until the server has split and indexed it."""
    return tuple(SegmentRecord(chunk_digest(c), chunk_digest(content_key(c))) for c in chunks)


def plan_segments(chunks: Sequence[str], records: Sequence[SegmentRecord],
                  remote: Sequence[RemoteSegment] | None) -> SegmentPlan:
    """The segment requests that turn the document into ``chunks``, given what was last
    synced (``records``) and what the server holds now (``remote``, None without a
    segment API)."""
    if remote is None:
        return SegmentPlan(fallback=Fallback.NO_SEGMENT_API)
    if not records:
        return SegmentPlan(fallback=Fallback.NOT_RECORDED)
    if any(r.segment_id is None for r in records):
        paired = pair(records, remote)
        if paired is None:
            return SegmentPlan(fallback=Fallback.UNPAIRED)
        records = paired
    if not matches(records, remote):
        return SegmentPlan(fallback=Fallback.SERVER_CHANGED)
    return diff(chunks, records)


def plan_offline(chunks: Sequence[str], records: Sequence[SegmentRecord]) -> SegmentPlan:
    """What an edit would send, judged from the records alone (a dry run lists nothing)."""
    if not records:
        return SegmentPlan(fallback=Fallback.NOT_RECORDED)
    return diff(chunks, records)


def pair(records: Sequence[SegmentRecord], remote: Sequence[RemoteSegment]) -> tuple[SegmentRecord, ...] | None:
    """Give the records of a whole upload their segments: the server's segments, in
    position order, one per chunk, each with the chunk's content (compared by
    ``content_key``: the server strips what it splits). None when they do not pair."""
    if len(records) != len(remote) or any(r.segment_id is not None for r in records):
        return None
    ordered = sorted(remote, key=lambda s: s.position)
    out = []
    for record, seg in zip(records, ordered):
        if chunk_digest(content_key(seg.content)) != record.key_sha256:
            return None
        out.append(record._replace(segment_id=seg.id, server_sha256=chunk_digest(seg.content)))
    return tuple(out)


def matches(records: Sequence[SegmentRecord], remote: Sequence[RemoteSegment]) -> bool:
    """The server holds exactly the recorded segments, unchanged and enabled."""
    if any(not seg.enabled for seg in remote):
        return False
    held = {seg.id: chunk_digest(seg.content) for seg in remote}
    return len(held) == len(records) and all(held.get(r.segment_id or "") == r.server_sha256 for r in records)


def diff(chunks: Sequence[str], records: Sequence[SegmentRecord]) -> SegmentPlan:
    """Chunks against records by content hash, in order: equal runs are kept, a replaced
    run updates its segments pairwise and adds or deletes the rest."""
    new = [chunk_digest(c) for c in chunks]
    old = [r.chunk_sha256 for r in records]
    actions: list[SegmentAction] = []
    after: list[SegmentRecord] = []
    opcodes = SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            after.extend(records[i1:i2])
            continue
        paired = min(i2 - i1, j2 - j1)
        for k in range(j2 - j1):
            j = j1 + k
            segment_id = records[i1 + k].segment_id if k < paired else None
            actions.append(SegmentAction(SegmentOp.UPDATE if k < paired else SegmentOp.ADD, j, segment_id))
            after.append(SegmentRecord(new[j], chunk_digest(content_key(chunks[j])), segment_id, None))
        actions.extend(SegmentAction(SegmentOp.DELETE, None, records[i].segment_id)
                       for i in range(i1 + paired, i2))
    if len(actions) * 2 > max(len(new), len(old)):
        return SegmentPlan(fallback=Fallback.MOST_CHANGED)
    return SegmentPlan(tuple(actions), tuple(after))
