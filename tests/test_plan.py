"""The planner, as a specification: given what is local, remembered and remote, which
actions follow. Examples first, then properties over generated inputs (hypothesis)."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from difysync.models import NO_TAGS, FileState, JournalEntry, LocalFile, RemoteDocument, SkipCode
from difysync.naming import document_name
from difysync.plan import Action, Kind, MaxDelete, Plan, Policy, is_settled, plan_folder, refusal
from difysync.tags import expected as expected_tags


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def local(path: str, content: str = "x", size: int | None = None) -> LocalFile:
    return LocalFile(path, size if size is not None else len(content), 1, 1, sha(content))


def tracked(path: str, doc_id: str, content: str = "x") -> FileState:
    return FileState(path, size=len(content), mtime_ns=1, inode=1, sha256=sha(content),
                     document_id=doc_id, document_name=document_name(path), indexing_status="completed")


def remote(doc_id: str, path: str, *, status: str = "completed", size: int = 1, **kw) -> RemoteDocument:
    return RemoteDocument(doc_id, document_name(path), indexing_status=status, size=size, **kw)


def kinds(plan: Plan) -> list[tuple[str, str]]:
    return [(str(a.kind), a.rel_path) for a in plan.actions]


# --- examples ---------------------------------------------------------------------------

def test_new_file_is_created():
    plan = plan_folder([local("a.md")], {}, [])
    assert kinds(plan) == [("create", "a.md")]
    assert plan.actions[0].document_name == "a.md"


def test_unchanged_file_needs_nothing():
    plan = plan_folder([local("a.md")], {"a.md": tracked("a.md", "d1")}, [remote("d1", "a.md")])
    assert plan.actions == () and plan.unchanged == 1


def test_changed_content_updates_the_same_document():
    plan = plan_folder([local("a.md", "new")], {"a.md": tracked("a.md", "d1", "old")},
                       [remote("d1", "a.md")])
    assert kinds(plan) == [("update", "a.md")]
    assert plan.actions[0].document_id == "d1"


LOCAL_MD = Policy(local_chunk_types=frozenset({"md"}))


def test_switching_a_folder_to_local_chunking_sends_its_text_files_once_more_whole():
    row = tracked("a.md", "d1")
    plan = plan_folder([local("a.md"), local("b.pdf")], {"a.md": row, "b.pdf": tracked("b.pdf", "d2")},
                       [remote("d1", "a.md"), remote("d2", "b.pdf")], policy=LOCAL_MD)
    assert kinds(plan) == [("update", "a.md")]  # the pdf is not split locally: unchanged
    assert not is_settled(local("a.md"), row, remote("d1", "a.md"), LOCAL_MD)
    chunked = _with_chunking(row, "local")
    assert plan_folder([local("a.md")], {"a.md": chunked}, [remote("d1", "a.md")], policy=LOCAL_MD).actions == ()
    assert is_settled(local("a.md"), chunked, remote("d1", "a.md"), LOCAL_MD)


def test_switching_back_to_server_chunking_sends_locally_split_files_as_files():
    chunked = _with_chunking(tracked("a.md", "d1"), "local")
    plan = plan_folder([local("a.md")], {"a.md": chunked}, [remote("d1", "a.md")])
    assert kinds(plan) == [("update", "a.md")]


def test_a_file_that_could_not_go_as_chunks_is_not_sent_again_for_it():
    as_file = _with_chunking(tracked("a.md", "d1"), "file")  # not UTF-8, say: it went as a file
    assert plan_folder([local("a.md")], {"a.md": as_file}, [remote("d1", "a.md")], policy=LOCAL_MD).actions == ()


def test_a_changed_file_that_is_also_renamed_says_so():
    plan = plan_folder([local("b.md", "new")], {"b.md": tracked("b.md", "d1", "old")}, [remote("d1", "a.md")])
    assert kinds(plan) == [("update", "b.md")] and plan.actions[0].renames


def _with_chunking(row: FileState, chunking: str) -> FileState:
    from dataclasses import replace
    return replace(row, chunking=chunking)


def test_change_while_indexing_waits():
    plan = plan_folder([local("a.md", "new")], {"a.md": tracked("a.md", "d1", "old")},
                       [remote("d1", "a.md", status="indexing")])
    assert kinds(plan) == [("wait", "a.md")]


def test_move_becomes_an_in_place_rename():
    plan = plan_folder([local("new/a.md", "same")], {"old/a.md": tracked("old/a.md", "d1", "same")},
                       [remote("d1", "old/a.md")])
    assert kinds(plan) == [("rename", "new/a.md")]
    action = plan.actions[0]
    assert action.document_id == "d1" and action.old_rel_path == "old/a.md"
    assert action.document_name == "new∕a.md"


def test_deleted_file_deletes_its_document():
    state = {"a.md": tracked("a.md", "d1"), "b.md": tracked("b.md", "d2")}
    plan = plan_folder([local("b.md")], state, [remote("d1", "a.md"), remote("d2", "b.md")])
    assert kinds(plan) == [("delete", "a.md")]


def test_foreign_documents_are_never_deleted():
    plan = plan_folder([], {}, [remote("x", "someone-elses.md")])
    assert plan.actions == ()


def test_document_deleted_in_dify_is_created_again():
    plan = plan_folder([local("a.md")], {"a.md": tracked("a.md", "gone")}, [])
    assert kinds(plan) == [("create", "a.md")]
    assert "missing" in plan.actions[0].reason


def test_document_in_error_is_recreated():
    plan = plan_folder([local("a.md")], {"a.md": tracked("a.md", "d1")},
                       [remote("d1", "a.md", status="error", error="boom")])
    assert kinds(plan) == [("recreate", "a.md")]


def test_document_failing_too_often_is_quarantined():
    row = _with(tracked("a.md", "d1"), attempts=3)
    plan = plan_folder([local("a.md")], {"a.md": row},
                       [remote("d1", "a.md", status="error", error="boom")], policy=Policy(quarantine_after=3))
    assert kinds(plan) == [("skip", "a.md")]
    assert "quarantined" in plan.actions[0].reason


def test_lost_state_adopts_documents_by_name_and_size():
    plan = plan_folder([local("a.md", "xy")], {}, [remote("d1", "a.md", size=2)])
    assert kinds(plan) == [("adopt", "a.md")]
    assert plan.actions[0].document_id == "d1" and plan.actions[0].sha256 == sha("xy")


def test_adopted_document_of_another_size_is_updated_in_place():
    plan = plan_folder([local("a.md", "xyz")], {}, [remote("d1", "a.md", size=2)])
    assert kinds(plan) == [("update", "a.md")]
    assert plan.actions[0].document_id == "d1"


def test_unsupported_type_oversize_and_empty_files_are_skipped_with_reasons():
    files = [local("a.png"), LocalFile("big.pdf", 20 * 1024 * 1024, 1, 1), LocalFile("e.md", 0, 1, 1),
             local("noext")]
    plan = plan_folder(files, {}, [])
    reasons = {a.rel_path: a.reason for a in plan.actions}
    assert all(a.kind is Kind.SKIP for a in plan.actions)
    assert "unsupported file type (.png)" == reasons["a.png"]
    assert reasons["big.pdf"].startswith("file too large")
    assert reasons["e.md"] == "empty file"
    assert "no extension" in reasons["noext"]


def test_extension_check_ignores_case():
    assert refusal("A.MD", 3, Policy()) is None
    assert refusal("x.Docx", 3, Policy()) is None


def test_file_refused_by_server_is_not_sent_again_until_it_changes():
    row = _with(FileState("a.md"), refused_sha256=sha("x"), skip_reason="refused by Dify: 415")
    assert kinds(plan_folder([local("a.md", "x")], {"a.md": row}, [])) == [("skip", "a.md")]
    assert kinds(plan_folder([local("a.md", "changed")], {"a.md": row}, [])) == [("create", "a.md")]


def test_missing_root_plans_nothing_and_reports_it():
    state = {"a.md": tracked("a.md", "d1")}
    plan = plan_folder([], state, [remote("d1", "a.md")],
                       policy=Policy(root_error="folder root /srv/docs does not exist"))
    assert plan.actions == ()
    assert "does not exist" in plan.errors[0]


def test_suddenly_empty_root_deletes_nothing():
    state = {p: tracked(p, f"d{i}") for i, p in enumerate(["a.md", "b.md"])}
    plan = plan_folder([], state, [remote("d0", "a.md"), remote("d1", "b.md")])
    assert not any(a.kind is Kind.DELETE for a in plan.actions)
    assert "empty" in plan.errors[0]


def test_mass_deletion_over_the_threshold_deletes_nothing():
    state = {f"{i}.md": tracked(f"{i}.md", f"d{i}") for i in range(10)}
    docs = [remote(f"d{i}", f"{i}.md") for i in range(10)]
    survivors = [local(f"{i}.md") for i in range(4)]
    plan = plan_folder(survivors, state, docs)
    assert plan.count(Kind.DELETE) == 0 and "would delete 6 of 10" in plan.errors[0]
    allowed = plan_folder(survivors, state, docs, policy=Policy(max_delete=MaxDelete.parse("6")))
    assert allowed.count(Kind.DELETE) == 6 and not allowed.errors


def test_deletion_disabled_forgets_without_deleting():
    plan = plan_folder([local("b.md")], {"a.md": tracked("a.md", "d1"), "b.md": tracked("b.md", "d2")},
                       [remote("d1", "a.md"), remote("d2", "b.md")], policy=Policy(delete=False))
    assert kinds(plan) == [("forget", "a.md")]


def test_interrupted_create_whose_file_vanished_is_cleaned_up():
    journal = [JournalEntry(1, "gone.md", "create", document_name("gone.md"))]
    plan = plan_folder([local("keep.md")], {"keep.md": tracked("keep.md", "k")},
                       [remote("k", "keep.md"), remote("orphan", "gone.md")], journal)
    assert ("delete", "gone.md") in kinds(plan)


def test_max_delete_parsing():
    assert MaxDelete.parse("10").limit(1000) == 10
    assert MaxDelete.parse("25%").limit(10) == 2
    with pytest.raises(ValueError):
        MaxDelete.parse("-1")


def _with(row: FileState, **changes) -> FileState:
    from dataclasses import replace
    return replace(row, **changes)


# --- owners: what difysync may touch in a shared dataset (metadata on) -------------------

ME = Policy(owner="host-a")


def tagged(doc_id: str, path: str, owner: str | None, content: str = "x", **kw) -> RemoteDocument:
    """A listed document carrying difysync's metadata (owner None: a document with none of ours)."""
    tags = expected_tags(path, sha(content), owner, 1) if owner else NO_TAGS
    return remote(doc_id, path, size=len(content), tags=tags, **kw)


