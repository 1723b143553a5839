"""Owner tags in Dify metadata: many difysync instances, and people, share one dataset safely.

Scenarios over real HTTP against the bundled emulator. Each difysync instance is a Sandbox
of its own (its own folder, its own state DB, its own ``owner``) whose config points at one
dataset made once in the emulator; people are the test poking the emulator's store
directly (a document uploaded by hand, a value set in a field of their own). What
"touched" means throughout: a document's id, name, content, metadata values, batch or
``updated_at`` changed. Every subprocess a test starts is killed at its end, pass or fail.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from difysync import tags
from difysync.emulator import EmulatorServer
from difysync.emulator.faults import Faults

from .sandbox import Result, Sandbox
from .test_daemon import Daemon, wait_until

PLACEHOLDER = "set-below"  # the dataset_name line a shared box's config starts with, replaced by the id
DEBOUNCE = 0.3
DELETE_DELAY = 0.6


# --- helpers ------------------------------------------------------------------------------


def shared_box(tmp_path: Path, emu: EmulatorServer, owner: str, dataset_id: str, *,
               extra_dify: str = "", extra_folder: str = "", home: str | None = None) -> Sandbox:
    """A difysync instance of its own (folder, state DB and config under tmp_path/<owner>)
    on a dataset that already exists, by id."""
    where = tmp_path / (home or owner)
    where.mkdir()
    box = Sandbox(where, emu, by_name=True, dataset_name=PLACEHOLDER, owner=owner,
                  extra_dify=extra_dify, extra_folder=extra_folder)
    text = box.config.read_text()
    assert f'dataset_name = "{PLACEHOLDER}"' in text
    box.config.write_text(text.replace(f'dataset_name = "{PLACEHOLDER}"', f'dataset_id = "{dataset_id}"'))
    box.dataset_id = dataset_id
    return box


def set_config(box: Sandbox, old: str, new: str) -> None:
    text = box.config.read_text()
    assert old in text, text
    box.config.write_text(text.replace(old, new))


def record(doc: Any) -> tuple:
    """Everything about a document that a write would change."""
    return (doc.id, doc.name, doc.content, dict(doc.doc_metadata or {}), doc.batch, doc.updated_at, doc.enabled)


def snapshot(emu: EmulatorServer, dataset_id: str, owner: str | None = None,
             ids: set[str] | None = None) -> dict[str, tuple]:
    """id -> record of the dataset's documents (only ``owner``'s, or only ``ids``, when given)."""
    out = {}
    for doc in emu.store.documents(dataset_id):
        if owner is not None and (doc.doc_metadata or {}).get(tags.OWNER) != owner:
            continue
        if ids is not None and doc.id not in ids:
            continue
        out[doc.id] = record(doc)
    return out


def ok(result: Result) -> dict[str, Any]:
    assert result.code == 0, (result.stdout, result.stderr)
    body = result.json
    assert body["failed"] == 0 and body["errors"] == [], body
    return body


def actions(body: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    return [a for a in body["actions"] if kind is None or a["action"] == kind]


def expected_values(box: Sandbox, rel: str) -> dict[str, Any]:
    """The four values a document holding this file of the box should carry, as stored."""
    path = box.root / rel
    data = path.read_bytes()
    return {tags.PATH: rel, tags.SHA256: hashlib.sha256(data).hexdigest(), tags.OWNER: box.owner,
            tags.MTIME: path.stat().st_mtime_ns // 1_000_000_000}


def ours(doc: Any) -> dict[str, Any]:
    return {k: v for k, v in (doc.doc_metadata or {}).items() if k in tags.NAMES}


def mirror(box: Sandbox, prefix: str = "") -> dict[str, bytes]:
    """document name -> content the box's folder should produce."""
    from difysync.naming import document_name

    out = {}
    for path in sorted(box.root.rglob("*")):
        if path.is_file():
            out[document_name(prefix + path.relative_to(box.root).as_posix())] = path.read_bytes()
    return out


def metadata_paths(emu: EmulatorServer) -> list[str]:
    return [f"{r.method} {r.path}" for r in emu.requests if "/metadata" in r.path]


