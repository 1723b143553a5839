"""The SQLite state store: what difysync knew after its last pass, and the journal of
remote mutations in flight. The only module that speaks SQL.

Every write is one short explicit transaction; settling a journal row and updating the
file row it concerns happen in the same one, so a crash leaves either both or neither.
The file is created mode 0600 (SQLite gives its WAL files the same mode). Nothing here
ever stores the API key.

sqlite-utils creates and migrates the tables, looks at their columns, and writes the
small per-folder records (runs, marks, datasets). The per-file reads and writes stay
hand-written SQL: they run once per file of a 100k folder, in the executor's and the
listing's hot paths, and each is one statement that also settles a journal row inside
the same transaction, which sqlite-utils' record-at-a-time calls cannot express as
cheaply. ``StateBackend`` is the interface the rest of difysync uses; a second backend
would implement it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .errors import StateError, StateWriteError
from .models import ErrorKind, FileState, JournalEntry, LocalFile, SegmentRecord, SkipCode

if TYPE_CHECKING:  # pragma: no cover
    import sqlite_utils

    from .candidates import Candidates

SCHEMA_VERSION = 6

_FILE_COLUMNS = {
    "folder": str, "rel_path": str, "dataset_id": str, "size": int, "mtime_ns": int,
    "inode": int, "sha256": str, "document_id": str, "document_name": str, "batch": str,
    "indexing_status": str, "last_error": str, "skip_reason": str, "refused_sha256": str,
    "attempts": int, "updated_at": float, "synced_at": float,
}
_IN_FLIGHT_SQL = "('waiting','parsing','cleaning','splitting','indexing')"


def encode_path(rel_path: str) -> str:
    """rel_path as storable text. Paths that are not valid UTF-8 (surrogate escapes) get a
    ``//`` prefix, which no relative path can start with, and percent-encoded bytes."""
    try:
        rel_path.encode("utf-8")
        return rel_path
    except UnicodeEncodeError:
        raw = rel_path.encode("utf-8", "surrogateescape")
        return "//" + urllib.parse.quote_from_bytes(raw, safe="/")


def decode_path(stored: str) -> str:
    if stored.startswith("//"):
        return urllib.parse.unquote_to_bytes(stored[2:]).decode("utf-8", "surrogateescape")
    return stored


@dataclass(frozen=True, slots=True)
class FolderSummary:
    folder: str
    dataset_id: str | None
    synced: int
    pending: int
    indexing: int
    error: int
    skipped: int
    last_full_reconcile: float | None
    last_full_listing: float | None  # the last pass that listed the whole dataset (not a probe)
    journal: int
    last_attempt: float | None = None  # the last whole pass, whatever its outcome
    last_attempt_ok: bool | None = None
    last_attempt_error: str | None = None  # why it failed or was refused


@dataclass(frozen=True, slots=True)
class ProblemFile:
    folder: str
    rel_path: str
    kind: str  # "error" | "skipped"
    reason: str
    code: str | None = None  # the SkipCode or ErrorKind value beside the text


@dataclass(frozen=True, slots=True)
class FileDetail:
    """All the state DB holds about one file (``status PATH``): its row, the dataset it
    went into, when it was last written and last uploaded, and its segment records."""

    folder: str
    dataset_id: str | None
    row: FileState
    updated_at: float | None
    synced_at: float | None
    segments: int


@dataclass(frozen=True, slots=True)
class JournalNote:
    """A journal row about one path: an intent sent (or about to be) and not settled."""

    op: str
    started_at: float | None
    document_id: str | None
    document_name: str | None


class KnownMetadata(NamedTuple):
    """What was learnt of a dataset's metadata API: whether it has one, difysync's field
    ids there (name -> id), and when that was checked."""

    supported: bool
    fields: dict[str, str]
    checked_at: float
    merges: bool | None = None  # the server merges writes (partial_update); None: not known yet


class InFlight(NamedTuple):
    """A document the state says is queued or indexing, with the batch its upload got."""

    folder: str
    rel_path: str
    document_id: str
    batch: str | None


class PendingDocument(NamedTuple):
    """A document whose recorded indexing status is neither completed nor error, with the
    dataset its row was synced into (what ``status --refresh`` asks Dify about)."""

    dataset_id: str
    item: InFlight


@dataclass(frozen=True, slots=True)
class Settled:
    """What one upload the server accepted (or a document adopted) leaves in a file row."""

    rel_path: str
    document_id: str
    document_name: str
    batch: str | None
    sha256: str | None
    size: int | None
    mtime_ns: int | None
    inode: int | None
    indexing_status: str | None
    attempts: int = 0
    chunking: str | None = None             # "local": sent as the file's own chunks
    segments: Sequence[SegmentRecord] | None = None  # None: leave the recorded ones


class Skip(NamedTuple):
    """A file refused before sending: recorded so that ``status`` can say why."""

    file: LocalFile | None
    rel_path: str
    reason: str
    code: SkipCode