def test_a_new_file_whose_name_another_owner_holds_is_skipped_naming_the_holder():
    plan = plan_folder([local("README.md")], {}, [tagged("b1", "README.md", "host-b")], policy=ME)
    (action,) = plan.actions
    assert action.kind is Kind.SKIP and action.code is SkipCode.NAME_HELD
    assert 'owner "host-b"' in action.reason and "name_prefix" in action.reason


def test_a_new_file_whose_name_a_person_holds_is_skipped():
    plan = plan_folder([local("notes.md")], {}, [tagged("p1", "notes.md", None)], policy=ME)
    assert [(a.kind, a.code) for a in plan.actions] == [(Kind.SKIP, SkipCode.NAME_HELD)]
    assert "did not make" in plan.actions[0].reason


def test_an_untagged_document_of_an_interrupted_create_is_ours():
    journal = [JournalEntry(1, "notes.md", "create", "notes.md")]
    plan = plan_folder([local("notes.md")], {}, [tagged("d1", "notes.md", None)], journal, ME)
    assert kinds(plan) == [("adopt", "notes.md")]


def test_our_tagged_document_is_adopted_only_on_an_equal_hash():
    same = plan_folder([local("a.md", "v1")], {}, [tagged("d1", "a.md", "host-a", "v1")], policy=ME)
    edited = plan_folder([local("a.md", "v2")], {}, [tagged("d1", "a.md", "host-a", "v1")], policy=ME)
    assert [(a.kind, a.sha256) for a in same.actions] == [(Kind.ADOPT, sha("v1"))]
    assert [(a.kind, a.document_id) for a in edited.actions] == [(Kind.UPDATE, "d1")]