def state_rows(box: Sandbox) -> dict[str, str | None]:
    """rel_path -> document_id of the box's state DB."""
    with sqlite3.connect(box.tmp / "state.db") as conn:
        return dict(conn.execute("SELECT rel_path, document_id FROM files").fetchall())


def stamp(box: Sandbox, rel: str, content: str, seconds: int) -> Path:
    """Write a file with a chosen mtime (whole seconds), so the tests can name it exactly."""
    path = box.write(rel, content)
    os.utime(path, ns=(seconds * 1_000_000_000, seconds * 1_000_000_000))
    return path


# --- 1. the four fields ---------------------------------------------------------------------


def test_every_document_carries_path_sha256_owner_and_mtime_and_they_follow_edits_and_moves(tmp_path, emulator):
    # Given a folder of three files with known mtimes
    box = Sandbox(tmp_path, emulator, owner="host-a")
    stamp(box, "README.md", "top level", 1_700_000_000)
    stamp(box, "notes/plan.md", "the plan", 1_700_000_100)
    stamp(box, "notes/deep/more.txt", "deeper", 1_700_000_200)

    # When it is imported
    body = ok(box.reconcile())
    assert body["created"] == 3

    # Then every document carries the four fields with the right values
    docs = box.docs()
    assert set(docs) == {"README.md", "notes∕plan.md", "notes∕deep∕more.txt"}
    for name, rel in (("README.md", "README.md"), ("notes∕plan.md", "notes/plan.md"),
                      ("notes∕deep∕more.txt", "notes/deep/more.txt")):
        assert ours(docs[name]) == expected_values(box, rel), name
    assert docs["notes∕plan.md"].doc_metadata[tags.PATH] == "notes/plan.md"  # "/", not the name's "∕"
    assert docs["notes∕plan.md"].doc_metadata[tags.MTIME] == 1_700_000_100
    assert docs["README.md"].doc_metadata[tags.SHA256] == hashlib.sha256(b"top level").hexdigest()
    # the four fields exist once each in the dataset, with their types
    for name, kind in tags.FIELDS:
        field = emulator.store.metadata_field(box.dataset, name)
        assert field is not None and field.type == kind

    # When a file is edited (new content, new mtime)
    plan_id = docs["notes∕plan.md"].id
    stamp(box, "notes/plan.md", "the plan, revised twice", 1_700_000_500)
    body = ok(box.reconcile())
    assert body["updated"] == 1

    # Then its sha256 and mtime follow, on the same document
    doc = box.docs()["notes∕plan.md"]
    assert doc.id == plan_id and doc.content == b"the plan, revised twice"
    assert ours(doc) == expected_values(box, "notes/plan.md")
    assert doc.doc_metadata[tags.SHA256] == hashlib.sha256(b"the plan, revised twice").hexdigest()
    assert doc.doc_metadata[tags.MTIME] == 1_700_000_500

    # When a file is moved to another folder
    box.move("notes/plan.md", "archive/2024/plan.md")
    body = ok(box.reconcile())
    assert body["renamed"] == 1 and body["created"] == 0 and body["deleted"] == 0

    # Then the path follows, on the same document; content hash and mtime stay
    docs = box.docs()
    assert "notes∕plan.md" not in docs
    doc = docs["archive∕2024∕plan.md"]
    assert doc.id == plan_id
    assert ours(doc) == expected_values(box, "archive/2024/plan.md")
    assert doc.doc_metadata[tags.PATH] == "archive/2024/plan.md"
    assert doc.doc_metadata[tags.MTIME] == 1_700_000_500

    # And a pass with nothing changed writes nothing
    emulator.reset_requests()
    body = ok(box.reconcile())
    assert body["tagged"] == 0 and box.mutations() == 0


# --- 2. two instances, one dataset ------------------------------------------------------------