class StateBackend(Protocol):
    """What the rest of difysync asks of a state store; ``StateStore`` (SQLite) is the one
    backend. Every write is atomic on its own, and every write to a folder's rows or
    journal drops that folder's clean-pass mark in the same transaction (marks.py)."""

    # reads
    def load_folder(self, folder: str, seen: Mapping[str, LocalFile] | None = None,
                    unchanged: Candidates | None = None) -> dict[str, FileState]:
        """Every row of a folder, by relative path (but those ``unchanged`` takes)."""
    def load_paths(self, folder: str, rel_paths: Iterable[str]) -> dict[str, FileState]:
        """The rows of these paths and of everything below them."""
    def count_tracked(self, folder: str) -> int:
        """Rows that hold a document."""
    def pending_journal(self, folder: str) -> list[JournalEntry]:
        """Intents sent (or about to be) and not settled, oldest first."""
    def in_flight(self, folder: str | None = None) -> list[InFlight]:
        """Documents the state says are queued or indexing."""
    def summaries(self) -> list[FolderSummary]: ...
    def problems(self) -> list[ProblemFile]: ...

    # the journal and settling: one transaction each
    def journal_begin(self, folder: str, dataset_id: str, op: str, rel_path: str,
                      document_name: str | None, document_id: str | None = None,
                      sha256: str | None = None) -> int:
        """Record an intent before its request is sent; returns the row to settle."""
    def journal_begin_many(self, folder: str, dataset_id: str, op: str,
                           items: Iterable[tuple[str, str | None, str | None, str | None]]) -> list[int]: ...
    def clear_journal(self, ids: Iterable[int]) -> None:
        """Drop intents a pass resolved."""
    def settle_upload(self, journal_id: int | None, folder: str, dataset_id: str, rel_path: str, *,
                      document_id: str, document_name: str, batch: str | None, sha256: str | None,
                      size: int | None, mtime_ns: int | None, inode: int | None,
                      indexing_status: str | None, attempts: int = 0, chunking: str | None = None,
                      segments: Sequence[SegmentRecord] | None = None) -> None: ...
    def settle_uploads(self, journal_id: int | None, folder: str, dataset_id: str,
                       uploads: Sequence[Settled]) -> None: ...
    def segments(self, document_id: str) -> tuple[SegmentRecord, ...]:
        """The records of a locally chunked document's segments, in chunk order."""
    def settle_segments(self, journal_ids: Sequence[int], folder: str, document_id: str,
                        segments: Sequence[SegmentRecord]) -> None: ...
    def settle_removal(self, journal_id: int | None, folder: str, rel_path: str) -> None: ...
    def settle_failure(self, journal_id: int | None, folder: str, dataset_id: str, rel_path: str,
                       error: str, kind: ErrorKind, *, refused_sha256: str | None = None,
                       skip: SkipCode | None = None) -> None: ...

    # notes on files
    def record_skips(self, folder: str, dataset_id: str, skips: Iterable[Skip]) -> None: ...
    def record_waiting(self, folder: str, waits: Iterable[tuple[str, str]]) -> None: ...
    def update_stats(self, folder: str, files: Iterable[LocalFile]) -> None: ...
    def refresh_statuses(self, folder: str, statuses: Mapping[str, tuple[str, str | None]]) -> None: ...
    def retry(self, folder: str | None = None, rel_path: str | None = None) -> int: ...

    # per folder
    def record_run(self, folder: str, kind: str, started_at: float, ok: bool,
                   summary: Mapping[str, Any]) -> None: ...
    def known_dataset(self, folder: str, dataset_name: str) -> str | None: ...
    def remember_dataset(self, folder: str, dataset_name: str, dataset_id: str) -> None: ...
    def forget_dataset(self, folder: str) -> None: ...
    def known_metadata(self, dataset_id: str) -> KnownMetadata | None: ...
    def remember_metadata(self, dataset_id: str, supported: bool, fields: Mapping[str, str]) -> None: ...
    def remember_merges(self, dataset_id: str, merges: bool) -> None: ...
    def dataset_of(self, folder: str) -> str | None: ...
    def load_mark(self, folder: str, dataset_id: str) -> str | None: ...
    def save_mark(self, folder: str, dataset_id: str, body: str) -> None: ...
    def close(self) -> None: ...


