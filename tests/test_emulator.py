"""The Dify emulator answers like the contract in shared/dify-knowledge-api.md (beside the repository) says,
over real HTTP, and its fault switches fail the way they promise."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from difysync.emulator import EmulatorServer, FaultRule, Faults

AUTH = {"Authorization": "Bearer test-key"}
ECONOMY = json.dumps({"indexing_technique": "economy"})


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, headers=AUTH, timeout=5) as c:
        yield c


def make_client(emu: EmulatorServer, **kw: object) -> httpx.Client:
    return httpx.Client(base_url=emu.base_url, headers=AUTH, timeout=kw.pop("timeout", 5), **kw)


def new_dataset(c: httpx.Client, name: str = "kb") -> str:
    r = c.post("/datasets", json={"name": name})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def upload(c: httpx.Client, ds: str, name: str, content: bytes = b"hello world",
           path: str = "document/create_by_file", data: str = ECONOMY) -> httpx.Response:
    return c.post(f"/datasets/{ds}/{path}", files={"file": (name, content)}, data={"data": data})


def update(c: httpx.Client, ds: str, doc: str, name: str, content: bytes = b"new") -> httpx.Response:
    return c.post(f"/datasets/{ds}/documents/{doc}/update_by_file",
                  files={"file": (name, content)}, data={"data": "{}"})


def err(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    assert body["status"] == r.status_code
    return r.status_code, body["code"], body["message"]


# ------------------------------------------------------------------------------ auth
def test_auth_401_missing_header_and_wrong_key(emulator: EmulatorServer) -> None:
    with httpx.Client(base_url=emulator.base_url) as c:
        assert err(c.get("/datasets")) == (
            401, "unauthorized", "Authorization header must be provided and start with 'Bearer'")
        assert err(c.get("/datasets", headers={"Authorization": "Basic abc"}))[0] == 401
        assert err(c.get("/datasets", headers={"Authorization": "Bearer nope"})) == (
            401, "unauthorized", "Access token is invalid")


def test_unknown_route_is_json_404(client: httpx.Client) -> None:
    assert err(client.get("/nothing/here"))[:2] == (404, "not_found")


def test_console_api_refuses_a_dataset_key(emulator: EmulatorServer) -> None:
    # Dify 1.14.1's /console/api takes console login tokens only
    root = emulator.base_url[: -len("/v1")]
    with httpx.Client(base_url=root) as c:
        for path in ("/console/api/datasets", "/console/api/datasets/8c5f8f52-7b8a-4d3c-9d57-3f3f7ad1c2b1"):
            for header in ("Bearer test-key", "Bearer junk"):
                assert err(c.get(path, headers={"Authorization": header})) == (
                    401, "unauthorized", "Invalid token.")
            assert err(c.get(path)) == (401, "unauthorized", "Invalid Authorization token.")
            assert err(c.get(path, headers={"Authorization": "Basic abc"})) == (
                401, "unauthorized", "Invalid Authorization token.")
        assert err(c.post("/console/api/datasets", json={"name": "x"}, headers=AUTH))[0] == 401


# -------------------------------------------------------------------------- datasets
def test_dataset_lifecycle(client: httpx.Client) -> None:
    ds = new_dataset(client, "one")
    assert err(client.post("/datasets", json={"name": "one"}))[:2] == (409, "dataset_name_duplicate")
    assert err(client.post("/datasets", json={"name": "x" * 41}))[:2] == (400, "invalid_param")
    assert err(client.post("/datasets", json={"name": ""}))[:2] == (400, "invalid_param")
    new_dataset(client, "two")
    listing = client.get("/datasets", params={"page": 1, "limit": 20}).json()
    assert listing["total"] == 2 and {d["name"] for d in listing["data"]} == {"one", "two"}
    assert listing["has_more"] is False and listing["page"] == 1 and listing["limit"] == 20
    assert [d["name"] for d in client.get("/datasets", params={"keyword": "tw"}).json()["data"]] \
        == ["two"]
    detail = client.get(f"/datasets/{ds}").json()
    assert detail["id"] == ds and detail["document_count"] == 0
    assert client.delete(f"/datasets/{ds}").status_code == 204
    assert err(client.get(f"/datasets/{ds}")) == (404, "not_found", "Dataset not found.")
    assert err(client.get(f"/datasets/{ds}/documents")) == (404, "not_found", "Dataset not found.")
    assert err(upload(client, ds, "a.md"))[:2] == (404, "not_found")


# ------------------------------------------------------------------ create and match
def test_create_by_file_returns_document_and_batch(emulator: EmulatorServer,
                                                   client: httpx.Client) -> None:
    ds = new_dataset(client)
    r = upload(client, ds, "notes.md", b"some words here")
    assert r.status_code == 200, r.text
    body = r.json()
    doc = body["document"]
    assert body["batch"] and doc["name"] == "notes.md"
    assert doc["indexing_status"] == "waiting" and doc["display_status"] == "queuing"
    for key in ("id", "position", "data_source_type", "data_source_info", "dataset_process_rule_id",
                "created_from", "created_by", "created_at", "tokens", "error", "enabled",
                "disabled_at", "disabled_by", "archived", "word_count", "hit_count", "doc_form",
                "doc_metadata"):
        assert key in doc
    info = doc["data_source_detail_dict"]["upload_file"]
    assert info["size"] == 15 and info["extension"] == "md" and info["name"] == "notes.md"
    assert emulator.store.content(ds, doc["id"]) == b"some words here"
    rec = emulator.store.document_by_name(ds, "notes.md")
    assert rec is not None and rec.sha256 == hashlib.sha256(b"some words here").hexdigest()
    # the dataset takes the technique; later uploads need not repeat it
    assert upload(client, ds, "b.md", data="{}").status_code == 200
    detail = client.get(f"/datasets/{ds}/documents/{doc['id']}").json()
    assert detail["indexing_status"] == "completed" and detail["display_status"] == "available"


def test_indexing_technique_required_and_file_presence(client: httpx.Client) -> None:
    ds = new_dataset(client)
    assert err(upload(client, ds, "a.md", data="{}")) == (
        400, "invalid_param", "indexing_technique is required.")
    r = client.post(f"/datasets/{ds}/document/create_by_file", data={"data": ECONOMY})
    assert err(r)[:2] == (400, "no_file_uploaded")
    r = client.post(f"/datasets/{ds}/document/create_by_file", data={"data": ECONOMY},
                    files=[("file", ("a.md", b"1")), ("file2", ("b.md", b"2"))])
    assert err(r)[:2] == (400, "too_many_files")
    assert upload(client, ds, "empty.md", b"").status_code == 200


def test_name_matching_current_vs_duplicates_legacy(client: httpx.Client) -> None:
    ds = new_dataset(client)
    first = upload(client, ds, "same.md", b"v1").json()
    second = upload(client, ds, "same.md", b"v2").json()
    assert second["document"]["id"] == first["document"]["id"]
    assert second["batch"] != first["batch"]
    assert client.get(f"/datasets/{ds}/documents").json()["total"] == 1
    with EmulatorServer(legacy=True) as old, make_client(old) as c:
        ds2 = new_dataset(c)
        a = upload(c, ds2, "same.md").json()["document"]["id"]
        b = upload(c, ds2, "same.md").json()["document"]["id"]
        assert a != b and c.get(f"/datasets/{ds2}/documents").json()["total"] == 2


def test_disabled_documents_are_not_matched_but_archived_ones_are(emulator: EmulatorServer,
                                                                   client: httpx.Client) -> None:
    ds = new_dataset(client)
    a = upload(client, ds, "a.md").json()["document"]["id"]
    r = client.patch(f"/datasets/{ds}/documents/status/disable", json={"document_ids": [a]})
    assert r.json() == {"result": "success"}
    assert upload(client, ds, "a.md").json()["document"]["id"] != a
    # Dify 1.14.1 matches on `enabled` alone: an archived document with the name is
    # re-indexed in place (same id, new batch, new content) and stays archived.
    first = upload(client, ds, "b.md", b"old").json()
    b = first["document"]["id"]
    emulator.store.set_document(ds, b, archived=True)
    again = upload(client, ds, "b.md", b"new").json()
    assert again["document"]["id"] == b and again["batch"] != first["batch"]
    assert emulator.store.content(ds, b) == b"new"
    detail = client.get(f"/datasets/{ds}/documents/{b}").json()
    assert detail["archived"] is True and detail["display_status"] == "archived"
    assert err(client.get(f"/datasets/{ds}/documents/{first['batch']}/indexing-status")) == (
        404, "not_found", "Documents not found.")
    assert err(update(client, ds, b, "b.md"))[:2] == (403, "archived_document_immutable")
    assert err(client.delete(f"/datasets/{ds}/documents/{b}"))[:2] == (
        403, "archived_document_immutable")


def test_create_by_text_and_hyphen_spellings(client: httpx.Client) -> None:
    ds = new_dataset(client)
    r = client.post(f"/datasets/{ds}/document/create-by-text",
                    json={"name": "a/b", "text": "hello", "indexing_technique": "economy"})
    assert r.status_code == 200 and r.json()["document"]["name"] == "a/b"
    assert upload(client, ds, "h.md", path="document/create-by-file").status_code == 200


def test_legacy_mode_paths(client: httpx.Client) -> None:
    with EmulatorServer(legacy=True) as old, make_client(old) as c:
        ds = new_dataset(c)
        assert err(upload(c, ds, "a.md", path="document/create-by-file"))[:2] == (404, "not_found")
        assert err(c.get(f"/datasets/{ds}"))[:2] == (404, "not_found")
        doc = upload(c, ds, "a.md").json()["document"]
        assert "doc_metadata" not in doc
        assert err(c.get(f"/datasets/{ds}/documents/{doc['id']}"))[0] == 404
        r = c.post(f"/datasets/{ds}/documents/{doc['id']}/update-by-file",
                   files={"file": ("a.md", b"x")})
        assert err(r)[0] == 404
        r = c.delete(f"/datasets/{ds}/documents/{doc['id']}")
        assert r.status_code == 200 and r.json() == {"result": "success"}


# ---------------------------------------------------------------------------- update
def test_update_keeps_id_renames_and_reindexes(emulator: EmulatorServer,
                                               client: httpx.Client) -> None:
    ds = new_dataset(client)
    created = upload(client, ds, "old.md", b"one").json()
    doc_id = created["document"]["id"]
    r = update(client, ds, doc_id, "new.md", b"two two")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["document"]["id"] == doc_id and body["document"]["name"] == "new.md"
    assert body["batch"] == created["batch"]  # Dify 1.14.1: the document's own batch
    assert emulator.store.content(ds, doc_id) == b"two two"
    status = client.get(f"/datasets/{ds}/documents/{body['batch']}/indexing-status").json()
    assert status["data"][0]["id"] == doc_id
    assert status["data"][0]["indexing_status"] == "completed"
    # PATCH is the 1.14 update form, and the hyphen spelling works too
    r = client.patch(f"/datasets/{ds}/documents/{doc_id}", files={"file": ("p.md", b"3")})
    assert r.status_code == 200 and r.json()["document"]["name"] == "p.md"
    r = client.post(f"/datasets/{ds}/documents/{doc_id}/update-by-file",
                    files={"file": ("q.md", b"4")})
    assert r.status_code == 200 and r.json()["document"]["id"] == doc_id
    r = client.post(f"/datasets/{ds}/documents/{doc_id}/update_by_text", json={"name": "t", "text": "x"})
    assert r.status_code == 200 and r.json()["document"]["name"] == "t"
    assert err(update(client, ds, "missing", "a.md")) == (404, "not_found", "Document Not Exists.")


def test_update_refused_while_indexing_and_on_error() -> None:
    with EmulatorServer(indexing_delay=0.3) as emu, make_client(emu) as c:
        ds = new_dataset(c)
        doc = upload(c, ds, "a.md").json()["document"]["id"]
        assert err(update(c, ds, doc, "a.md")) == (400, "invalid_param", "Document is not available")
        time.sleep(0.35)
        assert update(c, ds, doc, "a.md").status_code == 200
        emu.store.set_document(ds, doc, error="boom")
        detail = c.get(f"/datasets/{ds}/documents/{doc}").json()
        assert detail["display_status"] == "error" and detail["error"] == "boom"
        assert err(update(c, ds, doc, "a.md"))[2] == "Document is not available"


def _poll(c: httpx.Client, ds: str, batch: str, timeout: float = 5.0) -> list[str]:
    """The distinct indexing_status values the batch shows until it settles."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(f"/datasets/{ds}/documents/{batch}/indexing-status")
        assert r.status_code == 200, r.text
        status = r.json()["data"][0]["indexing_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("completed", "error"):
            break
        time.sleep(0.02)
    return seen


def test_update_answers_the_documents_own_batch_which_shows_the_update() -> None:
    # Dify 1.14.1: update-by-file, update-by-text and PATCH all answer the original batch
    # (document.batch); polling it walks waiting -> ... -> completed again.
    with EmulatorServer(indexing_delay=1.0) as emu, make_client(emu) as c:
        ds = new_dataset(c)
        created = upload(c, ds, "a.md", b"one").json()
        doc, batch = created["document"]["id"], created["batch"]
        assert _poll(c, ds, batch)[-1] == "completed"
        body = update(c, ds, doc, "a.md", b"two").json()
        assert body["batch"] == batch and body["document"]["indexing_status"] == "waiting"
        seen = _poll(c, ds, batch)
        assert seen[0] in ("waiting", "parsing") and seen[-1] == "completed"
        assert {"parsing", "splitting", "indexing"} & set(seen[:-1])
        status = c.get(f"/datasets/{ds}/documents/{batch}/indexing-status").json()["data"]
        assert [s["id"] for s in status] == [doc]
        r = c.patch(f"/datasets/{ds}/documents/{doc}", files={"file": ("a.md", b"3")})
        assert r.json()["batch"] == batch
        _poll(c, ds, batch)
        r = c.post(f"/datasets/{ds}/documents/{doc}/update_by_text", json={"text": "four"})
        assert r.json()["batch"] == batch
        assert emu.store.get_document(ds, doc).batch == batch


def test_legacy_update_answers_a_batch_the_status_endpoint_cannot_find() -> None:
    # 0.9.x made a fresh batch id for the answer and never stored it (langgenius/dify
    # #9221): it answers 404, while the original batch shows the update's progress.
    with EmulatorServer(legacy=True, indexing_delay=0.5) as emu, make_client(emu) as c:
        ds = new_dataset(c)
        created = upload(c, ds, "a.md", b"one").json()
        doc, batch = created["document"]["id"], created["batch"]
        _poll(c, ds, batch)
        body = update(c, ds, doc, "a.md", b"two").json()
        assert body["batch"] and body["batch"] != batch
        assert err(c.get(f"/datasets/{ds}/documents/{body['batch']}/indexing-status")) == (
            404, "not_found", "Documents not found.")
        status = c.get(f"/datasets/{ds}/documents/{batch}/indexing-status").json()["data"][0]
        assert status["id"] == doc and status["indexing_status"] in ("waiting", "parsing")
        assert _poll(c, ds, batch)[-1] == "completed"


def test_name_matched_create_moves_the_document_to_a_new_batch() -> None:
    # Dify 1.14.1 keeps one batch per document: a same-named create gives it a new one, the
    # old batch then answers 404, and a later update answers the new one.
    with EmulatorServer(indexing_delay=1.0) as emu, make_client(emu) as c:
        ds = new_dataset(c)
        first = upload(c, ds, "a.md", b"v1").json()
        doc, b1 = first["document"]["id"], first["batch"]
        # even while the first upload is still queued (no availability check on create)
        second = upload(c, ds, "a.md", b"v2").json()
        b2 = second["batch"]
        assert second["document"]["id"] == doc and b2 != b1
        assert err(c.get(f"/datasets/{ds}/documents/{b1}/indexing-status")) == (
            404, "not_found", "Documents not found.")
        assert _poll(c, ds, b2)[-1] == "completed"
        updated = update(c, ds, doc, "a.md", b"v3").json()
        assert updated["batch"] == b2 and updated["document"]["created_from"] == "web"
        _poll(c, ds, b2)
        # the re-create shows created_from "api" again, as 1.14.1 does
        third = upload(c, ds, "a.md", b"v4").json()
        assert third["document"]["created_from"] == "api" and third["batch"] not in (b1, b2)
        for old in (b1, b2):
            r = c.get(f"/datasets/{ds}/documents/{old}/indexing-status")
            assert r.status_code == 404
        assert c.get(f"/datasets/{ds}/documents/{third['batch']}/indexing-status").json()[
            "data"][0]["id"] == doc
        # deleting the document: its batch, and every older one, answer 404
        assert c.delete(f"/datasets/{ds}/documents/{doc}").status_code == 204
        for old in (b1, b2, third["batch"]):
            assert err(c.get(f"/datasets/{ds}/documents/{old}/indexing-status")) == (
                404, "not_found", "Documents not found.")
        assert emu.store.batches == {}


def test_unknown_batch_and_unknown_dataset_answers(client: httpx.Client) -> None:
    ds, other = new_dataset(client, "one"), new_dataset(client, "two")
    batch = upload(client, ds, "a.md").json()["batch"]
    not_found = (404, "not_found", "Documents not found.")
    for unknown in ("20991231000000123456", "nonsense", "8c5f8f52-7b8a-4d3c-9d57-3f3f7ad1c2b1"):
        assert err(client.get(f"/datasets/{ds}/documents/{unknown}/indexing-status")) \
            == not_found
    # a batch asked for under another dataset is not found there
    assert err(client.get(f"/datasets/{other}/documents/{batch}/indexing-status")) == not_found
    r = client.get(f"/datasets/8c5f8f52-7b8a-4d3c-9d57-3f3f7ad1c2b1/documents/{batch}/indexing-status")
    assert err(r) == (404, "not_found", "Dataset not found.")


# ---------------------------------------------------------------------------- delete
def test_delete_current_and_unknown(client: httpx.Client) -> None:
    ds = new_dataset(client)
    doc = upload(client, ds, "a.md").json()["document"]["id"]
    r = client.delete(f"/datasets/{ds}/documents/{doc}")
    assert r.status_code == 204 and r.content == b""
    assert err(client.delete(f"/datasets/{ds}/documents/{doc}")) == (
        404, "not_found", "Document Not Exists.")


def test_delete_while_indexing() -> None:
    with EmulatorServer(indexing_delay=2.0, refuse_delete_while_indexing=True) as emu, \
            make_client(emu) as c:
        ds = new_dataset(c)
        doc = upload(c, ds, "a.md").json()["document"]["id"]
        emu.store.set_document(ds, doc, indexing_status="indexing")
        assert err(c.delete(f"/datasets/{ds}/documents/{doc}")) == (
            400, "document_indexing", "Cannot delete document during indexing.")
    with EmulatorServer(indexing_delay=2.0) as emu, make_client(emu) as c:  # 1.14.1: allowed
        ds = new_dataset(c)
        created = upload(c, ds, "a.md").json()
        time.sleep(0.25)  # into "parsing"
        r = c.get(f"/datasets/{ds}/documents/{created['batch']}/indexing-status")
        assert r.json()["data"][0]["indexing_status"] == "parsing"
        assert c.delete(f"/datasets/{ds}/documents/{created['document']['id']}").status_code == 204
        r = c.get(f"/datasets/{ds}/documents/{created['batch']}/indexing-status")
        assert err(r) == (404, "not_found", "Documents not found.")


# ----------------------------------------------------------------------------- lists
def test_list_pagination_full_last_page_keyword_and_order(emulator: EmulatorServer,
                                                          client: httpx.Client) -> None:
    ds = new_dataset(client)
    for i in range(4):
        upload(client, ds, f"doc{i}.md")
    upload(client, ds, "other.md")
    first = client.get(f"/datasets/{ds}/documents", params={"page": 1, "limit": 5}).json()
    assert first["has_more"] is True and first["total"] == 5 and len(first["data"]) == 5
    assert first["data"][0]["name"] == "other.md"  # newest first
    second = client.get(f"/datasets/{ds}/documents", params={"page": 2, "limit": 5}).json()
    assert second["data"] == [] and second["has_more"] is False
    page = client.get(f"/datasets/{ds}/documents", params={"page": 2, "limit": 3}).json()
    assert len(page["data"]) == 2 and page["has_more"] is False
    found = client.get(f"/datasets/{ds}/documents", params={"keyword": "doc"}).json()
    assert found["total"] == 4
    assert client.get(f"/datasets/{ds}/documents", params={"keyword": "DOC"}).json()["total"] == 0


def _filtered(c: httpx.Client, ds: str, status: str, **params: object) -> tuple[int, list[str]]:
    body = c.get(f"/datasets/{ds}/documents", params={"status": status, **params}).json()
    return body["total"], sorted(d["name"] for d in body["data"])


def test_list_status_filter_semantics(emulator: EmulatorServer, client: httpx.Client) -> None:
    ds = new_dataset(client)
    for status in ("queuing", "indexing", "paused", "error", "available", "disabled", "archived"):
        assert _filtered(client, ds, status) == (0, []), status
    ids = {n: upload(client, ds, f"{n}.md").json()["document"]["id"] for n in
           ("queued", "busy", "held", "bad1", "bad2", "ok", "off", "old")}
    store = emulator.store
    store.set_document(ds, ids["queued"], indexing_status="waiting")
    store.set_document(ds, ids["busy"], indexing_status="splitting")
    store.set_document(ds, ids["held"], indexing_status="paused")
    store.set_document(ds, ids["bad1"], error="boom")
    store.set_document(ds, ids["bad2"], error="boom", archived=True)  # error wins
    store.set_document(ds, ids["off"], enabled=False)
    store.set_document(ds, ids["old"], archived=True)
    assert _filtered(client, ds, "queuing") == (1, ["queued.md"])
    assert _filtered(client, ds, "indexing") == (1, ["busy.md"])
    assert _filtered(client, ds, "paused") == (1, ["held.md"])
    assert _filtered(client, ds, "error") == (2, ["bad1.md", "bad2.md"])
    assert _filtered(client, ds, "available") == (1, ["ok.md"])
    assert _filtered(client, ds, "disabled") == (1, ["off.md"])
    assert _filtered(client, ds, "archived") == (1, ["old.md"])
    # 1.14.1: case-insensitive, "active" and "enabled" mean available, and an empty or
    # unknown value filters nothing (every document, total of all)
    assert _filtered(client, ds, "ERROR") == (2, ["bad1.md", "bad2.md"])
    for alias in ("Available", "active", "enabled"):
        assert _filtered(client, ds, alias) == (1, ["ok.md"])
    for nothing in ("bogus", ""):
        assert _filtered(client, ds, nothing)[0] == 8
    # with keyword and paging: total counts the filtered documents, has_more is "page full"
    assert _filtered(client, ds, "error", keyword="bad2") == (1, ["bad2.md"])
    page = client.get(f"/datasets/{ds}/documents",
                      params={"status": "error", "limit": 1, "page": 2}).json()
    assert page["total"] == 2 and len(page["data"]) == 1 and page["has_more"] is True
    # the filter follows indexing as it moves on
    store.set_document(ds, ids["queued"], indexing_status=None)
    assert _filtered(client, ds, "queuing") == (0, [])


def test_list_status_filter_follows_live_indexing() -> None:
    with EmulatorServer(indexing_delay=1.0) as emu, make_client(emu) as c:
        ds = new_dataset(c)
        upload(c, ds, "a.md")
        assert _filtered(c, ds, "queuing") == (1, ["a.md"])
        assert _filtered(c, ds, "available") == (0, [])
        time.sleep(0.45)
        assert _filtered(c, ds, "indexing") == (1, ["a.md"])
        assert _filtered(c, ds, "queuing") == (0, [])
        time.sleep(0.6)
        assert _filtered(c, ds, "indexing") == (0, [])
        assert _filtered(c, ds, "available") == (1, ["a.md"])


def test_legacy_servers_ignore_the_status_filter() -> None:
    # 0.x Dify's document list reads page, limit and keyword only
    with EmulatorServer(legacy=True) as old, make_client(old) as c:
        ds = new_dataset(c)
        upload(c, ds, "a.md")
        old.store.set_document(ds, old.store.documents(ds)[0].id, error="boom")
        upload(c, ds, "b.md")
        assert _filtered(c, ds, "error") == (2, ["a.md", "b.md"])
    with EmulatorServer(legacy=True, status_filter=True) as old, make_client(old) as c:
        ds = new_dataset(c)
        upload(c, ds, "a.md")
        assert _filtered(c, ds, "error") == (0, [])


def test_list_limit_over_100(emulator: EmulatorServer, client: httpx.Client) -> None:
    ds = new_dataset(client)
    for i in range(105):
        emulator.store.add_document(ds, f"f{i:03}.md", b"x", indexing_technique="economy")
    r = client.get(f"/datasets/{ds}/documents", params={"limit": 500}).json()
    assert r["limit"] == 500 and len(r["data"]) == 100 and r["has_more"] is False
    assert r["total"] == 105
    r = client.get(f"/datasets/{ds}/documents", params={"limit": 100, "page": 2}).json()
    assert len(r["data"]) == 5


# ----------------------------------------------------------------------- file checks
def test_size_limit_boundary() -> None:
    with EmulatorServer(max_file_size_mb=1) as emu, make_client(emu) as c:
        ds = new_dataset(c)
        limit = 1024 * 1024
        ok = upload(c, ds, "exact.md", b"a" * limit)
        assert ok.status_code == 200
        assert err(upload(c, ds, "big.md", b"a" * (limit + 1)))[:2] == (413, "file_too_large")
        assert err(update(c, ds, ok.json()["document"]["id"], "big.md", b"a" * (limit + 1)))[:2] \
            == (413, "file_too_large")


def test_extension_checks_and_bare_400_mode(client: httpx.Client) -> None:
    ds = new_dataset(client)
    assert err(upload(client, ds, "a.exe"))[:2] == (415, "unsupported_file_type")
    assert err(upload(client, ds, "noext"))[:2] == (415, "unsupported_file_type")
    assert upload(client, ds, "UPPER.MD").status_code == 200
    with EmulatorServer(bare_400_on_create=True, max_file_size_mb=0.001) as emu, \
            make_client(emu) as c:
        ds = new_dataset(c)
        bare = {"code": "invalid_param", "message": "", "status": 400}
        for name, content in (("a.exe", b"x"), ("noext", b"x"), ("big.md", b"x" * 2000)):
            r = upload(c, ds, name, content)
            assert r.status_code == 400 and r.json() == bare
        doc = upload(c, ds, "ok.md").json()["document"]["id"]
        assert err(update(c, ds, doc, "a.exe"))[0] == 415
        assert err(update(c, ds, doc, "ok.md", b"x" * 2000))[:2] == (413, "file_too_large")


def test_forbidden_filename_characters(client: httpx.Client) -> None:
    ds = new_dataset(client)
    for name in ("a/b.md", "a\\b.md", "a:b.md", "a*b.md", "a?b.md", "a<b.md", "a|b.md"):
        assert err(upload(client, ds, name)) == (
            400, "invalid_param", "Filename contains invalid characters"), name
    with EmulatorServer(legacy=True) as old, make_client(old) as c:
        ds2 = new_dataset(c)
        assert upload(c, ds2, "a:b.md").status_code == 200
        assert err(upload(c, ds2, "a/b.md"))[0] == 400


def test_long_names_are_cut(client: httpx.Client) -> None:
    ds = new_dataset(client)
    name = "x" * 150 + "." + "y" * 80 + ".md"  # 234 characters
    assert upload(client, ds, name).json()["document"]["name"] == "x" * 150 + ".md"
    long = "z" * 250 + ".md"
    assert upload(client, ds, long).json()["document"]["name"] == "z" * 200 + ".md"
    exact = "w" * 197 + ".md"  # 200 characters: kept
    assert upload(client, ds, exact).json()["document"]["name"] == exact


# -------------------------------------------------------------------------- indexing
def test_indexing_progression_and_fail_patterns() -> None:
    with EmulatorServer(indexing_delay=0.4) as emu, make_client(emu) as c:
        emu.store.fail_patterns.append("*.bad.md")
        ds = new_dataset(c)
        good = upload(c, ds, "a.md").json()
        bad = upload(c, ds, "x.bad.md").json()
        seen = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            s = c.get(f"/datasets/{ds}/documents/{good['batch']}/indexing-status").json()["data"][0]
            seen.add(s["indexing_status"])
            if s["indexing_status"] == "completed":
                break
            time.sleep(0.03)
        assert {"parsing", "indexing", "completed"} <= seen
        assert s["completed_at"] is not None and s["error"] is None
        # The bad file was uploaded after the good one: give it its own indexing_delay.
        deadline = time.monotonic() + 3
        while True:
            detail = c.get(f"/datasets/{ds}/documents/{bad['document']['id']}").json()
            if detail["indexing_status"] not in ("waiting", "parsing", "splitting", "indexing") \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.03)
        assert detail["indexing_status"] == "error" and detail["display_status"] == "error"
        assert detail["error"]
        assert err(c.get(f"/datasets/{ds}/documents/nobatch/indexing-status")) == (
            404, "not_found", "Documents not found.")