def test_two_instances_on_one_dataset_never_touch_each_others_documents(tmp_path, emulator):
    # Given two difysync instances (owners "a" and "b"), each with its own folder and state
    # DB, on one dataset; both folders also hold "common.md", which b mirrors first
    ds = emulator.store.create_dataset("Shared", "high_quality")
    a = shared_box(tmp_path, emulator, "a", ds)
    b = shared_box(tmp_path, emulator, "b", ds)
    for rel in ("a1.md", "a2.md", "sub/a3.md", "sub/a4.md"):
        a.write(rel, f"a's {rel}")
    for rel in ("b1.md", "b2.md", "sub/b3.md", "sub/b4.md"):
        b.write(rel, f"b's {rel}")
    a.write("common.md", "a's common")
    b.write("common.md", "b's common")

    # When they run interleaved passes: b imports, a imports
    ok(b.reconcile())
    b_before = snapshot(emulator, ds, "b")
    assert len(b_before) == 5
    body = ok(a.reconcile())
    assert body["created"] == 4
    held = [x for x in actions(body, "skip") if x["path"] == "common.md"]
    assert held and held[0]["reason_code"] == "name_held" and 'owner "b"' in held[0]["message"]
    # Then a's pass touched none of b's documents
    assert snapshot(emulator, ds, "b") == b_before
    a_before = snapshot(emulator, ds, "a")
    assert len(a_before) == 4

    # When a edits, moves and deletes its files (b's have the same kind of names), then b
    # edits and deletes its own, each pass in turn
    a.write("a1.md", "a's a1, edited")
    a.move("sub/a3.md", "moved/a3.md")
    a.remove("a2.md")
    body = ok(a.reconcile())
    assert (body["updated"], body["renamed"], body["deleted"]) == (1, 1, 1)
    assert snapshot(emulator, ds, "b") == b_before
    a_before = snapshot(emulator, ds, "a")

    b.write("b1.md", "b's b1, edited")
    b.remove("sub/b4.md")
    body = ok(b.reconcile())
    assert (body["updated"], body["deleted"]) == (1, 1)
    assert snapshot(emulator, ds, "a") == a_before
    b_before = snapshot(emulator, ds, "b")

    ok(a.reconcile())
    ok(b.reconcile())
    assert snapshot(emulator, ds, "a") == a_before and snapshot(emulator, ds, "b") == b_before
    assert a.contents() == {"a1.md": b"a's a1, edited", "moved∕a3.md": b"a's sub/a3.md", "sub∕a4.md":
                            b"a's sub/a4.md", "b1.md": b"b's b1, edited", "b2.md": b"b's b2.md",
                            "sub∕b3.md": b"b's sub/b3.md", "common.md": b"b's common"}

    # When a's state DB is lost and rebuilt from the listing
    for suffix in ("", "-wal", "-shm"):
        Path(f"{a.tmp / 'state.db'}{suffix}").unlink(missing_ok=True)
    rebuilt = a.cli("rebuild-state", "-c", str(a.config))
    assert rebuilt.code == 0, (rebuilt.stdout, rebuilt.stderr)

    # Then only a's documents are linked, b's (common.md too) are left alone
    assert "3 documents linked to local files, 0 files not in Dify yet" in rebuilt.stdout, rebuilt.stdout
    assert "4 other documents left alone" in rebuilt.stdout, rebuilt.stdout
    rows = state_rows(a)
    assert {i for i in rows.values() if i} == set(a_before)
    assert rows.get("common.md") is None
    # and a's next pass sends nothing and touches nothing of b's
    emulator.reset_requests()
    body = ok(a.reconcile())
    assert a.uploads() == 0 and body["created"] == body["updated"] == body["deleted"] == 0
    assert snapshot(emulator, ds, "a") == a_before and snapshot(emulator, ds, "b") == b_before

    # When a's folder is emptied, with the guard overridden
    for child in list(a.root.iterdir()):
        a.remove(child.name)
    body = ok(a.reconcile("--max-delete", "100%"))

    # Then exactly a's documents are deleted; b's are all there, untouched
    assert body["deleted"] == 3
    assert {x["document_id"] for x in actions(body, "delete")} == set(a_before)
    assert snapshot(emulator, ds, "a") == {}
    assert snapshot(emulator, ds, "b") == b_before
    assert set(a.docs()) == {"b1.md", "b2.md", "sub∕b3.md", "common.md"}


