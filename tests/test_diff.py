"""`difysync diff`: a read-only compare of each folder with its dataset. First the pure
compare() on plain values (and that it agrees with the planner), then the command over
real HTTP against one emulator for the module: categories, exit codes, --json, and that
it changes nothing anywhere."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from difysync.compare import Comparison, Difference, Entry, Reason, Sides, compare
from difysync.emulator import EmulatorServer
from difysync.models import NO_TAGS, FileState, LocalFile, RemoteDocument, ScanProblem, SkipCode, Tags
from difysync.naming import document_name
from difysync.plan import Kind, Policy, plan_folder

from .sandbox import Sandbox

OWNER = "host-a"
POLICY = Policy(owner=OWNER)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file(rel: str, content: str = "x") -> LocalFile:
    return LocalFile(rel, len(content), 1_000_000_000, 1, sha(content))


def row(rel: str, content: str = "x", doc_id: str | None = None) -> FileState:
    return FileState(rel, len(content), 1_000_000_000, 1, sha(content), doc_id or f"id-{rel}", document_name(rel),
                     indexing_status="completed")


def doc(rel: str, content: str | None = "x", *, owner: str | None = OWNER, doc_id: str | None = None,
        **fields: object) -> RemoteDocument:
    tags = Tags(rel, sha(content) if content is not None else None, owner, "1") if owner else NO_TAGS
    return RemoteDocument(doc_id or f"id-{rel}", document_name(rel), tags=tags, **fields)  # type: ignore[arg-type]


def synced(*rels: str) -> tuple[list[LocalFile], dict[str, FileState], list[RemoteDocument]]:
    return [file(r) for r in rels], {r: row(r) for r in rels}, [doc(r) for r in rels]


def only(c: Comparison) -> Entry:
    (entry,) = c.entries
    return entry


# --- the pure compare ------------------------------------------------------------------------


def test_files_whose_documents_hold_their_content_are_in_step() -> None:
    files, rows, remote = synced("a.md", "sub/b.md")
    c = compare(Sides(files, rows, remote), POLICY)
    assert c.ok and c.entries == () and c.in_step == 2 and c.remote_documents == 2


def test_a_document_still_indexing_is_in_step_and_counted_as_indexing() -> None:
    files, rows, _ = synced("a.md")
    c = compare(Sides(files, rows, [doc("a.md", indexing_status="indexing")]), POLICY)
    assert c.ok and (c.in_step, c.indexing) == (1, 1)


def test_a_file_with_no_document_is_only_local_and_says_why() -> None:
    gone_row = row("old.md")
    c = compare(Sides([file("new.md"), file("old.md")], {"old.md": gone_row}, []), POLICY)
    assert [(e.difference, e.code, e.rel_path) for e in c.entries] == [
        (Difference.ONLY_LOCAL, Reason.NEW, "new.md"), (Difference.ONLY_LOCAL, Reason.DOCUMENT_GONE, "old.md")]
    assert not c.ok


def test_without_a_dataset_every_file_that_may_be_sent_is_only_local_and_skips_stay_skips() -> None:
    c = compare(Sides([file("a.md"), file("pic.png")], {}, None), POLICY)
    assert c.dataset_missing and not c.ok
    assert {(e.rel_path, e.difference, e.code) for e in c.entries} == {
        ("a.md", Difference.ONLY_LOCAL, Reason.NO_DATASET),
        ("pic.png", Difference.SKIPPED, SkipCode.UNSUPPORTED_TYPE)}


def test_skipped_files_are_listed_with_their_code_and_are_not_differences() -> None:
    big = LocalFile("big.md", 100, 1, 1, None)
    policy = Policy(owner=OWNER, max_bytes=10)
    problem = ScanProblem("link.md", "symlink not followed", SkipCode.NOT_A_FILE)
    c = compare(Sides([file("pic.png"), big], {}, [], problems=[problem]), policy)
    assert c.ok and c.count(Difference.SKIPPED) == 3
    assert {(e.rel_path, e.code) for e in c.entries} == {
        ("pic.png", SkipCode.UNSUPPORTED_TYPE), ("big.md", SkipCode.TOO_LARGE), ("link.md", SkipCode.NOT_A_FILE)}
    assert "file too large" in next(e for e in c.entries if e.rel_path == "big.md").describe()


def test_a_document_of_ours_whose_file_is_gone_is_only_remote_ours() -> None:
    _, rows, remote = synced("gone.md")
    e = only(compare(Sides([], rows, remote), POLICY))
    assert (e.difference, e.code, e.rel_path, e.document_id) == (
        Difference.ONLY_REMOTE_OURS, Reason.FILE_GONE, "gone.md", "id-gone.md")


def test_ownership_of_an_untracked_document_comes_from_its_owner_tag_or_the_journal() -> None:
    remote = [doc("mine.md"), doc("theirs.md", owner="host-b"), doc("person.md", owner=None),
              doc("crashed.md", owner=None)]
    c = compare(Sides([], {}, remote, journaled=frozenset({document_name("crashed.md")})), POLICY)
    found = {e.document_name: (e.difference, e.code) for e in c.entries}
    assert found == {"mine.md": (Difference.ONLY_REMOTE_OURS, Reason.FILE_GONE),
                     "crashed.md": (Difference.ONLY_REMOTE_OURS, Reason.FILE_GONE),
                     "theirs.md": (Difference.ONLY_REMOTE_OTHERS, Reason.OTHER_OWNER),
                     "person.md": (Difference.ONLY_REMOTE_OTHERS, Reason.NO_OWNER)}
    assert next(e for e in c.entries if e.code is Reason.OTHER_OWNER).owner == "host-b"


def test_a_document_another_host_has_tagged_since_is_not_ours_even_with_our_old_row() -> None:
    _, rows, _ = synced("taken.md")
    e = only(compare(Sides([], rows, [doc("taken.md", owner="host-b")]), POLICY))
    assert (e.difference, e.code, e.owner) == (Difference.ONLY_REMOTE_OTHERS, Reason.OTHER_OWNER, "host-b")


def test_with_metadata_off_only_the_state_db_says_a_document_is_ours() -> None:
    _, rows, remote = synced("tracked.md")
    untracked = RemoteDocument("id-u", "untracked.md", tags=None)
    c = compare(Sides([], rows, [*remote, untracked]), Policy(owner=None))
    assert {e.document_name: e.difference for e in c.entries} == {
        "tracked.md": Difference.ONLY_REMOTE_OURS, "untracked.md": Difference.ONLY_REMOTE_OTHERS}


def test_a_state_db_lost_is_no_difference_when_our_tags_name_the_content() -> None:
    files, _, remote = synced("a.md")
    assert compare(Sides(files, {}, remote), POLICY).ok


def test_an_edited_file_differs_in_content() -> None:
    _, rows, remote = synced("a.md")
    e = only(compare(Sides([file("a.md", "edited")], rows, remote), POLICY))
    assert (e.difference, e.code, e.document_id) == (Difference.DIFFERING, Reason.CONTENT, "id-a.md")


def test_metadata_out_of_date_on_a_document_in_step_differs_in_tags() -> None:
    files, rows, _ = synced("a.md")
    e = only(compare(Sides(files, rows, [doc("a.md", "older")]), POLICY))
    assert (e.difference, e.code) == (Difference.DIFFERING, Reason.TAGS)


def test_a_name_prefix_the_documents_do_not_have_yet_is_a_name_difference() -> None:
    files, rows, remote = synced("a.md")
    e = only(compare(Sides(files, rows, remote), Policy(owner=OWNER, name_prefix="host-a/")))
    assert (e.difference, e.code) == (Difference.DIFFERING, Reason.NAME)
    assert "host-a∕a.md" in e.describe()


def test_a_document_with_no_known_hash_is_unverified() -> None:
    untagged = RemoteDocument("id-a", "a.md", tags=None)
    e = only(compare(Sides([file("a.md")], {}, [untagged]), Policy(owner=None)))
    assert (e.difference, e.code) == (Difference.DIFFERING, Reason.UNVERIFIED)


def test_a_moved_file_is_one_line_naming_both_paths() -> None:
    _, rows, remote = synced("old/a.md")
    e = only(compare(Sides([file("new/a.md")], rows, remote), POLICY))
    assert (e.difference, e.code, e.old_rel_path, e.rel_path, e.document_id) == (
        Difference.DIFFERING, Reason.MOVED, "old/a.md", "new/a.md", "id-old/a.md")


@pytest.mark.parametrize(("fields", "code"), [({"indexing_status": "error", "error": "embedding failed"},
                                               Reason.INDEXING_ERROR),
                                              ({"enabled": False}, Reason.DISABLED),
                                              ({"archived": True}, Reason.ARCHIVED)])
def test_a_document_that_failed_or_was_put_aside_is_in_error(fields: dict[str, object], code: Reason) -> None:
    files, rows, _ = synced("a.md")
    e = only(compare(Sides(files, rows, [doc("a.md", **fields)]), POLICY))
    assert (e.difference, e.code) == (Difference.IN_ERROR, code)
    if code is Reason.INDEXING_ERROR:
        assert "embedding failed" in e.describe()


def test_a_file_quarantined_after_failed_indexing_is_in_error_and_says_so() -> None:
    files, _, _ = synced("a.md")
    failing = FileState("a.md", 1, 1_000_000_000, 1, sha("x"), "id-a.md", attempts=3)
    e = only(compare(Sides(files, {"a.md": failing}, [doc("a.md", indexing_status="error")]), POLICY))
    assert e.code is Reason.INDEXING_ERROR and "quarantined after 3 attempts" in e.describe()


def test_a_name_held_by_someone_else_skips_the_file_as_the_planner_does() -> None:
    c = compare(Sides([file("a.md"), file("b.md")], {}, [doc("a.md", owner=None), doc("b.md", owner="host-b")]),
                POLICY)
    assert {(e.rel_path, e.difference, e.code) for e in c.entries} == {
        ("a.md", Difference.SKIPPED, SkipCode.NAME_HELD), ("b.md", Difference.SKIPPED, SkipCode.NAME_HELD)}
    assert c.ok


def test_a_missing_root_compares_nothing_and_lists_no_document_as_deletable() -> None:
    _, rows, remote = synced("a.md", "b.md")
    c = compare(Sides([], rows, remote, root_error="folder root does not exist: /gone"), POLICY)
    assert not c.ok and c.entries == () and c.remote_documents == 2 and "does not exist" in (c.root_error or "")


def test_documents_under_a_directory_that_could_not_be_read_are_not_called_gone() -> None:
    _, rows, remote = synced("locked/a.md")
    problem = ScanProblem("locked", "cannot read directory", SkipCode.UNREADABLE)
    c = compare(Sides([], rows, remote, problems=[problem]), POLICY)
    assert [(e.rel_path, e.difference) for e in c.entries] == [("locked", Difference.SKIPPED)]


def test_diff_agrees_with_what_the_planner_would_do() -> None:
    """Each category is the planner's decision seen from the side: a create is only
    local, an update differs, a delete is only remote ours, a recreate is in error."""
    files = [file("same.md"), file("new.md", "new"), file("edited.md", "v2"), file("failed.md"), file("pic.png"),
             file("moved/to.md", "moved")]
    rows = {r.rel_path: r for r in (row("same.md"), row("edited.md"), row("gone.md"), row("failed.md"),
                                    row("moved/from.md", "moved"))}
    remote = [doc("same.md"), doc("edited.md"), doc("gone.md"), doc("failed.md", indexing_status="error"),
              doc("moved/from.md", "moved"), doc("person.md", owner=None)]
    plan = plan_folder(files, rows, remote, [], POLICY)
    c = compare(Sides(files, rows, remote), POLICY)
    planned = {a.rel_path: a.kind for a in plan.actions}
    seen = {e.rel_path or e.document_name: (e.difference, e.code) for e in c.entries}
    assert planned == {"new.md": Kind.CREATE, "edited.md": Kind.UPDATE, "gone.md": Kind.DELETE,
                       "failed.md": Kind.RECREATE, "pic.png": Kind.SKIP, "moved/to.md": Kind.RENAME}
    assert seen == {"new.md": (Difference.ONLY_LOCAL, Reason.NEW),
                    "edited.md": (Difference.DIFFERING, Reason.CONTENT),
                    "gone.md": (Difference.ONLY_REMOTE_OURS, Reason.FILE_GONE),
                    "failed.md": (Difference.IN_ERROR, Reason.INDEXING_ERROR),
                    "pic.png": (Difference.SKIPPED, SkipCode.UNSUPPORTED_TYPE),
                    "moved/to.md": (Difference.DIFFERING, Reason.MOVED),
                    "person.md": (Difference.ONLY_REMOTE_OTHERS, Reason.NO_OWNER)}
    assert plan.unchanged == c.in_step == 1


# --- the command, over HTTP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


_datasets = itertools.count(1)


@pytest.fixture
def box(tmp_path: Path, emu: EmulatorServer) -> Sandbox:
    """A folder synced into a dataset of its own, in the module's emulator."""
    return Sandbox(tmp_path, emu, dataset_name=f"Docs {next(_datasets)}", owner=OWNER)


