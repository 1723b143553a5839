"""The emulator's memory: datasets, documents, batches and how indexing moves on with time.

Dify's document rules (name matching, availability, indexing progress) live here, apart
from HTTP, so tests can read and poke the very state the routes serve; indexing is
computed lazily from the clock, so no worker thread is needed.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import mimetypes
import os
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Callable

from .statefile import Autosaver, StateFileError, envelope, read_state, write_atomically

if TYPE_CHECKING:  # segments.py imports this module; Store imports it at construction
    from .segments import SegmentBook

# The stages a document walks through, with the fraction of `indexing_delay` at which
# each one starts. "completed" (or "error") is reached at fraction 1.0.
_STAGES: tuple[tuple[float, str], ...] = (
    (0.0, "waiting"),
    (0.1, "parsing"),
    (0.4, "splitting"),
    (0.7, "indexing"),
)
IN_PROGRESS = frozenset({"parsing", "cleaning", "splitting", "indexing"})
DISPLAY_STATUSES = frozenset({"queuing", "indexing", "paused", "error", "available", "disabled",
                              "archived"})
# Dify 1.14.1 (DocumentService.DISPLAY_STATUS_ALIASES) also takes these for "available".
_DISPLAY_STATUS_ALIASES = {"active": "available", "enabled": "available"}


def normalize_display_status(status: str | None) -> str | None:
    """The listing's ``status`` filter as Dify 1.14.1 reads it: case-insensitive, with the
    aliases "active" and "enabled" for "available"; an empty or unknown value is no filter
    at all (every document comes back), not an empty answer."""
    if not status:
        return None
    normalized = status.lower()
    normalized = _DISPLAY_STATUS_ALIASES.get(normalized, normalized)
    return normalized if normalized in DISPLAY_STATUSES else None


class ApiError(Exception):
    """An answer in Dify's error shape: ``{"code", "message", "status"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status}


def dataset_not_found() -> ApiError:
    return ApiError(404, "not_found", "Dataset not found.")


def document_not_found() -> ApiError:
    return ApiError(404, "not_found", "Document Not Exists.")


@dataclass
class DatasetRec:
    id: str
    name: str
    description: str = ""
    permission: str = "only_me"
    indexing_technique: str | None = None
    doc_form: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    process_rule_id: str = ""
    next_position: int = 1
    built_in_field_enabled: bool = False


@dataclass
class MetadataField:
    """A dataset's metadata field (Dify's DatasetMetadata row)."""

    id: str
    dataset_id: str
    name: str
    type: str
    created_at: float = 0.0


@dataclass
class DocRecord:
    id: str
    dataset_id: str
    position: int
    name: str
    content: bytes
    extension: str
    mime_type: str
    upload_file_id: str
    upload_created_at: float
    created_at: float
    seq: int
    indexing_started_at: float
    batch: str
    process_rule_id: str
    doc_form: str = "text_model"
    doc_language: str = "English"
    created_from: str = "api"
    enabled: bool = True
    disabled_at: float | None = None
    disabled_by: str | None = None
    archived: bool = False
    archived_at: float | None = None
    fail_error: str | None = None  # decided when indexing starts (fail_patterns)
    status_override: str | None = None  # forced by set_document; cleared by a re-index
    error_override: str | None = None
    updated_at: float = 0.0
    # Dify's Document.doc_metadata column: name -> value (str, int, float or None), plus
    # the built-in keys while built-in fields are (or were) enabled. None until written.
    doc_metadata: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Stage:
    """Where a document's indexing is: its status now, when its indexing stage began, and
    when it completed (inf while it has not). What its segments show depends on it."""

    status: str
    indexing_at: float
    completed_at: float


USER_ID = "00000000-0000-4000-8000-00000000e3a1"  # the emulated API key's "account"
USER_NAME = "admin"  # that account's name: the built-in "uploader" value
METADATA_TYPES = ("string", "number", "time")
BUILT_IN_FIELDS: tuple[tuple[str, str], ...] = (
    ("document_name", "string"), ("uploader", "string"), ("upload_date", "time"),
    ("last_update_date", "time"), ("source", "string"))
BUILT_IN_ID = "built-in"
_SOURCE = "file_upload"  # the built-in "source" of an upload_file document (MetadataDataSource)
_SETTABLE = {"enabled", "archived", "name", "indexing_status", "error", "created_from",
             "doc_form", "content", "disabled_by"}


