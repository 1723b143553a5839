"""Dify's chunks (document segments) for the emulator: the server-side split of uploads
and the segment API's records and rules.

A client that keeps a document's chunks in step (adds, edits, deletes segments; compares
what the server stored with what it meant to store) can only be tested against a server
that splits exactly as Dify 1.14.1 does and answers the segment routes as it does. The
splitter below follows api/core/rag (extractor/markdown_extractor.py, cleaner/
clean_processor.py, splitter/text_splitter.py and fixed_text_splitter.py,
index_processor/processor/paragraph_index_processor.py, tools/utils/
text_processing_utils.py); the operations follow SegmentService in
api/services/dataset_service.py and api/controllers/service_api/dataset/segment.py, and
were checked against a running 1.14.1.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any, Callable, Literal

from pydantic import BaseModel, create_model

from .metadata import validate
from .store import USER_ID, ApiError, DatasetRec, DocRecord, Stage, Store

# DatasetProcessRule.AUTOMATIC_RULES (models/dataset.py)
AUTOMATIC_RULES: dict[str, Any] = {
    "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": True},
                             {"id": "remove_urls_emails", "enabled": False}],
    "segmentation": {"delimiter": "\n", "max_tokens": 500, "chunk_overlap": 50},
}
_SEPARATORS = ["\n\n", "。", ". ", " ", ""]  # both modes' recursive separators
MAX_SEGMENT_LENGTH = 4000  # INDEXING_MAX_SEGMENTATION_TOKENS_LENGTH's default
SEGMENT_STATUSES = frozenset({"waiting", "indexing", "completed", "error", "paused",
                              "re_segment"})  # models.enums.SegmentStatus
_MARKDOWN = frozenset({"md", "markdown", "mdx"})
_INTERNAL_ERROR = ("unknown", "Internal Server Error")


# ------------------------------------------------------------------ process rules
class PreProcessingRule(BaseModel):
    id: str
    enabled: bool


class Segmentation(BaseModel):
    separator: str = "\n"
    max_tokens: int
    chunk_overlap: int = 0


class Rule(BaseModel):
    pre_processing_rules: list[PreProcessingRule] | None = None
    segmentation: Segmentation | None = None
    parent_mode: Literal["full-doc", "paragraph"] | None = None
    subchunk_segmentation: Segmentation | None = None


class ProcessRule(BaseModel):
    mode: Literal["automatic", "custom", "hierarchical"]
    rules: Rule | None = None


@cache
def _payload_model(name: str) -> type[BaseModel]:
    """A model named as Dify's request model, holding just its process_rule."""
    return create_model(name, process_rule=(ProcessRule | None, None))


def parse_process_rule(raw: Any, payload: str) -> dict[str, Any] | None:
    """A request's ``process_rule`` as Dify stores it (``{"mode", "rules"}``), or None when
    absent or null (the dataset's latest rule then applies). ``payload`` is the name of
    the pydantic model Dify validates the request with (DocumentTextCreatePayload,
    DocumentTextUpdate, KnowledgeConfig): its validation errors carry that name. Then
    DocumentService.process_rule_args_validate's checks, in its order."""
    rule = validate(_payload_model(payload), {"process_rule": raw}).process_rule
    if rule is None:
        return None
    if rule.mode == "automatic":
        return {"mode": "automatic", "rules": AUTOMATIC_RULES}
    return {"mode": rule.mode, "rules": _checked_rules(rule.mode, rule.rules).model_dump()}


def _checked_rules(mode: str, rules: Rule | None) -> Rule:
    """The custom (or hierarchical) rules, checked; duplicate pre-processing rules merged
    (the last one of an id wins)."""
    if rules is None:
        raise ApiError(400, "invalid_param", "Process rule rules is required")
    if rules.pre_processing_rules is None:
        raise ApiError(400, "invalid_param", "Process rule pre_processing_rules is required")
    unique: dict[str, PreProcessingRule] = {}
    for pre in rules.pre_processing_rules:
        if not pre.id:
            raise ApiError(400, "invalid_param", "Process rule pre_processing_rules id is required")
        unique[pre.id] = pre
    rules.pre_processing_rules = list(unique.values())
    if mode == "hierarchical" and not rules.parent_mode:
        rules.parent_mode = "paragraph"
    segmentation = rules.segmentation
    if segmentation is None:
        raise ApiError(400, "invalid_param", "Process rule segmentation is required")
    if not segmentation.separator:
        raise ApiError(400, "invalid_param", "Process rule segmentation separator is required")
    full_doc = mode == "hierarchical" and rules.parent_mode == "full-doc"
    if not full_doc and not segmentation.max_tokens:
        raise ApiError(400, "invalid_param", "Process rule segmentation max_tokens is required")
    return rules


