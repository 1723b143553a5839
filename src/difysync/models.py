"""Plain records that cross module boundaries: what the scanner saw, what the state
store remembers, what the server lists.

They are immutable and hold no handles, so the planner can be fed generated values and
nothing downstream can mutate what upstream produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple


class SkipCode(str, Enum):
    """Why a file is not sent: the key code branches on and ``--json`` reports; the text
    for people travels beside it."""

    UNSUPPORTED_TYPE = "unsupported_type"  # extension not in dify.allowed_extensions
    TOO_LARGE = "too_large"                # over dify.max_file_size_mb (or the server's limit)
    EMPTY = "empty"                        # 0 bytes
    UNREADABLE = "unreadable"              # permission, I/O error
    NOT_A_FILE = "not_a_regular_file"      # a symlink not followed, a device, a socket
    REFUSED = "refused_by_server"          # the server refused this very content
    QUARANTINED = "quarantined"            # indexing failed quarantine_after times
    DISABLED = "disabled_in_dify"          # someone disabled the document in Dify
    ARCHIVED = "archived_in_dify"          # ... or archived it
    NAME_HELD = "name_held"                # the document name belongs to another owner or a person

    def __str__(self) -> str:
        return self.value

    @property
    def about_the_file(self) -> bool:
        """Decided from the local file alone (its type, size, readability): no longer
        true once the file is readable and eligible again."""
        return self in _FILE_SKIPS


_FILE_SKIPS = frozenset({SkipCode.UNSUPPORTED_TYPE, SkipCode.TOO_LARGE, SkipCode.EMPTY, SkipCode.UNREADABLE,
                         SkipCode.NOT_A_FILE})


class ErrorKind(str, Enum):
    """What a file row's ``last_error`` is about, so code never reads the text."""

    WAITING = "waiting"                # the document is busy; the next pass tries again
    INDEXING_FAILED = "indexing_failed"  # Dify's own indexing of the document failed
    REQUEST_FAILED = "request_failed"  # our request failed (network, 5xx, a refusal)
    VANISHED = "vanished"              # the file went away before it could be sent

    def __str__(self) -> str:
        return self.value


class LocalFile(NamedTuple):
    """A regular file under a folder root, as the scanner saw it.

    ``sha256`` is None when the file was not hashed (refused before hashing, or a
    targeted stat-only look). A named tuple rather than a frozen dataclass: a scan of
    100k files makes 100k of these, and a tuple is built in a third of the time.
    """

    rel_path: str  # POSIX separators, relative to the folder root; may hold surrogate escapes
    size: int
    mtime_ns: int
    inode: int
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """An entry the scanner did not turn into a LocalFile, and why (never silent)."""

    rel_path: str
    reason: str
    code: SkipCode = SkipCode.UNREADABLE


@dataclass(frozen=True, slots=True)
class FileState:
    """What the state store remembers of one local file and the document it became."""

    rel_path: str
    size: int | None = None
    mtime_ns: int | None = None
    inode: int | None = None
    sha256: str | None = None  # hash of the bytes last *uploaded* (or adopted)
    document_id: str | None = None
    document_name: str | None = None
    batch: str | None = None
    indexing_status: str | None = None
    last_error: str | None = None
    skip_reason: str | None = None
    refused_sha256: str | None = None  # content the server refused terminally: not sent again
    attempts: int = 0  # consecutive failed or errored attempts for the current content
    skip_code: SkipCode | None = None
    error_kind: ErrorKind | None = None
    chunking: str | None = None  # "local": its content went as the file's own chunks (segments.py)


class Tags(NamedTuple):
    """difysync's own metadata values on a document (``difysync_path``, ``_sha256``,
    ``_owner``, ``_mtime``), as strings, the way the listing shows them; None where unset."""

    path: str | None = None
    sha256: str | None = None
    owner: str | None = None
    mtime: str | None = None


NO_TAGS = Tags()


@dataclass(frozen=True, slots=True)
class RemoteDocument:
    """One document of the remote listing, reduced to what a sync decision needs."""

    id: str
    name: str
    indexing_status: str = "completed"
    display_status: str | None = None
    enabled: bool = True
    archived: bool = False
    error: str | None = None
    size: int | None = None
    created_at: int = 0
    uploaded_at: int = 0  # when the file now behind the document was uploaded (upload_file.created_at)
    # None: the server lists no metadata at all (an old release); NO_TAGS: none of ours.
    tags: Tags | None = None
    # (field id, name, value) of values other people set on the document: kept when we write ours.
    other_metadata: tuple[tuple[str, str, str | None], ...] = ()

    @property
    def owner(self) -> str | None:
        return self.tags.owner if self.tags is not None else None

    @property
    def in_flight(self) -> bool:
        """Queued or still indexing: the server refuses new versions until it settles."""
        return self.indexing_status in IN_FLIGHT_STATUSES

    @property
    def failed(self) -> bool:
        return self.indexing_status == "error" or self.display_status == "error"


IN_FLIGHT_STATUSES = frozenset({"waiting", "parsing", "cleaning", "splitting", "indexing"})


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A remote mutation that was about to be sent and has not been settled."""

    id: int
    rel_path: str
    op: str  # a plan Kind's value: create | recreate | update | rename | delete
    document_name: str
    document_id: str | None = None
    sha256: str | None = None


class RemoteSegment(NamedTuple):
    """One segment (chunk) of a document as the server lists it."""

    id: str
    position: int
    content: str
    enabled: bool = True


class SegmentRecord(NamedTuple):
    """What the state store remembers of one segment of a locally chunked document, in
    the order of the file's chunks. ``segment_id`` and ``server_sha256`` are None until the
    server's segments are paired with the chunks (after the upload's indexing completed)."""

    chunk_sha256: str            # the local chunk it stands for
    key_sha256: str              # ... and of that chunk's content_key (see chunking.py)
    segment_id: str | None = None
    server_sha256: str | None = None  # of the content the server returned for it
