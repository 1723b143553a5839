"""The emulator's server-side split and segment (chunk) API answer as Dify 1.14.1 does,
over real HTTP.

Every test that needs nothing but the HTTP API also runs against a real Dify when
DIFYSYNC_TEST_DIFY_URL and DIFYSYNC_TEST_DIFY_KEY name one (a dataset key; datasets are made
with economy indexing, named "emuseg-...", and deleted afterwards): the expected answers
below are what a running 1.14.1 gave. Tests of the emulator's own switches and counters
(segment_api, segments_indexed, indexing_delay_per_segment, persistence, stages in
slow motion) run on the emulator only.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from difysync.emulator import EmulatorServer, Store
from difysync.emulator.segments import split_document

REAL_URL = os.environ.get("DIFYSYNC_TEST_DIFY_URL")
REAL_KEY = os.environ.get("DIFYSYNC_TEST_DIFY_KEY")
REAL_WAIT = 180.0
PYDANTIC = "https://errors.pydantic.dev/2.12/v/"
SEGMENT_KEYS = {"id", "position", "document_id", "content", "sign_content", "answer",
                "word_count", "tokens", "keywords", "index_node_id", "index_node_hash",
                "hit_count", "enabled", "disabled_at", "disabled_by", "status", "created_by",
                "created_at", "updated_at", "updated_by", "indexing_at", "completed_at",
                "error", "stopped_at", "child_chunks", "attachments", "summary"}


def custom(separator: str, max_tokens: int = 500, overlap: int = 0, *, spaces: bool = False,
           urls: bool = False) -> dict[str, Any]:
    return {"mode": "custom", "rules": {
        "pre_processing_rules": [{"id": "remove_extra_spaces", "enabled": spaces},
                                 {"id": "remove_urls_emails", "enabled": urls}],
        "segmentation": {"separator": separator, "max_tokens": max_tokens,
                         "chunk_overlap": overlap}}}


# ------------------------------------------------------------------------- servers
@dataclass
class Server:
    """One server to run against: the emulator, or a real Dify."""

    http: httpx.Client
    emu: EmulatorServer | None = None
    datasets: list[str] = field(default_factory=list)

    @property
    def real(self) -> bool:
        return self.emu is None

    def dataset(self) -> str:
        r = self.http.post("/datasets", json={"name": f"emuseg-{uuid.uuid4().hex[:10]}",
                                              "indexing_technique": "economy"})
        assert r.status_code == 200, r.text
        self.datasets.append(r.json()["id"])
        return r.json()["id"]

    def create_text(self, ds: str, name: str, text: str,
                    rule: dict[str, Any] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"name": name, "text": text, "indexing_technique": "economy"}
        if rule is not None:
            body["process_rule"] = rule
        return self.http.post(f"/datasets/{ds}/document/create-by-text", json=body)

    def upload(self, ds: str, name: str, content: bytes,
               rule: dict[str, Any] | None = None) -> httpx.Response:
        data: dict[str, Any] = {"indexing_technique": "economy"}
        if rule is not None:
            data["process_rule"] = rule
        return self.http.post(f"/datasets/{ds}/document/create-by-file",
                              files={"file": (name, content)}, data={"data": json.dumps(data)})

    def settled(self, ds: str, doc: str) -> dict[str, Any]:
        """The document's detail once its indexing has ended (completed or error)."""
        deadline = time.monotonic() + REAL_WAIT
        while True:
            r = self.http.get(f"/datasets/{ds}/documents/{doc}")
            assert r.status_code == 200, r.text
            if r.json()["indexing_status"] in ("completed", "error") or \
                    time.monotonic() > deadline:
                return r.json()
            time.sleep(0.3)

    def doc(self, ds: str, text: str, rule: dict[str, Any] | None = None,
            name: str = "a.txt") -> str:
        """A created, settled text document's id."""
        r = self.create_text(ds, name, text, rule)
        assert r.status_code == 200, r.text
        self.settled(ds, r.json()["document"]["id"])
        return r.json()["document"]["id"]

    def segments(self, ds: str, doc: str, **params: Any) -> list[dict[str, Any]]:
        params.setdefault("limit", 100)
        r = self.http.get(f"/datasets/{ds}/documents/{doc}/segments", params=params)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def contents(self, ds: str, doc: str) -> list[str]:
        return [s["content"] for s in self.segments(ds, doc)]

    def listed(self, ds: str, doc: str) -> dict[str, Any]:
        r = self.http.get(f"/datasets/{ds}/documents", params={"limit": 100})
        return next(d for d in r.json()["data"] if d["id"] == doc)

    def eventually(self, check: Callable[[], bool]) -> None:
        """Wait for the real server's background tasks (at once on the emulator)."""
        deadline = time.monotonic() + (REAL_WAIT if self.real else 0)
        while not check():
            assert time.monotonic() < deadline, "the server never got there"
            time.sleep(0.3)