def test_without_a_hash_a_file_newer_than_the_upload_is_sent_again_even_at_the_same_size():
    upload_second = 1_700_000_000
    newer = LocalFile("a.md", 2, (upload_second + 60) * 10**9, 1, sha("v2"))
    older = LocalFile("a.md", 2, (upload_second - 60) * 10**9, 1, sha("v1"))
    doc = remote("d1", "a.md", size=2, uploaded_at=upload_second)  # an old server: no metadata at all
    assert kinds(plan_folder([newer], {}, [doc])) == [("update", "a.md")]
    assert kinds(plan_folder([older], {}, [doc])) == [("adopt", "a.md")]


def test_a_tracked_document_another_owner_took_is_neither_updated_nor_deleted():
    state = {"a.md": tracked("a.md", "d1", "v1"), "gone.md": tracked("gone.md", "d2")}
    docs = [tagged("d1", "a.md", "host-b", "v1"), tagged("d2", "gone.md", "host-b")]
    plan = plan_folder([local("a.md", "v2")], state, docs, policy=ME)
    assert sorted((str(a.kind), a.rel_path) for a in plan.actions) == [("forget", "gone.md"), ("skip", "a.md")]


def test_stale_metadata_alone_is_a_tag_action_and_fresh_metadata_is_nothing():
    row = tracked("a.md", "d1")
    fresh = plan_folder([local("a.md")], {"a.md": row}, [tagged("d1", "a.md", "host-a")], policy=ME)
    missing = plan_folder([local("a.md")], {"a.md": row}, [tagged("d1", "a.md", None)], policy=ME)
    assert fresh.actions == () and fresh.unchanged == 1
    assert kinds(missing) == [("tag", "a.md")]
    assert not is_settled(local("a.md"), row, tagged("d1", "a.md", None), ME)
    assert is_settled(local("a.md"), row, tagged("d1", "a.md", "host-a"), ME)