# --- 3. the same path on two hosts --------------------------------------------------------------


def test_the_same_path_on_two_hosts_is_held_by_the_first_until_the_second_gets_a_name_prefix(tmp_path, emulator):
    # Given host a has mirrored README.md into a dataset
    ds = emulator.store.create_dataset("Shared", "high_quality")
    a = shared_box(tmp_path, emulator, "a", ds)
    b = shared_box(tmp_path, emulator, "b", ds)
    a.write("README.md", "a's readme")
    ok(a.reconcile())
    first = a.docs()["README.md"]
    before = record(first)

    # When host b, without name_prefix, has a README.md of its own
    b.write("README.md", "b's readme, longer")
    emulator.reset_requests()
    body = ok(b.reconcile())

    # Then b's is skipped, naming the holder, and a's document is unchanged
    (skip,) = [x for x in body["actions"] if x["path"] == "README.md"]
    assert skip["action"] == "skip" and skip["reason_code"] == "name_held", skip
    assert 'owner "a"' in skip["message"] and "name_prefix" in skip["message"], skip
    assert body["created"] == body["updated"] == 0 and body["skipped"] == 1
    assert b.uploads() == 0
    assert record(a.docs()["README.md"]) == before
    assert set(a.docs()) == {"README.md"}
    # (and a second pass of b says the same and still sends nothing)
    body = ok(b.reconcile())
    assert [x["reason_code"] for x in body["actions"]] == ["name_held"] and b.uploads() == 0

    # When b's folder gets name_prefix = "b/"
    with open(b.config, "a", encoding="utf-8") as f:
        f.write('name_prefix = "b/"\n')
    body = ok(b.reconcile())

    # Then both are mirrored side by side, a's still untouched
    assert body["created"] == 1
    docs = a.docs()
    assert set(docs) == {"README.md", "b∕README.md"}
    assert record(docs["README.md"]) == before
    assert docs["b∕README.md"].content == b"b's readme, longer"
    assert ours(docs["b∕README.md"]) == expected_values(b, "README.md")  # the path is the folder's, unprefixed
    assert ours(docs["README.md"])[tags.OWNER] == "a"
    # and each host's next pass is a no-op
    emulator.reset_requests()
    ok(a.reconcile())
    ok(b.reconcile())
    assert a.mutations() == 0


# --- 4. documents people made, and untagged documents difysync made ---------------------------