@pytest.fixture(scope="module", params=["emulator", "real"])
def srv(request) -> Iterator[Server]:
    if request.param == "real":
        if not (REAL_URL and REAL_KEY):
            pytest.skip("set DIFYSYNC_TEST_DIFY_URL and DIFYSYNC_TEST_DIFY_KEY to run on a real Dify")
        with httpx.Client(base_url=REAL_URL, timeout=60,
                          headers={"Authorization": f"Bearer {REAL_KEY}"}) as http:
            server = Server(http)
            try:
                yield server
            finally:
                for ds in server.datasets:
                    http.delete(f"/datasets/{ds}")
        return
    with EmulatorServer() as emu, httpx.Client(
            base_url=emu.base_url, timeout=10,
            headers={"Authorization": f"Bearer {emu.api_key}"}) as http:
        yield Server(http, emu)


@pytest.fixture
def emu(srv: Server) -> EmulatorServer:
    if srv.emu is None:
        pytest.skip("needs the emulator's store")
    return srv.emu


def err(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    assert body["status"] == r.status_code
    return r.status_code, body["code"], body["message"]


# ----------------------------------------------------------------- the split
SPLITS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "separator": (
        ("First piece***## Third\n***- item stays***  lead   spaces\there***\n## Nl start***"
         "[link](https://x.y) after***\x1ectl"), custom("***"),
        # leading punctuation goes, "- " stays, only a chunk's very first characters count
        ["First piece", "Third", "- item stays", "lead   spaces\there", "## Nl start",
         "[link](https://x.y) after", "ctl"]),
    "long piece": (
        ("Short one|This is sentence one. This is sentence two. And here is a third sentence."
         " Fourth one is here too. Fifth sentence closes it.|tail"), custom("|", 50),
        ["Short one", "This is sentence one. This is sentence two.",
         "And here is a third sentence.", "Fourth one is here too. Fifth sentence closes it.",
         "tail"]),
    "long piece, overlap": (
        ("x|This is sentence one. This is sentence two. And here is a third sentence. Fourth "
         "one is here too. Fifth sentence closes it."), custom("|", 50, 20),
        ["x", "This is sentence one. This is sentence two.", "And here is a third sentence.",
         "Fourth one is here too. Fifth sentence closes it."]),
    "no space to split at": ("A" * 130 + "|b", custom("|", 50, 10), ["A" * 50] * 3 + ["b"]),
    "automatic": (
        "Para one.\n\nPara two  with   spaces.\n\n\n\n## Head\n\nPara three. " + "word " * 150,
        {"mode": "automatic"},
        ["Para one.\n\nPara two with spaces.\n\n## Head", "Para three.",
         " ".join(["word"] * 100), " ".join(["word"] * 60)]),
    "raw non-ASCII separator": ("one\u241etwo\u241ethree", custom("\u241e"),
                                ["one\u241etwo\u241ethree"]),
    "escaped separator": ("one\u241etwo\u241ethree", custom("\\u241e"), ["one", "two", "three"]),
    "backslash-n separator": ("one\ntwo\n\nthree", custom("\\n"), ["one", "two", "three"]),
    "control separator": ("one\x1etwo\x1ethree", custom("\x1e"), ["onetwothree"]),
    "extra spaces": ("a    b\t\tc\n\n\n\nd  e", custom("\n\n", spaces=True), ["a b c", "d e"]),
    "urls and emails": ("mail me@x.org now https://a.b/c ok [t](https://k.l) end",
                        custom("***", urls=True), ["mail  now  ok [t](https://k.l) end"]),
    "cleaner quirks": ("naïve café ¿que? ¾ <|tag|> crlf\r\nline", custom("***"),
                       ["nave café que?  <tag> crlf\nline"]),
    "leading symbols": (
        '***"quoted"***...dots***!bang***{brace}***「cjk」***  ## sp***\u2014dash', custom("***"),
        ['quoted"', "dots", "!bang", "{brace}", "cjk」", "## sp", "dash"]),
    "default separator": ("AxB", {"mode": "custom", "rules": {
        "pre_processing_rules": [], "segmentation": {"max_tokens": 100}}}, ["AxB"]),
}


@pytest.mark.parametrize("case", list(SPLITS))
def test_create_by_text_is_split_as_dify_splits(srv: Server, case: str) -> None:
    text, rule, expected = SPLITS[case]
    ds = srv.dataset()
    doc = srv.doc(ds, text, rule)
    segments = srv.segments(ds, doc)
    assert [s["content"] for s in segments] == expected
    assert [s["position"] for s in segments] == list(range(1, len(expected) + 1))
    assert all(s["word_count"] == len(s["content"]) for s in segments)
    assert srv.listed(ds, doc)["word_count"] == sum(len(c) for c in expected)


def test_split_document_is_the_same_function_offline() -> None:
    """The splitter is usable without a server (a client can predict the chunks)."""
    text, rule, expected = SPLITS["separator"]
    assert split_document(text.encode(), "txt", rule) == expected