class Store:
    """Thread-safe in-memory state of one emulated workspace (optionally persisted).

    ``segment_api=False`` models a server without the segment routes (they answer the
    unknown-route 404). ``indexing_delay_per_segment`` adds that many seconds per chunk to
    a document's indexing time (on top of ``indexing_delay``), and is how long disabling
    one segment keeps it "indexing"; segment adds and updates answer at once, as Dify's
    synchronous ones do.

    With ``state_path`` the state is read from that file at construction (StateFileError
    when it cannot be used) and written back ``save_delay`` seconds after a change and by
    ``save()``. Indexing goes on by the wall clock: a document that was still indexing when
    saved completes when its delay, counted from its start, has run out, which after any
    restart longer than the delay means at once. The API key is not part of the state.
    """

    def __init__(self, *, legacy: bool = False, indexing_delay: float = 0.0,
                 state_path: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time, segment_api: bool = True,
                 indexing_delay_per_segment: float = 0.0, save_delay: float = 1.0) -> None:
        from .segments import SegmentBook  # here, as segments.py imports this module

        self.lock = threading.RLock()
        self.legacy = legacy
        self.indexing_delay = float(indexing_delay)
        self.indexing_delay_per_segment = float(indexing_delay_per_segment)
        self.segment_api = segment_api
        self.segments: SegmentBook = SegmentBook(self)
        self.state_path = os.fspath(state_path) if state_path is not None else None
        self.clock = clock
        self.fail_patterns: list[str] = []
        self.datasets: dict[str, DatasetRec] = {}
        self.docs: dict[str, dict[str, DocRecord]] = {}  # dataset id -> doc id -> record
        self.batches: dict[str, tuple[str, list[str]]] = {}  # batch -> (dataset id, doc ids)
        # dataset id -> name -> doc ids; built on demand, dropped when names change, so
        # name matching on create stays O(1) for imports of 100k documents.
        self._names: dict[str, dict[str, list[str]]] = {}
        # (dataset id, display status or None) -> (version, valid until, newest-first
        # records): what an indexed query would give a real server. Every mutation ends
        # in changed(), which bumps the version.
        self._views: dict[tuple[str, str | None], tuple[int, float, list[DocRecord]]] = {}
        self._version = 0
        self._seq = 0
        # dataset id -> field id -> field, in creation order (Dify lists them so)
        self.metadata_fields: dict[str, dict[str, MetadataField]] = {}
        # document id -> the field ids bound to it, in insertion order, duplicates kept
        # (Dify's DatasetMetadataBinding rows; a binding may name a field that does not
        # exist or no longer does: it is then invisible, as in Dify)
        self.metadata_bindings: dict[str, list[str]] = {}
        self._write_lock = threading.Lock()
        self._autosaver = Autosaver(self.save, save_delay) if self.state_path else None
        if self.state_path:
            self._load()

    @property
    def segments_indexed(self) -> int:
        """Segments (re-)indexed so far: every chunk of a document's indexing run once it
        completed (create, re-upload, update), one per segment the API added, and one per
        segment update that re-indexes it (new content, new keywords, or enabled: true)."""
        with self.lock:
            return self.segments.segments_indexed()

    # ------------------------------------------------------------------ helpers
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _batch_id(self) -> str:
        """A fresh batch id (timestamp plus random digits, as Dify makes them), not
        registered anywhere."""
        while True:
            batch = time.strftime("%Y%m%d%H%M%S", time.gmtime(self.clock())) + \
                f"{random.randint(0, 999999):06d}"
            if batch not in self.batches:
                return batch

    def _new_batch(self, dataset_id: str, doc_ids: list[str]) -> str:
        batch = self._batch_id()
        self.batches[batch] = (dataset_id, list(doc_ids))
        return batch

    def _move_to_new_batch(self, doc: DocRecord) -> str:
        """Give a document a new batch. Dify keeps one ``batch`` column per document and
        the status endpoint selects documents by it, so the old batch no longer finds this
        document (404 once no document is left in it)."""
        self._leave_batch(doc)
        doc.batch = self._new_batch(doc.dataset_id, [doc.id])
        return doc.batch

    def _leave_batch(self, doc: DocRecord) -> None:
        """Take a document out of its batch's record (a document is in one batch only),
        dropping the record once it is empty: a look-up, not a scan of every batch."""
        entry = self.batches.get(doc.batch)
        if entry is not None and doc.id in entry[1]:
            entry[1].remove(doc.id)
            if not entry[1]:
                del self.batches[doc.batch]

    def reset(self) -> None:
        """Forget every dataset, document and batch (and the fail patterns)."""
        with self.lock:
            self.datasets.clear()
            self.docs.clear()
            self.batches.clear()
            self._names.clear()
            self.metadata_fields.clear()
            self.metadata_bindings.clear()
            self.segments.clear()
            self.fail_patterns = []
            self.changed()

    def _fail_error_for(self, name: str) -> str | None:
        for pattern in self.fail_patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return f"Emulated indexing failure: {name!r} matches {pattern!r}"
        return None

    # ----------------------------------------------------------------- datasets
    def get_dataset(self, dataset_id: str) -> DatasetRec:
        with self.lock:
            ds = self.datasets.get(dataset_id)
            if ds is None:
                raise dataset_not_found()
            return ds

    def create_dataset(self, name: str, indexing_technique: str | None = None, *,
                       description: str = "", permission: str = "only_me") -> str:
        """Create a dataset and return its id (ApiError on a bad or duplicate name)."""
        if not isinstance(name, str) or not 1 <= len(name) <= 40:
            raise ApiError(400, "invalid_param", "Name must be between 1 to 40 characters.")
        if indexing_technique not in (None, "high_quality", "economy"):
            raise ApiError(400, "invalid_param", "Invalid indexing technique.")
        with self.lock:
            if any(d.name == name for d in self.datasets.values()):
                raise ApiError(409, "dataset_name_duplicate",
                               "The dataset name already exists. Please modify your dataset name.")
            now = self.clock()
            ds = DatasetRec(id=str(uuid.uuid4()), name=name, description=description or "",
                            permission=permission or "only_me",
                            indexing_technique=indexing_technique, created_at=now,
                            updated_at=now, process_rule_id=str(uuid.uuid4()))
            self.datasets[ds.id] = ds
            self.docs[ds.id] = {}
            self.changed()
            return ds.id

    def update_dataset(self, dataset_id: str, **changes: Any) -> None:
        with self.lock:
            ds = self.get_dataset(dataset_id)
            if "name" in changes and changes["name"] is not None:
                name = changes["name"]
                if not isinstance(name, str) or not 1 <= len(name) <= 40:
                    raise ApiError(400, "invalid_param", "Name must be between 1 to 40 characters.")
                if any(d.name == name and d.id != ds.id for d in self.datasets.values()):
                    raise ApiError(409, "dataset_name_duplicate",
                                   "The dataset name already exists. Please modify your dataset name.")
                ds.name = name
            for key in ("description", "permission", "indexing_technique"):
                if changes.get(key) is not None:
                    setattr(ds, key, changes[key])
            ds.updated_at = self.clock()
            self.changed()

    def delete_dataset(self, dataset_id: str) -> None:
        with self.lock:
            self.get_dataset(dataset_id)
            del self.datasets[dataset_id]
            for doc_id, doc in self.docs.pop(dataset_id, {}).items():
                self.metadata_bindings.pop(doc_id, None)
                self.segments.drop(doc)
            self.metadata_fields.pop(dataset_id, None)
            self._names.pop(dataset_id, None)
            for batch, (ds_id, _) in list(self.batches.items()):
                if ds_id == dataset_id:
                    del self.batches[batch]
            self.changed()

    def list_datasets(self, page: int, limit: int, keyword: str | None) -> dict[str, Any]:
        with self.lock:
            items = sorted(self.datasets.values(), key=lambda d: d.created_at, reverse=True)
            if keyword:
                items = [d for d in items if keyword.lower() in d.name.lower()]
            per_page = min(limit, 100)
            chunk = items[(page - 1) * per_page:(page - 1) * per_page + per_page]
            return {"data": [self.dataset_dict(d) for d in chunk], "has_more": len(chunk) == limit,
                    "limit": limit, "total": len(items), "page": page}

    def dataset_dict(self, ds: DatasetRec) -> dict[str, Any]:
        with self.lock:
            docs = list(self.docs.get(ds.id, {}).values())
            return {
                "id": ds.id, "name": ds.name, "description": ds.description or None,
                "provider": "vendor", "permission": ds.permission,
                "data_source_type": "upload_file" if docs else None,
                "indexing_technique": ds.indexing_technique, "app_count": 0,
                "document_count": len(docs),
                "word_count": sum(self.segments.word_count(d.id) for d in docs
                                  if self.indexing_status(d) == "completed"),
                "created_by": USER_ID, "created_at": int(ds.created_at),
                "updated_by": USER_ID, "updated_at": int(ds.updated_at),
                "embedding_model": None, "embedding_model_provider": None,
                "embedding_available": True,
                "retrieval_model_dict": {
                    "search_method": "keyword_search" if ds.indexing_technique == "economy"
                    else "semantic_search",
                    "reranking_enable": False, "reranking_model": {"reranking_provider_name": "",
                                                                   "reranking_model_name": ""},
                    "top_k": 2, "score_threshold_enabled": False, "score_threshold": None},
                "tags": [], "doc_form": ds.doc_form, "external_knowledge_info": None,
            } | ({} if self.legacy else {
                "doc_metadata": self.dataset_doc_metadata(ds),
                "built_in_field_enabled": ds.built_in_field_enabled})

    # ---------------------------------------------------------------- documents
    def _names_of(self, dataset_id: str) -> dict[str, list[str]]:
        index = self._names.get(dataset_id)
        if index is None:
            index = {}
            for doc in self._docs_of(dataset_id).values():
                index.setdefault(doc.name, []).append(doc.id)
            self._names[dataset_id] = index
        return index

    def _docs_of(self, dataset_id: str) -> dict[str, DocRecord]:
        self.get_dataset(dataset_id)
        return self.docs.setdefault(dataset_id, {})

    def get_document(self, dataset_id: str, doc_id: str) -> DocRecord:
        with self.lock:
            doc = self._docs_of(dataset_id).get(doc_id)
            if doc is None:
                raise document_not_found()
            return doc

    def documents(self, dataset_id: str) -> list[DocRecord]:
        """Every document of a dataset, oldest first (for tests)."""
        with self.lock:
            return sorted(self._docs_of(dataset_id).values(), key=lambda d: d.seq)

    def document_by_name(self, dataset_id: str, name: str) -> DocRecord | None:
        """The newest document with exactly this name, or None."""
        with self.lock:
            docs = self._docs_of(dataset_id)
            found = [docs[i] for i in self._names_of(dataset_id).get(name, ()) if i in docs]
            return max(found, key=lambda d: d.seq) if found else None

    def content(self, dataset_id: str, doc_id: str) -> bytes:
        with self.lock:
            return self.get_document(dataset_id, doc_id).content

    def add_document(self, dataset_id: str, name: str, content: bytes, *,
                     extension: str | None = None, mime_type: str | None = None,
                     indexing_technique: str | None = None, doc_form: str | None = None,
                     doc_language: str | None = None, match_by_name: bool | None = None,
                     process_rule: dict[str, Any] | None = None) -> tuple[DocRecord, str]:
        """Register an upload: re-index a same-named enabled document (current servers) or
        create a new one, split under ``process_rule`` (as segments.parse_process_rule
        gives it; None: the dataset's latest rule). Returns the record and the new batch.

        As in Dify 1.14.1 a match needs only ``enabled``: an archived (but enabled)
        document is matched too, re-indexed in place and stays archived. A match moves to
        the new batch (its old batch stops answering) and shows ``created_from: "api"``
        again."""
        if match_by_name is None:
            match_by_name = not self.legacy
        if extension is None:
            extension = name.rsplit(".", 1)[1].lower() if "." in name else ""
        with self.lock:
            ds = self.get_dataset(dataset_id)
            docs = self._docs_of(dataset_id)
            if ds.indexing_technique is None:
                ds.indexing_technique = indexing_technique or "economy"
            if ds.doc_form is None:
                ds.doc_form = doc_form or "text_model"
            now = self.clock()
            match = None
            if match_by_name:
                same = [docs[i] for i in self._names_of(dataset_id).get(name, ())
                        if i in docs and docs[i].enabled]
                match = max(same, key=lambda d: d.seq) if same else None
            rule_id = self.segments.rule_for_create(ds, process_rule)
            if match is not None:
                batch = self._reupload(match, content, extension, mime_type, rule_id, doc_form, doc_language)
                self.changed()
                return match, batch
            doc = DocRecord(
                id=str(uuid.uuid4()), dataset_id=dataset_id, position=ds.next_position,
                name=name, content=content, extension=extension,
                mime_type=mime_type or _mime(name), upload_file_id=str(uuid.uuid4()),
                upload_created_at=now, created_at=now, seq=self._next_seq(),
                indexing_started_at=now, batch="", process_rule_id=rule_id,
                doc_form=doc_form or ds.doc_form or "text_model",
                doc_language=doc_language or "English", updated_at=now)
            ds.next_position += 1
            doc.fail_error = self._fail_error_for(name)
            self._resplit(doc, None)
            docs[doc.id] = doc
            self._names_of(dataset_id).setdefault(name, []).append(doc.id)
            doc.batch = self._new_batch(dataset_id, [doc.id])
            self.changed()
            return doc, doc.batch

    def _reupload(self, match: DocRecord, content: bytes, extension: str, mime_type: str | None,
                  rule_id: str, doc_form: str | None, doc_language: str | None) -> str:
        """A create whose name matched: the document is re-indexed in place with the new
        content and rule, and moves to a new batch (returned)."""
        now = self.clock()
        old = self.stage(match)
        self._replace_content(match, content, extension, mime_type, now)
        match.process_rule_id = rule_id
        self._restart_indexing(match, now)
        self._resplit(match, old)
        match.created_from = "api"
        if doc_form:
            match.doc_form = doc_form
        if doc_language:
            match.doc_language = doc_language
        return self._move_to_new_batch(match)

    def _replace_content(self, doc: DocRecord, content: bytes, extension: str,
                         mime_type: str | None, now: float) -> None:
        doc.content = content
        doc.extension = extension
        doc.mime_type = mime_type or _mime(doc.name)
        doc.upload_file_id = str(uuid.uuid4())
        doc.upload_created_at = now

    def _resplit(self, doc: DocRecord, old: Stage | None, *, run: bool = True) -> None:
        """Split the document for its new indexing run (segments.py); a split that fails
        (a custom length out of range, say) fails the run."""
        technique = self.datasets[doc.dataset_id].indexing_technique
        error = self.segments.resplit(doc, old, technique, run=run)
        doc.fail_error = doc.fail_error or error

    def _restart_indexing(self, doc: DocRecord, now: float) -> None:
        doc.indexing_started_at = now
        doc.status_override = None
        doc.error_override = None
        doc.fail_error = self._fail_error_for(doc.name)
        doc.updated_at = now

    def update_document(self, dataset_id: str, doc_id: str, *, name: str | None = None,
                        content: bytes | None = None, extension: str | None = None,
                        mime_type: str | None = None,
                        process_rule: dict[str, Any] | None = None) -> tuple[DocRecord, str]:
        """Replace a document's file (and name), keeping its id, and split it anew under
        ``process_rule`` (None: the document's own rule); refuses like Dify does.

        Returns the record and the batch the answer carries: on current servers the
        document's own batch, unchanged (Dify 1.14.1 answers ``document.batch``), so
        polling it shows the update's progress; on legacy (0.9.x) servers a fresh batch id
        that was never stored, so the status endpoint answers it 404 (langgenius/dify
        #9221) while the document's original batch still shows the update's progress."""
        with self.lock:
            doc = self.get_document(dataset_id, doc_id)
            if doc.archived:
                raise ApiError(403, "archived_document_immutable",
                               "The archived document is not editable.")
            if self.display_status(doc) != "available":
                raise ApiError(400, "invalid_param", "Document is not available")
            now = self.clock()
            if name is not None and name != doc.name:
                doc.name = name
                self._names.pop(dataset_id, None)
            if content is not None:
                if extension is None:
                    extension = doc.name.rsplit(".", 1)[1].lower() if "." in doc.name else ""
                self._replace_content(doc, content, extension, mime_type, now)
            if not self.legacy:
                doc.created_from = "web"  # what Dify 1.14.1 shows after an update
            old = self.stage(doc)
            doc.process_rule_id = self.segments.rule_for_update(
                self.datasets[dataset_id], doc, process_rule)
            self._restart_indexing(doc, now)
            self._resplit(doc, old)
            batch = self._batch_id() if self.legacy else doc.batch
            self.changed()
            return doc, batch

    def api_delete_document(self, dataset_id: str, doc_id: str, *,
                            refuse_while_indexing: bool) -> None:
        """DELETE as the server does it: archived 403, in-progress 400 (if refused)."""
        with self.lock:
            doc = self.get_document(dataset_id, doc_id)
            if doc.archived:
                raise ApiError(403, "archived_document_immutable",
                               "The archived document is not editable.")
            if refuse_while_indexing and self.indexing_status(doc) in IN_PROGRESS:
                raise ApiError(400, "document_indexing", "Cannot delete document during indexing.")
            self.delete_document(dataset_id, doc_id)

    def delete_document(self, dataset_id: str, doc_id: str) -> None:
        """Remove a document without any check (test helper)."""
        with self.lock:
            docs = self._docs_of(dataset_id)
            doc = docs.pop(doc_id, None)
            if doc is None:
                raise document_not_found()
            self.segments.drop(doc)
            self._names.pop(dataset_id, None)
            self.metadata_bindings.pop(doc_id, None)
            self._leave_batch(doc)
            self.changed()

    def set_document(self, dataset_id: str, doc_id: str, **fields_: Any) -> None:
        """Force fields of a document (test helper): enabled, archived, name, content,
        indexing_status (pins the status until the next re-index; None unpins), error
        (alone it also pins the status to "error"), created_from, doc_form, disabled_by."""
        unknown = set(fields_) - _SETTABLE
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)}; settable: {sorted(_SETTABLE)}")
        with self.lock:
            doc = self.get_document(dataset_id, doc_id)
            now = self.clock()
            if "enabled" in fields_:
                doc.enabled = bool(fields_["enabled"])
                doc.disabled_at = None if doc.enabled else now
                doc.disabled_by = None if doc.enabled else USER_ID
            if "archived" in fields_:
                doc.archived = bool(fields_["archived"])
                doc.archived_at = now if doc.archived else None
            for key in ("name", "created_from", "doc_form", "disabled_by"):
                if key in fields_:
                    setattr(doc, key, fields_[key])
            if "name" in fields_:
                self._names.pop(dataset_id, None)
            if "content" in fields_:
                content = fields_["content"]
                doc.content = content.encode() if isinstance(content, str) else bytes(content)
                self._resplit(doc, self.stage(doc), run=False)
            if "indexing_status" in fields_:
                doc.status_override = fields_["indexing_status"]
                if doc.status_override is None:
                    doc.error_override = None
            if "error" in fields_:
                doc.error_override = fields_["error"]
                if fields_["error"] is not None and "indexing_status" not in fields_:
                    doc.status_override = "error"
            doc.updated_at = now
            self.changed()

    def set_status(self, dataset_id: str, action: str, doc_ids: list[str]) -> None:
        """PATCH documents/status/{action}: enable, disable, archive, un_archive."""
        if action not in ("enable", "disable", "archive", "un_archive"):
            raise ApiError(400, "invalid_action", f"Invalid action: {action}")
        with self.lock:
            docs = self._docs_of(dataset_id)
            targets = []
            for doc_id in doc_ids:
                doc = docs.get(doc_id)
                if doc is None:
                    raise ApiError(404, "not_found", "Document not found.")
                targets.append(doc)
            now = self.clock()
            for doc in targets:
                was_enabled = doc.enabled
                if action == "enable":
                    doc.enabled, doc.disabled_at, doc.disabled_by = True, None, None
                elif action == "disable":
                    if self.indexing_status(doc) != "completed":
                        raise ApiError(400, "document_indexing",
                                       f"Document: {doc.name} is not completed.")
                    doc.enabled, doc.disabled_at, doc.disabled_by = False, now, USER_ID
                elif action == "archive":
                    doc.archived, doc.archived_at = True, now
                else:
                    doc.archived, doc.archived_at = False, None
                doc.updated_at = now
                self.segments.on_status(doc, action, was_enabled, now)
            self.changed()

    def list_documents(self, dataset_id: str, page: int, limit: int, keyword: str | None,
                       status: str | None = None) -> dict[str, Any]:
        """The listing; ``status`` filters by display status as Dify 1.14.1 does (see
        normalize_display_status) and ``total`` counts only the documents that pass."""
        with self.lock:
            # One instant for the filter and the rendering, as a real server reads each row
            # once: a document never shows another status than the one it was listed under.
            now = self.clock()
            items = self._view(dataset_id, normalize_display_status(status), now)
            if keyword:
                items = [d for d in items if keyword in d.name]
            per_page = min(limit, 100)
            chunk = items[(page - 1) * per_page:(page - 1) * per_page + per_page]
            return {"data": [self.document_dict(d, now=now) for d in chunk],
                    "has_more": len(chunk) == limit, "limit": limit, "total": len(items),
                    "page": page}

    def _view(self, dataset_id: str, status: str | None, now: float) -> list[DocRecord]:
        """The dataset newest first (documents are kept in creation order, so reversing is
        the sort), with this display status only if given. Reused until the next mutation,
        or, while a document is still indexing, computed afresh."""
        docs = self._docs_of(dataset_id)
        key = (dataset_id, status)
        cached = self._views.get(key)
        if cached is not None and cached[0] == self._version and now < cached[1]:
            return cached[2]
        items = list(reversed(docs.values()))
        valid_until = float("inf")
        if status:
            kept = []
            for d in items:
                progress = self._progress(d, now)[0]
                if progress not in ("completed", "error") and d.status_override is None:
                    valid_until = now  # still moving through its stages
                if self.display_status(d, progress) == status:
                    kept.append(d)
            items = kept
        self._views[key] = (self._version, valid_until, items)
        return items

    def batch_status(self, dataset_id: str, batch: str) -> list[dict[str, Any]]:
        """The status endpoint: the dataset's documents whose current batch is this one
        (Dify selects ``Document.batch == batch``); none: 404 "Documents not found."."""
        with self.lock:
            self.get_dataset(dataset_id)
            entry = self.batches.get(batch)
            docs = self.docs.get(dataset_id, {})
            found = [docs[i] for i in (entry[1] if entry and entry[0] == dataset_id else [])
                     if i in docs and docs[i].batch == batch]
            if not found:
                raise ApiError(404, "not_found", "Documents not found.")
            return [self.status_dict(d) for d in found]

    # ----------------------------------------------------------------- metadata
    # Dify 1.14.1's MetadataService, Document.doc_metadata_details and
    # Dataset.doc_metadata, step by step (see docs in the emulator's app for the routes).
    def _fields_of(self, dataset_id: str) -> dict[str, MetadataField]:
        self.get_dataset(dataset_id)
        return self.metadata_fields.setdefault(dataset_id, {})

    def metadata_field(self, dataset_id: str, name: str) -> MetadataField | None:
        """The dataset's field with exactly this name (for tests)."""
        with self.lock:
            return next((f for f in self._fields_of(dataset_id).values() if f.name == name),
                        None)

    def dataset_doc_metadata(self, ds: DatasetRec) -> list[dict[str, Any]]:
        """The dataset object's ``doc_metadata``: its fields, then (when enabled) the five
        built-in ones with id "built-in"."""
        with self.lock:
            out = [{"id": f.id, "name": f.name, "type": f.type}
                   for f in self.metadata_fields.get(ds.id, {}).values()]
            if ds.built_in_field_enabled:
                out += [{"id": BUILT_IN_ID, "name": n, "type": t} for n, t in BUILT_IN_FIELDS]
            return out

    def list_metadata(self, dataset_id: str) -> dict[str, Any]:
        """GET /datasets/{ds}/metadata: each field with the number of its bindings (one
        per binding row: a document bound twice counts twice)."""
        with self.lock:
            ds = self.get_dataset(dataset_id)
            fields_ = self._fields_of(dataset_id)
            counts = dict.fromkeys(fields_, 0)
            for doc_id in self.docs.get(dataset_id, {}):
                for field_id in self.metadata_bindings.get(doc_id, ()):
                    if field_id in counts:
                        counts[field_id] += 1
            return {"doc_metadata": [{"id": f.id, "name": f.name, "type": f.type,
                                      "count": counts[f.id]} for f in fields_.values()],
                    "built_in_field_enabled": ds.built_in_field_enabled}

    def _check_field_name(self, dataset_id: str, name: str) -> None:
        if len(name) > 255:
            raise ApiError(400, "invalid_param", "Metadata name cannot exceed 255 characters.")
        if any(f.name == name for f in self._fields_of(dataset_id).values()):
            raise ApiError(400, "invalid_param", "Metadata name already exists.")
        if any(name == n for n, _ in BUILT_IN_FIELDS):
            raise ApiError(400, "invalid_param",
                           "Metadata name already exists in Built-in fields.")

    def create_metadata(self, dataset_id: str, type_: str, name: str) -> dict[str, Any]:
        """A new field: the answer ``{id, type, name}``. Names are compared exactly (case
        and spaces count); "" is a valid name."""
        if type_ not in METADATA_TYPES:
            raise ValueError(f"bad metadata type {type_!r}")
        with self.lock:
            self._check_field_name(dataset_id, name)
            field = MetadataField(id=str(uuid.uuid4()), dataset_id=dataset_id, name=name,
                                  type=type_, created_at=self.clock())
            self._fields_of(dataset_id)[field.id] = field
            self.changed()
            return {"id": field.id, "type": field.type, "name": field.name}

    def _working(self, doc: DocRecord) -> bool:
        """Dify's "working" documents (get_working_documents_by_dataset_id and
        get_document_by_ids): enabled, completed and not archived. Only these see renames,
        field deletes and built-in switches."""
        return doc.enabled and not doc.archived and self.indexing_status(doc) == "completed"

    def _store_values(self, doc: DocRecord, values: dict[str, Any], now: float) -> None:
        """Write a document's doc_metadata. Like SQLAlchemy, which skips the UPDATE (and
        so the ``updated_at`` bump) when the new JSON equals the old one."""
        if values != doc.doc_metadata:
            doc.doc_metadata = values
            doc.updated_at = now

    def _bound_working_docs(self, dataset_id: str, field_id: str) -> list[DocRecord]:
        docs = self.docs.get(dataset_id, {})
        return [d for d in docs.values() if field_id in self.metadata_bindings.get(d.id, ())
                and self._working(d)]

    def rename_metadata(self, dataset_id: str, field_id: str, name: str) -> dict[str, Any]:
        """PATCH: the new name must not exist yet (its own current name included) nor be a
        built-in one. An unknown id answers ``{id: None, type: None, name: None}`` (Dify
        swallows the error). Bound working documents get their value moved to the new key
        (None when they had none)."""
        with self.lock:
            self._check_field_name(dataset_id, name)
            field = self._fields_of(dataset_id).get(field_id)
            if field is None:
                return {"id": None, "type": None, "name": None}
            old, now = field.name, self.clock()
            field.name = name
            for doc in self._bound_working_docs(dataset_id, field_id):
                values = dict(doc.doc_metadata or {})
                values[name] = values.pop(old, None)
                self._store_values(doc, values, now)
            self.changed()
            return {"id": field.id, "type": field.type, "name": field.name}

    def delete_metadata(self, dataset_id: str, field_id: str) -> None:
        """DELETE: drops the field and its value from the bound working documents (others
        keep the value, invisible). An unknown id does nothing (Dify answers 204)."""
        with self.lock:
            fields_ = self._fields_of(dataset_id)
            field = fields_.get(field_id)
            if field is None:
                return
            now = self.clock()
            for doc in self._bound_working_docs(dataset_id, field_id):
                values = dict(doc.doc_metadata or {})
                values.pop(field.name, None)
                self._store_values(doc, values, now)
            del fields_[field_id]
            self.changed()

    def _built_in_values(self, doc: DocRecord) -> dict[str, Any]:
        """What Dify writes into doc_metadata for the built-in keys (floats for the dates)."""
        return {"document_name": doc.name, "uploader": USER_NAME,
                "upload_date": float(int(doc.created_at)),
                "last_update_date": round(doc.updated_at, 6),
                "source": _SOURCE}

    def set_built_in(self, dataset_id: str, enabled: bool) -> None:
        """POST metadata/built-in/enable|disable: a no-op when already so; otherwise every
        working document gets the built-in keys written (or removed)."""
        with self.lock:
            ds = self.get_dataset(dataset_id)
            if ds.built_in_field_enabled == enabled:
                return
            now = self.clock()
            for doc in self.docs.get(dataset_id, {}).values():
                if not self._working(doc):
                    continue
                values = dict(doc.doc_metadata or {})
                if enabled:
                    values.update(self._built_in_values(doc))
                else:
                    for key, _ in BUILT_IN_FIELDS:
                        values.pop(key, None)
                self._store_values(doc, values, now)
            ds.built_in_field_enabled = enabled
            self.changed()

    def update_documents_metadata(
            self, dataset_id: str,
            operations: list[tuple[str, list[tuple[str, str, Any]], bool]]) -> None:
        """POST documents/metadata: operations of (document id, [(field id, name, value)],
        partial_update), each committed on its own, in order, as Dify does: an unknown
        document raises 400 "Document not found." with the earlier operations kept.

        Without partial_update the document's values and bindings are replaced; with it
        they are merged (a binding already there is not added again). Values go under the
        *name* sent; the id is only bound (not checked against a field or the name). A
        document or field id that is not a UUID fails in Postgres: 500, this operation
        rolled back."""
        with self.lock:
            ds = self.get_dataset(dataset_id)
            docs = self._docs_of(dataset_id)
            try:
                for doc_id, items, partial in operations:
                    doc = docs.get(_pg_uuid(doc_id))
                    if doc is None:
                        raise ApiError(400, "invalid_param", "Document not found.")
                    field_ids = [_pg_uuid(field_id) for field_id, _, _ in items]
                    values = dict(doc.doc_metadata or {}) if partial else {}
                    for _, name, value in items:
                        values[name] = value
                    if ds.built_in_field_enabled:
                        values.update(self._built_in_values(doc))
                    bindings = list(self.metadata_bindings.get(doc.id, ())) if partial else []
                    for field_id in field_ids:
                        if partial and field_id in bindings:
                            continue
                        bindings.append(field_id)
                    self._store_values(doc, values, self.clock())
                    if bindings:
                        self.metadata_bindings[doc.id] = bindings
                    else:
                        self.metadata_bindings.pop(doc.id, None)
            finally:
                self.changed()

    def doc_metadata_details(self, doc: DocRecord, *, typed: bool) -> list[dict[str, Any]] | None:
        """A document's ``doc_metadata`` as Dify renders it (Document.doc_metadata_details):
        None while its stored values are empty or unset; else each binding whose field
        exists, in binding order, with the value stored under the field's current name,
        then the five built-in fields (always, enabled or not). ``typed`` keeps values as
        stored (document detail); otherwise they are strings (fields.String: the list,
        create and update answers), None staying None."""
        with self.lock:
            if not doc.doc_metadata:
                return None
            fields_ = self.metadata_fields.get(doc.dataset_id, {})
            out: list[dict[str, Any]] = []
            for field_id in self.metadata_bindings.get(doc.id, ()):
                field = fields_.get(field_id)
                if field is not None:
                    out.append({"id": field.id, "name": field.name, "type": field.type,
                                "value": doc.doc_metadata.get(field.name)})
            out += [
                {"id": BUILT_IN_ID, "name": "document_name", "type": "string", "value": doc.name},
                {"id": BUILT_IN_ID, "name": "uploader", "type": "string", "value": USER_NAME},
                {"id": BUILT_IN_ID, "name": "upload_date", "type": "time",
                 "value": str(float(int(doc.created_at)))},
                {"id": BUILT_IN_ID, "name": "last_update_date", "type": "time",
                 "value": str(round(doc.updated_at, 6))},
                {"id": BUILT_IN_ID, "name": "source", "type": "string",
                 "value": _SOURCE}]
            if not typed:
                for item in out:
                    if item["value"] is not None and not isinstance(item["value"], str):
                        item["value"] = str(item["value"])
            return out

    # ------------------------------------------------------------ indexing view
    def _progress(self, doc: DocRecord, now: float | None = None) -> tuple[str, float]:
        """(indexing_status, time of completion or +inf) as of now."""
        if doc.status_override is not None:
            return doc.status_override, doc.indexing_started_at
        now = self.clock() if now is None else now
        delay = self._delay(doc)
        elapsed = now - doc.indexing_started_at
        if elapsed >= delay:
            return ("error" if doc.fail_error else "completed"), doc.indexing_started_at + delay
        status = "waiting"
        for start, name in _STAGES:
            if elapsed >= start * delay:
                status = name
        return status, float("inf")

    def _delay(self, doc: DocRecord) -> float:
        """A document's indexing time: the fixed delay plus the per-chunk one."""
        per_segment = max(self.indexing_delay_per_segment, 0.0)
        return max(self.indexing_delay, 0.0) + (per_segment * self.segments.chunk_count(doc.id) if per_segment else 0.0)

    def stage(self, doc: DocRecord) -> Stage:
        """The document's indexing stage now, with when it reached "indexing" and when it
        completed (what its segments' times are)."""
        with self.lock:
            status, done_at = self._progress(doc)
            start = next(frac for frac, name in _STAGES if name == "indexing")
            return Stage(status, doc.indexing_started_at + start * self._delay(doc), done_at)

    def indexing_status(self, doc: DocRecord, now: float | None = None) -> str:
        with self.lock:
            return self._progress(doc, now)[0]

    def error_of(self, doc: DocRecord, now: float | None = None) -> str | None:
        status = self.indexing_status(doc, now)
        if doc.error_override is not None:
            return doc.error_override
        if status == "error":
            return doc.fail_error or "Emulated indexing error"
        return None

    def display_status(self, doc: DocRecord, status: str | None = None) -> str:
        status = status or self.indexing_status(doc)
        if status == "waiting":
            return "queuing"
        if status == "paused":
            return "paused"
        if status in IN_PROGRESS:
            return "indexing"
        if status == "error":
            return "error"
        if doc.archived:
            return "archived"
        return "available" if doc.enabled else "disabled"

    def document_dict(self, doc: DocRecord, *, fresh: bool = False, detail: bool = False,
                      now: float | None = None) -> dict[str, Any]:
        """The document object D (as of ``now``, default the clock's). ``fresh`` renders it
        as a create/update answer does: just queued."""
        with self.lock:
            status = "waiting" if fresh else self.indexing_status(doc, now)
            error = None if fresh else self.error_of(doc, now)
            completed = status == "completed"
            words = self.segments.word_count(doc.id) if completed else 0
            data: dict[str, Any] = {
                "id": doc.id, "position": doc.position, "data_source_type": "upload_file",
                "data_source_info": {"upload_file_id": doc.upload_file_id},
                "data_source_detail_dict": {"upload_file": {
                    "id": doc.upload_file_id, "name": doc.name, "size": doc.size,
                    "extension": doc.extension, "mime_type": doc.mime_type,
                    "created_by": USER_ID, "created_at": int(doc.upload_created_at)}},
                "dataset_process_rule_id": doc.process_rule_id, "name": doc.name,
                "created_from": doc.created_from, "created_by": USER_ID,
                "created_at": int(doc.created_at),
                "tokens": self.segments.tokens(doc.id) if completed else 0,
                # Dify keeps a paused document's stage in indexing_status (is_paused is a
                # flag of its own): only display_status and the batch status say "paused".
                "indexing_status": "indexing" if status == "paused" else status,
                "error": error, "enabled": doc.enabled,
                "disabled_at": int(doc.disabled_at) if doc.disabled_at else None,
                "disabled_by": doc.disabled_by, "archived": doc.archived,
                "display_status": self.display_status(doc, status),
                "word_count": words, "hit_count": 0,
                "doc_form": doc.doc_form,
            }
            if not self.legacy:
                data["doc_metadata"] = self.doc_metadata_details(doc, typed=detail)
            if detail:
                count = len(self.segments.visible(doc, self.stage(doc)))
                data.update({
                    "dataset_id": doc.dataset_id, "doc_language": doc.doc_language,
                    "segment_count": count, "average_segment_length": words // max(count, 1),
                    "updated_at": int(doc.updated_at),
                    "completed_at": int(self._progress(doc)[1]) if completed else None,
                    "indexing_latency": self._delay(doc) if completed else None,
                    "archived_at": int(doc.archived_at) if doc.archived_at else None,
                })
            return data

    def status_dict(self, doc: DocRecord) -> dict[str, Any]:
        """The indexing status object S of one document."""
        with self.lock:
            status, done_at = self._progress(doc)
            start = doc.indexing_started_at
            delay = self._delay(doc)
            reached = {name: start + frac * delay for frac, name in _STAGES}
            finished = status in ("completed", "error")

            def passed(stage: str) -> int | None:
                order = [n for _, n in _STAGES]
                if finished:
                    return int(done_at if stage == "indexing" else reached[stage])
                if status in order and order.index(status) > order.index(stage):
                    return int(reached[order[order.index(stage) + 1]])
                return None

            # Dify counts the document's segment rows (see SegmentBook.visible); a run's
            # rows are marked completed all at once, at its end
            total = len(self.segments.visible(doc, self.stage(doc)))
            return {
                "id": doc.id, "indexing_status": status,
                "processing_started_at": int(start),
                "parsing_completed_at": passed("parsing"),
                "cleaning_completed_at": passed("parsing"),
                "splitting_completed_at": passed("splitting"),
                "completed_at": int(done_at) if status == "completed" else None,
                "paused_at": int(start) if status == "paused" else None,
                "error": self.error_of(doc), "stopped_at": int(done_at) if status == "error"
                else None,
                "completed_segments": 0 if status in ("splitting", "indexing") else total,
                "total_segments": total,
            }

    # -------------------------------------------------------------- persistence
    def changed(self) -> None:
        """Every mutation ends here: cached listings go stale, and with a state file a
        save is due within ``save_delay`` seconds."""
        self._version += 1
        if self._autosaver is not None:
            self._autosaver.notify()

    def save(self) -> None:
        """Write the state file now (no-op without state_path): at shutdown, or for a
        test that reads the file. Saves are serialized, so the newest state is the one
        left on disk."""
        if not self.state_path:
            return
        with self._write_lock:
            with self.lock:  # a consistent snapshot; the disk write happens outside it
                text = json.dumps(envelope(self._state()))
                if self._autosaver is not None:
                    self._autosaver.saved()
            write_atomically(self.state_path, text)

    def _state(self) -> dict[str, Any]:
        return {
            "seq": self._seq,
            "fail_patterns": self.fail_patterns,
            "datasets": [asdict(d) for d in self.datasets.values()],
            "documents": [
                {**{f.name: getattr(doc, f.name) for f in fields(DocRecord)
                    if f.name != "content"},
                 "content_b64": base64.b64encode(doc.content).decode("ascii")}
                for docs in self.docs.values() for doc in docs.values()],
            "batches": {b: [ds, ids] for b, (ds, ids) in self.batches.items()},
            "metadata_fields": [asdict(f) for fs in self.metadata_fields.values()
                                for f in fs.values()],
            "metadata_bindings": self.metadata_bindings,
            "segments": self.segments.to_state(),
        }

    def _load(self) -> None:
        """Read the state file if there is one (StateFileError when it cannot be used)."""
        assert self.state_path
        state = read_state(self.state_path)
        if state is None:
            return
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateFileError(
                f"the state file {self.state_path} is damaged ({type(exc).__name__}: {exc}); "
                "move it away to start empty") from None

    def _restore(self, state: dict[str, Any]) -> None:
        self._seq = int(state.get("seq", 0))
        self.fail_patterns = list(state.get("fail_patterns", []))
        for raw in state.get("datasets", []):
            ds = DatasetRec(**raw)
            self.datasets[ds.id] = ds
            self.docs[ds.id] = {}
        for raw in state.get("documents", []):
            raw = dict(raw)
            content = base64.b64decode(raw.pop("content_b64", ""))
            doc = DocRecord(content=content, **raw)
            self.docs.setdefault(doc.dataset_id, {})[doc.id] = doc
        self.batches = {b: (ds, list(ids)) for b, (ds, ids) in state.get("batches", {}).items()}
        for raw in state.get("metadata_fields", []):
            field = MetadataField(**raw)
            self.metadata_fields.setdefault(field.dataset_id, {})[field.id] = field
        self.metadata_bindings = {doc: list(ids) for doc, ids in
                                  state.get("metadata_bindings", {}).items()}
        if "segments" in state:
            self.segments.load_state(state["segments"])
        else:  # a state file from before segments: split every document now
            for docs in self.docs.values():
                for doc in docs.values():
                    self._resplit(doc, None, run=False)


def _pg_uuid(value: str) -> str:
    """A value as Postgres reads it into a uuid column (lower-case canonical form), or a
    500 as Dify answers the database error."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ApiError(500, "unknown", "Internal Server Error") from None


def _mime(name: str) -> str:
    lower = name.lower()
    if lower.endswith((".md", ".markdown", ".mdx")):
        return "text/markdown"
    return mimetypes.guess_type(lower)[0] or "application/octet-stream"


__all__ = ["ApiError", "BUILT_IN_FIELDS", "BUILT_IN_ID", "DISPLAY_STATUSES", "DatasetRec",
           "DocRecord", "StateFileError", "METADATA_TYPES", "MetadataField", "Stage", "Store", "USER_ID", "USER_NAME",
           "IN_PROGRESS", "dataset_not_found", "document_not_found", "normalize_display_status"]
