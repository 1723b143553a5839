"""Segment-level sync (``chunking = "local"``), over real HTTP against the emulator: a
one-section edit re-indexes one chunk, and the server's segments always equal the file's
chunks."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import httpx
import pytest

from difysync.chunking import chunks_of
from difysync.emulator import EmulatorServer

from .sandbox import Sandbox

LOCAL = 'chunking = "local"\n'


def handbook(sections: int, *, edited: dict[int, str] | None = None, title: str = "Handbook") -> str:
    """A Markdown file of ``sections`` sections, each a heading and two paragraphs."""
    edited = edited or {}
    parts = [f"# {title}\n\nAn introduction to the handbook.\n"]
    for i in range(1, sections):
        body = edited.get(i, f"Section {i} says something about topic {i}.\n\nA second paragraph for {i}.")
        parts.append(f"## Part {i}\n\n{body}\n")
    return "\n".join(parts)


@pytest.fixture
def sb(tmp_path: Path, emulator: EmulatorServer) -> Sandbox:
    return Sandbox(tmp_path, emulator, extra_folder=LOCAL)


def segments(sb: Sandbox, name: str) -> list[str]:
    """The document's segments as the server lists them, in position order."""
    doc = sb.docs()[name]
    out, page = [], 1
    with httpx.Client(base_url=sb.emu.base_url, headers={"Authorization": f"Bearer {sb.emu.api_key}"}) as http:
        while True:
            body = http.get(f"/datasets/{sb.dataset}/documents/{doc.id}/segments",
                            params={"page": page, "limit": 100}).raise_for_status().json()
            out.extend(body["data"])
            if not body["data"] or not body.get("has_more"):
                break
            page += 1
    return [s["content"] for s in sorted(out, key=lambda s: s["position"])]


def key(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum()).casefold()


def assert_mirrors(sb: Sandbox, rel: str, *, ordered: bool = True) -> None:
    """The server's segments are the file's chunks (compared as the server strips them)."""
    chunks = chunks_of(rel, (sb.root / rel).read_text(), 500)
    held = segments(sb, rel)
    if ordered:
        assert [key(s) for s in held] == [key(c) for c in chunks]
    else:
        assert Counter(key(s) for s in held) == Counter(key(c) for c in chunks)


def segment_requests(sb: Sandbox, since: int = 0) -> Counter[str]:
    """The mutating requests since ``since``, by kind."""
    kinds: Counter[str] = Counter()
    for r in sb.emu.mutating_requests()[since:]:
        if "/segments/" in r.path:
            kinds["segment_" + ("delete" if r.method == "DELETE" else "update")] += 1
        elif r.path.endswith("/segments"):
            kinds["segment_add"] += 1
        elif "/metadata" in r.path:
            kinds["metadata"] += 1
        else:
            kinds[r.path.rsplit("/", 1)[-1]] += 1
    return kinds


def sync(sb: Sandbox, *args: str) -> dict:
    result = sb.reconcile("--wait", *args)
    assert result.code == 0, result.stdout + result.stderr
    return result.json


def test_a_markdown_file_of_30_sections_becomes_one_document_of_its_30_chunks(sb: Sandbox) -> None:
    sb.write("guide.md", handbook(30))
    sync(sb)
    assert list(sb.docs()) == ["guide.md"]
    assert len(segments(sb, "guide.md")) == 30
    assert_mirrors(sb, "guide.md")
    assert segment_requests(sb)["create_by_text"] == 1


def test_editing_one_section_sends_one_segment_update_and_no_document_upload(sb: Sandbox) -> None:
    sb.write("guide.md", handbook(30))
    sync(sb)
    doc_id = sb.docs()["guide.md"].id
    before = len(sb.emu.mutating_requests())
    sb.write("guide.md", handbook(30, edited={7: "Section 7 was rewritten.\n\nStill two paragraphs."}))
    sync(sb)
    sent = segment_requests(sb, before)
    assert sent["segment_update"] == 1
    assert sent.keys() <= {"segment_update", "metadata"}
    assert sb.docs()["guide.md"].id == doc_id
    assert_mirrors(sb, "guide.md")


def test_adding_a_section_sends_one_add_and_deleting_one_sends_one_delete(sb: Sandbox) -> None:
    sb.write("guide.md", handbook(30))
    sync(sb)
    before = len(sb.emu.mutating_requests())
    sb.write("guide.md", handbook(31))
    sync(sb)
    assert {k: v for k, v in segment_requests(sb, before).items() if k != "metadata"} == {"segment_add": 1}
    assert_mirrors(sb, "guide.md")  # the new section was the last one: order holds

    before = len(sb.emu.mutating_requests())
    text = handbook(31).replace("## Part 12\n\nSection 12 says something about topic 12.\n\n"
                                "A second paragraph for 12.\n\n", "")
    sb.write("guide.md", text)
    sync(sb)
    assert {k: v for k, v in segment_requests(sb, before).items() if k != "metadata"} == {"segment_delete": 1}
    assert_mirrors(sb, "guide.md")