# ---------------------------------------------------------------------- splitting
class SplitError(Exception):
    """Raised while splitting: the document's indexing fails with this text as its error
    (Dify raises it in the worker, after the request was answered)."""


def _extract(content: bytes, extension: str) -> list[str]:
    """The extractor's texts: Markdown uploads (by file) one per heading section, any other
    file as one text. Read as Path.read_text does: universal newlines."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:  # Dify detects an encoding; latin-1 never fails
        text = content.decode("latin-1")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if extension.lower() not in _MARKDOWN:
        return [text]
    return [value.strip() if header is None else f"\n\n{header}\n{value.strip()}"
            for header, value in _markdown_sections(text)]


def _markdown_sections(text: str) -> list[tuple[str | None, str]]:
    """MarkdownExtractor.markdown_to_tups: (heading without any '#', text below it with
    HTML tags removed); fenced code blocks are never split at a '#' line."""
    sections: list[tuple[str | None, str]] = []
    header: str | None = None
    body = ""
    in_code = False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"^#+\s", line):
            sections.append((header, body))
            header, body = line, ""
            continue
        body += line + "\n"
    sections.append((header, body))
    return [(re.sub(r"#", "", key).strip() if key else None, re.sub(r"<.*?>", "", value))
            for key, value in sections]


_MD_LINK = re.compile(r"\[([^\]]*)\]\((https?://[^)]+)\)")
_MD_IMAGE = re.compile(r"!\[.*?\]\((https?://[^)]+)\)")


def _remove_urls_emails(text: str) -> str:
    """Emails and bare URLs go; Markdown links and images stay whole."""
    text = re.sub(r"([a-zA-Z0-9_.+-]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+)", "", text)
    kept: list[str] = []

    def hide(match: re.Match[str], image: bool) -> str:
        kept.append(f"![image]({match.group(1)})" if image else
                    f"[{match.group(1)}]({match.group(2)})")
        return f"__MARKDOWN_PLACEHOLDER_{len(kept) - 1}__"

    text = _MD_LINK.sub(lambda m: hide(m, False), text)
    text = _MD_IMAGE.sub(lambda m: hide(m, True), text)
    text = re.sub(r"https?://\S+", "", text)
    for i, original in enumerate(kept):
        text = text.replace(f"__MARKDOWN_PLACEHOLDER_{i}__", original)
    return text


def clean(text: str, rules: dict[str, Any]) -> str:
    """CleanProcessor.clean: control characters (and, as Dify's pattern is written on str,
    also ï ¿ ¾) deleted, then the enabled pre-processing rules."""
    text = re.sub(r"<\|", "<", text)
    text = re.sub(r"\|>", ">", text)
    text = re.sub(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\xEF\xBF\xBE]", "", text)
    text = text.replace("\ufffe", "")
    for pre in rules.get("pre_processing_rules") or []:
        if pre["id"] == "remove_extra_spaces" and pre["enabled"] is True:
            text = re.sub(r"\n{3,}", "\n\n", text)
            text = re.sub(r"[\t\f\r\x20\u00a0\u1680\u180e\u2000-\u200a\u202f\u205f\u3000]{2,}",
                          " ", text)
        elif pre["id"] == "remove_urls_emails" and pre["enabled"] is True:
            text = _remove_urls_emails(text)
    return text


_LEADING_SYMBOLS = re.compile(
    r"^(?:[\u2000-\u2025]|[\u2027-\u206F]|[\u2E00-\u2E7F]|[\u3000-\u300F]|[\u3012-\u303F]"
    r"|[\"#$%&'()*+,./:;<=>?@^_`~])+")


def remove_leading_symbols(text: str) -> str:
    """What Dify strips from the start of every split chunk: ASCII punctuation except
    ``! - [ \\ ] { | }`` and general/CJK punctuation; a leading Markdown link stays. Only
    the very first characters count: a chunk that starts with a space or newline keeps
    its ``#``."""
    if re.match(r"^\[([^\]]+)\]\((https?://[^)]+)\)", text):
        return text
    return _LEADING_SYMBOLS.sub("", text)


