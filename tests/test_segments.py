"""The segment planner (segments.py): a pure function from chunks, records and the
server's segments to the segment requests of an edit, or a reason to send it whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from difysync.chunking import chunk_digest
from difysync.models import RemoteSegment, SegmentRecord
from difysync.segments import Fallback, SegmentOp, SegmentPlan, diff, pair, pending_records, plan_segments


def synced(chunks: list[str]) -> tuple[tuple[SegmentRecord, ...], list[RemoteSegment]]:
    """Records and server segments of a document that holds exactly these chunks."""
    remote = [RemoteSegment(f"s{i}", i + 1, c) for i, c in enumerate(chunks)]
    records = pair(pending_records(chunks), remote)
    assert records is not None
    return records, remote


def apply_plan(plan: SegmentPlan, chunks: list[str], remote: list[RemoteSegment]) -> list[str]:
    """What the server holds after the plan's requests (added segments go last)."""
    held = {s.id: s.content for s in remote}
    order = [s.id for s in remote]
    for n, a in enumerate(plan.actions):
        if a.op is SegmentOp.UPDATE:
            held[a.segment_id] = chunks[a.index]
        elif a.op is SegmentOp.ADD:
            held[f"new{n}"] = chunks[a.index]
            order.append(f"new{n}")
        else:
            del held[a.segment_id]
            order.remove(a.segment_id)
    return [held[i] for i in order]


CHUNKS = [f"## Part {i}\n\nText {i}." for i in range(30)]


def test_an_unchanged_file_sends_nothing() -> None:
    records, remote = synced(CHUNKS)
    plan = plan_segments(CHUNKS, records, remote)
    assert plan.fallback is None and plan.actions == ()
    assert plan.describe() == "no segment changed"


def test_one_changed_chunk_is_one_update_of_its_segment() -> None:
    records, remote = synced(CHUNKS)
    edited = CHUNKS[:7] + ["## Part 7\n\nNew."] + CHUNKS[8:]
    plan = plan_segments(edited, records, remote)
    assert [(a.op, a.segment_id) for a in plan.actions] == [(SegmentOp.UPDATE, "s7")]
    assert plan.describe() == "update 1 segment"
    assert plan.records[7].chunk_sha256 == chunk_digest(edited[7])


def test_an_inserted_chunk_is_an_add_and_a_removed_one_a_delete() -> None:
    records, remote = synced(CHUNKS)
    plan = plan_segments(CHUNKS[:3] + ["## New"] + CHUNKS[3:], records, remote)
    assert [a.op for a in plan.actions] == [SegmentOp.ADD]
    plan = plan_segments(CHUNKS[:3] + CHUNKS[4:], records, remote)
    assert [(a.op, a.segment_id) for a in plan.actions] == [(SegmentOp.DELETE, "s3")]


def test_more_than_half_changed_goes_whole() -> None:
    records, remote = synced(CHUNKS)
    plan = plan_segments([c + " changed" for c in CHUNKS[:20]] + CHUNKS[20:], records, remote)
    assert plan.fallback is Fallback.MOST_CHANGED


def test_a_server_that_differs_from_the_records_goes_whole() -> None:
    records, remote = synced(CHUNKS)
    edited_by_a_person = remote[:4] + [remote[4]._replace(content="changed in the UI")] + remote[5:]
    assert plan_segments(CHUNKS, records, edited_by_a_person).fallback is Fallback.SERVER_CHANGED
    assert plan_segments(CHUNKS, records, remote[:-1]).fallback is Fallback.SERVER_CHANGED
    extra = remote + [RemoteSegment("x", 99, "added by hand")]
    assert plan_segments(CHUNKS, records, extra).fallback is Fallback.SERVER_CHANGED
    disabled = remote[:2] + [remote[2]._replace(enabled=False)] + remote[3:]
    assert plan_segments(CHUNKS, records, disabled).fallback is Fallback.SERVER_CHANGED


def test_no_records_or_no_segment_api_goes_whole() -> None:
    _, remote = synced(CHUNKS)
    assert plan_segments(CHUNKS, (), remote).fallback is Fallback.NOT_RECORDED
    assert plan_segments(CHUNKS, pending_records(CHUNKS), None).fallback is Fallback.NO_SEGMENT_API


def test_records_of_a_whole_upload_pair_with_what_the_server_stripped() -> None:
    stripped = [RemoteSegment(f"s{i}", i + 1, c.lstrip("#").strip()) for i, c in enumerate(CHUNKS)]
    paired = pair(pending_records(CHUNKS), stripped)
    assert paired is not None and [r.segment_id for r in paired] == [f"s{i}" for i in range(30)]
    assert pair(pending_records(CHUNKS), stripped[:-1]) is None
    assert pair(pending_records(CHUNKS), stripped[::-1]) is not None  # positions decide the order ...
    swapped = [s._replace(position=31 - s.position) for s in stripped]
    assert pair(pending_records(CHUNKS), swapped) is None  # ... and they must match the chunks'


texts = st.lists(st.sampled_from([f"chunk {i}" for i in range(12)]), max_size=14)


@settings(max_examples=300, deadline=None)
@given(old=texts, new=texts)
def test_the_server_holds_the_new_chunks_after_any_planned_edit(old: list[str], new: list[str]) -> None:
    if not old:
        return
    records, remote = synced(old)
    plan = diff(new, records)
    if plan.fallback is not None:
        assert len(plan.actions) == 0
        return
    assert sorted(apply_plan(plan, new, remote)) == sorted(new)
    assert [r.chunk_sha256 for r in plan.records] == [chunk_digest(c) for c in new]
    kept = sum(1 for r in plan.records if r.server_sha256 is not None)
    assert len(plan.actions) == len(new) - kept + (len(old) - kept - plan.count(SegmentOp.UPDATE))