def test_others_metadata_rides_along_with_an_update():
    theirs = (("f1", "team", "docs"),)
    doc = tagged("d1", "a.md", "host-a", "v1", other_metadata=theirs)
    plan = plan_folder([local("a.md", "v2")], {"a.md": tracked("a.md", "d1", "v1")}, [doc], policy=ME)
    assert [(a.kind, a.keep_metadata) for a in plan.actions] == [(Kind.UPDATE, theirs)]


def test_a_name_prefix_goes_in_front_of_every_document_name():
    plan = plan_folder([local("guides/a.md")], {}, [], policy=Policy(name_prefix="host-a/"))
    assert plan.actions[0].document_name == document_name("host-a/guides/a.md") == "host-a∕guides∕a.md"


def test_with_metadata_off_ownership_is_the_state_dbs_as_before():
    plan = plan_folder([local("README.md")], {}, [tagged("b1", "README.md", "host-b")], policy=Policy())
    assert kinds(plan) == [("adopt", "README.md")]


# --- properties -------------------------------------------------------------------------

paths = st.sampled_from(["a.md", "b.md", "c.txt", "d/e.md", "d/f.pdf", "g.png", "h.csv", "i/j/k.md"])
contents = st.sampled_from(["one", "two", "three"])
statuses = st.sampled_from(["completed", "completed", "completed", "indexing", "waiting", "error"])
# Whose a listed document is by its metadata: none listed (an old server), none of ours, or an owner's.
holders = st.sampled_from(["no metadata", "untagged", "host-a", "host-b"])


def _tags(holder: str, path: str, content: str):
    if holder == "no metadata":
        return None
    return NO_TAGS if holder == "untagged" else expected_tags(path, sha(content), holder, 1)