@pytest.mark.parametrize("length", [30, 4001])
def test_a_custom_length_out_of_range_fails_indexing_not_the_request(srv: Server,
                                                                     length: int) -> None:
    ds = srv.dataset()
    r = srv.create_text(ds, "bad.txt", "abc", custom("***", length))
    assert r.status_code == 200
    doc = srv.settled(ds, r.json()["document"]["id"])
    assert doc["indexing_status"] == "error" and doc["display_status"] == "error"
    assert doc["error"] == "Custom segment length should be between 50 and 4000."
    assert srv.segments(ds, doc["id"]) == []


def test_an_overlap_larger_than_the_length_fails_indexing(srv: Server) -> None:
    ds = srv.dataset()
    r = srv.create_text(ds, "o.txt", "AxB", custom("x", 100, 200))
    doc = srv.settled(ds, r.json()["document"]["id"])
    assert (doc["indexing_status"], doc["error"]) == (
        "error", "Got a larger chunk overlap (200) than chunk size (100), should be smaller.")


BAD_RULES = {
    "norules": ({"mode": "custom"}, "Process rule rules is required"),
    "nopre": ({"mode": "custom", "rules": {"segmentation": {"separator": "x", "max_tokens": 100}}},
              "Process rule pre_processing_rules is required"),
    "noseg": ({"mode": "custom", "rules": {"pre_processing_rules": []}},
              "Process rule segmentation is required"),
    "emptysep": ({"mode": "custom", "rules": {"pre_processing_rules": [], "segmentation": {
        "separator": "", "max_tokens": 100}}}, "Process rule segmentation separator is required"),
    "max0": ({"mode": "custom", "rules": {"pre_processing_rules": [], "segmentation": {
        "separator": "x", "max_tokens": 0}}}, "Process rule segmentation max_tokens is required"),
    "noid": ({"mode": "custom", "rules": {"pre_processing_rules": [{"id": "", "enabled": True}],
                                          "segmentation": {"separator": "x", "max_tokens": 100}}},
             "Process rule pre_processing_rules id is required"),
    "badmode": ({"mode": "fancy"}, (
        "1 validation error for DocumentTextCreatePayload\nprocess_rule.mode\n  Input should be "
        "'automatic', 'custom' or 'hierarchical' [type=literal_error, input_value='fancy', "
        f"input_type=str]\n    For further information visit {PYDANTIC}literal_error")),
    "nomax": ({"mode": "custom", "rules": {"pre_processing_rules": [], "segmentation": {
        "separator": "x"}}}, (
        "1 validation error for DocumentTextCreatePayload\nprocess_rule.rules.segmentation."
        "max_tokens\n  Field required [type=missing, input_value={'separator': 'x'}, "
        f"input_type=dict]\n    For further information visit {PYDANTIC}missing")),
}


@pytest.mark.parametrize("case", list(BAD_RULES))
def test_a_malformed_process_rule_is_refused_by_the_request(srv: Server, case: str) -> None:
    rule, message = BAD_RULES[case]
    ds = srv.dataset()
    assert err(srv.create_text(ds, "r.txt", "AxB", rule)) == (400, "invalid_param", message)


def test_by_file_validation_names_knowledge_config(srv: Server) -> None:
    ds = srv.dataset()
    r = srv.upload(ds, "f.txt", b"AxB", {"mode": "fancy"})
    assert err(r)[:2] == (400, "invalid_param")
    assert err(r)[2].startswith("1 validation error for KnowledgeConfig\nprocess_rule.mode\n")


MARKDOWN = b"""Preamble <b>bold</b> text.

# Title One
Intro under title.

## Sub *two*
Para with <span class="x">html</span> tags.

```python
# not a heading
print("hi")
```

### C# Language
More text.
#nospace is not a heading
"""
MD_SECTIONS = ["Preamble bold text.", "Title One\nIntro under title.",
               'Sub *two*\nPara with html tags.\n\n```python\n# not a heading\nprint("hi")\n```',
               "C Language\nMore text.\n#nospace is not a heading"]


@pytest.mark.parametrize("name, rule, expected", [
    ("auto.md", {"mode": "automatic"}, MD_SECTIONS),
    ("auto.markdown", custom("***"), MD_SECTIONS),
    ("custom.md", custom("\\n\\n"), MD_SECTIONS[:2] + [
        "Sub *two*\nPara with html tags.", 'python\n# not a heading\nprint("hi")\n```',
        MD_SECTIONS[3]]),
    # a .txt file is no Markdown: no heading split, tags and '#' inside lines stay
    ("plain.txt", custom("\\n\\n"), [
        "Preamble <b>bold</b> text.", "Title One\nIntro under title.",
        'Sub *two*\nPara with <span class="x">html</span> tags.',
        'python\n# not a heading\nprint("hi")\n```',
        "C# Language\nMore text.\n#nospace is not a heading"]),
])
def test_a_markdown_upload_is_split_at_every_heading(srv: Server, name: str,
                                                      rule: dict[str, Any],
                                                      expected: list[str]) -> None:
    ds = srv.dataset()
    r = srv.upload(ds, name, MARKDOWN, rule)
    assert r.status_code == 200, r.text
    doc = r.json()["document"]["id"]
    assert srv.settled(ds, doc)["indexing_status"] == "completed"
    assert srv.contents(ds, doc) == expected