class _Splitter:
    """RecursiveCharacterTextSplitter (automatic rules) and its Fixed... subclass (custom
    rules: split at the separator, then split again only the pieces that are too long),
    lengths in characters, separators kept (keep_separator=True)."""

    def __init__(self, size: int, overlap: int, fixed: str | None) -> None:
        if overlap > size:
            raise SplitError(f"Got a larger chunk overlap ({overlap}) than chunk size "
                             f"({size}), should be smaller.")
        self.size, self.overlap, self.fixed = size, overlap, fixed

    def split(self, text: str) -> list[str]:
        if self.fixed is None:
            return self._recursive(text, _SEPARATORS)
        pieces = text.split(self.fixed) if self.fixed else [text]
        out: list[str] = []
        for piece in pieces:
            out.extend(self._fixed_recursive(piece) if len(piece) > self.size else [piece])
        return out

    def _fixed_recursive(self, text: str) -> list[str]:
        """FixedRecursiveCharacterTextSplitter.recursive_split_text: the first separator
        found (plain substring), the rest handed to the regex-based _recursive."""
        separator, rest = "", []
        for i, candidate in enumerate(_SEPARATORS):
            if candidate == "" or candidate in text:
                separator, rest = candidate, _SEPARATORS[i + 1:] if candidate else []
                break
        if separator == "":
            return self._by_characters(text)
        if separator == " ":
            splits = re.split(r" +", text)
        else:
            parts = text.split(separator)
            splits = [s + separator for s in parts[:-1]] + parts[-1:]
        return self._merge_or_recurse([s for s in splits if s not in ("", "\n")], rest)

    def _by_characters(self, text: str) -> list[str]:
        """The last resort of the fixed splitter: characters, with ``overlap`` characters
        carried into the next chunk."""
        out: list[str] = []
        part, overlap = "", ""
        for char in text:
            if char == "\n":  # Dify drops "" and "\n" splits before this loop
                continue
            if len(part) + 1 <= self.size - self.overlap:
                part += char
            elif len(part) + 1 <= self.size:
                part += char
                overlap += char
            else:
                out.append(part)
                part, overlap = overlap + char, ""
        if part:
            out.append(part)
        return out

    def _recursive(self, text: str, separators: list[str]) -> list[str]:
        """RecursiveCharacterTextSplitter._split_text: separators searched as regular
        expressions (so ". " matches any character before a space), split literally."""
        separator, rest = separators[-1], []
        for i, candidate in enumerate(separators):
            if candidate == "":
                separator = ""
                break
            if re.search(candidate, text):
                separator, rest = candidate, separators[i + 1:]
                break
        if separator:
            parts = re.split(f"({re.escape(separator)})", text)
            splits = [parts[i - 1] + parts[i] for i in range(1, len(parts), 2)]
            splits += parts[-1:] if len(parts) % 2 else []
        else:
            splits = list(text)
        return self._merge_or_recurse([s for s in splits if s not in ("", "\n")], rest)

    def _merge_or_recurse(self, splits: list[str], rest: list[str]) -> list[str]:
        """Short splits merged into chunks; a split of ``size`` or more split again with
        the remaining separators (or kept whole when none is left)."""
        out: list[str] = []
        good: list[str] = []
        for split in splits:
            if len(split) < self.size:
                good.append(split)
                continue
            if good:
                out.extend(self._merge(good))
                good = []
            out.extend(self._recursive(split, rest) if rest else [split])
        if good:
            out.extend(self._merge(good))
        return out

    def _merge(self, splits: list[str]) -> list[str]:
        """TextSplitter._merge_splits with an empty separator: pieces joined up to ``size``
        characters, about ``overlap`` characters repeated; each chunk stripped."""
        docs: list[str] = []
        current: list[str] = []
        total = 0
        for split in splits:
            if total + len(split) > self.size and current:
                docs.append("".join(current).strip())
                while total > self.overlap or (total + len(split) > self.size and total > 0):
                    total -= len(current.pop(0))
            current.append(split)
            total += len(split)
        docs.append("".join(current).strip())
        return [d for d in docs if d]


def _splitter_for(rule: dict[str, Any]) -> _Splitter:
    """ParagraphIndexProcessor._get_splitter: custom (and hierarchical) rules check the
    length and decode the separator (``\\n`` first, then unicode_escape since 1.12)."""
    if rule["mode"] == "automatic":
        return _Splitter(500, 50, None)
    segmentation = rule["rules"]["segmentation"]
    size = segmentation["max_tokens"]
    if size < 50 or size > MAX_SEGMENT_LENGTH:
        raise SplitError(f"Custom segment length should be between 50 and {MAX_SEGMENT_LENGTH}.")
    separator = segmentation["separator"].replace("\\n", "\n")
    try:
        fixed = codecs.decode(separator, "unicode_escape")
    except UnicodeDecodeError as exc:
        raise SplitError(str(exc)) from None
    return _Splitter(size, segmentation["chunk_overlap"], fixed)


def split_document(content: bytes, extension: str, rule: dict[str, Any]) -> list[str]:
    """The chunks Dify stores for an upload under this rule, in order: each extracted text
    cleaned and split; every chunk loses its leading punctuation, is stripped, and is
    dropped when nothing is left. Raises SplitError when indexing would fail."""
    rules = AUTOMATIC_RULES if rule["mode"] == "automatic" else rule["rules"] or {}
    splitter = _splitter_for(rule)
    out: list[str] = []
    for text in _extract(content, extension):
        for chunk in splitter.split(clean(text, rules)):
            if chunk.strip():
                kept = remove_leading_symbols(chunk).strip()
                if kept:
                    out.append(kept)
    return out