class StateStore:
    """One SQLite file; open read-only for ``status`` while the daemon writes (WAL)."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                if not self.path.exists():
                    raise StateError(f"state DB {self.path} does not exist yet: run `difysync reconcile` first")
                conn = sqlite3.connect(f"file:{urllib.parse.quote(str(self.path))}?mode=ro", uri=True,
                                       check_same_thread=False)
            else:
                self._create_private(self.path)
                conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 5000")
            self.conn = conn
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state DB {self.path} is unusable ({exc}): move it aside and run "
                             f"`difysync rebuild-state`") from None
        except OSError as exc:
            raise StateError(f"state DB {self.path} cannot be opened: {exc.strerror or exc}") from None

    @cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for creating tables and upserting rows.
        Imported on first use: a quiet pass reads with plain SQL, and sqlite-utils (with
        its plugins and dateutil) is 40 ms of start-up."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    @staticmethod
    def _create_private(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        if (path.stat().st_mode & 0o777) != 0o600:
            os.chmod(path, 0o600)
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists() and (side.stat().st_mode & 0o777) != 0o600:
                os.chmod(side, 0o600)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction. SQLite's own failures (disk full, I/O error, a
        lock held too long) become StateWriteError: the caller backs off, nothing is
        half-written."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _write_error(self.path, exc) from None
        try:
            yield conn
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _write_error(self.path, exc) from None
        except BaseException:
            _rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise _write_error(self.path, exc) from None

    # --- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._schema_version()
        if version > SCHEMA_VERSION:
            raise StateError(f"state DB {self.path} was written by a newer difysync (schema {version}, "
                             f"this one knows {SCHEMA_VERSION}): upgrade difysync")
        if self.readonly:
            # Readers take an older schema as it is (a reader cannot migrate): what it
            # lacks reads as empty (see _files_source).
            if version < 1:
                raise StateError(f"state DB {self.path} has no current schema yet: run `difysync reconcile` first")
            self._files_source = _files_source(set(self.db["files"].columns_dict))
            return
        if version < 1:
            self._migration_1_initial()
        if version < 2:
            self._migration_2_marks()
        if version < 3:
            self._migration_3_codes_and_datasets()
        if version < 4:
            self._migration_4_metadata_fields()
        if version < 5:
            self._migration_5_segments()
        if version < 6:
            self._migration_6_dataset_names()
        self._files_source = "files"

    def _schema_version(self) -> int:
        if "meta" not in self._tables():
            return 0
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migration_1_initial(self) -> None:
        with self.transaction():
            self.db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            self.db["files"].create(_FILE_COLUMNS, pk=("folder", "rel_path"), if_not_exists=True,
                                    defaults={"attempts": 0})
            self.db["files"].create_index(["folder", "document_id"], if_not_exists=True)
            self.db["journal"].create({
                "id": int, "folder": str, "dataset_id": str, "op": str, "rel_path": str,
                "document_name": str, "document_id": str, "sha256": str, "started_at": float,
            }, pk="id", if_not_exists=True)
            self.db["runs"].create({
                "folder": str, "kind": str, "started_at": float, "finished_at": float,
                "ok": int, "summary": str,
            }, pk=("folder", "kind"), if_not_exists=True)
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '1')")

    def _migration_2_marks(self) -> None:
        with self.transaction():
            self.db["marks"].create({"folder": str, "dataset_id": str, "taken_at": float, "body": str},
                                    pk="folder", if_not_exists=True)
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '2')")

    def _migration_3_codes_and_datasets(self) -> None:
        """Reasons and error states as codes beside their texts; the datasets found by name."""
        with self.transaction():
            files = self.db["files"]
            for column in ("skip_code", "error_kind"):
                if column not in files.columns_dict:
                    files.add_column(column, str)
            # Rows written before the codes existed are classified from their texts,
            # once, here; nothing else ever reads the texts.
            self.conn.execute("UPDATE files SET error_kind = CASE "
                            "WHEN last_error LIKE 'waiting%' THEN 'waiting' "
                            "WHEN last_error LIKE 'indexing failed%' THEN 'indexing_failed' "
                            "ELSE 'request_failed' END WHERE last_error IS NOT NULL AND error_kind IS NULL")
            self.conn.execute("UPDATE files SET skip_code = CASE "
                            "WHEN refused_sha256 IS NOT NULL THEN 'refused_by_server' "
                            "WHEN skip_reason LIKE 'quarantined%' THEN 'quarantined' "
                            "ELSE 'unreadable' END WHERE skip_reason IS NOT NULL AND skip_code IS NULL")
            self.db["datasets"].create({"folder": str, "dataset_name": str, "dataset_id": str,
                                        "resolved_at": float}, pk="folder", if_not_exists=True)
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '3')")

    def _migration_4_metadata_fields(self) -> None:
        """Per dataset: whether it has a metadata API, and the ids of difysync's fields."""
        with self.transaction():
            self.db["metadata"].create({"dataset_id": str, "supported": int, "fields": str, "checked_at": float,
                                        "merges": int}, pk="dataset_id", if_not_exists=True)
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '4')")

    def _migration_5_segments(self) -> None:
        """Locally chunked documents: how each file's content was split when it was sent
        (``files.chunking``), and the records of its segments, in chunk order."""
        with self.transaction():
            files = self.db["files"]
            if "chunking" not in files.columns_dict:
                files.add_column("chunking", str)
            self.db["segments"].create({"document_id": str, "idx": int, "chunk_sha256": str, "key_sha256": str,
                                        "segment_id": str, "server_sha256": str},
                                       pk=("document_id", "idx"), if_not_exists=True)
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '5')")

    def _migration_6_dataset_names(self) -> None:
        """The name each dataset had when difysync last saw it, so that ``status`` shows
        names, not ids, also for a folder configured by ``dataset_id``."""
        with self.transaction():
            self.db["dataset_names"].create({"dataset_id": str, "name": str, "seen_at": float},
                                            pk="dataset_id", if_not_exists=True)
            self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', '6')")

    # --- reads ------------------------------------------------------------------------

    def load_folder(self, folder: str, seen: Mapping[str, LocalFile] | None = None,
                    unchanged: Candidates | None = None) -> dict[str, FileState]:
        """Every row of a folder, loaded in one query (a pass compares against it in memory).

        ``seen`` (the scan, by path) lets a row share the path, size, mtime and inode
        objects of its file where they are equal: on a 100k folder that is one copy of
        each instead of two. ``unchanged`` (a listing pass's candidates.Candidates) takes
        the plain rows of unchanged files as columns instead: those never become FileStates
        unless the listing leaves them unsettled."""
        # The name and batch are left out: a pass derives names from paths and never needs
        # the batch, and on a 100k folder the two would cost ~20 MB of strings.
        cursor = self.conn.execute(
            "SELECT rel_path, size, mtime_ns, inode, sha256, document_id, NULL, NULL, "
            "indexing_status, last_error, skip_reason, refused_sha256, attempts, skip_code, error_kind, "
            "chunking FROM files WHERE folder = ?", [folder])
        if unchanged is not None:
            return _rows_beside(cursor, unchanged)
        if not seen:
            return {state.rel_path: state for state in map(_file_state, cursor)}
        out = {}
        for r in cursor:  # one FileState per row (a frozen dataclass: a tenth of a big folder's load each)
            rel = decode_path(r[0])
            f = seen.get(rel)
            if f is None:
                out[rel] = _file_state(r, rel)
                continue
            size, mtime_ns, inode = r[1], r[2], r[3]
            out[f.rel_path] = _file_state(r, f.rel_path, f.size if f.size == size else size,
                                          f.mtime_ns if f.mtime_ns == mtime_ns else mtime_ns,
                                          f.inode if f.inode == inode else inode)
        return out

    def load_paths(self, folder: str, rel_paths: Iterable[str]) -> dict[str, FileState]:
        """Rows of these paths and of everything below them (a path may be a directory
        that was moved or deleted as a whole)."""
        out: dict[str, FileState] = {}
        columns = ("SELECT rel_path, size, mtime_ns, inode, sha256, document_id, document_name, batch, "
                   "indexing_status, last_error, skip_reason, refused_sha256, attempts, skip_code, "
                   "error_kind, chunking FROM files ")
        for rel in rel_paths:
            key = encode_path(rel)
            # Children sort between "dir/" and "dir0" ("0" follows "/" in code points).
            cursor = self.conn.execute(columns + "WHERE folder = ? AND (rel_path = ? OR "
                                     "(rel_path >= ? AND rel_path < ?))",
                                     [folder, key, key + "/", key + "0"])
            for r in cursor:
                state = _file_state(r)
                out[state.rel_path] = state
        return out

    def document_paths(self, folder: str) -> dict[str, str]:
        """document id -> the relative path of the file the folder's row says it holds."""
        return {r[0]: decode_path(r[1]) for r in self.conn.execute(
            "SELECT document_id, rel_path FROM files WHERE folder = ? AND document_id IS NOT NULL", [folder])}

    def has_path(self, folder: str, rel_path: str) -> bool:
        """The folder has a row for this path, or for files below it."""
        key = encode_path(rel_path)
        return self.conn.execute("SELECT 1 FROM files WHERE folder = ? AND (rel_path = ? OR (rel_path >= ? AND "
                               "rel_path < ?)) LIMIT 1", [folder, key, key + "/", key + "0"]).fetchone() is not None

    def count_tracked(self, folder: str) -> int:
        return self.conn.execute("SELECT count(*) FROM files WHERE folder = ? AND document_id IS NOT NULL",
                               [folder]).fetchone()[0]

    def pending_journal(self, folder: str) -> list[JournalEntry]:
        """The folder's unsettled intents, oldest first (a pass plans with them)."""
        rows = self.conn.execute(
            "SELECT id, rel_path, op, document_name, document_id, sha256 FROM journal "
            "WHERE folder = ? ORDER BY id", [folder]).fetchall()
        return [JournalEntry(id=r[0], rel_path=decode_path(r[1]), op=r[2], document_name=r[3],
                             document_id=r[4], sha256=r[5]) for r in rows]

    def in_flight(self, folder: str | None = None) -> list[InFlight]:
        """Documents still queued or indexing, with their batches (what the poller asks about)."""
        sql = ("SELECT folder, rel_path, document_id, batch FROM files WHERE document_id IS NOT NULL "
               f"AND indexing_status IN {_IN_FLIGHT_SQL}")
        args: list[Any] = []
        if folder is not None:
            sql += " AND folder = ?"
            args.append(folder)
        return [InFlight(r[0], decode_path(r[1]), r[2], r[3]) for r in self.conn.execute(sql, args)]

    # --- journal ----------------------------------------------------------------------

    def journal_begin(self, folder: str, dataset_id: str, op: str, rel_path: str,
                      document_name: str | None, document_id: str | None = None,
                      sha256: str | None = None) -> int:
        """Write the intent before the request is sent; returns the row to settle."""
        with self.transaction() as conn:
            _unmark(conn, folder)
            cur = conn.execute(
                "INSERT INTO journal (folder, dataset_id, op, rel_path, document_name, document_id, "
                "sha256, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [folder, dataset_id, op, encode_path(rel_path), document_name, document_id, sha256,
                 time.time()])
            return int(cur.lastrowid or 0)

    def journal_begin_many(self, folder: str, dataset_id: str, op: str,
                           items: Iterable[tuple[str, str | None, str | None, str | None]]) -> list[int]:
        """``journal_begin`` for a batch sent as one request: (rel_path, document name,
        document id, sha256) each; one transaction, one row each."""
        ids = []
        with self.transaction() as conn:
            _unmark(conn, folder)
            for rel, name, document_id, sha in items:
                cur = conn.execute(
                    "INSERT INTO journal (folder, dataset_id, op, rel_path, document_name, document_id, "
                    "sha256, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [folder, dataset_id, op, encode_path(rel), name, document_id, sha, time.time()])
                ids.append(int(cur.lastrowid or 0))
        return ids

    def clear_journal(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        with self.transaction() as conn:
            conn.executemany("DELETE FROM journal WHERE id = ?", [(i,) for i in ids])

    # --- settling ---------------------------------------------------------------------

    def settle_upload(self, journal_id: int | None, folder: str, dataset_id: str, rel_path: str, *,
                      document_id: str, document_name: str, batch: str | None, sha256: str | None,
                      size: int | None, mtime_ns: int | None, inode: int | None,
                      indexing_status: str | None, attempts: int = 0, chunking: str | None = None,
                      segments: Sequence[SegmentRecord] | None = None) -> None:
        """The server accepted an upload (create, update, rename, adopt): record what it holds.
        ``chunking`` is "local" when it went as the file's own chunks; ``segments`` (None:
        leave them) are then the records of its segments, replacing any before."""
        self.settle_uploads(journal_id, folder, dataset_id, [Settled(
            rel_path, document_id=document_id, document_name=document_name, batch=batch, sha256=sha256,
            size=size, mtime_ns=mtime_ns, inode=inode, indexing_status=indexing_status, attempts=attempts,
            chunking=chunking, segments=segments)])

    def settle_uploads(self, journal_id: int | None, folder: str, dataset_id: str,
                       uploads: Sequence[Settled]) -> None:
        """``settle_upload`` for many files in one transaction (the adoptions of a first
        pass over a synced tree: one commit per file made them a third of its time)."""
        now = time.time()
        with self.transaction() as conn:
            _unmark(conn, folder)
            for u in uploads:
                _record_upload(conn, folder, dataset_id, u, now)
            if journal_id is not None:
                conn.execute("DELETE FROM journal WHERE id = ?", [journal_id])

    def segments(self, document_id: str) -> tuple[SegmentRecord, ...]:
        """The records of a locally chunked document's segments, in chunk order."""
        rows = self.conn.execute("SELECT chunk_sha256, key_sha256, segment_id, server_sha256 FROM segments "
                               "WHERE document_id = ? ORDER BY idx", [document_id]).fetchall()
        return tuple(SegmentRecord(*r) for r in rows)

    def settle_segments(self, journal_ids: Sequence[int], folder: str, document_id: str,
                        segments: Sequence[SegmentRecord]) -> None:
        """Segment requests done (all, or the ones that were): the records now say what
        the server holds; their intents are closed."""
        with self.transaction() as conn:
            _unmark(conn, folder)
            conn.execute("DELETE FROM segments WHERE document_id = ?", [document_id])
            _insert_segments(conn, document_id, segments)
            conn.executemany("DELETE FROM journal WHERE id = ?", [(i,) for i in journal_ids])

    def settle_removal(self, journal_id: int | None, folder: str, rel_path: str) -> None:
        """The document is gone (deleted by us, or found gone): drop the row with the intent."""
        with self.transaction() as conn:
            _unmark(conn, folder)
            _drop_segments(conn, folder, rel_path, None)
            conn.execute("DELETE FROM files WHERE folder = ? AND rel_path = ?",
                         [folder, encode_path(rel_path)])
            if journal_id is not None:
                conn.execute("DELETE FROM journal WHERE id = ?", [journal_id])

    def settle_failure(self, journal_id: int | None, folder: str, dataset_id: str, rel_path: str,
                       error: str, kind: ErrorKind, *, refused_sha256: str | None = None,
                       skip: SkipCode | None = None) -> None:
        """A request did not succeed: keep the file row, note why (``kind`` for code,
        ``error`` for people), close the intent. With ``skip`` the file is also recorded
        as refused, with ``error`` as the reason."""
        now = time.time()
        with self.transaction() as conn:
            _unmark(conn, folder)
            conn.execute(
                "INSERT INTO files (folder, rel_path, dataset_id, last_error, error_kind, skip_reason, "
                "skip_code, refused_sha256, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (folder, rel_path) DO UPDATE SET last_error = excluded.last_error, "
                "error_kind = excluded.error_kind, "
                "skip_reason = COALESCE(excluded.skip_reason, files.skip_reason), "
                "skip_code = COALESCE(excluded.skip_code, files.skip_code), "
                "refused_sha256 = COALESCE(excluded.refused_sha256, files.refused_sha256), "
                "updated_at = excluded.updated_at",
                [folder, encode_path(rel_path), dataset_id, error, kind.value,
                 error if skip is not None else None, skip.value if skip is not None else None,
                 refused_sha256, now])
            if journal_id is not None:
                conn.execute("DELETE FROM journal WHERE id = ?", [journal_id])

    def record_skips(self, folder: str, dataset_id: str, skips: Iterable[Skip]) -> None:
        """Files refused before sending, with why. Visible in ``status``."""
        now = time.time()
        rows = [[folder, encode_path(s.rel_path), dataset_id, s.file.size if s.file else None,
                 s.file.mtime_ns if s.file else None, s.file.inode if s.file else None, s.reason,
                 s.code.value, now] for s in skips]
        if not rows:
            return
        with self.transaction() as conn:
            _unmark(conn, folder)
            conn.executemany(
                "INSERT INTO files (folder, rel_path, dataset_id, size, mtime_ns, inode, skip_reason, "
                "skip_code, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (folder, rel_path) "
                # A row that holds an uploaded version keeps that version's stat: its size,
                # mtime and inode vouch for its sha256, and the refused file is not that.
                "DO UPDATE SET skip_reason = excluded.skip_reason, skip_code = excluded.skip_code, "
                "size = CASE WHEN files.sha256 IS NULL THEN excluded.size ELSE files.size END, "
                "mtime_ns = CASE WHEN files.sha256 IS NULL THEN excluded.mtime_ns ELSE files.mtime_ns END, "
                "inode = CASE WHEN files.sha256 IS NULL THEN excluded.inode ELSE files.inode END, "
                "updated_at = excluded.updated_at",
                rows)

    def record_waiting(self, folder: str, waits: Iterable[tuple[str, str]]) -> None:
        """(rel_path, why) of existing rows whose document is busy: the next pass tries again."""
        rows = [(why, folder, encode_path(rel)) for rel, why in waits]
        if rows:
            with self.transaction() as conn:
                _unmark(conn, folder)
                conn.executemany("UPDATE files SET last_error = ?, error_kind = 'waiting' "
                                 "WHERE folder = ? AND rel_path = ?", rows)

    def update_stats(self, folder: str, files: Iterable[LocalFile]) -> None:
        """Content proved unchanged (same hash) but stat moved: remember the new stat so the
        next pass does not hash it again."""
        rows = [(f.size, f.mtime_ns, f.inode, folder, encode_path(f.rel_path)) for f in files]
        if rows:
            with self.transaction() as conn:
                _unmark(conn, folder)
                conn.executemany("UPDATE files SET size = ?, mtime_ns = ?, inode = ?, skip_reason = NULL, "
                                 "skip_code = NULL WHERE folder = ? AND rel_path = ?", rows)

    def refresh_statuses(self, folder: str, statuses: Mapping[str, tuple[str, str | None]]) -> None:
        """Copy indexing status (and error text) from the server onto the rows that hold
        the documents; a completed document clears its attempt count, and a note about
        waiting or a failed indexing goes once the status moves on."""
        rows = [(status, error, document_id, folder)
                for document_id, (status, error) in statuses.items()]
        if rows:
            with self.transaction() as conn:
                _unmark(conn, folder)
                conn.executemany(_REFRESH_SQL, rows)

    def record_refreshed(self, folder: str, statuses: Mapping[str, tuple[str, str | None]],
                         batches: Mapping[str, str | None]) -> int:
        """``refresh_statuses`` for what ``status --refresh`` learnt, written only where
        the row still holds the upload that was asked about (same batch): a pass that
        sent a new version meanwhile is not overwritten with the old one's status.
        Returns how many rows changed."""
        rows = [(status, error, document_id, folder, batches.get(document_id))
                for document_id, (status, error) in statuses.items()]
        if not rows:
            return 0
        with self.transaction() as conn:
            changed = 0
            for row in rows:
                changed += conn.execute(_REFRESH_SQL + " AND batch IS ?5", row).rowcount
            if changed:
                _unmark(conn, folder)
            return changed

    def retry(self, folder: str | None = None, rel_path: str | None = None) -> int:
        """Lift quarantine and refusals so the next pass tries again; returns how many
        files that re-enables. Skips the file itself decides (its type, size, emptiness,
        readability) are judged again by every pass anyway: nothing to lift, not counted."""
        sql = ("UPDATE files SET refused_sha256 = NULL, attempts = 0, skip_reason = NULL, skip_code = NULL, "
               "last_error = NULL, error_kind = NULL "
               "WHERE (refused_sha256 IS NOT NULL OR attempts > 0 OR skip_code IN "
               f"('{SkipCode.REFUSED.value}', '{SkipCode.QUARANTINED.value}'))")
        args: list[Any] = []
        if folder is not None:
            sql += " AND folder = ?"
            args.append(folder)
        if rel_path is not None:
            key = encode_path(rel_path)
            sql += " AND (rel_path = ? OR (rel_path >= ? AND rel_path < ?))"  # a file, or a directory's files
            args.extend([key, key + "/", key + "0"])
        with self.transaction() as conn:
            _unmark(conn, folder)
            return conn.execute(sql, args).rowcount

    def record_run(self, folder: str, kind: str, started_at: float, ok: bool,
                   summary: Mapping[str, Any]) -> None:
        # Every column of the row is given, so a replace is the upsert; plain SQL keeps
        # sqlite-utils out of a quiet pass, which writes only this.
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO runs (folder, kind, started_at, finished_at, ok, summary) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         [folder, kind, started_at, time.time(), int(ok), json.dumps(dict(summary))])

    # --- the datasets found by name -----------------------------------------------------

    def known_dataset(self, folder: str, dataset_name: str) -> str | None:
        """The id this folder's dataset name was resolved to before, if it still has that name."""
        row = self.conn.execute("SELECT dataset_id FROM datasets WHERE folder = ? AND dataset_name = ?",
                              [folder, dataset_name]).fetchone()
        return row[0] if row else None

    def remember_dataset(self, folder: str, dataset_name: str, dataset_id: str) -> None:
        with self.transaction():
            now = time.time()
            self.db["datasets"].upsert({"folder": folder, "dataset_name": dataset_name, "dataset_id": dataset_id,
                                        "resolved_at": now}, pk="folder")
            self.db["dataset_names"].upsert({"dataset_id": dataset_id, "name": dataset_name, "seen_at": now},
                                            pk="dataset_id")

    def remember_dataset_names(self, names: Mapping[str, str]) -> None:
        """dataset id -> the name Dify lists it under now (``status --refresh``)."""
        if names:
            now = time.time()
            with self.transaction():
                self.db["dataset_names"].upsert_all(
                    [{"dataset_id": i, "name": n, "seen_at": now} for i, n in names.items()], pk="dataset_id")

    def dataset_names(self) -> dict[str, str]:
        """dataset id -> the name it had when difysync last saw it (empty before schema 6)."""
        if "dataset_names" not in self._tables():
            return {}
        return dict(self.conn.execute("SELECT dataset_id, name FROM dataset_names").fetchall())

    def forget_dataset(self, folder: str) -> None:
        """The remembered id answered "dataset not found": resolve the name again."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM datasets WHERE folder = ?", [folder])

    def dataset_of(self, folder: str) -> str | None:
        """The dataset the folder's rows were synced into (for a service that has not
        resolved its dataset yet in this run)."""
        row = self.conn.execute("SELECT max(dataset_id) FROM files WHERE folder = ?", [folder]).fetchone()
        return row[0] if row else None

    # --- each dataset's metadata fields --------------------------------------------------

    def known_metadata(self, dataset_id: str) -> KnownMetadata | None:
        row = self.conn.execute("SELECT supported, fields, checked_at, merges FROM metadata WHERE dataset_id = ?",
                              [dataset_id]).fetchone()
        if row is None:
            return None
        return KnownMetadata(bool(row[0]), json.loads(row[1] or "{}"), row[2],
                             None if row[3] is None else bool(row[3]))

    def remember_metadata(self, dataset_id: str, supported: bool, fields: Mapping[str, str]) -> None:
        with self.transaction():
            self.db["metadata"].upsert({"dataset_id": dataset_id, "supported": int(supported),
                                        "fields": json.dumps(dict(fields)), "checked_at": time.time()},
                                       pk="dataset_id")

    def remember_merges(self, dataset_id: str, merges: bool) -> None:
        """Whether the server merges a metadata write (honours partial_update)."""
        with self.transaction() as conn:
            conn.execute("UPDATE metadata SET merges = ? WHERE dataset_id = ?", [int(merges), dataset_id])

    # --- clean-pass marks (see marks.py) ----------------------------------------------

    def load_mark(self, folder: str, dataset_id: str) -> str | None:
        row = self.conn.execute("SELECT body FROM marks WHERE folder = ? AND dataset_id = ?",
                              [folder, dataset_id]).fetchone()
        return row[0] if row else None

    def save_mark(self, folder: str, dataset_id: str, body: str) -> None:
        """Written last by a pass that changed nothing; any later write to the folder's
        rows or journal drops it (``_unmark``), so a mark always describes the state."""
        with self.transaction():
            self.db["marks"].upsert({"folder": folder, "dataset_id": dataset_id, "taken_at": time.time(),
                                     "body": body}, pk="folder")

    # --- status -----------------------------------------------------------------------

    def summaries(self) -> list[FolderSummary]:
        out = []
        files = self._files_source
        folders = [r[0] for r in self.conn.execute(
            "SELECT folder FROM files UNION SELECT folder FROM runs UNION SELECT folder FROM journal "
            "ORDER BY 1")]
        for folder in folders:
            counts = self.conn.execute(
                "SELECT "
                "sum(document_id IS NOT NULL AND indexing_status = 'completed' AND skip_reason IS NULL), "
                "sum(document_id IS NOT NULL AND (indexing_status = 'waiting')), "
                "sum(document_id IS NOT NULL AND indexing_status IN "
                "    ('parsing','cleaning','splitting','indexing')), "
                "sum(last_error IS NOT NULL AND skip_reason IS NULL AND error_kind IS NOT 'waiting' AND "
                f"    (indexing_status IS NULL OR indexing_status NOT IN {_IN_FLIGHT_SQL})), "
                f"sum(skip_reason IS NOT NULL), max(dataset_id) FROM {files} WHERE folder = ?",
                [folder]).fetchone()
            run = self.conn.execute("SELECT finished_at FROM runs WHERE folder = ? AND kind = 'full' AND ok",
                                  [folder]).fetchone()
            attempt = self.conn.execute("SELECT finished_at, ok, summary FROM runs WHERE folder = ? AND "
                                      "kind = 'attempt'", [folder]).fetchone()
            listed = self.conn.execute("SELECT finished_at FROM runs WHERE folder = ? AND kind = 'listing' AND ok",
                                     [folder]).fetchone()
            journal = self.conn.execute("SELECT count(*) FROM journal WHERE folder = ?", [folder]).fetchone()[0]
            out.append(FolderSummary(folder=folder, dataset_id=counts[5], synced=counts[0] or 0,
                                     pending=counts[1] or 0, indexing=counts[2] or 0,
                                     error=counts[3] or 0, skipped=counts[4] or 0,
                                     last_full_reconcile=run[0] if run else None,
                                     last_full_listing=listed[0] if listed else None, journal=journal,
                                     **_attempt_fields(attempt)))
        return out

    def problems(self) -> list[ProblemFile]:
        rows = self.conn.execute(
            "SELECT folder, rel_path, skip_reason, last_error, skip_code, error_kind "
            f"FROM {self._files_source} WHERE skip_reason IS NOT NULL OR "
            "(last_error IS NOT NULL AND error_kind IS NOT 'waiting') ORDER BY folder, rel_path").fetchall()
        out = []
        for folder, rel, skip, error, skip_code, error_kind in rows:
            if skip:
                out.append(ProblemFile(folder, decode_path(rel), "skipped", skip, skip_code))
            else:
                out.append(ProblemFile(folder, decode_path(rel), "error", error, error_kind))
        return out

    def file_detail(self, folder: str, rel_path: str) -> FileDetail | None:
        """The folder's row for this path, whole, or None."""
        cursor = self.conn.execute(
            "SELECT rel_path, size, mtime_ns, inode, sha256, document_id, document_name, batch, "
            "indexing_status, last_error, skip_reason, refused_sha256, attempts, skip_code, error_kind, "
            f"chunking, dataset_id, updated_at, synced_at FROM {self._files_source} "
            "WHERE folder = ? AND rel_path = ?", [folder, encode_path(rel_path)])
        r = cursor.fetchone()
        if r is None:
            return None
        segments = 0
        if r[5] and "segments" in self._tables():
            segments = self.conn.execute("SELECT count(*) FROM segments WHERE document_id = ?", [r[5]]).fetchone()[0]
        return FileDetail(folder=folder, dataset_id=r[16], row=_file_state(r[:16]), updated_at=r[17],
                          synced_at=r[18], segments=segments)

    def paths_under(self, folder: str, rel_path: str) -> list[str]:
        """The folder's recorded paths below this directory, sorted."""
        key = encode_path(rel_path).rstrip("/")
        return [decode_path(r[0]) for r in self.conn.execute(
            "SELECT rel_path FROM files WHERE folder = ? AND rel_path >= ? AND rel_path < ? ORDER BY rel_path",
            [folder, key + "/", key + "0"])]

    def last_journal(self, folder: str, rel_path: str) -> JournalNote | None:
        """The newest unsettled journal row about this path, if any."""
        row = self.conn.execute("SELECT op, started_at, document_id, document_name FROM journal "
                              "WHERE folder = ? AND rel_path = ? ORDER BY id DESC LIMIT 1",
                              [folder, encode_path(rel_path)]).fetchone()
        return JournalNote(*row) if row else None

    def pending_documents(self, folder: str | None = None, rel_path: str | None = None) -> list[PendingDocument]:
        """Documents whose recorded indexing status is neither completed nor error (queued,
        indexing, paused or not known), with their datasets and batches; of one folder,
        and of one path or the files below it, if given."""
        sql = ("SELECT folder, rel_path, document_id, batch, dataset_id FROM files WHERE document_id IS NOT NULL "
               "AND dataset_id IS NOT NULL AND (indexing_status IS NULL OR indexing_status NOT IN "
               "('completed', 'error'))")
        args: list[Any] = []
        if folder is not None:
            sql += " AND folder = ?"
            args.append(folder)
        if rel_path is not None:  # the file, or a directory's files
            key = encode_path(rel_path)
            sql += " AND (rel_path = ? OR (rel_path >= ? AND rel_path < ?))"
            args.extend([key, key + "/", key + "0"])
        return [PendingDocument(r[4], InFlight(r[0], decode_path(r[1]), r[2], r[3]))
                for r in self.conn.execute(sql, args)]