def test_markdown_by_text_is_plain_text(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, MARKDOWN.decode(), {"mode": "automatic"}, name="looks.md")
    assert srv.contents(ds, doc)[0].startswith("Preamble <b>bold</b> text.\n\n# Title One")


def test_no_rule_on_create_reuses_the_datasets_latest(srv: Server) -> None:
    ds = srv.dataset()
    srv.doc(ds, "a", custom("***"))
    assert srv.contents(ds, srv.doc(ds, "p1***p2", name="b.txt")) == ["p1", "p2"]
    srv.doc(ds, "c", {"mode": "automatic"}, name="c.txt")
    assert srv.contents(ds, srv.doc(ds, "p1***p2", name="d.txt")) == ["p1***p2"]


# ------------------------------------------------------------ update re-splits
def test_an_update_re_splits_the_whole_document_with_new_ids(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one***two***three", custom("***"))
    added = srv.http.post(f"/datasets/{ds}/documents/{doc}/segments",
                          json={"segments": [{"content": "added by hand"}]})
    old_ids = {s["id"] for s in srv.segments(ds, doc)}
    srv.doc(ds, "z", {"mode": "automatic"}, name="other.txt")  # dataset's latest: automatic
    r = srv.http.post(f"/datasets/{ds}/documents/{doc}/update-by-text",
                      json={"name": "a.txt", "text": "n1***n2***n3 two. words"})
    assert r.status_code == 200, r.text
    srv.settled(ds, doc)
    segments = srv.segments(ds, doc)
    # the document's own rule is kept (not the dataset's latest); added segments are gone
    assert [(s["position"], s["content"]) for s in segments] == [
        (1, "n1"), (2, "n2"), (3, "n3 two. words")]
    assert not old_ids & {s["id"] for s in segments} and added.status_code == 200
    assert srv.listed(ds, doc)["word_count"] == 2 + 2 + 13


def test_an_update_by_file_with_a_new_rule_re_splits_under_it(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "a|b", custom("***"))
    r = srv.http.post(f"/datasets/{ds}/documents/{doc}/update-by-file",
                      files={"file": ("a.txt", b"x|y|z")},
                      data={"data": json.dumps({"process_rule": custom("|")})})
    assert r.status_code == 200, r.text
    srv.settled(ds, doc)
    assert srv.contents(ds, doc) == ["x", "y", "z"]


# ------------------------------------------------------------------ add segments
def test_added_segments_are_stored_exactly_as_sent_after_the_last_position(
        srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one***two", custom("***"))
    r = srv.http.post(f"/datasets/{ds}/documents/{doc}/segments", json={"segments": [
        {"content": "  ## Added  \n\n x "}, {"content": "kw here", "keywords": ["k1", "k2"]},
        {"content": "with answer", "answer": "ans"}, {"content": "empty kw", "keywords": []}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"data", "doc_form"} and body["doc_form"] == "text_model"
    data = body["data"]
    assert [(s["position"], s["content"]) for s in data] == [
        (3, "  ## Added  \n\n x "), (4, "kw here"), (5, "with answer"), (6, "empty kw")]
    assert all(set(s) == SEGMENT_KEYS for s in data)
    assert all((s["status"], s["enabled"], s["tokens"]) == ("completed", True, 0) for s in data)
    assert data[1]["keywords"] == ["k1", "k2"]
    assert data[3]["keywords"] and data[2]["answer"] is None  # extracted; no answer on text
    assert [s["word_count"] for s in data] == [17, 7, 11, 8]
    assert srv.listed(ds, doc)["word_count"] == 6 + 17 + 7 + 11 + 8


def test_deletes_leave_gaps_and_new_segments_follow_the_highest_position(
        srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "a***b***c", custom("***"))
    path = f"/datasets/{ds}/documents/{doc}/segments"
    second = srv.segments(ds, doc)[1]
    assert srv.http.delete(f"{path}/{second['id']}").status_code == 204
    added = srv.http.post(path, json={"segments": [{"content": "d"}]}).json()["data"][0]
    assert [s["position"] for s in srv.segments(ds, doc)] == [1, 3, 4]
    srv.http.delete(f"{path}/{added['id']}")
    again = srv.http.post(path, json={"segments": [{"content": "e"}]}).json()["data"][0]
    assert again["position"] == 4  # the highest left is 3


ADD_ERRORS: list[tuple[Any, int, Any]] = [
    ({}, 400, {"error": "Segments is required"}),
    ({"segments": None}, 400, {"error": "Segments is required"}),
    ([], 400, {"error": "Segments is required"}),
    ({"segments": [{"content": ""}]}, 400, ("invalid_param", "Content is empty")),
    ({"segments": [{"content": "   "}]}, 400, ("invalid_param", "Content is empty")),
    ({"segments": [{"answer": "x"}]}, 400, ("invalid_param", "Content is empty")),
    ({"segments": [{"content": "good"}, {"content": ""}]}, 400, ("invalid_param",
                                                                  "Content is empty")),
    ({"segments": [{"content": 5}]}, 500, ("unknown", "Internal Server Error")),
    ({"segments": "abc"}, 400, ("invalid_param", (
        "1 validation error for SegmentCreatePayload\nsegments\n  Input should be a valid list "
        "[type=list_type, input_value='abc', input_type=str]\n    For further information "
        f"visit {PYDANTIC}list_type"))),
]


def test_adding_refuses_bad_bodies_and_adds_nothing(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one", custom("***"))
    path = f"/datasets/{ds}/documents/{doc}/segments"
    for body, status, expected in ADD_ERRORS:
        r = srv.http.post(path, json=body)
        if isinstance(expected, dict):
            assert (r.status_code, r.json()) == (status, expected), body
        else:
            assert err(r) == (status, *expected), body
    r = srv.http.post(path, json={"segments": []})
    assert (r.status_code, r.json()) == (200, {"data": [], "doc_form": "text_model"})
    r = srv.http.post(path, content=b"hello", headers={"Content-Type": "text/plain"})
    assert err(r)[:2] == (415, "unsupported_media_type")
    assert srv.contents(ds, doc) == ["one"]


def _still_indexing(srv: Server, ds: str) -> str:
    """A document whose indexing has not completed yet."""
    if srv.emu is not None:
        doc = srv.doc(ds, "x", custom("***"), name="slow.txt")
        srv.emu.store.set_document(ds, doc, indexing_status="indexing")
        return doc
    r = srv.create_text(ds, "slow.txt", "x " * 20000, custom("***"))
    return r.json()["document"]["id"]


def test_a_document_still_indexing_takes_no_segments_but_lists_them(srv: Server) -> None:
    ds = srv.dataset()
    doc = _still_indexing(srv, ds)
    path = f"/datasets/{ds}/documents/{doc}/segments"
    r = srv.http.post(path, json={"segments": [{"content": "x"}]})
    assert err(r) == (404, "not_found", "Document is not completed.")
    r = srv.http.post(path)  # the document is checked before the body
    assert err(r) == (404, "not_found", "Document is not completed.")
    r = srv.http.get(path)
    assert r.status_code == 200
    assert all(s["status"] in ("waiting", "indexing") and not s["enabled"]
               for s in r.json()["data"])


def test_a_disabled_document_takes_no_segments_and_its_segments_are_disabled(
        srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one***two", custom("***"))
    r = srv.http.patch(f"/datasets/{ds}/documents/status/disable", json={"document_ids": [doc]})
    assert r.status_code == 200
    path = f"/datasets/{ds}/documents/{doc}/segments"
    assert err(srv.http.post(path, json={"segments": [{"content": "x"}]})) == (
        404, "not_found", "Document is disabled.")
    srv.eventually(lambda: not any(s["enabled"] for s in srv.segments(ds, doc)))
    seg = srv.segments(ds, doc)[0]
    assert seg["disabled_at"] and seg["disabled_by"]
    r = srv.http.post(f"{path}/{seg['id']}", json={"segment": {"content": "changed"}})
    assert err(r) == (400, "invalid_param", "Can't update disabled segment")
    srv.http.patch(f"/datasets/{ds}/documents/status/enable", json={"document_ids": [doc]})
    srv.eventually(lambda: all(s["enabled"] for s in srv.segments(ds, doc)))


def test_an_archived_document_takes_new_segments_but_its_old_ones_are_disabled(
        srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one***two", custom("***"))
    srv.http.patch(f"/datasets/{ds}/documents/status/archive", json={"document_ids": [doc]})
    path = f"/datasets/{ds}/documents/{doc}/segments"
    srv.eventually(lambda: not any(s["enabled"] for s in srv.segments(ds, doc)))
    assert srv.segments(ds, doc)[0]["disabled_by"] is None
    r = srv.http.post(path, json={"segments": [{"content": "x"}]})
    assert r.status_code == 200 and r.json()["data"][0]["enabled"] is True
    old = srv.segments(ds, doc)[0]["id"]
    r = srv.http.post(f"{path}/{old}", json={"segment": {"content": "changed"}})
    assert err(r) == (400, "invalid_param", "Can't update disabled segment")
    assert srv.http.delete(f"{path}/{old}").status_code == 204


# -------------------------------------------------------------- detail, list
def test_detail_answers_data_and_doc_form(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "First piece", custom("***"))
    seg = srv.segments(ds, doc)[0]
    r = srv.http.get(f"/datasets/{ds}/documents/{doc}/segments/{seg['id']}")
    assert r.status_code == 200
    assert r.json() == {"data": seg, "doc_form": "text_model"}
    assert set(seg) == SEGMENT_KEYS
    assert (seg["content"], seg["sign_content"], seg["word_count"], seg["status"]) == (
        "First piece", "First piece", 11, "completed")
    assert seg["index_node_hash"] == \
        "a7d87440dcf2c4befa40707e9349594517b26bae1c8c8557727b0967558851a9"  # sha256(text+"None")
    assert seg["keywords"] and seg["child_chunks"] == [] and seg["summary"] is None
    detail = srv.http.get(f"/datasets/{ds}/documents/{doc}").json()
    assert (detail["segment_count"], detail["average_segment_length"]) == (1, 11)


def test_a_segment_is_found_by_id_alone(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "mine", custom("***"))
    other = srv.doc(ds, "other", custom("***"), name="b.txt")
    seg = srv.segments(ds, doc)[0]
    r = srv.http.get(f"/datasets/{ds}/documents/{other}/segments/{seg['id']}")
    assert r.status_code == 200 and r.json()["data"]["document_id"] == doc


def test_listing_pages_filters_and_echoes_its_arguments(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "***".join(f"piece {i}" for i in range(1, 8)) + "***THIRD one",
                  custom("***"))
    path = f"/datasets/{ds}/documents/{doc}/segments"

    def page(**params: Any) -> tuple[dict[str, Any], list[int]]:
        body = srv.http.get(path, params=params).json()
        return {k: v for k, v in body.items() if k != "data"}, [s["position"] for s in body["data"]]

    meta = {"doc_form": "text_model", "total": 8}
    assert page(limit=3, page=1) == ({**meta, "has_more": True, "limit": 3, "page": 1}, [1, 2, 3])
    assert page(limit=3, page=3) == ({**meta, "has_more": False, "limit": 3, "page": 3}, [7, 8])
    assert page(limit=4, page=2) == ({**meta, "has_more": True, "limit": 4, "page": 2},
                                     [5, 6, 7, 8])
    assert page(limit=3, page=9)[1] == []
    everything = list(range(1, 9))
    assert page(limit=0) == ({**meta, "has_more": False, "limit": 0, "page": 1}, everything)
    assert page(limit=-1)[0]["limit"] == -1 and page(limit=200)[1] == everything
    assert page(page=0, limit=3) == ({**meta, "has_more": True, "limit": 3, "page": 0}, [1, 2, 3])
    assert page(page="abc", limit="x") == ({**meta, "has_more": False, "limit": 20, "page": 1},
                                           everything)
    assert page(keyword="third")[1] == [8] and page(keyword="%")[1] == []
    assert page(status="completed")[0]["total"] == 8 and page(status="waiting")[1] == []
    assert page(status=["waiting", "completed"])[0]["total"] == 8
    for bad in ("x", ""):
        assert err(srv.http.get(path, params={"status": bad})) == (
            500, "unknown", "Internal Server Error")


# ------------------------------------------------------------------ update
def test_updating_a_segment(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "alpha beta***gamma", custom("***"))
    path = f"/datasets/{ds}/documents/{doc}/segments"
    seg = srv.segments(ds, doc)[0]

    def update(**fields: Any) -> dict[str, Any]:
        r = srv.http.post(f"{path}/{seg['id']}", json={"segment": fields})
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"data", "doc_form"}
        return r.json()["data"]

    new = update(content="Replaced content here")
    assert (new["content"], new["word_count"], new["updated_by"]) == (
        "Replaced content here", 21, seg["created_by"])
    assert set(new["keywords"]) == {"Replaced", "content"}  # re-extracted
    assert srv.listed(ds, doc)["word_count"] == 21 + 5
    assert update(content="")["content"] == "Replaced content here"  # empty keeps the old
    assert update(keywords=["z1"])["keywords"] == ["z1"]
    assert update(answer="ignored on text documents")["answer"] is None
    off = update(enabled=False)
    assert (off["enabled"], off["status"]) == (False, "completed") and off["disabled_at"]

    def refused() -> bool:
        r = srv.http.post(f"{path}/{seg['id']}", json={"segment": {"content": "nope"}})
        return err(r) == (400, "invalid_param", "Can't update disabled segment")

    srv.eventually(refused)  # "Segment is indexing, please try again later" meanwhile
    back = update(enabled=True, content="back again")
    assert (back["enabled"], back["content"], back["disabled_at"]) == (True, "back again", None)
    assert srv.listed(ds, doc)["word_count"] == 10 + 5


def test_update_refuses_bad_bodies(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one", custom("***"))
    seg = srv.segments(ds, doc)[0]["id"]
    path = f"/datasets/{ds}/documents/{doc}/segments/{seg}"
    assert err(srv.http.post(path, json={})) == (400, "invalid_param", (
        "1 validation error for SegmentUpdatePayload\nsegment\n  Field required [type=missing, "
        f"input_value={{}}, input_type=dict]\n    For further information visit {PYDANTIC}missing"))
    assert err(srv.http.post(path, json={"segment": "x"}))[2].startswith(
        "1 validation error for SegmentUpdatePayload\nsegment\n  Input should be a valid "
        "dictionary or instance of SegmentUpdateArgs")
    assert err(srv.http.post(path))[:2] == (415, "unsupported_media_type")


# ------------------------------------------------------------------ delete
def test_delete_answers_204_and_the_segment_is_gone(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one***two", custom("***"))
    path = f"/datasets/{ds}/documents/{doc}/segments"
    seg = srv.segments(ds, doc)[0]["id"]
    r = srv.http.delete(f"{path}/{seg}")
    assert (r.status_code, r.content) == (204, b"")
    for method in ("GET", "DELETE"):
        assert err(srv.http.request(method, f"{path}/{seg}")) == (
            404, "not_found", "Segment not found.")
    assert srv.contents(ds, doc) == ["two"] and srv.listed(ds, doc)["word_count"] == 3


# ----------------------------------------------------------------- not found
def test_missing_things_answer_404_in_dify_s_words(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one", custom("***"))
    seg = srv.segments(ds, doc)[0]["id"]
    nobody = str(uuid.uuid4())
    body = {"segments": [{"content": "x"}]}
    for method, path, message in [
        ("GET", f"/datasets/{ds}/documents/{nobody}/segments", "Document not found."),
        ("POST", f"/datasets/{ds}/documents/{nobody}/segments", "Document not found."),
        ("GET", f"/datasets/{ds}/documents/{nobody}/segments/{seg}", "Document not found."),
        ("DELETE", f"/datasets/{ds}/documents/{nobody}/segments/{seg}", "Document not found."),
        ("GET", f"/datasets/{nobody}/documents/{doc}/segments", "Dataset not found."),
        ("DELETE", f"/datasets/{nobody}/documents/{doc}/segments/{seg}", "Dataset not found."),
        ("GET", f"/datasets/{ds}/documents/{doc}/segments/{nobody}", "Segment not found."),
        ("POST", f"/datasets/{ds}/documents/{doc}/segments/{nobody}", "Segment not found."),
    ]:
        r = srv.http.request(method, path, json=body if method == "POST" else None)
        assert err(r) == (404, "not_found", message), (method, path)


def test_a_dataset_without_indexing_technique_answers_document_not_found(
        srv: Server) -> None:
    """Dify 1.14.1's service API never raises dataset_not_initialized on segment routes."""
    r = srv.http.post("/datasets", json={"name": f"emuseg-{uuid.uuid4().hex[:10]}"})
    srv.datasets.append(r.json()["id"])
    path = f"/datasets/{r.json()['id']}/documents/{uuid.uuid4()}/segments"
    assert err(srv.http.get(path)) == (404, "not_found", "Document not found.")


@pytest.mark.parametrize("tail", [
    "documents/{doc}/segment",  # the seed's singular path: no release routes it
    "document/{doc}/segments",  # no "document/" spelling for segments
    "documents/not-a-uuid/segments", "documents/{doc}/segments/not-a-uuid"])
def test_unrouted_segment_paths_answer_404(srv: Server, tail: str) -> None:
    ds = srv.dataset()
    path = f"/datasets/{ds}/" + tail.format(doc=uuid.uuid4())
    for method in ("GET", "POST"):
        assert srv.http.request(method, path, json={"segments": []}).status_code == 404


def test_a_wrong_method_is_405(srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one", custom("***"))
    seg = srv.segments(ds, doc)[0]["id"]
    path = f"/datasets/{ds}/documents/{doc}/segments"
    assert err(srv.http.put(path, json={}))[:2] == (405, "method_not_allowed")
    assert err(srv.http.patch(f"{path}/{seg}", json={}))[:2] == (405, "method_not_allowed")


# ------------------------------------------------------------- emulator only
def test_segment_api_false_removes_every_segment_route(emu: EmulatorServer,
                                                       srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one", custom("***"))
    seg = srv.segments(ds, doc)[0]["id"]
    unknown = srv.http.get(f"/datasets/{ds}/no-such-route")
    emu.store.segment_api = False
    try:
        path = f"/datasets/{ds}/documents/{doc}/segments"
        for method, url in [("GET", path), ("POST", path), ("GET", f"{path}/{seg}"),
                            ("POST", f"{path}/{seg}"), ("DELETE", f"{path}/{seg}")]:
            r = srv.http.request(method, url, json={"segments": [{"content": "x"}]})
            assert (r.status_code, r.json()) == (404, unknown.json()), (method, url)
    finally:
        emu.store.segment_api = True
    assert Store(segment_api=False).segment_api is False


def test_segments_indexed_counts_runs_adds_and_re_indexing_updates(
        emu: EmulatorServer, srv: Server) -> None:
    ds = srv.dataset()
    before = emu.store.segments_indexed
    doc = srv.doc(ds, "a***b***c", custom("***"))
    assert emu.store.segments_indexed == before + 3
    path = f"/datasets/{ds}/documents/{doc}/segments"
    seg = srv.segments(ds, doc)[0]["id"]
    srv.http.post(path, json={"segments": [{"content": "d"}, {"content": "e"}]})
    assert emu.store.segments_indexed == before + 5
    srv.http.post(f"{path}/{seg}", json={"segment": {"content": "new"}})
    srv.http.post(f"{path}/{seg}", json={"segment": {"content": ""}})  # no re-index
    srv.http.post(f"{path}/{seg}", json={"segment": {"enabled": False}})
    assert emu.store.segments_indexed == before + 6
    srv.http.post(f"/datasets/{ds}/documents/{doc}/update-by-text",
                  json={"name": "a.txt", "text": "x***y"})
    assert emu.store.segments_indexed == before + 8


def test_a_run_replaced_or_deleted_before_it_completes_is_not_counted() -> None:
    now = [1000.0]
    store = Store(indexing_delay=10, clock=lambda: now[0])
    ds = store.create_dataset("s", "economy")
    store.add_document(ds, "a.txt", b"a b c d", process_rule=None)
    gone, _ = store.add_document(ds, "b.txt", b"x", process_rule=None)
    store.add_document(ds, "a.txt", b"a b", process_rule=None)  # re-upload: a new run
    store.delete_document(ds, gone.id)
    assert store.segments_indexed == 0
    now[0] += 10
    assert store.segments_indexed == 1


def test_indexing_time_grows_with_the_chunks() -> None:
    now = [1000.0]
    store = Store(indexing_delay=1, indexing_delay_per_segment=0.5, clock=lambda: now[0])
    ds = store.create_dataset("s", "economy")
    doc, _ = store.add_document(ds, "a.txt", b"1|2|3|4", process_rule=custom("|"))
    now[0] += 2.9
    assert store.indexing_status(doc) == "indexing"
    now[0] += 0.1
    assert store.indexing_status(doc) == "completed"
    assert store.document_dict(doc, detail=True)["indexing_latency"] == 3.0
    # segments added later do not make the finished run longer
    store.segments.add_segments(ds, doc.id, {"segments": [{"content": "5"}, {"content": "6"}]})
    assert store.indexing_status(doc) == "completed"
    status = store.status_dict(doc)
    assert (status["completed_segments"], status["total_segments"]) == (6, 6)


def test_segments_show_the_stage_of_their_indexing_run(emu: EmulatorServer,
                                                       srv: Server) -> None:
    """Waiting: the previous run's segments (none for a new document); parsing: none;
    splitting: all, status waiting, not enabled, no keywords; indexing: status indexing,
    keywords; completed: enabled."""
    ds = srv.dataset()
    doc = srv.doc(ds, "old one***old two", custom("***"))
    old = [s["id"] for s in srv.segments(ds, doc)]
    start = time.time() + 100  # the first run is long over, even at the new delay
    now = [start]
    emu.store.clock = lambda: now[0]
    emu.store.indexing_delay = 10
    try:
        r = srv.http.post(f"/datasets/{ds}/documents/{doc}/update-by-text",
                          json={"name": "a.txt", "text": "new one***new two***new three"})
        assert r.status_code == 200, r.text
        seen = []
        for elapsed in (0, 2, 5, 8, 10):
            now[0] = start + elapsed
            seen.append([(s["status"], s["enabled"], s["keywords"] is not None, s["id"] in old)
                         for s in srv.segments(ds, doc)])
    finally:
        emu.store.clock = time.time
        emu.store.indexing_delay = 0
    assert seen == [
        [("completed", True, True, True)] * 2,  # waiting
        [],  # parsing
        [("waiting", False, False, False)] * 3,  # splitting
        [("indexing", False, True, False)] * 3,  # indexing
        [("completed", True, True, False)] * 3]  # completed


def test_disabling_keeps_a_segment_indexing_for_one_segment_s_time(
        emu: EmulatorServer, srv: Server) -> None:
    ds = srv.dataset()
    doc = srv.doc(ds, "one", custom("***"))
    path = f"/datasets/{ds}/documents/{doc}/segments/{srv.segments(ds, doc)[0]['id']}"
    later = [time.time() + 100]  # the document's run is long over, even at the new delay
    emu.store.clock = lambda: later[0]
    emu.store.indexing_delay_per_segment = 30
    try:
        srv.http.post(path, json={"segment": {"enabled": False}})
        r = srv.http.post(path, json={"segment": {"enabled": True}})
        assert err(r) == (400, "invalid_param", "Segment is indexing, please try again later")
        later[0] += 30
        assert srv.http.post(path, json={"segment": {"enabled": True}}).status_code == 200
    finally:
        emu.store.clock = time.time
        emu.store.indexing_delay_per_segment = 0


def test_segments_survive_a_save_and_load(tmp_path) -> None:
    state = tmp_path / "state.json"
    with EmulatorServer(state_path=state) as emu, httpx.Client(
            base_url=emu.base_url, headers={"Authorization": "Bearer test-key"}) as http:
        srv = Server(http, emu)
        ds = srv.dataset()
        doc = srv.doc(ds, "one***two", custom("***"))
        http.post(f"/datasets/{ds}/documents/{doc}/segments",
                  json={"segments": [{"content": "added", "keywords": ["k"]}]})
        before = srv.segments(ds, doc)
        indexed = emu.store.segments_indexed
    with EmulatorServer(state_path=state) as emu, httpx.Client(
            base_url=emu.base_url, headers={"Authorization": "Bearer test-key"}) as http:
        srv = Server(http, emu)
        assert srv.segments(ds, doc) == before
        assert emu.store.segments_indexed == indexed
        assert srv.contents(ds, srv.doc(ds, "p1***p2", name="b.txt")) == ["p1", "p2"]  # rule kept