def test_a_document_uploaded_by_hand_is_never_touched_and_untagged_documents_of_our_state_db_get_tagged(
        tmp_path, emulator):
    # Given a dataset with a document a person uploaded by hand (no tags at all)
    ds = emulator.store.create_dataset("Shared", "high_quality")
    box = shared_box(tmp_path, emulator, "a", ds)
    manual, _ = emulator.store.add_document(ds, "manual.md", b"written by a person")
    manual_before = record(manual)
    box.write("mine.md", "mine")

    # When difysync mirrors its folder there
    ok(box.reconcile())
    # Then the person's document is left as it was
    assert record(box.docs()["manual.md"]) == manual_before

    # When a local file with the same name appears
    box.write("manual.md", "a local file of the same name")
    emulator.reset_requests()
    body = ok(box.reconcile())

    # Then it is skipped with the reason given; the person's document is not overwritten
    (skip,) = [x for x in body["actions"] if x["path"] == "manual.md"]
    assert skip["action"] == "skip" and skip["reason_code"] == "name_held", skip
    assert "did not make" in skip["message"], skip
    assert box.uploads() == 0
    assert record(box.docs()["manual.md"]) == manual_before

    # When the folder is emptied, guard overridden
    box.remove("manual.md")
    box.remove("mine.md")
    body = ok(box.reconcile("--max-delete", "100%"))
    # Then only difysync's own document goes; the person's stays as it was
    assert body["deleted"] == 1
    assert set(box.docs()) == {"manual.md"}
    assert record(box.docs()["manual.md"]) == manual_before

    # Given a second instance that made its documents with metadata off (no tags)
    quiet = shared_box(tmp_path, emulator, "q", ds, extra_dify="[metadata]\nenabled = false")
    quiet.write("q1.md", "first of q")
    quiet.write("q2.md", "second of q")
    emulator.reset_requests()
    body = ok(quiet.reconcile())
    assert body["created"] == 2
    assert metadata_paths(emulator) == []  # metadata off: not a single metadata request
    ids = {n: d.id for n, d in quiet.docs().items() if n.startswith("q")}
    assert all(not quiet.docs()[n].doc_metadata for n in ids)

    # When metadata is turned on
    set_config(quiet, "enabled = false", "enabled = true")
    body = ok(quiet.reconcile())

    # Then its state DB still owns them: they are tagged (nothing uploaded again), as q's
    assert body["tagged"] == 2, body
    assert {x["path"] for x in actions(body, "tag")} == {"q1.md", "q2.md"}
    assert body["created"] == body["updated"] == body["skipped"] == 0
    docs = quiet.docs()
    assert {n: docs[n].id for n in ids} == ids
    for name in ids:
        assert ours(docs[name]) == expected_values(quiet, name)
    assert record(docs["manual.md"]) == manual_before
    # and it keeps owning them: an edit updates the same document; the next pass is a no-op
    quiet.write("q1.md", "first of q, edited")
    body = ok(quiet.reconcile())
    assert body["updated"] == 1 and quiet.docs()["q1.md"].id == ids["q1.md"]
    assert ours(quiet.docs()["q1.md"]) == expected_values(quiet, "q1.md")
    emulator.reset_requests()
    body = ok(quiet.reconcile())
    assert body["tagged"] == 0 and quiet.mutations() == 0


# --- 5. other people's values --------------------------------------------------------------------


@pytest.mark.parametrize("partial_update", [True, False], ids=["current-server", "before-1.11"])
def test_a_users_own_metadata_value_survives_difysyncs_writes(tmp_path, partial_update):
    with EmulatorServer(partial_update=partial_update) as emu:
        # Given a difysync document on which a person set a value in a field of their own
        box = Sandbox(tmp_path, emu, owner="a")
        box.write("guide.md", "version one")
        ok(box.reconcile())
        doc = box.docs()["guide.md"]
        team = emu.store.create_metadata(box.dataset, "string", "team")
        emu.store.update_documents_metadata(box.dataset, [(doc.id, [(team["id"], "team", "blue")], True)])
        assert doc.doc_metadata["team"] == "blue" and doc.doc_metadata[tags.OWNER] == "a"

        # When difysync updates the document (new content), then renames it
        box.write("guide.md", "version two, longer")
        body = ok(box.reconcile())
        assert body["updated"] == 1

        # Then the person's value is still there, bound and visible, beside difysync's new values
        doc = box.docs()["guide.md"]
        assert doc.content == b"version two, longer"
        assert doc.doc_metadata["team"] == "blue"
        assert ours(doc) == expected_values(box, "guide.md")
        visible = {m["name"]: m["value"] for m in emu.store.doc_metadata_details(doc, typed=True) or ()}
        assert visible.get("team") == "blue", visible

        box.move("guide.md", "docs/guide.md")
        body = ok(box.reconcile())
        assert body["renamed"] == 1
        doc = box.docs()["docs∕guide.md"]
        assert doc.doc_metadata["team"] == "blue"
        assert ours(doc) == expected_values(box, "docs/guide.md")
        visible = {m["name"]: m["value"] for m in emu.store.doc_metadata_details(doc, typed=True) or ()}
        assert visible.get("team") == "blue" and visible.get(tags.PATH) == "docs/guide.md", visible