def _record_upload(conn: sqlite3.Connection, folder: str, dataset_id: str, u: Settled, now: float) -> None:
    """One accepted upload's file row (and its segment records) in an open transaction."""
    if u.segments is not None or u.chunking != "local":
        _drop_segments(conn, folder, u.rel_path, u.document_id)
    if u.segments:
        _insert_segments(conn, u.document_id, u.segments)
    conn.execute(
        "INSERT INTO files (folder, rel_path, dataset_id, size, mtime_ns, inode, sha256, "
        "document_id, document_name, batch, indexing_status, last_error, skip_reason, "
        "refused_sha256, attempts, updated_at, synced_at, skip_code, error_kind, chunking) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?, NULL, NULL, ?) "
        "ON CONFLICT (folder, rel_path) DO UPDATE SET dataset_id = excluded.dataset_id, "
        "size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode, "
        "sha256 = excluded.sha256, document_id = excluded.document_id, "
        "document_name = excluded.document_name, batch = excluded.batch, "
        "indexing_status = excluded.indexing_status, last_error = NULL, skip_reason = NULL, "
        "refused_sha256 = NULL, attempts = excluded.attempts, updated_at = excluded.updated_at, "
        "synced_at = excluded.synced_at, skip_code = NULL, error_kind = NULL, "
        "chunking = excluded.chunking",
        [folder, encode_path(u.rel_path), dataset_id, u.size, u.mtime_ns, u.inode, u.sha256, u.document_id,
         u.document_name, u.batch, u.indexing_status, u.attempts, now, now, u.chunking])