# ------------------------------------------------------------------------ keywords
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he",
    "her", "here", "his", "i", "in", "is", "it", "its", "me", "my", "no", "not", "of", "on",
    "or", "our", "she", "so", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "to", "us", "was", "we", "were", "what", "when", "which", "who",
    "will", "with", "you", "your"})


def extract_keywords(content: str, limit: int = 10) -> list[str]:
    """An economy dataset's keyword table entry: the most frequent words (stop words
    left out), at most ``limit``; a stand-in for Dify's jieba TF-IDF, deterministic."""
    words = [w for w in re.findall(r"\w+", content) if w.lower() not in _STOPWORDS]
    return [w for w, _ in Counter(words).most_common(limit)]


# ------------------------------------------------------------------------- records
@dataclass(slots=True)
class SegmentRec:
    """One DocumentSegment row. ``split`` marks a chunk of the document's current indexing
    run: until that run completes its status, ``enabled`` and keywords are the run's."""

    id: str
    dataset_id: str
    document_id: str
    position: int
    content: str
    word_count: int
    tokens: int
    keywords: list[str] | None
    index_node_id: str
    index_node_hash: str
    created_at: float
    updated_at: float
    answer: str | None = None
    enabled: bool = True
    disabled_at: float | None = None
    disabled_by: str | None = None
    updated_by: str | None = None
    indexing_at: float | None = None
    completed_at: float | None = None
    split: bool = False
    busy_until: float = 0.0  # "Segment is indexing" until then (after a disable)


@dataclass
class DocSegments:
    """A document's segments: those of its current run, and (while a re-index waits in
    the queue) those of the previous run, which Dify deletes only when the worker starts.
    ``word_count`` is Dify's Document.word_count column: set by the split, moved by the
    segment API; ``chunks`` is how many the current run split (what its time grows with)."""

    dataset_id: str
    _current: dict[str, SegmentRec] = field(default_factory=dict)
    previous: dict[str, SegmentRec] = field(default_factory=dict)
    _word_count: int = 0
    _chunks: int = 0
    # The split of the current run, made when something first needs it: an import of
    # thousands of documents (a benchmark's) never pays for splits nobody looks at.
    pending: Callable[[], tuple[dict[str, SegmentRec], int, int]] | None = None

    def _split(self) -> None:
        if self.pending is not None:
            make, self.pending = self.pending, None
            self._current, self._word_count, self._chunks = make()

    @property
    def current(self) -> dict[str, SegmentRec]:
        self._split()
        return self._current

    @current.setter
    def current(self, value: dict[str, SegmentRec]) -> None:
        self._split()
        self._current = value

    @property
    def word_count(self) -> int:
        self._split()
        return self._word_count

    @word_count.setter
    def word_count(self, value: int) -> None:
        self._split()
        self._word_count = value

    @property
    def chunks(self) -> int:
        self._split()
        return self._chunks


def _hash(content: str) -> str:
    """helper.generate_text_hash: SHA-256 of the text plus "None"."""
    return hashlib.sha256((content + "None").encode()).hexdigest()


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def _paging(page: int, limit: int) -> tuple[int, int]:
    """Flask-SQLAlchemy's paginate(max_per_page=100, error_out=False): a page below 1 is
    page 1, a size below 1 is 20, at most 100."""
    return max(page, 1), min(limit if limit >= 1 else 20, 100)


