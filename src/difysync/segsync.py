"""Sending a locally chunked file: the requests of segment-level sync.

A folder with ``chunking = "local"`` sends its text files as their own chunks: a whole
upload goes by text, the chunks joined by a separator that occurs in none of them, with
a custom process_rule that splits exactly there (so the server's segments are the local
chunks); an edit changes only the segments whose chunks changed (segments.py plans it).

These functions run on the executor's worker threads: they read nothing from the state
store and write nothing to it. The executor (apply.py) journals every segment request
before ``send_segments`` runs and records what came back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from .chunking import chunk_digest, chunks_of, join_chunks, max_tokens_for, separator_for
from .dify import DifyClient, Upload
from .errors import DifyError
from .models import SegmentRecord
from .plan import extension
from .segments import SegmentOp, SegmentPlan, pending_records, plan_offline, plan_segments


@dataclass(frozen=True, slots=True)
class LocalChunking:
    """A folder's local chunking: which files, and the largest chunk."""

    types: frozenset[str]
    budget: int

    def applies(self, rel_path: str) -> bool:
        return extension(rel_path) in self.types

    def chunks(self, rel_path: str, content: bytes) -> list[str] | None:
        """The file's chunks, or None when it cannot go as text (not UTF-8, no letter or
        digit at all, or a chunk the server would split again: punctuation glued to a
        chunk can, in odd files, outgrow max_tokens): it is then sent as a file, as with
        server chunking."""
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            return None
        chunks = chunks_of(rel_path, text, self.budget)
        limit = max_tokens_for(self.budget)
        return chunks if chunks and all(len(c) <= limit for c in chunks) else None

    def text_request(self, chunks: Sequence[str], data: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The text and the request body of a whole upload by text: the separator splits the
        text back into exactly these chunks, and no chunk is long enough to be split again."""
        separator = separator_for(chunks)
        rule = {"mode": "custom", "rules": {
            "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": False},
                                     {"id": "remove_urls_emails", "enabled": False}],
            "segmentation": {"separator": separator, "max_tokens": max_tokens_for(self.budget),
                             "chunk_overlap": 0}}}
        return join_chunks(chunks, separator), {**data, "process_rule": rule, "doc_form": "text_model"}


@dataclass(frozen=True, slots=True)
class Prepared:
    """An edit planned against the server's segments, ready to be journaled and sent."""

    plan: SegmentPlan
    chunks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SegmentsSent:
    """What ``send_segments`` did: the records after it, or the error that stopped it
    (the records then are the old ones: the next pass finds the server differs)."""

    records: tuple[SegmentRecord, ...]
    error: DifyError | None = None


def upload_whole(client: DifyClient, chunking: LocalChunking, dataset_id: str, name: str,
                 chunks: Sequence[str], data: Mapping[str, Any], *, document_id: str | None = None,
                 owner: str | None = None) -> tuple[Upload, tuple[SegmentRecord, ...]]:
    """Create (or, with ``document_id``, replace) the document from its chunks; the records
    wait for the segments the server will make of them."""
    text, body = chunking.text_request(chunks, data)
    if document_id is None:
        upload = client.create_by_text(dataset_id, name, text, body, owner=owner)
    else:
        upload = client.update_by_text(dataset_id, document_id, name, text, body)
    return upload, pending_records(chunks)


def prepare_edit(client: DifyClient, dataset_id: str, document_id: str, chunks: Sequence[str],
                 records: Sequence[SegmentRecord]) -> Prepared:
    """List the document's segments and plan the edit against them (read-only; nothing is
    listed for a document without records: it goes whole anyway)."""
    remote = client.list_segments(dataset_id, document_id) if records else ()
    return Prepared(plan_segments(chunks, records, remote), tuple(chunks))


def send_segments(client: DifyClient, dataset_id: str, document_id: str, prepared: Prepared,
                  before: Sequence[SegmentRecord]) -> SegmentsSent:
    """Updates first, then the adds in one request, then the deletes. The new records
    carry the ids and contents the server answered with."""
    plan, chunks = prepared.plan, prepared.chunks
    after = list(plan.records)
    try:
        for action in plan.actions:
            if action.op is SegmentOp.UPDATE:
                assert action.index is not None and action.segment_id is not None
                seg = client.update_segment(dataset_id, document_id, action.segment_id, chunks[action.index])
                after[action.index] = after[action.index]._replace(server_sha256=chunk_digest(seg.content))
        adds = [a.index for a in plan.actions if a.op is SegmentOp.ADD and a.index is not None]
        if adds:
            made = client.add_segments(dataset_id, document_id, [chunks[i] for i in adds])
            if len(made) != len(adds):
                raise DifyError(f"adding {len(adds)} segment(s) answered with {len(made)}")
            for index, seg in zip(adds, made):
                after[index] = after[index]._replace(segment_id=seg.id, server_sha256=chunk_digest(seg.content))
        for action in plan.actions:
            if action.op is SegmentOp.DELETE and action.segment_id:
                client.delete_segment(dataset_id, document_id, action.segment_id)
    except DifyError as exc:
        return SegmentsSent(tuple(before), exc)
    return SegmentsSent(tuple(after))


def edit_note(chunking: LocalChunking, path: Path, rel_path: str, records: Sequence[SegmentRecord]) -> str:
    """What an edit of this file would send, from the records alone (for a dry run)."""
    try:
        chunks = chunking.chunks(rel_path, path.read_bytes())
    except OSError:
        return ""
    if chunks is None:
        return "whole document, as a file"
    return plan_offline(chunks, records).describe()