@pytest.mark.parametrize("partial_update", [True, False], ids=["current-server", "before-1.11"])
def test_a_users_number_and_time_values_keep_their_type_across_difysyncs_update(tmp_path, partial_update):
    with EmulatorServer(partial_update=partial_update) as emu:
        # Given a difysync document with a person's number and time values on it
        box = Sandbox(tmp_path, emu, owner="a")
        box.write("guide.md", "version one")
        ok(box.reconcile())
        doc = box.docs()["guide.md"]
        score = emu.store.create_metadata(box.dataset, "number", "score")
        reviewed = emu.store.create_metadata(box.dataset, "time", "reviewed")
        emu.store.update_documents_metadata(box.dataset, [(doc.id, [(score["id"], "score", 5),
                                                                    (reviewed["id"], "reviewed", 1_700_000_000)], True)])

        # When difysync updates the document
        box.write("guide.md", "version two, longer")
        assert ok(box.reconcile())["updated"] == 1

        # Then the values are kept as they were: the same values, of the same JSON types
        values = box.docs()["guide.md"].doc_metadata
        assert (values["score"], values["reviewed"]) == (5, 1_700_000_000), values


def test_a_value_a_person_sets_while_a_pass_runs_is_not_reverted(tmp_path, emulator):
    # Given a difysync document with a person's value team = "blue", and an edit to send
    box = Sandbox(tmp_path, emulator, owner="a")
    box.write("guide.md", "version one")
    ok(box.reconcile())
    doc = box.docs()["guide.md"]
    team = emulator.store.create_metadata(box.dataset, "string", "team")
    emulator.store.update_documents_metadata(box.dataset, [(doc.id, [(team["id"], "team", "blue")], True)])
    box.write("guide.md", "version two, longer")

    # When the person sets team = "red" after difysync listed the dataset, just before its
    # metadata write lands (the server's store is wrapped to do so: no timing involved)
    store = emulator.store
    real = store.update_documents_metadata
    person = {"done": False}

    def person_first(dataset_id, operations):
        if not person["done"]:
            person["done"] = True
            real(dataset_id, [(doc.id, [(team["id"], "team", "red")], True)])
        return real(dataset_id, operations)

    store.update_documents_metadata = person_first  # type: ignore[method-assign]
    try:
        assert ok(box.reconcile())["updated"] == 1
    finally:
        del store.update_documents_metadata
    assert person["done"]

    # Then the person's newer value stands, beside difysync's own new values
    values = box.docs()["guide.md"].doc_metadata
    assert values[tags.SHA256] == hashlib.sha256(b"version two, longer").hexdigest()
    assert values["team"] == "red", values


def test_a_difysync_field_a_person_deleted_is_made_again_and_the_tags_converge(tmp_path, emulator):
    # Given an imported folder, and then a person deletes the difysync_owner field in Dify
    box = Sandbox(tmp_path, emulator, owner="a")
    box.write("a.md", "alpha")
    box.write("b.md", "beta")
    ok(box.reconcile())
    emulator.store.delete_metadata(box.dataset, emulator.store.metadata_field(box.dataset, tags.OWNER).id)
    assert all(tags.OWNER not in (d.doc_metadata or {}) for d in box.docs().values())

    # When difysync runs a few passes
    for _ in range(3):
        ok(box.reconcile())

    # Then the field exists again, the documents show their owner in the listing, and a
    # pass with nothing changed sends no metadata request
    assert emulator.store.metadata_field(box.dataset, tags.OWNER) is not None
    for doc in box.docs().values():
        shown = {m["name"]: m["value"] for m in emulator.store.doc_metadata_details(doc, typed=False) or ()}
        assert shown.get(tags.OWNER) == "a", shown
    emulator.reset_requests()
    body = ok(box.reconcile())
    assert body["tagged"] == 0 and metadata_paths(emulator) == []


# --- 6. metadata faults ----------------------------------------------------------------------------