@st.composite
def worlds(draw):
    """A consistent-enough world: local files, state rows, remote docs, journal."""
    local_files = {p: local(p, draw(contents)) for p in draw(st.sets(paths, max_size=6))}
    state: dict[str, FileState] = {}
    docs: dict[str, RemoteDocument] = {}
    ids = itertools.count()
    for p in draw(st.sets(paths, max_size=6)):
        doc_id = f"d{next(ids)}"
        content = draw(contents)
        state[p] = tracked(p, doc_id, content)
        if draw(st.booleans()) or draw(st.booleans()):  # mostly still remote
            docs[doc_id] = remote(doc_id, p, status=draw(statuses), size=len(content),
                                  enabled=draw(st.sampled_from([True, True, True, False])),
                                  tags=_tags(draw(holders), p, content))
    for p in draw(st.sets(paths, max_size=3)):  # foreign or orphaned docs sharing our names
        doc_id = f"r{next(ids)}"
        docs[doc_id] = remote(doc_id, p, status=draw(statuses), size=3, tags=_tags(draw(holders), p, "abc"))
    for p in draw(st.sets(st.sampled_from(["x.md", "y.md"]), max_size=2)):
        doc_id = f"f{next(ids)}"
        docs[doc_id] = remote(doc_id, p, tags=_tags(draw(holders), p, "x"))
    journal = [JournalEntry(i, p, "create", document_name(p))
               for i, p in enumerate(draw(st.sets(paths, max_size=2)))]
    max_delete = draw(st.sampled_from([MaxDelete(), MaxDelete(count=1000), MaxDelete(count=0)]))
    policy = Policy(delete=draw(st.booleans()), max_delete=max_delete,
                    owner=draw(st.sampled_from([None, "host-a"])))
    return list(local_files.values()), state, list(docs.values()), journal, policy


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_every_local_file_gets_exactly_one_decision(world):
    files, state, docs, journal, policy = world
    plan = plan_folder(files, state, docs, journal, policy)
    per_path = [a.rel_path for a in plan.actions if a.kind not in (Kind.DELETE, Kind.FORGET)]
    assert len(per_path) == len(set(per_path))
    assert len(per_path) + plan.unchanged == len(files)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_no_document_is_touched_twice_and_creates_never_duplicate_a_name(world):
    files, state, docs, journal, policy = world
    plan = plan_folder(files, state, docs, journal, policy)
    touched = [a.document_id for a in plan.actions if a.mutating and a.document_id]
    assert len(touched) == len(set(touched))
    claimed = {a.document_id for a in plan.actions if a.document_id}
    claimed |= {row.document_id for rel, row in state.items() if rel in {f.rel_path for f in files}}
    for a in plan.actions:
        if a.kind is Kind.CREATE:
            same_name = [d for d in docs if d.name == a.document_name and d.id not in claimed]
            assert not same_name, f"create of {a.document_name} while {same_name} exists"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_deletes_only_touch_documents_difysync_made(world):
    files, state, docs, journal, policy = world
    plan = plan_folder(files, state, docs, journal, policy)
    ours = {row.document_id for row in state.values()}
    journal_names = {e.document_name for e in journal}
    by_id = {d.id: d for d in docs}
    for a in plan.actions:
        if a.kind is Kind.DELETE:
            assert a.document_id in ours or by_id[a.document_id].name in journal_names
            assert policy.delete


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_no_action_ever_touches_or_takes_a_document_another_owner_holds(world):
    files, state, docs, journal, policy = world
    plan = plan_folder(files, state, docs, journal, policy)
    by_id = {d.id: d for d in docs}
    for a in plan.actions:
        if a.document_id and (a.mutating or a.kind is Kind.ADOPT) and policy.owner is not None:
            assert by_id[a.document_id].owner in (None, policy.owner), a


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_deletes_never_exceed_the_limit(world):
    files, state, docs, journal, policy = world
    plan = plan_folder(files, state, docs, journal, policy)
    tracked_count = sum(1 for r in state.values() if r.document_id in {d.id for d in docs})
    synced_deletes = [a for a in plan.actions if a.kind is Kind.DELETE and not a.leftover]
    assert len(synced_deletes) <= policy.max_delete.limit(tracked_count)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_applying_the_plan_converges(world):
    """Carry out a plan against a model of the server (everything indexes at once), plan
    again: the second plan must be free of mutations, and no name is held twice."""
    files, state, docs, journal, policy = world
    policy = Policy(delete=policy.delete, max_delete=MaxDelete(count=1000))
    docs = [d if d.indexing_status != "indexing" and d.indexing_status != "waiting"
            else RemoteDocument(d.id, d.name, "completed", enabled=d.enabled, size=d.size) for d in docs]
    state, docs = _simulate(plan_folder(files, state, docs, journal, policy), files, state, docs)
    state, docs = _simulate(plan_folder(files, state, docs, [], policy), files, state, docs)
    again = plan_folder(files, state, docs, [], policy)
    assert [a for a in again.actions if a.mutating] == []
    ours = [d.name for d in docs if d.id in {r.document_id for r in state.values()}]
    assert len(ours) == len(set(ours))