def test_a_section_added_in_the_middle_goes_last_in_dify_until_a_whole_update(sb: Sandbox) -> None:
    sb.write("guide.md", handbook(10))
    sync(sb)
    sb.write("guide.md", handbook(10).replace("## Part 5", "## Inserted\n\nA new section.\n\n## Part 5"))
    sync(sb)
    assert_mirrors(sb, "guide.md", ordered=False)
    assert key(segments(sb, "guide.md")[-1]) == key("## Inserted\n\nA new section.")


def test_a_rewrite_of_most_of_the_file_falls_back_to_one_document_update(sb: Sandbox) -> None:
    sb.write("guide.md", handbook(30))
    sync(sb)
    doc_id = sb.docs()["guide.md"].id
    before = len(sb.emu.mutating_requests())
    sb.write("guide.md", handbook(30, edited={i: f"All new text {i}." for i in range(1, 25)}))
    sync(sb)
    sent = segment_requests(sb, before)
    assert sent["update_by_text"] == 1
    assert not {k for k in sent if k.startswith("segment_")}
    assert sb.docs()["guide.md"].id == doc_id
    assert_mirrors(sb, "guide.md")


def test_segments_changed_in_dify_make_the_next_edit_go_whole(sb: Sandbox) -> None:
    sb.write("guide.md", handbook(10))
    sync(sb)
    doc = sb.docs()["guide.md"]
    with httpx.Client(base_url=sb.emu.base_url, headers={"Authorization": f"Bearer {sb.emu.api_key}"}) as http:
        seg = http.get(f"/datasets/{sb.dataset}/documents/{doc.id}/segments").json()["data"][3]
        http.post(f"/datasets/{sb.dataset}/documents/{doc.id}/segments/{seg['id']}",
                  json={"segment": {"content": "edited by a person in the Dify UI"}}).raise_for_status()
    before = len(sb.emu.mutating_requests())
    sb.write("guide.md", handbook(10, edited={2: "A local edit."}))
    sync(sb)
    assert segment_requests(sb, before)["update_by_text"] == 1
    assert_mirrors(sb, "guide.md")


def test_other_types_in_a_local_folder_go_as_files(sb: Sandbox) -> None:
    sb.write("data.csv", "a,b\n1,2\n")
    sb.write("notes.txt", "First paragraph.\n\nSecond paragraph.\n")
    sync(sb)
    sent = segment_requests(sb)
    assert sent["create_by_file"] == 1 and sent["create_by_text"] == 1
    assert_mirrors(sb, "notes.txt")


def test_dry_run_shows_the_segment_actions_of_an_edit(sb: Sandbox) -> None:
    sb.write("guides/install.md", handbook(12))
    sync(sb)
    sb.write("guides/install.md", handbook(12, edited={3: "Changed."}))
    before = len(sb.emu.mutating_requests())
    result = sb.cli("reconcile", "-c", str(sb.config), "--dry-run")
    assert result.code == 0, result.stdout + result.stderr
    assert "guides/install.md: update 1 segment" in result.stdout
    assert len(sb.emu.mutating_requests()) == before


def test_switching_chunking_to_local_and_back_converges_without_duplicates(
        tmp_path: Path, emulator: EmulatorServer) -> None:
    sb = Sandbox(tmp_path, emulator)
    sb.write("a.md", handbook(8))
    sb.write("b.txt", "one\n\ntwo\n")
    sync(sb)
    first = {name: doc.id for name, doc in sb.docs().items()}
    config = sb.config.read_text()
    sb.config.write_text(config + LOCAL)
    sync(sb)
    assert {name: doc.id for name, doc in sb.docs().items()} == first
    assert_mirrors(sb, "a.md")
    sb.write("a.md", handbook(8, edited={4: "Edited once local."}))
    before = len(sb.emu.mutating_requests())
    sync(sb)
    assert segment_requests(sb, before)["segment_update"] == 1
    sb.config.write_text(config)
    sync(sb)
    assert {name: doc.id for name, doc in sb.docs().items()} == first
    assert sb.contents()["a.md"] == (sb.root / "a.md").read_bytes()
    after = len(sb.emu.mutating_requests())
    sync(sb)
    assert len(sb.emu.mutating_requests()) == after  # settled: a no-op pass sends nothing