def test_failed_metadata_writes_never_fail_the_files_and_converge_on_a_later_pass(tmp_path):
    faults = Faults(metadata_error_rate=1.0, seed=7)
    with EmulatorServer(faults=faults) as emu:
        # Given a server whose metadata routes all fail during the import
        box = Sandbox(tmp_path, emu, owner="a")
        for rel in ("one.md", "two.md", "dir/three.md"):
            box.write(rel, f"content of {rel}")

        # When the folder is imported
        result = box.reconcile()

        # Then the files are created, nothing failed, exit 0; the documents carry no tags yet
        body = ok(result)
        assert body["created"] == 3 and body["failed"] == 0
        assert len(box.docs()) == 3
        assert all(not ours(d) for d in box.docs().values())
        assert metadata_paths(emu), "the metadata routes were tried"

        # When the metadata routes work again
        emu.faults.metadata_error_rate = 0.0
        body = ok(box.reconcile())

        # Then the fields converge in a later pass, with tag actions and no uploads
        assert body["tagged"] == 3 and len(actions(body, "tag")) == 3, body
        assert body["created"] == body["updated"] == 0
        for rel in ("one.md", "two.md", "dir/three.md"):
            assert ours(box.docs()[rel.replace("/", "∕")]) == expected_values(box, rel)

        # And then a no-op pass sends no metadata request at all (nor any other write)
        emu.reset_requests()
        body = ok(box.reconcile())
        assert body["tagged"] == 0
        assert metadata_paths(emu) == []
        assert box.mutations() == 0


# --- 7. a server without the metadata API ------------------------------------------------------------


def test_a_legacy_server_without_metadata_works_as_before_and_says_so_once(tmp_path):
    with EmulatorServer(legacy=True) as emu:
        # Given an old server (no metadata API: its routes answer 404)
        box = Sandbox(tmp_path, emu, owner="a")
        box.write("a.md", "alpha")
        box.write("b.md", "beta")
        box.write("sub/c.md", "gamma")
        stderr = []

        # When a folder is imported, edited, partly deleted, then passed over with no change
        first = box.reconcile()
        stderr.append(first.stderr)
        body = ok(first)
        assert body["created"] == 3
        seen = metadata_paths(emu)
        assert len(seen) == 1 and seen[0].startswith("GET "), seen
        first_404 = [r for r in emu.requests if "/metadata" in r.path]
        assert first_404[0].status == 404

        box.write("a.md", "alpha, edited")
        edit = box.reconcile()
        stderr.append(edit.stderr)
        assert ok(edit)["updated"] == 1

        box.remove("b.md")
        delete = box.reconcile()
        stderr.append(delete.stderr)
        assert ok(delete)["deleted"] == 1

        box.move("sub/c.md", "c.md")
        move = box.reconcile()
        stderr.append(move.stderr)
        assert ok(move)["renamed"] == 1

        noop = box.reconcile()
        stderr.append(noop.stderr)
        body = ok(noop)

        # Then everything is mirrored as without metadata
        assert box.contents() == {"a.md": b"alpha, edited", "c.md": b"gamma"}
        assert body["created"] == body["updated"] == body["deleted"] == body["tagged"] == 0
        # and no metadata request was sent after the first 404
        assert metadata_paths(emu) == seen
        # and at most one INFO line says that metadata is off
        said = [line for text in stderr for line in text.splitlines() if "no metadata API" in line]
        assert len(said) == 1, said  # once: "at most one", and it is said
        assert " INFO " in said[0], said


# --- 8. two daemons ---------------------------------------------------------------------------------


def service_box(tmp_path: Path, emu: EmulatorServer, owner: str, dataset_id: str, extra_folder: str = "") -> Sandbox:
    box = shared_box(tmp_path, emu, owner, dataset_id, extra_folder=extra_folder)
    set_config(box, "[[folders]]",
               f"[watch]\ndebounce_seconds = {DEBOUNCE}\ndelete_delay_seconds = {DELETE_DELAY}\n"
               "max_delay_seconds = 5\n[schedule]\nstatus_poll_seconds = 1\n[[folders]]")
    return box


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.kill()


