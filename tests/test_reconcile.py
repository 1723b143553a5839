"""`difysync reconcile` end to end: the real CLI, real SQLite in a temp dir, real HTTP to
the emulator. Every scenario runs against a current and an old ("legacy") server."""

from __future__ import annotations

import os
import sqlite3

import pytest

from difysync.emulator import EmulatorServer
from difysync.emulator.faults import FaultRule

from .sandbox import Sandbox


@pytest.fixture(params=["current", "legacy"])
def server(request):
    with EmulatorServer(legacy=request.param == "legacy") as emu:
        yield emu


@pytest.fixture
def box(tmp_path, server):
    return Sandbox(tmp_path, server)


def test_first_import_creates_one_document_per_file(box):
    box.write("README.md", "# hi")
    box.write("guides/install.md", "steps")
    box.write("data/prices.csv", "a,b\n1,2\n")
    result = box.reconcile()
    assert result.code == 0, result.stderr
    assert result.json["created"] == 3 and result.json["failed"] == 0
    assert box.contents() == {"README.md": b"# hi", "guides∕install.md": b"steps",
                              "data∕prices.csv": b"a,b\n1,2\n"}


def test_second_pass_with_nothing_changed_sends_nothing_and_hashes_nothing(box):
    box.write("a.md", "one")
    box.write("b/c.txt", "two")
    assert box.reconcile().code == 0
    box.emu.reset_requests()
    result = box.reconcile()
    assert result.code == 0
    assert result.json["unchanged"] == 2 and result.json["created"] == 0
    assert box.mutations() == 0
    assert box.emu.count(method="GET") == 1  # one listing page, nothing else
    assert result.json["hashed"] == 0


def test_edit_updates_the_same_document(box):
    box.write("a.md", "v1")
    box.reconcile()
    before = box.docs()["a.md"].id
    box.write("a.md", "version two")
    result = box.reconcile()
    assert result.json["updated"] == 1
    assert box.docs()["a.md"].id == before
    assert box.contents()["a.md"] == b"version two"


def test_delete_removes_the_document(box):
    for name in ("a.md", "b.md", "c.md"):
        box.write(name, name)
    box.reconcile()
    box.remove("a.md")
    result = box.reconcile()
    assert result.json["deleted"] == 1
    assert set(box.docs()) == {"b.md", "c.md"}


def test_move_is_an_in_place_rename(box):
    box.write("old/a.md", "same bytes")
    box.write("keep.md", "k")
    box.reconcile()
    doc_id = box.docs()["old∕a.md"].id
    box.move("old/a.md", "new/a.md")
    result = box.reconcile()
    assert result.json["renamed"] == 1 and result.json["created"] == 0 and result.json["deleted"] == 0
    docs = box.docs()
    assert set(docs) == {"new∕a.md", "keep.md"} and docs["new∕a.md"].id == doc_id


def test_unsupported_and_oversize_files_are_skipped_without_a_request(box):
    box.write("image.png", "not really")
    box.write("big.md", b"x" * (15 * 1024 * 1024 + 1))
    box.write("empty.md", "")
    box.write("ok.md", "fine")
    result = box.reconcile()
    assert result.code == 0
    assert result.json["skipped"] == 3 and result.json["created"] == 1
    assert box.uploads() == 1
    status = box.cli("status", "-c", str(box.config), "--json")
    reasons = {p["rel_path"]: p["reason"] for p in status.json["problems"]}
    assert reasons["image.png"] == "unsupported file type (.png)"
    assert reasons["big.md"].startswith("file too large")
    assert reasons["empty.md"] == "empty file"
    box.emu.reset_requests()
    assert box.reconcile().json["skipped"] == 3
    assert box.mutations() == 0


def test_dry_run_sends_no_mutating_request(box):
    box.write("a.md", "a")
    box.write("b.md", "b")
    result = box.reconcile("--dry-run")
    assert result.code == 0
    assert result.json["created"] == 2 and result.json["dry_run"] is True
    assert {a["result"] for a in result.json["actions"]} == {"planned"}
    assert box.mutations() == 0 and box.docs() == {}


def test_dry_run_text_output_lists_each_action(box):
    box.write("a.md", "a")
    result = box.cli("reconcile", "-c", str(box.config), "--dry-run")
    assert "create   a.md" in result.stdout and "1 created" in result.stdout


def test_lost_state_db_adopts_instead_of_duplicating(box, tmp_path):
    for i in range(5):
        box.write(f"d/{i}.md", f"content {i}")
    box.reconcile()
    for suffix in ("", "-wal", "-shm"):
        p = tmp_path / f"state.db{suffix}"
        if p.exists():
            p.unlink()
    box.emu.reset_requests()
    result = box.reconcile()
    assert result.code == 0
    assert result.json["created"] == 0 and result.json["unchanged"] == 5
    assert box.mutations() == 0
    assert len(box.docs()) == 5
    # adoptions count as unchanged; --json does not list them one by one
    assert [a for a in result.json["actions"] if a["action"] == "adopt"] == []