def test_a_server_without_the_segment_api_gets_whole_document_updates(
        tmp_path: Path) -> None:
    emu = EmulatorServer(segment_api=False)
    emu.start()
    try:
        sb = Sandbox(tmp_path, emu, extra_folder=LOCAL)
        sb.write("guide.md", handbook(10))
        sync(sb)
        before = len(emu.mutating_requests())
        sb.write("guide.md", handbook(10, edited={3: "Changed."}))
        sync(sb)
        assert segment_requests(sb, before)["update_by_text"] == 1
        assert b"Changed." in sb.contents()["guide.md"]
    finally:
        emu.stop()


def test_fifty_random_edits_keep_the_segments_equal_to_the_chunks(sb: Sandbox) -> None:
    rng = random.Random(11)
    files = {f"f{i}.md": {j: f"Text {j} of file {i}." for j in range(1, 15)} for i in range(3)}
    for rel, sections in files.items():
        sb.write(rel, _render(sections))
    sync(sb)
    for step in range(50):
        rel = rng.choice(sorted(files))
        sections = files[rel]
        move = rng.random()
        if move < 0.5 or len(sections) < 4:
            j = rng.choice(sorted(sections))
            sections[j] = f"Edit {step} of {j}. " + "word " * rng.randrange(0, 150)
        elif move < 0.75:
            sections[max(sections) + 1] = f"New section {step}."
        else:
            del sections[rng.choice(sorted(sections))]
        sb.write(rel, _render(sections))
        sync(sb)
        for name in files:
            assert_mirrors(sb, name, ordered=False)  # as many segments as chunks: none doubled


def _render(sections: dict[int, str]) -> str:
    return "\n".join(f"## Section {j}\n\n{body}\n" for j, body in sorted(sections.items()))


def test_sigkill_during_segment_sync_then_a_pass_converges_without_duplicates(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from difysync.emulator.faults import Faults

    rng = random.Random(5)
    with EmulatorServer(faults=Faults(latency=0.03)) as emu:
        sb = Sandbox(tmp_path, emu, extra_folder=LOCAL)
        files = {f"k{i}.md": {j: f"Body {j} of {i}." for j in range(1, 21)} for i in range(4)}
        for rel, sections in files.items():
            sb.write(rel, _render(sections))
        sync(sb)
        kills = 0
        for round_ in range(10):
            for rel in rng.sample(sorted(files), 2):
                sections = files[rel]
                for _ in range(rng.randrange(1, 4)):
                    move = rng.random()
                    if move < 0.6:
                        sections[rng.choice(sorted(sections))] = f"Edited in round {round_}, {rng.random()}."
                    elif move < 0.8:
                        sections[max(sections) + 1] = f"Added in round {round_}."
                    elif len(sections) > 3:
                        del sections[rng.choice(sorted(sections))]
                sb.write(rel, _render(sections))
            proc = subprocess.Popen([sys.executable, "-m", "difysync", "reconcile", "-c", str(sb.config)],
                                    cwd=tmp_path, env={**__import__("os").environ, **sb.env},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # Kill during the pass: once its first change reached the server, a little later.
            sent, deadline = len(emu.mutating_requests()), time.monotonic() + 20
            while proc.poll() is None and len(emu.mutating_requests()) == sent and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 5
        sync(sb)
        assert sorted(sb.docs()) == sorted(files)  # no duplicate document
        for rel in files:
            assert_mirrors(sb, rel, ordered=False)
        after = len(emu.mutating_requests())
        sync(sb)
        assert len(emu.mutating_requests()) == after


def test_the_service_sends_a_watched_one_section_edit_as_one_segment_update(tmp_path: Path,
                                                                            emulator: EmulatorServer) -> None:
    from .test_daemon import Daemon, daemon_box, wait_until

    box = daemon_box(tmp_path, emulator)
    box.config.write_text(box.config.read_text() + LOCAL)
    daemon = Daemon(box)
    try:
        daemon.wait_ready()
        box.write("guide.md", handbook(20))
        wait_until(lambda: "guide.md" in box.docs() and len(segments(box, "guide.md")) == 20, 15,
                   what="the first upload, indexed")
        before = len(emulator.mutating_requests())
        box.write("guide.md", handbook(20, edited={9: "Edited while the service watches."}))
        wait_until(lambda: any("Edited while" in s for s in segments(box, "guide.md")), 15, what="the edit")
        sent = segment_requests(box, before)
        assert sent["segment_update"] == 1 and "update_by_text" not in sent
        assert_mirrors(box, "guide.md")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_a_text_file_that_is_not_utf8_goes_as_a_file_and_stays_settled(sb: Sandbox) -> None:
    sb.write("latin1.md", "# Café\n\nCrème brûlée.\n".encode("latin-1"))
    sync(sb)
    assert segment_requests(sb)["create_by_file"] == 1
    before = len(sb.emu.mutating_requests())
    sync(sb)
    assert len(sb.emu.mutating_requests()) == before  # not sent again to be split locally