def test_two_services_on_one_dataset_mirror_their_own_folders_and_touch_nothing_of_the_other(tmp_path, emulator,
                                                                                                 daemons):
    # Given two services (owners a and b, separate folders and state DBs) on one dataset;
    # b's folder has name_prefix "b/", and both trees hold the same paths (some with the
    # same content)
    ds = emulator.store.create_dataset("Shared", "high_quality")
    a = service_box(tmp_path, emulator, "a", ds)
    b = service_box(tmp_path, emulator, "b", ds, extra_folder='name_prefix = "b/"')
    for box in (a, b):
        box.write("keep.md", "the same in both")
        box.write("guide.md", f"{box.owner}'s guide")
        box.write("notes/x.md", "same note text")
        box.write("notes/y.md", f"{box.owner}'s y")

    def mirrored() -> bool:
        return a.contents() == {**mirror(a), **mirror(b, "b/")}

    def tagged() -> bool:
        docs = a.docs()
        return all(ours(docs[n]) == expected_values(a, n.replace("∕", "/")) for n in mirror(a)) and \
            all(ours(docs[n]) == expected_values(b, n[2:].replace("∕", "/")) for n in mirror(b, "b/"))

    # When both run
    daemons.append(Daemon(a))
    daemons.append(Daemon(b))
    for d in daemons:
        d.wait_ready()
    wait_until(lambda: mirrored() and tagged(), 20, what="both initial imports, tagged")
    first = {d.id: (d.name, d.doc_metadata[tags.OWNER]) for d in emulator.store.documents(ds)}
    assert sorted(owner for _, owner in first.values()) == ["a"] * 4 + ["b"] * 4

    # When each side edits, creates, moves and deletes in its own folder
    b_untouched = {d.id for d in emulator.store.documents(ds) if d.name in ("b∕keep.md", "b∕notes∕y.md")}
    a_untouched = {d.id for d in emulator.store.documents(ds) if d.name in ("keep.md", "notes∕y.md")}
    b_before = snapshot(emulator, ds, ids=b_untouched)
    a_before = snapshot(emulator, ds, ids=a_untouched)
    a.write("guide.md", "a's guide, edited")
    a.move("notes/x.md", "notes/moved-x.md")
    a.write("new-a.md", "new on a")
    b.write("guide.md", "b's guide, edited too")
    b.remove("notes/x.md")
    b.write("new-b.md", "new on b")
    a.write("new.md", "a new one")
    b.write("new.md", "b new one")

    # Then each folder is mirrored exactly, each document tagged with its own folder's owner
    wait_until(lambda: mirrored() and tagged(), DELETE_DELAY + 20, what="both sides' changes, tagged")
    for d in daemons:
        assert d.proc.poll() is None, d.log
    docs = a.docs()
    owners = {n: docs[n].doc_metadata[tags.OWNER] for n in docs}
    assert owners == {**{n: "a" for n in mirror(a)}, **{n: "b" for n in mirror(b, "b/")}}
    # the edited and moved documents kept their ids and owners
    by_name = {name: i for i, (name, _) in first.items()}
    assert docs["guide.md"].id == by_name["guide.md"] and docs["b∕guide.md"].id == by_name["b∕guide.md"]
    assert docs["notes∕moved-x.md"].id == by_name["notes∕x.md"]
    assert by_name["b∕notes∕x.md"] not in {d.id for d in docs.values()}
    # and what neither side changed was not touched by the other
    assert snapshot(emulator, ds, ids=b_untouched) == b_before
    assert snapshot(emulator, ds, ids=a_untouched) == a_before
    # neither log reports a write on a document of the other
    a_ids = {i for i, (_, owner) in first.items() if owner == "a"} | {docs[n].id for n in mirror(a)}
    b_ids = {i for i, (_, owner) in first.items() if owner == "b"} | {docs[n].id for n in mirror(b, "b/")}
    writes = ("created ", "updated ", "renamed ", "deleted ", "adopted ", "tagged ", "recreated ")

    def written(log: str) -> str:
        return "\n".join(line for line in log.splitlines() if any(w in line for w in writes))

    assert not any(i in written(daemons[0].log) for i in b_ids), written(daemons[0].log)
    assert not any(i in written(daemons[1].log) for i in a_ids), written(daemons[1].log)
    assert "name held" not in daemons[0].log + daemons[1].log

    for d in daemons:
        assert d.stop() == 0, d.log
    assert mirrored()