def _simulate(plan: Plan, files, state, docs):
    state = dict(state)
    docs = {d.id: d for d in docs}
    by_path = {f.rel_path: f for f in files}
    new_ids = itertools.count(1000)
    for a in plan.actions:
        f = by_path.get(a.rel_path)
        if a.kind in (Kind.CREATE, Kind.RECREATE):
            if a.kind is Kind.RECREATE:
                docs.pop(a.document_id, None)
            doc_id = f"n{next(new_ids)}"
            docs[doc_id] = RemoteDocument(doc_id, a.document_name, "completed", size=f.size)
            state[a.rel_path] = _settled(a, f, doc_id)
        elif a.kind in (Kind.UPDATE, Kind.RENAME):
            old = docs[a.document_id]
            docs[a.document_id] = RemoteDocument(old.id, a.document_name, "completed", size=f.size,
                                                 enabled=old.enabled)
            state[a.rel_path] = _settled(a, f, a.document_id)
            if a.old_rel_path and a.old_rel_path != a.rel_path:
                state.pop(a.old_rel_path, None)
        elif a.kind is Kind.ADOPT:
            state[a.rel_path] = _with(_settled(a, f, a.document_id), sha256=a.sha256)
        elif a.kind is Kind.DELETE:
            docs.pop(a.document_id, None)
            state.pop(a.rel_path, None)
        elif a.kind is Kind.FORGET:
            state.pop(a.rel_path, None)
    return state, list(docs.values())


def _settled(a: Action, f: LocalFile, doc_id: str) -> FileState:
    return FileState(a.rel_path, f.size, f.mtime_ns, f.inode, f.sha256, doc_id, a.document_name,
                     indexing_status="completed")


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_leaving_settled_files_out_changes_no_decision(world):
    """A full pass drops settled files (and their rows and documents) before planning, to
    stay small in memory on big folders; the plan must be the same as with them in."""
    files, state, docs, journal, policy = world
    full = plan_folder(files, state, docs, journal, policy)
    local = {f.rel_path: f for f in files}
    by_doc = {row.document_id: row for row in state.values() if row.document_id}
    settled: set[str] = set()
    kept = []
    for doc in docs:
        row = by_doc.get(doc.id)
        if row is not None and is_settled(local.get(row.rel_path), row, doc, policy):
            settled.add(row.rel_path)
        else:
            kept.append(doc)
    rest_files = [f for f in files if f.rel_path not in settled]
    rest_state = {rel: row for rel, row in state.items() if rel not in settled}
    rest_journal = [e for e in journal if e.rel_path not in settled]
    from dataclasses import replace
    slim = plan_folder(rest_files, rest_state, kept, rest_journal,
                       replace(policy, settled_elsewhere=len(settled)))
    assert sorted(slim.actions, key=repr) == sorted(full.actions, key=repr)
    assert (slim.unchanged, slim.errors) == (full.unchanged, full.errors)


# --- adoptions decided while the listing streams in (adoptions.py) ----------------------


def _stream_then_plan(files, state, docs, journal, policy):
    """What a full pass does (remote.RemoteView.unsettled): settled files leave, certain
    adoptions leave, then the planner gets the rest and the adoptions."""
    from dataclasses import replace

    from difysync.adoptions import AdoptionStream

    local_by_path = {f.rel_path: f for f in files}
    rows = dict(state)
    by_doc = {row.document_id: row for row in rows.values() if row.document_id}
    stream = AdoptionStream(rows, {e.rel_path for e in journal} | {e.document_name for e in journal}, policy)
    kept, settled, settled_paths = [], 0, set()
    for doc in docs:
        row = by_doc.get(doc.id)
        if row is None:
            f = local_by_path.get(doc.tags.path) if doc.tags is not None and doc.tags.path else None
            if stream.offer(doc, f):
                del local_by_path[f.rel_path]
            else:
                kept.append(doc)
        elif is_settled(local_by_path.get(row.rel_path), row, doc, policy):
            settled += 1
            settled_paths.add(row.rel_path)
            rows.pop(row.rel_path)
            local_by_path.pop(row.rel_path, None)
        else:
            stream.offer(doc, None)
            kept.append(doc)
    for doc, f in stream.given_back():
        kept.append(doc)
        local_by_path[f.rel_path] = f
    rest_journal = [e for e in journal if e.rel_path not in settled_paths]
    plan = plan_folder(list(local_by_path.values()), rows, kept, rest_journal,
                       replace(policy, settled_elsewhere=settled), stream.adopted())
    return plan, stream


def _content_of(f: LocalFile) -> str:
    return next(c for c in ("one", "two", "three") if sha(c) == f.sha256)