def _unmark(conn: sqlite3.Connection, folder: str | None) -> None:
    """The folder's state changes: its clean-pass mark no longer describes it."""
    if folder is None:
        conn.execute("DELETE FROM marks")
    else:
        conn.execute("DELETE FROM marks WHERE folder = ?", [folder])


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # SQLite may already have rolled back (e.g. after SQLITE_FULL)


def _write_error(path: Path, exc: sqlite3.Error) -> StateWriteError:
    text = str(exc)
    if "full" in text:
        text = "disk full"
    return StateWriteError(f"cannot write the state DB {path}: {text}")


# Copy one document's indexing status from the server onto the folder's rows that hold it
# (?1 status, ?2 error text, ?3 document id, ?4 folder).
_REFRESH_SQL = (
    "UPDATE files SET indexing_status = ?1, "
    "last_error = CASE WHEN ?1 = 'error' THEN 'indexing failed in Dify: ' || COALESCE(?2, '') "
    "  WHEN error_kind IN ('waiting', 'indexing_failed') THEN NULL ELSE last_error END, "
    "error_kind = CASE WHEN ?1 = 'error' THEN 'indexing_failed' "
    "  WHEN error_kind IN ('waiting', 'indexing_failed') THEN NULL ELSE error_kind END, "
    "attempts = CASE WHEN ?1 = 'completed' THEN 0 ELSE attempts END "
    "WHERE document_id = ?3 AND folder = ?4 AND "
    "(indexing_status IS NOT ?1 OR (?1 = 'error' AND last_error IS NULL))")

