"""The pass <-> Dify boundary: the defects a design review found, one test each, written
to fail before the fix. Real CLI or the library's pass, real SQLite, real HTTP to the
emulator."""

from __future__ import annotations

import time

from difysync.config import load_settings
from difysync.dify import DifyClient
from difysync.emulator import EmulatorServer
from difysync.reconcile import Env, PassOptions, folder_key, reconcile_folder
from difysync.remote import IndexingPoller, wait_for_indexing
from difysync.state import StateStore

from .sandbox import Sandbox

MIB = 1024 * 1024


def _pass(box: Sandbox, paths: list[str] | None = None):
    settings = load_settings(box.config)
    with StateStore(settings.state_db) as store, DifyClient(box.emu.base_url, box.emu.api_key) as client:
        return reconcile_folder(Env(settings, client, store), settings.folders[0],
                                PassOptions(paths=tuple(paths) if paths is not None else None))


def test_a_targeted_pass_keeps_the_journal_rows_it_did_not_resolve(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    settings = load_settings(box.config)
    key = folder_key(settings.folders[0])
    with StateStore(settings.state_db) as store:
        planted = store.journal_begin(key, box.dataset, "create", "elsewhere/other.md", "elsewhere∕other.md")
    box.write("a.md", "a, edited")
    report = _pass(box, paths=["a.md"])
    assert report.counts["updated"] == 1
    with StateStore(settings.state_db) as store:
        assert [e.id for e in store.pending_journal(key)] == [planted]


def test_a_refused_update_is_not_sent_again_until_the_file_changes(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator, extra_dify="max_file_size_mb = 20")  # the server's limit is 15
    box.write("grows.md", "small at first")
    assert box.reconcile().code == 0
    box.write("grows.md", b"x" * (16 * MIB))
    first = box.reconcile()
    assert first.json["skipped"] == 1 and first.json["updated"] == 0
    emulator.reset_requests()
    for _ in range(3):
        again = box.reconcile()
        assert again.json["skipped"] == 1
    assert emulator.count(method="POST") == 0
    box.write("grows.md", "small again")
    assert box.reconcile().json["updated"] == 1


def test_the_dataset_found_by_name_is_looked_up_once_not_on_every_pass(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator, by_name=True, dataset_name="Team docs")
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    emulator.reset_requests()
    for i in range(3):
        box.write("a.md", f"edit {i}")
        assert _pass(box, paths=["a.md"]).counts["updated"] == 1
    box.write("b.md", "b")
    assert box.reconcile().json["created"] == 1
    assert [r for r in emulator.requests if r.path.rstrip("/") == "/v1/datasets"] == []


def test_indexing_polls_cost_the_same_on_a_big_dataset(tmp_path):
    with EmulatorServer(indexing_delay=1.5) as emu:
        box = Sandbox(tmp_path, emu)
        for i in range(5000):
            emu.store.add_document(box.dataset, f"other-{i}.md", b"x")
        emu.store.indexing_delay = 1.5
        box.write("new.md", "new")
        result = box.reconcile("--wait")
        assert result.json["indexing"]["finished"] is True
        polls = [r for r in emu.requests if r.method == "GET" and r.at >= _created_at(emu)]
        # 5,000 documents are 50 listing pages; each poll must cost a bounded few requests.
        assert 0 < len(polls) <= 4 * 8, [(r.path, r.query) for r in polls]


def _created_at(emu: EmulatorServer) -> float:
    return max(r.at for r in emu.requests if r.method == "POST")


def test_wait_polls_only_what_is_in_flight(tmp_path):
    with EmulatorServer(indexing_delay=0.6) as emu:
        box = Sandbox(tmp_path, emu)
        for i in range(1000):
            emu.store.add_document(box.dataset, f"other-{i}.md", b"x")
        box.write("new.md", "new")
        _pass(box)
        settings = load_settings(box.config)
        emu.reset_requests()
        with StateStore(settings.state_db) as store, DifyClient(emu.base_url, emu.api_key) as client:
            doc = box.docs()["new.md"].id
            finished, tally = wait_for_indexing(IndexingPoller(client), store,
                                                {(folder_key(settings.folders[0]), box.dataset): {doc}},
                                                timeout=10, pauses=lambda: 0.2, sleep=time.sleep,
                                                clock=time.monotonic)
        assert finished and tally == {"completed": 1}
        listing_pages = [r for r in emu.requests if r.path.endswith("/documents") and "status=" not in r.query
                         and "keyword=" not in r.query]
        assert listing_pages == []


def test_a_console_url_is_a_config_error_naming_base_url(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.config.write_text(box.config.read_text().replace(emulator.base_url, emulator.root_url + "/console/api"))
    result = box.cli("check", "-c", str(box.config))
    assert result.code == 78, (result.code, result.stdout, result.stderr)
    assert "dify.base_url" in result.stderr and "/v1" in result.stderr
    assert "rejected" not in result.stderr + result.stdout


def test_a_file_back_before_its_delete_is_sent_keeps_its_document(tmp_path, emulator):
    """A walk during a `git checkout` sees a file the checkout unlinked and has not written
    back yet: by the time the delete would go out the file is there again, so its document
    stays and the next pass updates it (one update, not a delete and a create)."""
    from difysync.reconcile import Hooks

    box = Sandbox(tmp_path, emulator)
    box.write("keep.md", "keeps the folder from being emptied")
    box.write("a.md", "before the checkout")
    assert box.reconcile().code == 0
    doc_id = box.docs()["a.md"].id
    box.remove("a.md")
    settings = load_settings(box.config)
    with StateStore(settings.state_db) as store, DifyClient(box.emu.base_url, box.emu.api_key) as client:
        report = reconcile_folder(Env(settings, client, store), settings.folders[0], PassOptions(),
                                  Hooks(on_plan=lambda plan: box.write("a.md", "after the checkout")))
    assert [(str(o.action.kind), o.result.value) for o in report.outcomes] == [("delete", "back")]
    assert report.ok and report.counts["deleted"] == 0
    assert box.docs()["a.md"].id == doc_id
    again = box.reconcile()
    assert again.json["updated"] == 1 and again.json["created"] == 0 and again.json["deleted"] == 0
    assert box.docs()["a.md"].id == doc_id and box.contents()["a.md"] == b"after the checkout"