def test_status_actions(client: httpx.Client) -> None:
    ds = new_dataset(client)
    doc = upload(client, ds, "a.md").json()["document"]["id"]
    base = f"/datasets/{ds}/documents/status"
    assert client.patch(f"{base}/archive", json={"document_ids": [doc]}).status_code == 200
    assert client.get(f"/datasets/{ds}/documents/{doc}").json()["display_status"] == "archived"
    client.patch(f"{base}/un_archive", json={"document_ids": [doc]})
    client.patch(f"{base}/disable", json={"document_ids": [doc]})
    assert client.get(f"/datasets/{ds}/documents/{doc}").json()["display_status"] == "disabled"
    client.patch(f"{base}/enable", json={"document_ids": [doc]})
    assert client.get(f"/datasets/{ds}/documents/{doc}").json()["display_status"] == "available"
    assert err(client.patch(f"{base}/explode", json={"document_ids": [doc]}))[:2] == (
        400, "invalid_action")


def test_quota_switches(emulator: EmulatorServer, client: httpx.Client) -> None:
    ds = new_dataset(client)
    emulator.faults.quota_exceeded = True
    assert err(upload(client, ds, "a.md"))[:2] == (400, "provider_quota_exceeded")
    emulator.faults.quota_exceeded = False
    emulator.faults.provider_not_initialize = True
    assert err(upload(client, ds, "a.md"))[:2] == (400, "provider_not_initialize")
    emulator.faults.provider_not_initialize = False
    emulator.faults.document_limit = True
    assert err(upload(client, ds, "a.md")) == (
        403, "forbidden", "The number of documents has reached the limit of your subscription.")
    emulator.faults.document_limit = False
    assert upload(client, ds, "a.md").status_code == 200