def diff(box: Sandbox, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return box.cli("diff", "-c", str(box.config), *args, env=env)


def synced_box(box: Sandbox) -> Sandbox:
    box.write("a.md", "alpha")
    box.write("sub/b.md", "beta")
    box.write("gone.md", "to be deleted")
    box.write("broken.md", "indexing fails")
    box.write("pic.png", "not a text")
    assert box.reconcile().code == 0
    return box


def test_a_folder_just_reconciled_is_in_step_and_exits_0(box: Sandbox) -> None:
    synced_box(box)
    result = box.subprocess("diff", "-c", str(box.config))
    assert result.code == 0, result.stderr
    assert "4 in step · 1 skipped" in result.stdout
    assert "pic.png" in result.stdout and "unsupported file type (.png)" in result.stdout
    as_json = diff(box, "--json")
    assert as_json.code == 0 and as_json.json["in_step"] is True


def test_each_difference_is_listed_in_its_category_and_exits_1(box: Sandbox) -> None:
    synced_box(box)
    box.write("new.md", "fresh")
    box.write("a.md", "alpha, edited")
    box.remove("gone.md")
    store, ds = box.emu.store, box.dataset
    store.add_document(ds, "by-hand.md", b"a person's upload", match_by_name=False)
    store.set_document(ds, box.docs()["broken.md"].id, error="embedding model not configured")
    result = diff(box, "--json")
    assert result.code == 1, result.stderr
    (folder,) = result.json["folders"]
    found = {(e["path"] or e["document_name"]): (e["difference"], e["code"]) for e in folder["entries"]}
    assert found == {"new.md": ("only_local", "new"), "a.md": ("differing", "content"),
                     "gone.md": ("only_remote_ours", "file_gone"), "by-hand.md": ("only_remote_others", "no_owner"),
                     "broken.md": ("in_error", "indexing_error"), "pic.png": ("skipped", "unsupported_type")}
    assert folder["counts"] == {"only_local": 1, "only_remote_ours": 1, "only_remote_others": 1, "differing": 1,
                                "in_error": 1, "skipped": 1, "in_step": 1, "indexing": 0}
    table = diff(box)
    assert table.code == 1
    lines = table.stdout.splitlines()
    for label, path in [("only local", "new.md"), ("differs", "a.md"), ("only remote", "gone.md"),
                        ("remote, not ours", "by-hand.md"), ("in error", "broken.md"), ("skipped", "pic.png")]:
        assert any(line.startswith(label) and f" {path} " in line for line in lines), (label, table.stdout)
    assert "indexing failed in Dify" in table.stdout
    broken = next(e for e in folder["entries"] if e["path"] == "broken.md")
    assert broken["reason"] == "indexing failed in Dify: embedding model not configured"
    assert "1 in step · 1 only local · 1 only remote (ours) · 1 only remote (not ours) · 1 differing · " \
           "1 in error · 1 skipped" in words(table.stdout)


def test_json_gives_every_entry_its_documented_keys(box: Sandbox) -> None:
    synced_box(box)
    box.write("moved/b.md", "beta")
    box.remove("sub/b.md")
    box.preload({"theirs.md": "another host's"}, owner="host-b")
    box.remove("theirs.md")
    result = diff(box, "--json")
    assert set(result.json) == {"in_step", "folders"} and result.json["in_step"] is False
    (folder,) = result.json["folders"]
    assert set(folder) == {"folder", "dataset_id", "dataset_name", "in_step", "root_error", "dataset_missing",
                           "dataset_deleted", "remote_documents", "counts", "entries"}
    assert folder["folder"] == str(box.root) and folder["dataset_id"] == box.dataset
    entries = {e["code"]: e for e in folder["entries"]}
    for e in folder["entries"]:
        assert set(e) == {"difference", "code", "path", "old_path", "document_name", "document_id", "status",
                          "owner", "reason"}
    moved = entries["moved"]
    assert (moved["path"], moved["old_path"], moved["document_name"], moved["status"], moved["owner"]) == (
        "moved/b.md", "sub/b.md", "sub∕b.md", "available", OWNER)
    other = entries["other_owner"]
    assert (other["difference"], other["owner"], other["path"]) == ("only_remote_others", "host-b", "theirs.md")


def test_diff_sends_no_mutating_request_and_leaves_the_state_db_as_it_was(box: Sandbox) -> None:
    synced_box(box)
    box.write("new.md", "fresh")
    box.write("a.md", "alpha, edited")  # (a hash to compute, which a pass would then record)
    box.remove("gone.md")
    db = box.tmp / "state.db"
    before_bytes, before_rows = db.read_bytes(), _dump(db)
    before_files = _state_files(box.tmp)
    mutations = box.mutations()
    assert diff(box).code == 1 and diff(box, "--json").code == 1
    assert box.mutations() == mutations
    assert db.read_bytes() == before_bytes and _dump(db) == before_rows
    assert _state_files(box.tmp) == before_files  # no lease, no lock file


def test_without_a_state_db_diff_compares_by_names_and_tags_and_makes_none(box: Sandbox) -> None:
    synced_box(box)
    for path in box.tmp.glob("state.db*"):
        if path.is_file():
            path.unlink()
    result = diff(box, "--json")
    assert result.code == 0, result.stdout + result.stderr
    assert result.json["folders"][0]["counts"]["in_step"] == 4
    assert not (box.tmp / "state.db").exists()


def test_a_missing_root_is_reported_as_such_and_no_document_as_deletable(box: Sandbox) -> None:
    synced_box(box)
    shutil.rmtree(box.root)
    table = diff(box)
    assert table.code == 1
    assert "folder root does not exist" in words(table.stdout) and "nothing compared" in words(table.stdout)
    assert "only remote" not in table.stdout
    (folder,) = diff(box, "--json").json["folders"]
    assert folder["entries"] == [] and "does not exist" in folder["root_error"] and folder["remote_documents"] == 4


def test_a_dataset_that_does_not_exist_yet_leaves_every_file_only_local_and_is_not_made(
        tmp_path: Path, emu: EmulatorServer) -> None:
    box = Sandbox(tmp_path, emu, by_name=True, dataset_name="Not made by diff", owner=OWNER)
    box.write("a.md", "alpha")
    mutations = box.mutations()
    table = diff(box)
    said = words(table.stdout)
    assert table.code == 1 and "does not exist yet" in said and "every file is only local" in said
    (folder,) = diff(box, "--json").json["folders"]
    assert folder["dataset_missing"] is True and folder["dataset_id"] is None
    assert [(e["path"], e["code"]) for e in folder["entries"]] == [("a.md", "no_dataset")]
    assert box.mutations() == mutations
    assert emu.store.list_datasets(1, 100, "Not made by diff")["data"] == []


def test_a_dataset_deleted_in_dify_is_said_to_be_deleted_and_is_not_made_again(
        tmp_path: Path, emu: EmulatorServer) -> None:
    box = Sandbox(tmp_path, emu, by_name=True, dataset_name="Deleted under diff", owner=OWNER)
    box.write("a.md", "alpha")
    assert box.reconcile().code == 0
    emu.store.delete_dataset(box.dataset)
    table = diff(box)
    assert table.code == 1 and "was deleted in Dify" in words(table.stdout) and "--recreate-dataset" in table.stdout
    (folder,) = diff(box, "--json").json["folders"]
    assert folder["dataset_deleted"] is True and folder["counts"]["only_local"] == 1
    assert emu.store.list_datasets(1, 100, "Deleted under diff")["data"] == []


def test_a_state_db_that_cannot_be_read_exits_78_with_one_line(box: Sandbox) -> None:
    (box.tmp / "state.db").write_bytes(b"not a database, " * 100)
    result = diff(box)
    assert result.code == 78 and "state DB" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_folder_argument_chooses_a_folder_as_ls_does(box: Sandbox) -> None:
    synced_box(box)
    assert diff(box, str(box.root)).code == 0
    assert diff(box, box.dataset).code == 0
    wrong = diff(box, "elsewhere")
    assert wrong.code == 2 and "not a configured folder" in wrong.stderr


def test_lines_fit_80_columns_one_line_per_difference(box: Sandbox) -> None:
    synced_box(box)
    long = "a-rather-long-directory-name/" * 4 + "with-a-long-file-name.md"
    box.write(long, "deep")
    table = box.subprocess("diff", "-c", str(box.config), env={"COLUMNS": "80"})
    assert table.code == 1
    assert all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    (line,) = [line for line in table.stdout.splitlines() if line.startswith("only local")]
    assert "…" in line and "not in Dify yet" in line


def test_a_rejected_key_exits_77_and_a_missing_key_78(box: Sandbox) -> None:
    rejected = diff(box, env={"DIFYSYNC_API_KEY": "wrong-key"})
    assert rejected.code == 77 and "API key was rejected" in rejected.stderr
    assert diff(box, env={"DIFYSYNC_API_KEY": ""}).code == 78


def test_an_unreachable_server_exits_69(tmp_path: Path) -> None:
    with EmulatorServer() as gone:
        box = Sandbox(tmp_path, gone)
    box.write("a.md", "alpha")
    result = diff(box)
    assert result.code == 69 and "cannot reach" in result.stderr and "Traceback" not in result.stderr


def words(text: str) -> str:
    """The text with its line breaks and runs of spaces made single spaces (rich wraps prose at 80)."""
    return " ".join(text.split())


def _dump(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _state_files(where: Path) -> set[str]:
    """The state DB's neighbours (lock files, say), SQLite's shared-memory file aside."""
    return {str(p.relative_to(where)) for p in where.rglob("*")
            if "docs" not in p.relative_to(where).parts and not p.name.endswith("-shm")}
