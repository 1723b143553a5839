"""The state store: a private SQLite file, a versioned schema, and a journal whose rows
are settled together with the file rows they concern."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from difysync.errors import StateError
from difysync.models import ErrorKind, LocalFile, SegmentRecord, SkipCode
from difysync.state import SCHEMA_VERSION, Skip, StateStore, decode_path, encode_path


@pytest.fixture
def store(tmp_path):
    with StateStore(tmp_path / "state.db") as s:
        yield s


def test_state_db_and_its_wal_files_are_private(tmp_path):
    path = tmp_path / "state.db"
    old = os.umask(0o022)
    try:
        with StateStore(path) as s:
            s.journal_begin("/f", "ds", "create", "a.md", "a.md")
            for f in (path, tmp_path / "state.db-wal", tmp_path / "state.db-shm"):
                assert f.exists()
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    finally:
        os.umask(old)


def test_existing_db_with_loose_permissions_is_tightened(tmp_path):
    path = tmp_path / "state.db"
    StateStore(path).close()
    os.chmod(path, 0o644)
    StateStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_upload_settles_the_journal_row_with_the_file_row(store):
    jid = store.journal_begin("/f", "ds", "create", "a.md", "a.md", sha256="abc")
    assert [e.rel_path for e in store.pending_journal("/f")] == ["a.md"]
    store.settle_upload(jid, "/f", "ds", "a.md", document_id="d1", document_name="a.md", batch="b1",
                        sha256="abc", size=3, mtime_ns=5, inode=7, indexing_status="waiting")
    assert store.pending_journal("/f") == []
    row = store.load_paths("/f", ["a.md"])["a.md"]
    assert (row.document_id, row.sha256, row.size, row.batch) == ("d1", "abc", 3, "b1")
    assert store.load_folder("/f")["a.md"].document_id == "d1"


def test_removal_drops_the_row_and_the_intent(store):
    store.settle_upload(None, "/f", "ds", "a.md", document_id="d1", document_name="a.md", batch=None,
                        sha256="abc", size=3, mtime_ns=5, inode=7, indexing_status="completed")
    jid = store.journal_begin("/f", "ds", "delete", "a.md", "a.md", "d1")
    store.settle_removal(jid, "/f", "a.md")
    assert store.load_folder("/f") == {} and store.pending_journal("/f") == []


def test_refusal_is_remembered_with_the_refused_content(store):
    jid = store.journal_begin("/f", "ds", "create", "a.md", "a.md")
    store.settle_failure(jid, "/f", "ds", "a.md", "415", ErrorKind.REQUEST_FAILED, refused_sha256="abc",
                         skip=SkipCode.REFUSED)
    row = store.load_folder("/f")["a.md"]
    assert row.refused_sha256 == "abc" and row.skip_reason == "415" and row.document_id is None
    assert row.skip_code is SkipCode.REFUSED and row.error_kind is ErrorKind.REQUEST_FAILED
    assert store.retry("/f", "a.md") == 1
    assert store.load_folder("/f")["a.md"].refused_sha256 is None


def test_listing_statuses_are_copied_and_errors_noted(store):
    store.settle_upload(None, "/f", "ds", "a.md", document_id="d1", document_name="a.md", batch=None,
                        sha256="abc", size=3, mtime_ns=5, inode=7, indexing_status="waiting")
    store.refresh_statuses("/f", {"d1": ("error", "boom")})
    row = store.load_folder("/f")["a.md"]
    assert row.indexing_status == "error" and "boom" in (row.last_error or "")
    store.refresh_statuses("/f", {"d1": ("completed", None)})
    row = store.load_folder("/f")["a.md"]
    assert row.indexing_status == "completed" and row.last_error is None


def test_paths_that_are_not_utf8_round_trip():
    rel = os.fsdecode(b"dir/\xff\xfe.md")
    assert encode_path(rel).startswith("//")
    assert decode_path(encode_path(rel)) == rel
    assert encode_path("plain/ü.md") == "plain/ü.md"


def test_non_utf8_path_is_stored_and_loaded(store):
    rel = os.fsdecode(b"\xff.md")
    store.record_skips("/f", "ds", [Skip(LocalFile(rel, 1, 1, 1), rel, "because", SkipCode.UNREADABLE)])
    assert list(store.load_folder("/f")) == [rel]


def test_db_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "state.db"
    StateStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="newer difysync"):
        StateStore(path)


def test_corrupt_db_gives_a_state_error_naming_the_fix(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="rebuild-state"):
        StateStore(path)


def test_status_reads_through_a_read_only_connection_while_a_writer_is_open(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as writer:
        writer.settle_upload(None, "/f", "ds", "a.md", document_id="d1", document_name="a.md", batch=None,
                             sha256="abc", size=3, mtime_ns=5, inode=7, indexing_status="indexing")
        with StateStore(path, readonly=True) as reader:
            (summary,) = reader.summaries()
            assert summary.indexing == 1
            assert reader.in_flight() == [("/f", "a.md", "d1", None)]


def test_read_only_open_of_a_missing_db_explains(tmp_path):
    with pytest.raises(StateError, match="does not exist yet"):
        StateStore(tmp_path / "nope.db", readonly=True)


# --- clean-pass marks ----------------------------------------------------------------------

MARK_DROPPERS = {
    "journal_begin": lambda s: s.journal_begin("/f", "ds", "create", "a.md", "a.md"),
    "settle_upload": lambda s: s.settle_upload(None, "/f", "ds", "a.md", document_id="d", document_name="a.md",
                                               batch=None, sha256="x", size=1, mtime_ns=1, inode=1,
                                               indexing_status="completed"),
    "settle_removal": lambda s: s.settle_removal(None, "/f", "a.md"),
    "settle_failure": lambda s: s.settle_failure(None, "/f", "ds", "a.md", "boom", ErrorKind.REQUEST_FAILED),
    "record_skips": lambda s: s.record_skips("/f", "ds", [Skip(None, "b.png", "unsupported",
                                                               SkipCode.UNSUPPORTED_TYPE)]),
    "record_waiting": lambda s: s.record_waiting("/f", [("a.md", "waiting")]),
    "update_stats": lambda s: s.update_stats("/f", [LocalFile("a.md", 2, 2, 2)]),
    "refresh_statuses": lambda s: s.refresh_statuses("/f", {"d": ("indexing", None)}),
    "retry one folder": lambda s: s.retry("/f"),
    "retry all": lambda s: s.retry(),
}


@pytest.mark.parametrize("write", MARK_DROPPERS.values(), ids=MARK_DROPPERS.keys())
def test_any_write_to_a_folder_drops_its_mark(store, write):
    store.save_mark("/f", "ds", "{}")
    store.save_mark("/other", "ds2", "{}")
    write(store)
    assert store.load_mark("/f", "ds") is None
    if write is not MARK_DROPPERS["retry all"]:
        assert store.load_mark("/other", "ds2") == "{}"  # other folders keep theirs


def test_mark_is_for_one_dataset(store):
    store.save_mark("/f", "ds", "{}")
    assert store.load_mark("/f", "other dataset") is None


def test_schema_1_db_gains_marks_and_keeps_its_rows(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        s.settle_upload(None, "/f", "ds", "a.md", document_id="d", document_name="a.md", batch=None,
                        sha256="x", size=1, mtime_ns=1, inode=1, indexing_status="completed")
        s.db.execute("DROP TABLE marks")
        s.db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with StateStore(path, readonly=True) as ro:  # `status` reads a schema-1 DB as it is
        assert [x.synced for x in ro.summaries()] == [1]
    with StateStore(path) as s:
        assert "a.md" in s.load_folder("/f")
        s.save_mark("/f", "ds", "{}")
        assert s.load_mark("/f", "ds") == "{}"


def _as_schema_2(path):
    """A DB as difysync wrote it before codes existed: no skip_code, error_kind, datasets."""
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE files DROP COLUMN skip_code")
    conn.execute("ALTER TABLE files DROP COLUMN error_kind")
    conn.execute("DROP TABLE datasets")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def test_schema_2_rows_get_their_codes_once_from_their_texts(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        for rel in ("wait.md", "fail.md", "net.md", "refused.md", "poison.md"):
            s.settle_upload(None, "/f", "ds", rel, document_id=rel, document_name=rel, batch=None,
                            sha256="x", size=1, mtime_ns=1, inode=1, indexing_status="completed")
    _as_schema_2(path)
    conn = sqlite3.connect(path)
    for rel, error, skip, refused in [("wait.md", "waiting: document is still indexing", None, None),
                                      ("fail.md", "indexing failed in Dify: boom", None, None),
                                      ("net.md", "create 'net.md': no answer within the timeout", None, None),
                                      ("refused.md", None, "refused by Dify: 415", "abc"),
                                      ("poison.md", None, "quarantined: indexing failed 3 times", None)]:
        conn.execute("UPDATE files SET last_error = ?, skip_reason = ?, refused_sha256 = ? WHERE rel_path = ?",
                     [error, skip, refused, rel])
    conn.commit()
    conn.close()
    with StateStore(path, readonly=True) as reader:  # `status` reads it as it is, as it always did
        assert [x.error for x in reader.summaries()] == [3]
    with StateStore(path) as s:
        rows = s.load_folder("/f")
        assert s.known_dataset("/f", "Docs") is None  # the new table is there
    assert rows["wait.md"].error_kind is ErrorKind.WAITING
    assert rows["fail.md"].error_kind is ErrorKind.INDEXING_FAILED
    assert rows["net.md"].error_kind is ErrorKind.REQUEST_FAILED
    assert rows["refused.md"].skip_code is SkipCode.REFUSED
    assert rows["poison.md"].skip_code is SkipCode.QUARANTINED
    with StateStore(path, readonly=True) as reader:
        assert [x.error for x in reader.summaries()] == [2]  # waiting is not an error


def test_a_remembered_dataset_is_kept_per_folder_and_name(store):
    store.remember_dataset("/f", "Docs", "ds-1")
    assert store.known_dataset("/f", "Docs") == "ds-1"
    assert store.known_dataset("/f", "Other name") is None
    store.forget_dataset("/f")
    assert store.known_dataset("/f", "Docs") is None


def test_retry_counts_only_what_it_lifts(store):
    store.settle_upload(None, "/f", "ds", "ok.md", document_id="d", document_name="ok.md", batch=None,
                        sha256="x", size=1, mtime_ns=1, inode=1, indexing_status="completed")
    store.record_skips("/f", "ds", [Skip(None, "big.md", "file too large", SkipCode.TOO_LARGE)])
    assert store.retry() == 0  # every pass judges the file's own size again: nothing to lift
    store.settle_failure(None, "/f", "ds", "odd.md", "refused by Dify: 415", ErrorKind.REQUEST_FAILED,
                         refused_sha256="abc", skip=SkipCode.REFUSED)
    assert store.retry() == 1
    assert store.retry() == 0


def test_schema_4_db_gains_segment_records_and_keeps_its_rows(tmp_path):
    path = tmp_path / "state.db"
    with StateStore(path) as s:
        s.settle_upload(None, "/f", "ds", "a.md", document_id="d", document_name="a.md", batch=None,
                        sha256="x", size=1, mtime_ns=1, inode=1, indexing_status="completed")
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE files DROP COLUMN chunking")
    conn.execute("DROP TABLE segments")
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with StateStore(path, readonly=True) as ro:
        assert [x.synced for x in ro.summaries()] == [1]
    with StateStore(path) as s:
        assert s.load_folder("/f")["a.md"].chunking is None
        assert s.segments("d") == ()


def _chunked(store, rel, doc, records):
    store.settle_upload(None, "/f", "ds", rel, document_id=doc, document_name=rel, batch=None, sha256="x",
                        size=1, mtime_ns=1, inode=1, indexing_status="completed", chunking="local",
                        segments=records)


def test_segment_records_follow_their_document(store):
    records = (SegmentRecord("c1", "k1", "s1", "h1"), SegmentRecord("c2", "k2", None, None))
    _chunked(store, "a.md", "d", records)
    assert store.segments("d") == records
    assert store.load_folder("/f")["a.md"].chunking == "local"
    store.settle_segments([], "/f", "d", records[:1])
    assert store.segments("d") == records[:1]
    # a rename settles the new path first: the old path's removal keeps the document's records
    _chunked(store, "b.md", "d", None)
    store.settle_removal(None, "/f", "a.md")
    assert store.segments("d") == records[:1]
    # sent as a file: no segments of ours any more
    store.settle_upload(None, "/f", "ds", "b.md", document_id="d", document_name="b.md", batch=None,
                        sha256="y", size=1, mtime_ns=1, inode=1, indexing_status="waiting")
    assert store.segments("d") == ()
    _chunked(store, "c.md", "e", records)
    store.settle_removal(None, "/f", "c.md")
    assert store.segments("e") == ()


def test_settling_segments_closes_their_journal_rows(store):
    ids = store.journal_begin_many("/f", "ds", "segment_update", [("a.md", "a.md", "d", "c1")])
    store.settle_segments(ids, "/f", "d", (SegmentRecord("c1", "k1", "s1", "h1"),))
    assert store.pending_journal("/f") == []
