"""Recovering from what goes wrong over months: poison files, a lost or corrupt state DB,
a full disk under the state DB."""

from __future__ import annotations

import sqlite3

from difysync.config import load_settings
from difysync.dify import DifyClient
from difysync.errors import StateWriteError
from difysync.reconcile import Env, reconcile_folder
from difysync.state import StateStore

from .sandbox import Sandbox


def test_a_file_that_keeps_failing_indexing_is_quarantined_not_looped(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    emulator.store.fail_patterns = ["poison*"]
    box.write("poison.md", "this breaks the embedder")
    box.write("fine.md", "ok")
    for _ in range(8):
        box.reconcile()
    creates = emulator.count(method="POST", path_contains="create")
    assert creates == 1 + 1 + 3  # fine.md once, poison.md once plus max_attempts recreations
    status = box.cli("status", "-c", str(box.config), "--json").json
    (problem,) = [p for p in status["problems"] if p["rel_path"] == "poison.md"]
    assert "quarantined" in problem["reason"]
    emulator.store.fail_patterns = []
    assert box.cli("retry", "-c", str(box.config), str(box.root / "poison.md")).code == 0
    box.reconcile()
    assert emulator.store.document_by_name(box.dataset, "poison.md").sha256  # re-sent once more
    box.reconcile()
    assert emulator.count(method="POST", path_contains="create") == creates + 1


def test_a_changed_poison_file_is_tried_again(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.write("p.md", "v1")
    emulator.store.fail_patterns = ["p.md"]
    for _ in range(5):
        box.reconcile()
    before = emulator.count(method="POST")
    emulator.store.fail_patterns = []
    box.write("p.md", "v2, fixed")
    result = box.reconcile()
    assert emulator.count(method="POST") > before
    assert result.json["failed"] == 0


def test_rebuild_state_after_corruption_uploads_nothing(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    for i in range(6):
        box.write(f"d/{i}.md", f"content {i}")
    box.reconcile()
    (tmp_path / "state.db").write_bytes(b"garbage" * 1000)
    for side in ("state.db-wal", "state.db-shm"):
        (tmp_path / side).unlink(missing_ok=True)
    broken = box.reconcile()
    assert broken.code == 78 and "rebuild-state" in broken.stderr
    box.write("new.md", "not uploaded yet")
    emulator.reset_requests()
    rebuilt = box.cli("rebuild-state", "-c", str(box.config))
    assert rebuilt.code == 0, rebuilt.stderr
    assert "6 documents linked" in rebuilt.stdout and "1 files not in Dify yet" in rebuilt.stdout
    assert box.mutations() == 0
    after = box.reconcile()
    assert after.json["created"] == 1 and after.json["unchanged"] == 6 and after.json["updated"] == 0
    assert len(box.docs()) == 7
    assert list(tmp_path.glob("state.db.broken-*"))


def test_a_full_disk_under_the_state_db_is_a_clear_error_and_loses_nothing(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    box.reconcile()
    for i in range(30):
        box.write(f"more/{i}.md", "x" * 100 + str(i))
    settings = load_settings(box.config)
    with StateStore(settings.state_db) as store, DifyClient(emulator.base_url, emulator.api_key) as client:
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")
        report = reconcile_folder(Env(settings, client, store), settings.folders[0])
    assert isinstance(report.fatal, StateWriteError)
    assert "disk full" in str(report.fatal)
    # A later pass with room again converges without duplicates.
    result = box.reconcile()
    assert result.code == 0, result.stderr
    assert len(box.docs()) == 31
    journal = sqlite3.connect(tmp_path / "state.db").execute("SELECT count(*) FROM journal").fetchone()[0]
    assert journal == 0