def test_adopting_a_synced_tree_logs_one_line_and_records_every_file_in_the_state(box, tmp_path):
    # given a synced tree whose state DB was lost
    for i in range(12):
        box.write(f"d/{i}.md", f"content {i}")
    box.reconcile()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
    # when a pass adopts the documents (text output, so the log lines are seen)
    adopting = box.cli("reconcile", "-c", str(box.config))
    # then the log says how many were taken as synced in one line, not a line per file
    lines = [line for line in adopting.stderr.splitlines() if "taken as synced" in line]
    assert len(lines) == 1 and "12 document(s) already in Dify" in lines[0], adopting.stderr
    assert "adopted d/" not in adopting.stderr
    # and every file is recorded: the next pass hashes nothing and sends nothing
    box.emu.reset_requests()
    again = box.reconcile()
    assert again.json["unchanged"] == 12 and again.json["hashed"] == 0 and box.mutations() == 0


def test_document_deleted_in_dify_is_created_again(box):
    box.write("a.md", "a")
    box.reconcile()
    box.emu.store.delete_document(box.dataset, box.docs()["a.md"].id)
    result = box.reconcile()
    assert result.json["created"] == 1
    assert list(box.docs()) == ["a.md"]


def test_document_in_error_is_recreated(box):
    box.write("a.md", "a")
    box.reconcile()
    old = box.docs()["a.md"].id
    box.emu.store.set_document(box.dataset, old, indexing_status="error", error="embedding failed")
    result = box.reconcile()
    assert result.json["created"] == 1
    docs = box.docs()
    assert list(docs) == ["a.md"] and docs["a.md"].id != old


def test_change_while_indexing_waits_then_updates(tmp_path):
    with EmulatorServer(indexing_delay=30) as emu:
        box = Sandbox(tmp_path, emu)
        box.write("a.md", "v1")
        box.reconcile()
        box.write("a.md", "v2")
        result = box.reconcile()
        assert result.code == 0 and result.json["waiting"] == 1 and result.json["updated"] == 0
        assert box.contents()["a.md"] == b"v1"
        emu.store.indexing_delay = 0
        result = box.reconcile()
        assert result.json["updated"] == 1 and box.contents()["a.md"] == b"v2"


def test_missing_root_deletes_nothing_and_fails(box):
    box.write("a.md", "a")
    box.reconcile()
    os.rename(box.root, box.tmp / "elsewhere")
    result = box.reconcile()
    assert result.code == 1
    assert "does not exist" in " ".join(result.json["errors"])
    assert list(box.docs()) == ["a.md"]


def test_emptied_root_deletes_nothing(box):
    box.write("a.md", "a")
    box.write("b.md", "b")
    box.reconcile()
    box.remove("a.md")
    box.remove("b.md")
    result = box.reconcile()
    assert result.code == 1 and result.json["deleted"] == 0
    assert set(box.docs()) == {"a.md", "b.md"}


def test_mass_delete_threshold_deletes_nothing_and_says_so(box):
    for i in range(10):
        box.write(f"{i}.md", str(i))
    box.reconcile()
    for i in range(6):
        box.remove(f"{i}.md")
    result = box.reconcile()
    assert result.code == 1 and result.json["deleted"] == 0
    assert "would delete 6 of 10" in result.json["errors"][0]
    assert len(box.docs()) == 10
    allowed = box.reconcile("--max-delete", "6")
    assert allowed.code == 0 and allowed.json["deleted"] == 6


def test_bad_max_delete_value_is_a_usage_error(box):
    assert box.reconcile("--max-delete", "lots").code == 2


def test_wait_polls_until_indexing_completes(tmp_path):
    with EmulatorServer(indexing_delay=0.5) as emu:
        box = Sandbox(tmp_path, emu)
        box.write("a.md", "a")
        result = box.reconcile("--wait")
        assert result.code == 0 and result.json["indexing"]["finished"] is True
        assert result.json["indexing"]["statuses"] == {"completed": 1}


def test_wait_times_out_with_a_clear_message(tmp_path):
    with EmulatorServer(indexing_delay=60) as emu:
        box = Sandbox(tmp_path, emu)
        box.write("a.md", "a")
        result = box.reconcile("--wait", "--wait-timeout", "1")
        assert result.code == 1
        assert "did not finish within 1 s" in result.stderr


def test_dataset_by_name_is_created_once(tmp_path):
    with EmulatorServer() as emu:
        box = Sandbox(tmp_path, emu, by_name=True, dataset_name="Team docs")
        box.write("a.md", "a")
        assert box.reconcile().code == 0
        assert box.reconcile().code == 0
        names = [d["name"] for d in emu.store.list_datasets(1, 100, None)["data"]]
        assert names == ["Team docs"]


def test_crash_after_create_landed_is_recovered_without_duplicates(box):
    """The server applied the create but the answer was lost (connection dropped after
    commit); a re-run must adopt the document, even on servers without name matching."""
    box.write("a.md", "a")
    box.emu.faults.fail_next.append(FaultRule(action="drop_after_commit", method="POST"))
    box.reconcile()
    result = box.reconcile()
    assert result.code == 0
    assert list(box.docs()) == ["a.md"]
    state = sqlite3.connect(box.tmp / "state.db")
    assert state.execute("SELECT count(*) FROM journal").fetchone()[0] == 0


def test_state_db_never_holds_the_api_key(box):
    box.write("a.md", "a")
    box.reconcile()
    assert box.emu.api_key.encode() not in (box.tmp / "state.db").read_bytes()
