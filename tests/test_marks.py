"""Quiet passes: after a full pass that changed nothing, a pass over an unchanged folder
checks the dataset with a few small requests instead of listing it all, and falls back
to the full listing whenever anything (local, remote, state, configuration) moved."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import parse_qs

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from difysync.dify import DifyClient
from difysync.emulator import EmulatorServer
from difysync.marks import FLAGGED_STATUSES, ListingRecorder, Mark
from difysync.remote import RemoteView
from difysync.naming import document_name
from difysync.state import StateStore

from .sandbox import Sandbox, modules_of_a_pass
from .test_daemon import Daemon, daemon_box, wait_until

# Enough documents that a probe (7 requests) is cheaper than a listing (8 pages).
N = 720


def synced_box(tmp_path, emu: EmulatorServer, **kwargs) -> Sandbox:
    return synced(Sandbox(tmp_path, emu, **kwargs))


def synced(box: Sandbox) -> Sandbox:
    """N Markdown files and a PNG, mirrored (preloaded, then adopted), and one more full
    pass, which leaves a mark."""
    box.preload({f"d{i // 60:02d}/f{i:04d}.md": f"document {i}" for i in range(N)})
    box.write("picture.png", b"\x89PNG")
    adopt = box.reconcile()
    assert adopt.code == 0 and adopt.json["unchanged"] == N, adopt.stdout[:300]
    clean = box.reconcile()
    assert clean.code == 0 and check(box, clean) == "listing"
    assert clean.json["unchanged"] == N and clean.json["skipped"] == 1
    return box


def check(box: Sandbox, result) -> str:
    return result.json["remote_checks"][str(box.root)]


def reads(box: Sandbox) -> list[dict[str, list[str]]]:
    return [parse_qs(r.query) for r in box.emu.requests if r.method == "GET"]


@pytest.fixture
def box(tmp_path, emulator) -> Sandbox:
    return synced_box(tmp_path, emulator)


def newest(box: Sandbox):
    return max(box.emu.store.documents(box.dataset), key=lambda d: d.seq)


def some_document(box: Sandbox, rel: str = "d05/f0300.md"):
    return box.docs()[document_name(rel)]


# --- a quiet pass --------------------------------------------------------------------------


def test_quiet_pass_probes_with_seven_small_requests_instead_of_listing(box):
    box.emu.reset_requests()
    result = box.reconcile()
    assert result.code == 0 and check(box, result) == "probe"
    assert result.json["unchanged"] == N and result.json["skipped"] == 1 and result.json["hashed"] == 0
    assert [a["path"] for a in result.json["actions"]] == ["picture.png"]  # the skip is still reported
    assert box.mutations() == 0
    queries = reads(box)
    assert len(queries) == 7 and len(box.emu.requests) == 7
    assert sorted(q.get("status", [""])[0] for q in queries) == sorted(("",) + FLAGGED_STATUSES)
    assert all(q.get("page") == ["1"] for q in queries)


def test_a_quiet_pass_loads_only_what_it_uses(box):
    """Start-up is a large share of a quiet pass (issue 13). It reads the state with plain
    SQL (no sqlite-utils), nobody watches it (no rich), its settings are the ones the last
    validation kept (no pydantic: settingsfile.py), and it sends nothing (no apply step,
    no segments, no adoptions)."""
    code, modules, out = modules_of_a_pass(box)
    assert code == 0
    assert json.loads(out)["remote_checks"][str(box.root)] == "probe"
    heavy = ("sqlite_utils", "rich", "pygments", "dateutil", "pydantic", "pydantic_core", "pydantic_settings")
    assert [m for m in modules if m.split(".")[0] in heavy] == []
    unused = ("difysync.config", "difysync.apply", "difysync.segsync", "difysync.segments", "difysync.chunking",
              "difysync.adoptions", "difysync.tagging")
    assert [m for m in modules if m in unused] == []


def test_a_config_made_invalid_after_a_quiet_pass_is_refused_at_once(box):
    """The kept settings stand only for the file they were validated from."""
    box.config.write_text(box.config.read_text(encoding="utf-8") + "\nbogus = 1\n", encoding="utf-8")
    result = box.reconcile()
    assert result.code == 78 and "bogus: unknown key" in result.stderr


def test_quiet_passes_go_on_until_something_changes(box):
    for _ in range(3):
        assert check(box, box.reconcile()) == "probe"


def test_status_tells_when_the_dataset_was_last_listed_in_full(box):
    def times() -> tuple[float, float]:
        folder = box.cli("status", "-c", str(box.config), "--json").json["folders"][0]
        return folder["last_full_listing"], folder["last_full_reconcile"]

    listed, _ = times()
    assert listed is not None
    time.sleep(0.05)
    assert check(box, box.reconcile()) == "probe"
    listed_after, full_after = times()
    assert listed_after == listed and full_after > listed  # a quiet pass is a full pass, not a listing
    shown = " ".join(box.cli("status", "-c", str(box.config)).stdout.split())  # wrapped at 80 columns
    assert "whole dataset last listed 20" in shown


def test_dry_run_probes_too_and_plans_nothing(box):
    result = box.reconcile("--dry-run")
    assert check(box, result) == "probe" and result.json["unchanged"] == N


# --- every remote change makes the next pass list, and act ----------------------------------


def test_document_deleted_in_dify_is_noticed_and_created_again(box):
    box.emu.store.delete_document(box.dataset, some_document(box).id)
    result = box.reconcile()
    assert check(box, result) == "listing" and result.json["created"] == 1
    assert len(box.docs()) == N


def test_delete_hidden_by_an_upload_elsewhere_is_still_noticed(box):
    # The total stays the same; the new document shows on the newest page.
    box.emu.store.delete_document(box.dataset, some_document(box).id)
    box.emu.store.add_document(box.dataset, "uploaded in the UI.md", b"x", match_by_name=False)
    result = box.reconcile()
    assert check(box, result) == "listing" and result.json["created"] == 1


def test_document_failing_in_dify_is_noticed_and_recreated(box):
    box.emu.store.set_document(box.dataset, some_document(box).id, indexing_status="error", error="boom")
    result = box.reconcile()
    assert check(box, result) == "listing" and result.json["created"] == 1


@pytest.mark.parametrize("action", ["disable", "archive"])
def test_document_disabled_or_archived_in_dify_is_noticed(box, action):
    box.emu.store.set_status(box.dataset, action, [some_document(box).id])
    result = box.reconcile()
    assert check(box, result) == "listing" and box.mutations() == 0  # unchanged content: left as is
    assert check(box, box.reconcile()) == "probe"  # that listing pass left a mark with it
    box.write("d05/f0300.md", "edited while disabled")
    result = box.reconcile()
    assert check(box, result) == "listing" and box.mutations() == 0
    assert any(a["path"] == "d05/f0300.md" and a["action"] == "skip" for a in result.json["actions"])


def test_swapping_which_document_is_disabled_is_noticed(box):
    a, b = some_document(box, "d01/f0100.md"), some_document(box, "d02/f0150.md")
    box.emu.store.set_status(box.dataset, "disable", [a.id])
    assert check(box, box.reconcile()) == "listing"  # a clean pass with one disabled document
    assert check(box, box.reconcile()) == "probe"
    box.emu.store.set_status(box.dataset, "enable", [a.id])
    box.emu.store.set_status(box.dataset, "disable", [b.id])  # same count of disabled documents
    assert check(box, box.reconcile()) == "listing"


def test_rename_on_the_newest_page_is_noticed_and_put_back(box):
    doc = newest(box)
    box.emu.store.set_document(box.dataset, doc.id, name="renamed in the UI.md")
    result = box.reconcile()
    assert check(box, result) == "listing" and result.json["renamed"] == 1


def test_foreign_upload_is_noticed_and_left_alone(box):
    box.emu.store.add_document(box.dataset, "someone else's.md", b"theirs", match_by_name=False)
    result = box.reconcile()
    assert check(box, result) == "listing" and box.mutations() == 0
    assert check(box, box.reconcile()) == "probe"


def test_reindexing_in_dify_is_noticed(box):
    box.emu.store.set_document(box.dataset, some_document(box).id, indexing_status="indexing")
    assert check(box, box.reconcile()) == "listing"


# --- every local change, too --------------------------------------------------------------


def test_edited_file_is_updated(box):
    box.write("d05/f0300.md", "edited")
    result = box.reconcile()
    assert check(box, result) == "listing" and result.json["updated"] == 1
    assert some_document(box).content == b"edited"


def test_new_and_removed_files_are_acted_on(box):
    box.write("new.md", "new")
    box.remove("d00/f0000.md")
    result = box.reconcile()
    assert result.json["created"] == 1 and result.json["deleted"] == 1


def test_touched_file_is_hashed_once_then_passes_are_quiet_again(box):
    path = box.root / "d05/f0300.md"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    first = box.reconcile()
    assert check(box, first) == "listing" and first.json["hashed"] == 1 and box.mutations() == 0
    assert check(box, box.reconcile()) == "probe"


def test_new_unsupported_file_is_reported_as_skipped(box):
    box.write("notes.xyz", "?")
    result = box.reconcile()
    assert result.json["skipped"] == 2


# --- state and configuration ---------------------------------------------------------------


def test_retry_drops_the_mark(box):
    assert box.cli("retry", "-c", str(box.config), "--all").code == 0
    assert check(box, box.reconcile()) == "listing"


def test_full_listing_flag_lists(box):
    assert check(box, box.reconcile("--full-listing")) == "listing"


def test_full_listing_minutes_zero_always_lists(box):
    env = {"DIFYSYNC_SCHEDULE__FULL_LISTING_MINUTES": "0"}
    assert check(box, box.reconcile(env=env)) == "listing"
    assert check(box, box.reconcile(env=env)) == "listing"


def test_an_old_mark_forces_a_full_listing(box):
    env = {"DIFYSYNC_SCHEDULE__FULL_LISTING_MINUTES": "0.001"}  # 60 ms
    time.sleep(0.1)
    assert check(box, box.reconcile(env=env)) == "listing"


def test_changed_allowed_extensions_are_applied_at_once(box):
    result = box.reconcile(env={"DIFYSYNC_DIFY__ALLOWED_EXTENSIONS": '["md", "png"]'})
    assert check(box, result) == "listing", result.json
    assert [(a["path"], a["action"]) for a in result.json["actions"]] == [("picture.png", "create")]


def test_a_damaged_mark_costs_one_listing(box):
    with StateStore(box.tmp / "state.db") as store:
        store.db.execute("UPDATE marks SET body = '{not json'")
    assert check(box, box.reconcile()) == "listing"
    assert check(box, box.reconcile()) == "probe"


def test_server_that_ignores_the_status_filter_always_gets_listings(tmp_path):
    with EmulatorServer(status_filter=False) as emu:
        box = synced_box(tmp_path, emu)
        for _ in range(2):
            result = box.reconcile()
            assert check(box, result) == "listing" and result.json["unchanged"] == N


def test_small_dataset_is_listed_since_that_is_cheaper(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    box.reconcile()
    box.reconcile()
    emulator.reset_requests()
    assert check(box, box.reconcile()) == "listing"
    assert emulator.count(method="GET") == 1


# --- the service -------------------------------------------------------------------------


def test_the_services_scheduled_passes_are_quiet_and_still_catch_a_remote_delete(tmp_path, emulator):
    box = synced(daemon_box(tmp_path, emulator, watch='mode = "off"',
                            schedule="full_reconcile_minutes = 0.03"))  # about every 2 s
    emulator.reset_requests()
    daemon = Daemon(box)
    try:
        daemon.wait_ready()
        wait_until(lambda: sum("status=error" in r.query for r in emulator.requests) >= 3, 20,
                   what="three quiet passes")
        assert not any(r.query.startswith("page=2") or "&page=2" in r.query for r in emulator.requests)
        assert box.mutations() == 0
        emulator.store.delete_document(box.dataset, some_document(box).id)
        wait_until(lambda: len(box.docs()) == N, 20, what="the deleted document made again")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


# --- the probe's own promise ---------------------------------------------------------------

HEAD = 100
CHANGES = ("create", "delete", "disable", "enable", "archive", "unarchive", "fail", "heal",
           "rename_head", "rename_tail")


@pytest.fixture(scope="module")
def shared_emulator():
    with EmulatorServer() as emu:
        yield emu


def _apply(store, ds: str, change: str, pick: int) -> None:
    docs = sorted(store.documents(ds), key=lambda d: -d.seq)  # newest first
    doc = docs[pick % len(docs)]
    if change == "create":
        store.add_document(ds, f"new-{pick}.md", b"new", match_by_name=False)
    elif change == "delete":
        store.delete_document(ds, doc.id)
    elif change in ("disable", "enable", "archive"):
        store.set_document(ds, doc.id, **({"archived": True} if change == "archive"
                                          else {"enabled": change == "enable"}))
    elif change == "unarchive":
        store.set_document(ds, doc.id, archived=False)
    elif change == "fail":
        store.set_document(ds, doc.id, indexing_status="error", error="boom")
    elif change == "heal":
        store.set_document(ds, doc.id, indexing_status=None)
    elif change == "rename_head":
        store.set_document(ds, docs[pick % HEAD].id, name=f"renamed-{pick}.md")
    else:  # rename_tail: beyond the newest page, the one change the probe is blind to
        store.set_document(ds, docs[HEAD + pick % (len(docs) - HEAD)].id, name=f"renamed-{pick}.md")


def _what_a_plan_reads(docs):
    return {(d.id, d.indexing_status, d.display_status, d.enabled, d.archived, d.error) for d in docs}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(changes=[("rename_tail", 7)])  # the probe cannot see it: the "unchanged" branch runs for sure
@example(changes=[("enable", 3)])  # enabling an enabled document changes nothing
@example(changes=[("delete", 5), ("create", 1)])  # same total, new newest page
@given(changes=st.lists(st.tuples(st.sampled_from(CHANGES), st.integers(0, 10_000)), min_size=1, max_size=4))
def test_an_unchanged_probe_means_an_unchanged_listing_but_for_renames_past_the_newest_page(
        shared_emulator, changes):
    store = shared_emulator.store
    ds = store.create_dataset(f"ds-{time.monotonic_ns()}", "economy")
    for i in range(150):
        store.add_document(ds, f"doc-{i}.md", b"x", match_by_name=False)
    with DifyClient(shared_emulator.base_url, shared_emulator.api_key) as client:
        recorder = ListingRecorder()
        before = client.list_documents(ds, on_page=recorder.on_page)
        fingerprint = recorder.fingerprint()
        assert fingerprint is not None and RemoteView(client, ds).probe() == fingerprint
        for change, pick in changes:
            _apply(store, ds, change, pick)
        after = client.list_documents(ds)
        unchanged = RemoteView(client, ds).probe() == fingerprint
    store.delete_dataset(ds)
    if unchanged:
        assert _what_a_plan_reads(after) == _what_a_plan_reads(before)
        names_before = {d.id: d.name for d in before}
        renamed = {d.id for d in after if names_before[d.id] != d.name}
        tail = {d.id for d in before[HEAD:]}
        assert renamed <= tail and (not renamed or any(c == "rename_tail" for c, _ in changes))


def test_mark_round_trips_through_json(box):
    with StateStore(box.tmp / "state.db") as store:
        body = store.load_mark(str(box.root), box.dataset)
    mark = Mark.from_json(body)
    assert mark is not None and Mark.from_json(mark.to_json()) == mark
    assert [s.rel_path for s in mark.skips] == ["picture.png"] and mark.unchanged == N