# ---------------------------------------------------------------------------- book
class SegmentBook:
    """Every segment of one emulated workspace, with the process rules that made them; the
    store calls it when documents are (re-)indexed, changed or deleted, and the routes
    call its operations. Runs under the store's lock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rules: dict[str, dict[str, Any]] = {}  # process rule id -> {"mode", "rules"}
        self.docs: dict[str, DocSegments] = {}  # document id -> its segments
        self.owner: dict[str, str] = {}  # segment id -> document id (ids are tenant-wide)
        self.indexed = 0  # segments (re-)indexed so far, credited runs only
        self.running: dict[str, tuple[str, None]] = {}  # doc id -> (dataset id, None): a run not yet counted

    # rules -------------------------------------------------------------------
    def _new_rule(self, ds: DatasetRec, rule: dict[str, Any]) -> str:
        """A new DatasetProcessRule row: it becomes the dataset's latest rule."""
        rule_id = str(uuid.uuid4())
        self.rules[rule_id] = rule
        ds.process_rule_id = rule_id
        return rule_id

    def rule_for_create(self, ds: DatasetRec, requested: dict[str, Any] | None) -> str:
        """The rule a create uses: the one sent, else the dataset's latest, else a new
        automatic one."""
        if requested is not None:
            return self._new_rule(ds, requested)
        if ds.process_rule_id in self.rules:
            return ds.process_rule_id
        return self._new_rule(ds, {"mode": "automatic", "rules": AUTOMATIC_RULES})

    def rule_for_update(self, ds: DatasetRec, doc: DocRecord,
                        requested: dict[str, Any] | None) -> str:
        """An update keeps the document's own rule unless one is sent (the dataset's latest
        rule plays no part, unlike on create)."""
        return self._new_rule(ds, requested) if requested is not None else doc.process_rule_id

    # indexing runs -------------------------------------------------------------
    def resplit(self, doc: DocRecord, old: Stage | None, technique: str | None, *,
                run: bool = True) -> str | None:
        """Split a document anew (create, update, re-upload). Its completed segments stay
        visible until the new run starts; every new chunk gets a new id and positions
        restart at 1. ``run=False``: the content changed without an indexing run (a test
        helper), so nothing is counted. Returns the error the run will end in, if the
        split fails."""
        self._credit(doc.id, old)
        entry = self.docs.get(doc.id) or DocSegments(doc.dataset_id)
        for seg_id in entry.previous:
            self.owner.pop(seg_id, None)
        entry.previous = self._frozen(entry.current, old) if old and old.status == "completed" \
            else {}
        for seg_id in set(entry.current) - set(entry.previous):
            self.owner.pop(seg_id, None)
        rule = self.rules.get(doc.process_rule_id, {"mode": "automatic", "rules": AUTOMATIC_RULES})
        try:
            _splitter_for(rule)  # the rule's own checks: a bad rule fails the run at once
            error = None
        except SplitError as exc:
            error = str(exc)
        entry.current, entry.word_count, entry._chunks = {}, 0, 0
        if error is None:
            entry.pending = self._splitting(doc, doc.content, rule, technique, self.store.clock())
        self.docs[doc.id] = entry
        if run:
            self.running[doc.id] = (doc.dataset_id, None)  # its chunks are counted when it completes
        return error

    def _splitting(self, doc: DocRecord, content: bytes, rule: dict[str, Any], technique: str | None,
                   now: float) -> Callable[[], tuple[dict[str, SegmentRec], int, int]]:
        """The split of this run (of this content, at this time), to be made later."""
        extension = doc.extension

        def split() -> tuple[dict[str, SegmentRec], int, int]:
            chunks = split_document(content, extension, rule)
            current: dict[str, SegmentRec] = {}
            for position, chunk in enumerate(chunks, start=1):
                seg = self._record(doc.dataset_id, doc.id, position, chunk, technique, now)
                seg.split = True
                self._keep(current, seg)
            return current, sum(len(c) for c in chunks), len(chunks)
        return split

    def _frozen(self, segs: dict[str, SegmentRec], stage: Stage) -> dict[str, SegmentRec]:
        """A completed run's segments with its times written in, as the rows hold them."""
        return {i: replace(s, split=False, indexing_at=s.indexing_at or stage.indexing_at,
                           completed_at=s.completed_at or stage.completed_at)
                for i, s in segs.items()}

    def _record(self, dataset_id: str, doc_id: str, position: int, content: str,
                technique: str | None, now: float) -> SegmentRec:
        economy = technique != "high_quality"
        return SegmentRec(
            id=str(uuid.uuid4()), dataset_id=dataset_id, document_id=doc_id,
            position=position, content=content, word_count=len(content),
            tokens=0 if economy else len(content.split()),
            keywords=extract_keywords(content) if economy else None,
            index_node_id=str(uuid.uuid4()), index_node_hash=_hash(content),
            created_at=now, updated_at=now)

    def _keep(self, segs: dict[str, SegmentRec], seg: SegmentRec) -> None:
        segs[seg.id] = seg
        self.owner[seg.id] = seg.document_id

    def _credit(self, doc_id: str, stage: Stage | None) -> None:
        """Count a run's chunks once it has completed (a run replaced or deleted before
        that never counts)."""
        if doc_id in self.running and stage is not None and stage.status == "completed":
            self.running.pop(doc_id)
            self.indexed += self.chunk_count(doc_id)

    def segments_indexed(self) -> int:
        """Segments indexed so far: every chunk of each completed run, one per segment
        the API added or re-indexed."""
        for doc_id, (ds_id, _) in list(self.running.items()):
            doc = self.store.docs.get(ds_id, {}).get(doc_id)
            if doc is None:
                del self.running[doc_id]
            else:
                self._credit(doc_id, self.store.stage(doc))
        return self.indexed

    def chunk_count(self, doc_id: str) -> int:
        """Chunks the document's current run split (segments added later do not make a
        finished run longer)."""
        entry = self.docs.get(doc_id)
        return entry.chunks if entry else 0

    def drop(self, doc: DocRecord) -> None:
        """The document is deleted: its segments go (its run is credited if it completed)."""
        self._credit(doc.id, self.store.stage(doc))
        self.running.pop(doc.id, None)
        entry = self.docs.pop(doc.id, None)
        for seg_id in (entry.current | entry.previous) if entry else {}:
            self.owner.pop(seg_id, None)

    def clear(self) -> None:
        self.rules.clear()
        self.docs.clear()
        self.owner.clear()
        self.running.clear()
        self.indexed = 0

    def on_status(self, doc: DocRecord, action: str, was_enabled: bool, now: float) -> None:
        """The document status routes' index tasks: disabling (and archiving an enabled
        document) disables every segment; enabling (and un-archiving an enabled one)
        enables them again."""
        if not was_enabled and action in ("archive", "un_archive"):
            return
        enable = action in ("enable", "un_archive")
        for seg in self.docs.get(doc.id, DocSegments(doc.dataset_id)).current.values():
            seg.enabled = enable
            seg.disabled_at = None if enable else now
            seg.disabled_by = None if enable else doc.disabled_by
            seg.updated_at = now

    # what the document answers show ---------------------------------------------
    def visible(self, doc: DocRecord, stage: Stage) -> dict[str, SegmentRec]:
        """The rows that exist now: the previous run's while the new one waits, none while
        it parses, the new run's from splitting on, none after a failed run."""
        entry = self.docs.get(doc.id)
        if entry is None or stage.status == "error":
            return {}
        if stage.status in ("waiting", "paused"):
            return entry.previous
        return {} if stage.status in ("parsing", "cleaning") else entry.current

    def word_count(self, doc_id: str) -> int:
        entry = self.docs.get(doc_id)
        return entry.word_count if entry else 0

    def tokens(self, doc_id: str) -> int:
        entry = self.docs.get(doc_id)
        return sum(s.tokens for s in entry.current.values()) if entry else 0

    def render(self, seg: SegmentRec, stage: Stage) -> dict[str, Any]:
        """segment_fields, plus the "summary" the service API adds. A chunk of a run still
        splitting or indexing shows that run's state (waiting/indexing, not enabled)."""
        status, enabled, keywords = "completed", seg.enabled, seg.keywords
        indexing_at = seg.indexing_at or (stage.indexing_at if seg.split else None)
        completed_at = seg.completed_at or (stage.completed_at if seg.split else None)
        if seg.split and stage.status != "completed":
            status, enabled, completed_at = (
                "waiting" if stage.status == "splitting" else "indexing"), False, None
            if stage.status == "splitting":
                keywords, indexing_at = None, None
        return {
            "id": seg.id, "position": seg.position, "document_id": seg.document_id,
            "content": seg.content, "sign_content": seg.content, "answer": seg.answer,
            "word_count": seg.word_count, "tokens": seg.tokens, "keywords": keywords,
            "index_node_id": seg.index_node_id, "index_node_hash": seg.index_node_hash,
            "hit_count": 0, "enabled": enabled, "disabled_at": _ts(seg.disabled_at),
            "disabled_by": seg.disabled_by, "status": status, "created_by": USER_ID,
            "created_at": _ts(seg.created_at), "updated_at": _ts(seg.updated_at),
            "updated_by": seg.updated_by, "indexing_at": _ts(indexing_at),
            "completed_at": _ts(completed_at) if completed_at != float("inf") else None,
            "error": None, "stopped_at": None, "child_chunks": [], "attachments": [],
            "summary": None}

    # persistence -----------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        return {"rules": self.rules, "indexed": self.indexed,
                "running": {d: list(v) for d, v in self.running.items()},
                "docs": {doc_id: {"dataset_id": e.dataset_id, "word_count": e.word_count,
                                  "chunks": e.chunks,
                                  "current": [asdict(s) for s in e.current.values()],
                                  "previous": [asdict(s) for s in e.previous.values()]}
                         for doc_id, e in self.docs.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rules = dict(state.get("rules", {}))
        self.indexed = int(state.get("indexed", 0))
        self.running = {d: (ds, None) for d, (ds, _) in state.get("running", {}).items()}
        for doc_id, raw in state.get("docs", {}).items():
            entry = DocSegments(raw["dataset_id"], _word_count=int(raw["word_count"]),
                                _chunks=int(raw["chunks"]))
            for key in ("current", "previous"):
                for seg_raw in raw[key]:
                    self._keep(getattr(entry, key), SegmentRec(**seg_raw))
            self.docs[doc_id] = entry

    # the segment routes ------------------------------------------------------------
    def _document(self, dataset_id: str, doc_id: str) -> tuple[DocRecord, Stage]:
        """The path's document (404 "Document not found." as the segment routes word it)."""
        doc = self.store.docs.get(dataset_id, {}).get(doc_id)
        if doc is None:
            raise ApiError(404, "not_found", "Document not found.")
        return doc, self.store.stage(doc)

    def _segment(self, seg_id: str) -> tuple[SegmentRec, Stage, dict[str, SegmentRec]]:
        """A segment found by id alone, in any document of the workspace, as Dify finds it:
        (record, its document's stage, the rows it lives in)."""
        doc_id = self.owner.get(seg_id)
        entry = self.docs.get(doc_id or "")
        doc = self.store.docs.get(entry.dataset_id, {}).get(doc_id or "") if entry else None
        if doc is None:
            raise ApiError(404, "not_found", "Segment not found.")
        stage = self.store.stage(doc)
        rows = self.visible(doc, stage)
        if seg_id not in rows:
            raise ApiError(404, "not_found", "Segment not found.")
        return rows[seg_id], stage, rows

    def list_segments(self, dataset_id: str, doc_id: str, page: int, limit: int,
                      keyword: str | None, statuses: list[str]) -> dict[str, Any]:
        """GET .../segments: position order, ``keyword`` a case-insensitive substring of the
        content, ``status`` any of the given (a value Postgres' enum does not know: 500);
        ``limit`` and ``page`` echoed as sent, ``has_more`` = "this page is full"."""
        with self.store.lock:
            doc, stage = self._document(dataset_id, doc_id)
            if any(s not in SEGMENT_STATUSES for s in statuses):
                raise ApiError(500, *_INTERNAL_ERROR)
            rows = [self.render(s, stage) for s in self.visible(doc, stage).values()]
            if statuses:
                rows = [r for r in rows if r["status"] in statuses]
            if keyword:
                rows = [r for r in rows if keyword.lower() in r["content"].lower()]
            number, size = _paging(page, limit)
            data = rows[(number - 1) * size:number * size]
            return {"data": data, "doc_form": doc.doc_form, "total": len(rows),
                    "has_more": len(data) == limit, "limit": limit, "page": page}

    def check_addable(self, dataset_id: str, doc_id: str) -> None:
        """What POST .../segments checks before reading the body: the document exists, is
        completed and enabled (archived documents take new segments)."""
        with self.store.lock:
            doc, stage = self._document(dataset_id, doc_id)
            if stage.status != "completed":
                raise ApiError(404, "not_found", "Document is not completed.")
            if not doc.enabled:
                raise ApiError(404, "not_found", "Document is disabled.")

    def add_segments(self, dataset_id: str, doc_id: str, payload: Any) -> dict[str, Any]:
        """POST .../segments ``{"segments": [...]}``: every item checked first, then all
        stored exactly as sent after the highest position, indexed at once."""
        with self.store.lock:
            self.check_addable(dataset_id, doc_id)
            items = validate(SegmentCreatePayload, payload).segments
            if items is None:
                raise _BareError(400, {"error": "Segments is required"})
            doc, stage = self._document(dataset_id, doc_id)
            for item in items:
                _check_item(item, doc.doc_form)
            self.docs.setdefault(doc.id, DocSegments(doc.dataset_id))
            rows = self.visible(doc, stage)
            position = max((s.position for s in rows.values()), default=0) + 1
            technique = self.store.get_dataset(dataset_id).indexing_technique
            added = [self._add(doc, rows, item, position + i, technique)
                     for i, item in enumerate(items)]
            self.indexed += len(added)
            self.store.changed()
            return {"data": [self.render(s, stage) for s in added], "doc_form": doc.doc_form}

    def _add(self, doc: DocRecord, rows: dict[str, SegmentRec], item: dict[str, Any],
             position: int, technique: str | None) -> SegmentRec:
        now = self.store.clock()
        seg = self._record(doc.dataset_id, doc.id, position, item["content"], technique, now)
        sent = item.get("keywords")
        if technique == "high_quality":
            seg.keywords = sent if sent is not None else []
        elif isinstance(sent, list) and sent:
            seg.keywords = [str(k) for k in sent]
        if doc.doc_form == "qa_model":
            seg.answer = item["answer"]
            seg.word_count += len(item["answer"])
        seg.indexing_at = seg.completed_at = now
        self._keep(rows, seg)
        self.docs[doc.id].word_count += seg.word_count
        return seg

    def segment_detail(self, dataset_id: str, doc_id: str, seg_id: str) -> dict[str, Any]:
        """GET .../segments/{seg}: ``{"data": segment, "doc_form"}`` (of the path's document;
        the segment is found by id alone)."""
        with self.store.lock:
            doc, _ = self._document(dataset_id, doc_id)
            seg, stage, _ = self._segment(seg_id)
            return {"data": self.render(seg, stage), "doc_form": doc.doc_form}

    def check_segment(self, dataset_id: str, doc_id: str, seg_id: str) -> None:
        """What POST .../segments/{seg} checks before reading the body."""
        with self.store.lock:
            self._document(dataset_id, doc_id)
            self._segment(seg_id)

    def update_segment(self, dataset_id: str, doc_id: str, seg_id: str,
                       payload: Any) -> dict[str, Any]:
        """POST .../segments/{seg} ``{"segment": {...}}``: SegmentService.update_segment."""
        with self.store.lock:
            doc, _ = self._document(dataset_id, doc_id)
            seg, stage, _ = self._segment(seg_id)
            args = validate(SegmentUpdatePayload, payload).segment
            now = self.store.clock()
            if now < seg.busy_until:
                raise ApiError(400, "invalid_param", "Segment is indexing, please try again later")
            if args.enabled is False and seg.enabled:
                seg.enabled, seg.disabled_at, seg.disabled_by = False, now, USER_ID
                seg.busy_until = now + self.store.indexing_delay_per_segment
            elif not seg.enabled and not args.enabled:
                raise ApiError(400, "invalid_param", "Can't update disabled segment")
            else:
                self._apply_update(doc, seg, args, now)
            self.store.changed()
            return {"data": self.render(seg, stage), "doc_form": doc.doc_form}

    def _apply_update(self, doc: DocRecord, seg: SegmentRec, args: SegmentUpdateArgs,
                      now: float) -> None:
        """An update of an enabled (or re-enabled) segment. Empty content keeps the old one.
        The path's document's word count moves (Dify's, even for another document's
        segment); a re-index (new content, a keyword change, or ``enabled: true``)
        re-extracts keywords on economy datasets unless some are sent."""
        old_words = seg.word_count
        content = args.content or seg.content
        economy = self.store.get_dataset(doc.dataset_id).indexing_technique != "high_quality"
        qa = doc.doc_form == "qa_model"
        if content == seg.content:
            changed = bool(args.keywords) and Counter(seg.keywords or []) != Counter(args.keywords)
            if changed:
                seg.keywords = args.keywords
            reindexed = bool(args.enabled) or changed
        else:
            seg.content, seg.index_node_hash = content, _hash(content)
            seg.tokens = 0 if economy else len(content.split())
            seg.updated_by, seg.updated_at = USER_ID, now
            seg.indexing_at = seg.completed_at = now
            reindexed = True
        if qa:
            seg.answer = args.answer
        seg.word_count = len(content) + (len(args.answer or "") if qa else 0)
        seg.enabled, seg.disabled_at, seg.disabled_by = True, None, None
        if reindexed and economy:
            seg.keywords = args.keywords or extract_keywords(content)
        self.indexed += int(reindexed)
        entry = self.docs.setdefault(doc.id, DocSegments(doc.dataset_id))
        entry.word_count = max(0, entry.word_count + seg.word_count - old_words)

    def delete_segment(self, dataset_id: str, doc_id: str, seg_id: str) -> None:
        """DELETE .../segments/{seg}: the row goes at once; the path's document's word count
        drops by its words."""
        with self.store.lock:
            doc, _ = self._document(dataset_id, doc_id)
            seg, _, rows = self._segment(seg_id)
            del rows[seg_id]
            self.owner.pop(seg_id, None)
            self.docs.setdefault(doc.id, DocSegments(doc.dataset_id)).word_count -= seg.word_count
            self.store.changed()


# ------------------------------------------------------------------- request bodies
class SegmentCreatePayload(BaseModel):
    segments: list[dict[str, Any]] | None = None


class SegmentUpdateArgs(BaseModel):
    content: str | None = None
    answer: str | None = None
    keywords: list[str] | None = None
    regenerate_child_chunks: bool = False
    enabled: bool | None = None
    attachment_ids: list[str] | None = None
    summary: str | None = None


class SegmentUpdatePayload(BaseModel):
    segment: SegmentUpdateArgs


class _BareError(ApiError):
    """An answer whose body is not Dify's error shape (the controller returns a dict)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, "", str(body))
        self._body = body

    def body(self) -> dict[str, Any]:
        return self._body


def _check_item(item: dict[str, Any], doc_form: str) -> None:
    """SegmentService.segment_create_args_validate; content that is no string (and not
    empty) fails on ``.strip()``: 500."""
    if doc_form == "qa_model":
        answer = item.get("answer")
        if not answer:
            raise ApiError(400, "invalid_param", "Answer is required")
        if not isinstance(answer, str):
            raise ApiError(500, *_INTERNAL_ERROR)
        if not answer.strip():
            raise ApiError(400, "invalid_param", "Answer is empty")
    content = item.get("content")
    if content and not isinstance(content, str):
        raise ApiError(500, *_INTERNAL_ERROR)
    if not content or not content.strip():
        raise ApiError(400, "invalid_param", "Content is empty")


__all__ = ["AUTOMATIC_RULES", "DocSegments", "SegmentBook", "SegmentRec", "SplitError",
           "clean", "extract_keywords", "parse_process_rule", "remove_leading_symbols",
           "split_document"]