# ---------------------------------------------------------------------------- faults
def _statuses(emu: EmulatorServer, n: int) -> list[int]:
    with make_client(emu) as c:
        return [c.get("/datasets").status_code for _ in range(n)]


def test_error_rate_is_seeded_and_bodies_look_real() -> None:
    runs = []
    for _ in range(2):
        with EmulatorServer(faults=Faults(error_rate=0.5, seed=7)) as emu:
            runs.append(_statuses(emu, 30))
    assert runs[0] == runs[1]
    assert {500, 502, 503} & set(runs[0]) and 200 in runs[0]
    with EmulatorServer(faults=Faults(error_rate=1, error_statuses=[502], seed=1)) as emu, \
            make_client(emu) as c:
        r = c.get("/datasets")
        assert r.status_code == 502 and "<html>" in r.text and "nginx" in r.text
        emu.faults.error_statuses = [500]
        assert err(c.get("/datasets"))[:2] == (500, "internal_server_error")


def test_rate_limits(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.faults.rate_limit_429 = 1
    emulator.faults.retry_after = 3
    r = client.get("/datasets")
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    assert client.get("/datasets").status_code == 200
    emulator.faults.rate_limit_403 = 2
    assert client.get("/datasets").status_code == 200  # reads are not counted
    for name in ("a", "b"):
        assert err(client.post("/datasets", json={"name": name})) == (
            403, "forbidden",
            "Sorry, you have reached the knowledge base request rate limit of your subscription.")
    assert client.post("/datasets", json={"name": "c"}).status_code == 200


def test_hang_makes_the_client_time_out(emulator: EmulatorServer) -> None:
    emulator.faults.hang_rate = 1
    emulator.faults.hang_seconds = 1.0
    with make_client(emulator, timeout=0.2) as c, pytest.raises(httpx.TimeoutException):
        c.get("/datasets")


def test_latency_is_added(emulator: EmulatorServer, client: httpx.Client) -> None:
    emulator.faults.latency = 0.15
    t0 = time.monotonic()
    client.get("/datasets")
    assert time.monotonic() - t0 >= 0.15


def test_drop_is_a_transport_error_and_nothing_happens(emulator: EmulatorServer,
                                                       client: httpx.Client) -> None:
    ds = new_dataset(client)
    emulator.faults.drop_rate = 1
    with pytest.raises(httpx.TransportError):
        upload(client, ds, "a.md")
    emulator.faults.drop_rate = 0
    assert emulator.store.documents(ds) == []
    assert emulator.requests[-1].dropped and emulator.requests[-1].status == 0


def test_drop_after_commit_applies_the_mutation(emulator: EmulatorServer,
                                                client: httpx.Client) -> None:
    ds = new_dataset(client)
    emulator.faults.drop_rate = 1
    emulator.faults.drop_after_commit = True
    with pytest.raises(httpx.RemoteProtocolError):
        upload(client, ds, "a.md")
    emulator.faults.drop_rate = 0
    docs = emulator.store.documents(ds)
    assert [d.name for d in docs] == ["a.md"]
    # a re-sent create lands on the same document (name matching)
    again = upload(client, ds, "a.md").json()["document"]["id"]
    assert again == docs[0].id and len(emulator.store.documents(ds)) == 1


def test_fail_next_rules(emulator: EmulatorServer, client: httpx.Client) -> None:
    ds = new_dataset(client)
    doc = upload(client, ds, "a.md").json()["document"]["id"]
    emulator.faults.fail_next.append(FaultRule(
        status=400, code="document_indexing", message="Cannot delete document during indexing.",
        method="DELETE"))
    assert client.get(f"/datasets/{ds}/documents").status_code == 200  # not matched
    assert err(client.delete(f"/datasets/{ds}/documents/{doc}"))[:2] == (400, "document_indexing")
    emulator.faults.fail_next.append(FaultRule(action="drop_after_commit", method="DELETE"))
    with pytest.raises(httpx.TransportError):
        client.delete(f"/datasets/{ds}/documents/{doc}")
    assert emulator.store.documents(ds) == []
    assert emulator.faults.fail_next == []


def test_admin_endpoints(emulator: EmulatorServer, client: httpx.Client) -> None:
    root = emulator.base_url[: -len("/v1")]
    ds = new_dataset(client)
    doc = upload(client, ds, "a.md").json()["document"]["id"]
    with httpx.Client(base_url=root) as admin:
        r = admin.post("/_admin/faults", json={"rate_limit_429": 1, "retry_after": 2,
                                               "fail_next": [{"status": 503}]})
        assert r.status_code == 200 and admin.get("/_admin/faults").json()["rate_limit_429"] == 1
        assert client.get("/datasets").status_code == 503
        assert client.get("/datasets").status_code == 429
        r = admin.post(f"/_admin/documents/{ds}/{doc}", json={"enabled": False})
        assert r.json()["display_status"] == "disabled"
        assert admin.post("/_admin/fail_patterns", json={"patterns": ["*.x.md"]}).status_code == 200
        assert emulator.store.fail_patterns == ["*.x.md"]
        log = admin.get("/_admin/requests").json()["data"]
        assert all(not r["path"].startswith("/_admin") for r in log) and len(log) == 4
        assert admin.post("/_admin/reset").status_code == 200
    assert err(client.get(f"/datasets/{ds}"))[0] == 404
    assert emulator.faults.rate_limit_429 == 0


# -------------------------------------------------------------- log and lifecycle
def test_request_log_counts(emulator: EmulatorServer, client: httpx.Client) -> None:
    ds = new_dataset(client)
    upload(client, ds, "a.md")
    client.get(f"/datasets/{ds}/documents")
    assert emulator.count() == 3
    assert emulator.count(method="POST") == 2
    assert emulator.count(path_contains="create_by_file") == 1
    assert emulator.count(mutating=False) == 1
    assert [r.status for r in emulator.mutating_requests()] == [200, 200]
    emulator.reset_requests()
    assert emulator.requests == []


def test_two_emulators_and_fast_stop() -> None:
    a, b = EmulatorServer(), EmulatorServer(api_key="other")
    with a, b:
        assert a.base_url != b.base_url
        with make_client(a) as ca:
            new_dataset(ca, "only-in-a")
        with httpx.Client(base_url=b.base_url, headers={"Authorization": "Bearer other"}) as cb:
            assert cb.get("/datasets").json()["total"] == 0
        emu = EmulatorServer(faults=Faults(hang_rate=1, hang_seconds=30)).start()
        with make_client(emu, timeout=0.2) as c, pytest.raises(httpx.TimeoutException):
            c.get("/datasets")  # a request still hanging in the server
        t0 = time.monotonic()
        emu.stop()
        assert time.monotonic() - t0 < 1.0
    with pytest.raises(httpx.ConnectError):
        httpx.get(a.base_url + "/datasets", headers=AUTH)


def test_state_persists_across_restarts(tmp_path) -> None:
    path = tmp_path / "state.json"
    with EmulatorServer(state_path=path) as emu, make_client(emu) as c:
        ds = new_dataset(c)
        doc = upload(c, ds, "a.md", b"keep me").json()["document"]["id"]
    with EmulatorServer(state_path=path) as emu, make_client(emu) as c:
        assert emu.store.content(ds, doc) == b"keep me"
        assert c.get(f"/datasets/{ds}/documents").json()["data"][0]["id"] == doc


def test_a_filtered_listing_renders_each_document_as_of_the_filter():
    # A real server reads each row once: a document listed under status=queuing says
    # "queuing", even when its indexing moves on while the page is being rendered.
    from difysync.emulator.store import Store

    ticks = iter(range(10**6))
    store = Store(indexing_delay=40.0, clock=lambda: 1000.0 + next(ticks) * 0.5)
    ds = store.create_dataset("race", "economy")
    for i in range(20):
        store.add_document(ds, f"d{i}.md", b"text", match_by_name=False)
    for status in ("queuing", "indexing"):
        page = store.list_documents(ds, 1, 100, None, status=status)
        assert {d["display_status"] for d in page["data"]} <= {status}