INDEXING_STATUSES = ("waiting", "parsing", "cleaning", "splitting", "indexing", "completed", "error", "paused")
CHUNKINGS = ("local", "file")
_STATUSES = {s: s for s in INDEXING_STATUSES}  # one shared string each, not one per row


def _rows_beside(cursor: Iterable[tuple[Any, ...]], unchanged: Candidates) -> dict[str, FileState]:
    """load_folder's rows, but the plain ones of unchanged files, which ``unchanged`` takes
    (the columns are those of load_folder's query: name and batch left out)."""
    out = {}
    take = unchanged.take
    for r in cursor:
        rel = decode_path(r[0])
        if r[4] and r[5] and r[9] is None and r[10] is None and r[11] is None and not r[12] \
                and r[13] is None and r[14] is None \
                and take(rel, r[1], r[2], r[3], r[4], r[5], _STATUSES.get(r[8], r[8]), _CHUNKINGS.get(r[15], r[15])):
            continue
        out[rel] = _file_state(r, rel)
    return out


def _file_state(r: tuple[Any, ...], rel: str | None = None, size: int | None = None,
                mtime_ns: int | None = None, inode: int | None = None) -> FileState:
    """A row as a FileState; ``rel``, ``size``, ``mtime_ns`` and ``inode``, when given, are
    equal objects to share (load_folder's ``seen``) instead of the row's."""
    # Statuses are shared strings: one copy per status, not one per row of a 100k folder.
    status = _STATUSES.get(r[8], r[8])
    return FileState(decode_path(r[0]) if rel is None else rel, r[1] if size is None else size,
                     r[2] if mtime_ns is None else mtime_ns, r[3] if inode is None else inode, r[4], r[5],
                     r[6], r[7], status, r[9], r[10], r[11], r[12] or 0,
                     _SKIP_CODES.get(r[13]) if r[13] else None, _ERROR_KINDS.get(r[14]) if r[14] else None,
                     _CHUNKINGS.get(r[15], r[15]))