@st.composite
def adopting_worlds(draw):
    """A first pass after the state was lost, or a host joining: documents of ours, of
    others' and of nobody, carrying (or not) the path and hash of a local file, some names
    held twice, a few state rows and journal rows."""
    names = ["a.md", "b.md", "c.txt", "d/e.md", "d/f.pdf", "g.png", "i/j/k.md", ""]
    local_files = {p: local(p, draw(contents)) for p in draw(st.sets(st.sampled_from(names[:-1]), max_size=7))}
    state = {p: tracked(p, f"s{i}", draw(contents))
             for i, p in enumerate(draw(st.sets(st.sampled_from(names[:-1]), max_size=2)))}
    docs = []
    for i in range(draw(st.integers(0, 9))):
        p = draw(st.sampled_from(sorted(local_files) or names[:-1]))
        holder = draw(st.sampled_from(["host-a"] * 5 + ["host-b", "untagged", "no metadata"]))
        mine = local_files.get(p)
        content = draw(st.sampled_from(([_content_of(mine)] * 3 if mine else []) + ["one", "two"]))
        doc_id = draw(st.sampled_from([f"n{i}"] * 3 + [row.document_id for row in state.values()]))
        if any(d.id == doc_id for d in docs):
            doc_id = f"n{i}"
        docs.append(remote(doc_id, p, status=draw(st.sampled_from(["completed"] * 4 + ["indexing", "error"])),
                           size=len(content),
                           enabled=draw(st.sampled_from([True] * 5 + [False])), created_at=draw(st.integers(0, 3)),
                           archived=draw(st.sampled_from([False] * 5 + [True])),
                           tags=_tags(holder, p, content)))
    journal = [JournalEntry(i, p, "create", document_name(p))
               for i, p in enumerate(draw(st.sets(st.sampled_from(names[:-1]), max_size=1)))]
    policy = Policy(owner=draw(st.sampled_from(["host-a", "host-a", None])))
    order = draw(st.permutations(range(len(docs))))
    return list(local_files.values()), state, [docs[i] for i in order], journal, policy


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(adopting_worlds())
def test_adoptions_decided_while_listing_change_no_decision(world):
    """Streaming adoptions out of the listing (what keeps a first pass over a million
    synced files small) plans exactly what planning with everything in would."""
    files, state, docs, journal, policy = world
    full = plan_folder(files, state, docs, journal, policy)
    slim, _ = _stream_then_plan(files, state, docs, journal, policy)
    streamed = list(slim.adopted.actions())
    taken = set(streamed)
    assert [a for a in full.actions if a in taken] == streamed  # adoptions the planner makes, in path order
    assert [a for a in full.actions if a not in taken] == list(slim.actions)
    assert (slim.unchanged, slim.errors, slim.warnings) == (full.unchanged, full.errors, full.warnings)


def test_a_tagged_document_of_ours_for_an_untracked_file_is_adopted_while_listing():
    files = [local("a.md", "one"), local("b.md", "two")]
    docs = [remote("d1", "a.md", tags=expected_tags("a.md", sha("one"), "host-a", 1)),
            remote("d2", "b.md", tags=expected_tags("b.md", sha("other"), "host-a", 1))]
    plan, stream = _stream_then_plan(files, {}, docs, [], ME)
    assert [(a.kind, a.rel_path) for a in stream.adopted().actions()] == [(Kind.ADOPT, "a.md")]
    assert [(a.kind, a.rel_path) for a in plan.adopted.actions()] == [(Kind.ADOPT, "a.md")]
    assert kinds(plan) == [("update", "b.md")]


def test_a_second_document_of_the_same_name_gives_the_first_back_to_the_planner():
    files = [local("a.md", "one")]
    first = remote("d1", "a.md", created_at=5, tags=expected_tags("a.md", sha("one"), "host-a", 1))
    older = remote("d0", "a.md", created_at=1, tags=expected_tags("a.md", sha("one"), "host-a", 1))
    plan, stream = _stream_then_plan(files, {}, [first, older], [], ME)
    assert len(stream.adopted()) == 0 and [d.id for d, _ in stream.given_back()] == ["d1"]
    assert [(a.kind, a.document_id) for a in plan.actions] == [(Kind.ADOPT, "d0")]
    assert plan.warnings  # two documents of that name: the planner says which it took
