"""A whole pass's unchanged tracked files, held as columns until the listing settles them.

On a big folder almost every file is unchanged: its size, mtime and inode equal its state
row's, so its hash is the row's, and the listing will most likely find its document
settled (plan.is_settled). Held as a LocalFile and a FileState each, with their own ints
and strings, those files were most of a listing pass's memory: about 0.8 KB a file, the
peak of the daemon in a 100k-file ``git checkout`` storm and of a 1M-file
``--full-listing`` pass. Here they are columns beside the walk's (scanner.FileColumns): the
row's document id, hash, indexing status and chunking, one entry per walked file. The
listing asks about each document (``index_of_document``); a candidate it settles is only
marked, and only the candidates it does not settle become a LocalFile and a FileState again
(``unsettled``), for the planner, which would decide nothing for a settled one
(tests/test_plan.py proves that).

Pure: no I/O. The listing's pages arrive on several threads; a candidate's document comes
once, and marking it is one byte.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from .models import FileState, LocalFile
from .plan import Policy, refusal
from .scanner import FileColumns
from .state import CHUNKINGS, INDEXING_STATUSES

__all__ = ["Candidates", "Tracked"]

_NONE, _CANDIDATE, _SETTLED = 0, 1, 2
# A row's indexing status and chunking, one byte each; a row with another value stays a FileState.
_STATUSES = (None, *INDEXING_STATUSES)
_CHUNKINGS = (None, *CHUNKINGS)
_STATUS_CODE = {s: i for i, s in enumerate(_STATUSES)}
_CHUNKING_CODE = {c: i for i, c in enumerate(_CHUNKINGS)}
_SHA = 32  # bytes of a sha256, kept raw: a third of its hex string's memory


class Candidates:
    """The walked files whose plain, synced state row they still match, by walk index."""

    __slots__ = ("found", "policy", "by_path", "by_document", "document_ids", "shas", "statuses",
                 "chunkings", "state")

    def __init__(self, found: FileColumns, policy: Policy) -> None:
        # The columns are made at the first row offered: a first pass (no rows) pays nothing.
        self.found, self.policy = found, policy
        self.by_path: dict[str, int] = {}
        self.by_document: dict[str, int] = {}
        self.document_ids: list[str | None] = []
        self.shas, self.statuses, self.chunkings, self.state = bytearray(), bytearray(), bytearray(), bytearray()

    def _make_columns(self) -> None:
        n = len(self.found)
        self.by_path = {rel: i for i, rel in enumerate(self.found.paths)}
        self.document_ids = [None] * n
        self.shas = bytearray(_SHA * n)
        self.statuses, self.chunkings, self.state = bytearray(n), bytearray(n), bytearray(n)

    def take(self, rel: str, size: int | None, mtime_ns: int | None, inode: int | None, sha256: str,
             document_id: str, indexing_status: str | None, chunking: str | None) -> bool:
        """Hold a plain row (a document, a hash, no error, skip or attempt noted) as a
        candidate when its file was walked with the same size, mtime and inode and may be
        sent; False: the row stays a FileState, its file a LocalFile."""
        if not self.state and self.found.paths:
            self._make_columns()
        i = self.by_path.get(rel)
        found = self.found
        if i is None or self.state[i] or found.sizes[i] != size or found.mtimes[i] != mtime_ns \
                or found.inodes[i] != inode or refusal(rel, found.sizes[i], self.policy) is not None:
            return False
        status, chunks, raw = _STATUS_CODE.get(indexing_status), _CHUNKING_CODE.get(chunking), _raw_sha(sha256)
        if status is None or chunks is None or raw is None:
            return False
        self.document_ids[i] = document_id
        self.shas[_SHA * i:_SHA * (i + 1)] = raw
        self.statuses[i], self.chunkings[i] = status, chunks
        self.state[i] = _CANDIDATE
        self.by_document[document_id] = i
        return True

    def others(self) -> list[LocalFile]:
        """A LocalFile (unhashed) per walked file that is not a candidate, sorted by path."""
        found, state = self.found, self.state
        if not state:
            return found.to_files()
        return sorted(LocalFile(found.paths[i], found.sizes[i], found.mtimes[i], found.inodes[i])
                      for i in range(len(state)) if not state[i])

    def index_of_document(self, document_id: str) -> int | None:
        """The candidate holding this document, unless settled already."""
        i = self.by_document.get(document_id)
        return i if i is not None and self.state[i] == _CANDIDATE else None

    def index_of_path(self, rel: str) -> int | None:
        """The candidate of this path, unless settled already."""
        i = self.by_path.get(rel)
        return i if i is not None and self.state[i] == _CANDIDATE else None

    def holds(self, rel: str) -> bool:
        """Whether this path has a state row held here (settled or not)."""
        i = self.by_path.get(rel)
        return i is not None and self.state[i] != _NONE

    def file(self, i: int) -> LocalFile:
        found = self.found
        return LocalFile(found.paths[i], found.sizes[i], found.mtimes[i], found.inodes[i], self._sha(i))

    def row(self, i: int) -> FileState:
        found = self.found
        return FileState(found.paths[i], found.sizes[i], found.mtimes[i], found.inodes[i], self._sha(i),
                         self.document_ids[i], indexing_status=_STATUSES[self.statuses[i]],
                         chunking=_CHUNKINGS[self.chunkings[i]])

    def _sha(self, i: int) -> str:
        return self.shas[_SHA * i:_SHA * (i + 1)].hex()

    def settle(self, i: int) -> None:
        self.state[i] = _SETTLED

    def unsettled(self) -> Iterator[int]:
        """The candidates the listing did not settle, in walk order."""
        state = self.state
        return (i for i in range(len(state)) if state[i] == _CANDIDATE)

    def __len__(self) -> int:
        """How many candidates were taken (settled or not)."""
        return len(self.by_document)


def _raw_sha(sha256: str) -> bytes | None:
    """A hex sha256 as its 32 bytes, if they give the same string back (lower case)."""
    try:
        raw = bytes.fromhex(sha256)
    except ValueError:
        return None
    return raw if len(raw) == _SHA and raw.hex() == sha256 else None


class Tracked:
    """The paths that have a state row: the remaining FileStates' and the candidates' (an
    adoption is never certain for a file that has one)."""

    __slots__ = ("rows", "candidates")

    def __init__(self, rows: Mapping[str, FileState], candidates: Candidates | None) -> None:
        self.rows, self.candidates = rows, candidates

    def __contains__(self, rel: object) -> bool:
        if rel in self.rows:
            return True
        return self.candidates is not None and isinstance(rel, str) and self.candidates.holds(rel)