def _attempt_fields(row: tuple[Any, ...] | None) -> dict[str, Any]:
    """A folder's last attempt, from its ``runs`` row (none before this was recorded)."""
    if row is None:
        return {}
    try:
        error = json.loads(row[2] or "{}").get("error")
    except ValueError:
        error = None
    return {"last_attempt": row[0], "last_attempt_ok": bool(row[1]), "last_attempt_error": error}


def _drop_segments(conn: sqlite3.Connection, folder: str, rel_path: str, keep: str | None) -> None:
    """Forget the segment records of the document a file row holds, unless another row
    holds it too (a rename settles the new path first); with ``keep``, also those of that
    document, which are about to be recorded again."""
    key = encode_path(rel_path)
    conn.execute("DELETE FROM segments WHERE document_id = (SELECT document_id FROM files WHERE folder = ?1 "
                 "AND rel_path = ?2) AND NOT EXISTS (SELECT 1 FROM files f WHERE f.document_id = "
                 "segments.document_id AND NOT (f.folder = ?1 AND f.rel_path = ?2))", [folder, key])
    if keep is not None:
        conn.execute("DELETE FROM segments WHERE document_id = ?", [keep])


def _insert_segments(conn: sqlite3.Connection, document_id: str, segments: Sequence[SegmentRecord]) -> None:
    conn.executemany("INSERT INTO segments (document_id, idx, chunk_sha256, key_sha256, segment_id, server_sha256) "
                     "VALUES (?, ?, ?, ?, ?, ?)", [(document_id, i, *r) for i, r in enumerate(segments)])


_SKIP_CODES = {c.value: c for c in SkipCode}
_CHUNKINGS = {c: c for c in CHUNKINGS}  # one shared string each, not one per row
_ERROR_KINDS = {k.value: k for k in ErrorKind}


def _files_source(columns: set[str]) -> str:
    """The ``files`` table as status queries read it: a reader of an older schema sees
    the columns it lacks as NULL."""
    missing = [c for c in ("skip_code", "error_kind", "chunking") if c not in columns]
    if not missing:
        return "files"
    return "(SELECT *, " + ", ".join(f"NULL AS {c}" for c in missing) + " FROM files)"
