"""The emulator's knowledge metadata API answers as Dify 1.14.1 does (probed against a
running 1.14.1 and read from its source: services/metadata_service.py,
controllers/service_api/dataset/metadata.py, models/dataset.py), over real HTTP."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from difysync.emulator import EmulatorServer, FaultRule

AUTH = {"Authorization": "Bearer test-key"}
_names = itertools.count()
BUILT_IN_NAMES = ["document_name", "uploader", "upload_date", "last_update_date", "source"]
NOT_FOUND = ("The requested URL was not found on the server. If you entered the URL manually "
             "please check your spelling and try again.")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def c(emu: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.api_key}"},
                      timeout=5) as client:
        yield client


def client_for(server: EmulatorServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers=AUTH, timeout=5)


def dataset(c: httpx.Client) -> str:
    r = c.post("/datasets", json={"name": f"md-{next(_names)}", "indexing_technique": "economy"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def document(c: httpx.Client, ds: str, name: str = "a.txt", text: str = "some words") -> str:
    r = c.post(f"/datasets/{ds}/document/create-by-text", json={"name": name, "text": text})
    assert r.status_code == 200, r.text
    return r.json()["document"]["id"]


def field(c: httpx.Client, ds: str, name: str, type_: str = "string") -> str:
    r = c.post(f"/datasets/{ds}/metadata", json={"type": type_, "name": name})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def write(c: httpx.Client, ds: str, *ops: dict, **top: object) -> httpx.Response:
    return c.post(f"/datasets/{ds}/documents/metadata", json={"operation_data": list(ops), **top})


def op(doc: str, *items: tuple[str, str, object], partial: bool | None = None) -> dict:
    out: dict = {"document_id": doc,
                 "metadata_list": [{"id": i, "name": n, "value": v} for i, n, v in items]}
    if partial is not None:
        out["partial_update"] = partial
    return out


def only(c: httpx.Client, ds: str, doc: str) -> list[dict] | None:
    r = c.get(f"/datasets/{ds}/documents/{doc}", params={"metadata": "only"})
    assert r.status_code == 200, r.text
    return r.json()["doc_metadata"]


def custom(items: list[dict] | None) -> list[tuple[str, object]] | None:
    """The non-built-in (name, value) pairs of a doc_metadata."""
    if items is None:
        return None
    return [(i["name"], i["value"]) for i in items if i["id"] != "built-in"]


def listed(c: httpx.Client, ds: str) -> dict[str, list[dict] | None]:
    r = c.get(f"/datasets/{ds}/documents")
    assert r.status_code == 200
    return {d["id"]: d["doc_metadata"] for d in r.json()["data"]}


def err(r: httpx.Response) -> tuple[int, str, str]:
    body = r.json()
    assert body["status"] == r.status_code
    return r.status_code, body["code"], body["message"]


def pyd(title: str, *lines: str) -> str:
    """A pydantic ValidationError message as Dify 1.14.1 (pydantic 2.12) words it."""
    return title + "\n" + "\n".join(lines)


def _link(kind: str) -> str:
    return f"    For further information visit https://errors.pydantic.dev/2.12/v/{kind}"


# --------------------------------------------------------------------- fields
def test_get_metadata_of_a_new_dataset_is_empty(c: httpx.Client) -> None:
    ds = dataset(c)
    r = c.get(f"/datasets/{ds}/metadata")
    assert r.status_code == 200
    assert r.json() == {"doc_metadata": [], "built_in_field_enabled": False}


def test_create_field_answers_201_with_id_type_name(c: httpx.Client) -> None:
    ds = dataset(c)
    r = c.post(f"/datasets/{ds}/metadata", json={"type": "number", "name": "pages", "x": 1})
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "type", "name"} and uuid.UUID(body["id"])
    assert (body["type"], body["name"]) == ("number", "pages")
    field(c, ds, "when", "time")
    assert c.get(f"/datasets/{ds}/metadata").json() == {"doc_metadata": [
        {"id": body["id"], "name": "pages", "type": "number", "count": 0},
        {"id": c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"][1]["id"],
         "name": "when", "type": "time", "count": 0}], "built_in_field_enabled": False}


def test_create_field_refuses_an_existing_name_compared_exactly(c: httpx.Client) -> None:
    ds = dataset(c)
    field(c, ds, "author")
    r = c.post(f"/datasets/{ds}/metadata", json={"type": "number", "name": "author"})
    assert err(r) == (400, "invalid_param", "Metadata name already exists.")
    field(c, ds, "Author")  # case and spaces count
    field(c, ds, " author ")


def test_create_field_refuses_built_in_names(c: httpx.Client) -> None:
    ds = dataset(c)
    for name in BUILT_IN_NAMES:
        r = c.post(f"/datasets/{ds}/metadata", json={"type": "string", "name": name})
        assert err(r) == (400, "invalid_param", "Metadata name already exists in Built-in fields.")
    field(c, ds, "Document_Name")


def test_create_field_name_at_most_255_characters_empty_allowed(c: httpx.Client) -> None:
    ds = dataset(c)
    field(c, ds, "n" * 255)
    field(c, ds, "")
    r = c.post(f"/datasets/{ds}/metadata", json={"type": "string", "name": "m" * 256})
    assert err(r) == (400, "invalid_param", "Metadata name cannot exceed 255 characters.")


def test_create_field_bad_type_answers_pydantic_message(c: httpx.Client) -> None:
    ds = dataset(c)
    r = c.post(f"/datasets/{ds}/metadata", json={"type": "bool", "name": "x"})
    assert err(r) == (400, "invalid_param", pyd(
        "1 validation error for MetadataArgs", "type",
        "  Input should be 'string', 'number' or 'time' [type=literal_error, "
        "input_value='bool', input_type=str]", _link("literal_error")))
    r = c.post(f"/datasets/{ds}/metadata", json={"type": "String", "name": "x"})
    assert err(r)[:2] == (400, "invalid_param")


def test_create_field_missing_keys_answer_pydantic_message(c: httpx.Client) -> None:
    ds = dataset(c)
    r = c.post(f"/datasets/{ds}/metadata", json={})
    assert err(r) == (400, "invalid_param", pyd(
        "2 validation errors for MetadataArgs",
        "type", "  Field required [type=missing, input_value={}, input_type=dict]", _link("missing"),
        "name", "  Field required [type=missing, input_value={}, input_type=dict]", _link("missing")))
    r = c.post(f"/datasets/{ds}/metadata", json={"type": "string", "name": 123})
    assert err(r) == (400, "invalid_param", pyd(
        "1 validation error for MetadataArgs", "name",
        "  Input should be a valid string [type=string_type, input_value=123, input_type=int]",
        _link("string_type")))
    r = c.post(f"/datasets/{ds}/metadata", content=b"null",
               headers={"Content-Type": "application/json"})
    assert err(r)[2].startswith("2 validation errors for MetadataArgs")


def test_metadata_bodies_must_be_declared_and_valid_json(c: httpx.Client) -> None:
    ds = dataset(c)
    for path, method in ((f"/datasets/{ds}/metadata", "POST"),
                         (f"/datasets/{ds}/documents/metadata", "POST"),
                         (f"/datasets/{ds}/metadata/{uuid.uuid4()}", "PATCH")):
        assert err(c.request(method, path)) == (
            415, "unsupported_media_type", "Did not attempt to load JSON data because the "
            "request Content-Type was not 'application/json'.")
        for raw in (b"{nope", b""):
            r = c.request(method, path, content=raw, headers={"Content-Type": "application/json"})
            assert err(r) == (400, "bad_request", "The browser (or proxy) sent a request that "
                              "this server could not understand.")
    r = c.post(f"/datasets/{ds}/metadata", content=b'{"type": "string", "name": "cs"}',
               headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201


def test_metadata_routes_answer_unknown_dataset_404_with_flask_restx_hint(c: httpx.Client) -> None:
    gone = str(uuid.uuid4())
    plain = (404, "not_found", "Dataset not found.")
    assert err(c.get(f"/datasets/{gone}/metadata")) == plain
    assert err(c.post(f"/datasets/{gone}/metadata", content=b"{nope",
                      headers={"Content-Type": "application/json"})) == plain
    assert err(c.patch(f"/datasets/{gone}/metadata/{uuid.uuid4()}", json={"name": "q"})) == plain
    assert err(c.delete(f"/datasets/{gone}/metadata/{uuid.uuid4()}")) == plain
    assert err(c.post(f"/datasets/{gone}/metadata/built-in/enable")) == plain
    assert err(c.get(f"/datasets/{gone}/metadata/built-in")) == (
        404, "not_found", f"Dataset not found. You have requested this URI [/v1/datasets/{gone}"
        "/metadata/built-in] but did you mean /v1/datasets/<uuid:dataset_id>/metadata/built-in ?")
    assert err(write(c, gone)) == (
        404, "not_found", f"Dataset not found. You have requested this URI [/v1/datasets/{gone}"
        "/documents/metadata] but did you mean /v1/datasets/<uuid:dataset_id>/documents/metadata ?")


def test_non_uuid_ids_are_unknown_routes(c: httpx.Client) -> None:
    ds = dataset(c)
    assert err(c.get("/datasets/not-a-uuid/metadata")) == (404, "not_found", NOT_FOUND)
    assert err(c.patch(f"/datasets/{ds}/metadata/nope", json={"name": "x"})) == (
        404, "not_found", NOT_FOUND)
    assert err(c.delete(f"/datasets/{ds}/metadata/nope")) == (404, "not_found", NOT_FOUND)


def test_metadata_routes_answer_405_to_other_methods(c: httpx.Client) -> None:
    ds = dataset(c)
    fid = field(c, ds, "f")
    for method, path in (("PUT", "metadata"), ("DELETE", "metadata"), (f"GET", f"metadata/{fid}"),
                         ("POST", "metadata/built-in"), ("GET", "metadata/built-in/enable"),
                         ("GET", "documents/metadata"), ("PATCH", "metadata/built-in")):
        r = c.request(method, f"/datasets/{ds}/{path}")
        assert err(r) == (405, "method_not_allowed",
                          "The method is not allowed for the requested URL."), (method, path)


def test_metadata_routes_need_the_key(emu: EmulatorServer, c: httpx.Client) -> None:
    ds = dataset(c)
    with httpx.Client(base_url=emu.base_url) as anon:
        assert err(anon.get(f"/datasets/{ds}/metadata")) == (
            401, "unauthorized", "Authorization header must be provided and start with 'Bearer'")
        r = anon.post(f"/datasets/{ds}/metadata/built-in/enable",
                      headers={"Authorization": "Bearer nope"})
        assert err(r) == (401, "unauthorized", "Access token is invalid")


def test_dataset_object_lists_fields_and_built_in_switch(c: httpx.Client) -> None:
    ds = dataset(c)
    fid = field(c, ds, "n1", "number")
    body = c.get(f"/datasets/{ds}").json()
    assert body["doc_metadata"] == [{"id": fid, "name": "n1", "type": "number"}]
    assert body["built_in_field_enabled"] is False
    c.post(f"/datasets/{ds}/metadata/built-in/enable")
    body = c.get(f"/datasets/{ds}").json()
    assert body["built_in_field_enabled"] is True
    assert body["doc_metadata"][1:] == [
        {"id": "built-in", "name": "document_name", "type": "string"},
        {"id": "built-in", "name": "uploader", "type": "string"},
        {"id": "built-in", "name": "upload_date", "type": "time"},
        {"id": "built-in", "name": "last_update_date", "type": "time"},
        {"id": "built-in", "name": "source", "type": "string"}]
    assert c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"] == [
        {"id": fid, "name": "n1", "type": "number", "count": 0}]


# --------------------------------------------------------------------- values
def test_doc_metadata_is_null_until_the_document_has_values(c: httpx.Client) -> None:
    ds = dataset(c)
    r = c.post(f"/datasets/{ds}/document/create-by-text", json={"name": "a.txt", "text": "x"})
    doc = r.json()["document"]
    assert doc["doc_metadata"] is None
    assert listed(c, ds) == {doc["id"]: None}
    detail = c.get(f"/datasets/{ds}/documents/{doc['id']}").json()
    assert detail["doc_metadata"] is None and detail["doc_type"] is None
    assert c.get(f"/datasets/{ds}/documents/{doc['id']}", params={"metadata": "only"}).json() == {
        "id": doc["id"], "doc_type": None, "doc_metadata": None}


def test_list_shows_values_as_strings_then_the_built_in_fields(emu: EmulatorServer,
                                                              c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds, "d1.txt")
    a, p, t = field(c, ds, "author"), field(c, ds, "pages", "number"), field(c, ds, "pub", "time")
    r = write(c, ds, op(doc, (a, "author", "Ann"), (p, "pages", 12), (t, "pub", 7.5)))
    assert r.status_code == 200 and r.json() == {"result": "success"}
    rec = emu.store.get_document(ds, doc)
    assert listed(c, ds)[doc] == [
        {"id": a, "name": "author", "type": "string", "value": "Ann"},
        {"id": p, "name": "pages", "type": "number", "value": "12"},
        {"id": t, "name": "pub", "type": "time", "value": "7.5"},
        {"id": "built-in", "name": "document_name", "type": "string", "value": "d1.txt"},
        {"id": "built-in", "name": "uploader", "type": "string", "value": "admin"},
        {"id": "built-in", "name": "upload_date", "type": "time",
         "value": str(float(int(rec.created_at)))},
        {"id": "built-in", "name": "last_update_date", "type": "time",
         "value": str(round(rec.updated_at, 6))},
        {"id": "built-in", "name": "source", "type": "string", "value": "file_upload"}]


def test_detail_keeps_value_types_with_metadata_all_and_only(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a, p, t = field(c, ds, "author"), field(c, ds, "pages", "number"), field(c, ds, "pub", "time")
    write(c, ds, op(doc, (t, "pub", 3), (a, "author", "Ann"), (p, "pages", 12.0)))
    expected = [("pub", 3), ("author", "Ann"), ("pages", 12.0)]  # binding order
    full = c.get(f"/datasets/{ds}/documents/{doc}").json()
    assert custom(full["doc_metadata"]) == expected
    assert isinstance(custom(full["doc_metadata"])[2][1], float)
    assert custom(only(c, ds, doc)) == expected
    assert custom(listed(c, ds)[doc]) == [("pub", "3"), ("author", "Ann"), ("pages", "12.0")]


def test_detail_metadata_without_and_invalid_values(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    r = c.get(f"/datasets/{ds}/documents/{doc}", params={"metadata": "without"})
    assert r.status_code == 200 and "doc_metadata" not in r.json() and "doc_type" not in r.json()
    for bad in ("bogus", "", "ONLY"):
        r = c.get(f"/datasets/{ds}/documents/{doc}", params={"metadata": bad})
        assert err(r) == (400, "invalid_metadata", f"Invalid metadata value: {bad}")
    r = c.get(f"/datasets/{ds}/documents/{uuid.uuid4()}", params={"metadata": "only"})
    assert err(r) == (404, "not_found", "Document not found.")


def test_write_without_partial_update_replaces_values_and_bindings(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a, p = field(c, ds, "author"), field(c, ds, "pages", "number")
    write(c, ds, op(doc, (a, "author", "Ann"), (p, "pages", 12)))
    write(c, ds, op(doc, (a, "author", "Bob")))
    assert custom(only(c, ds, doc)) == [("author", "Bob")]
    counts = {f["name"]: f["count"] for f in c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"]}
    assert counts == {"author": 1, "pages": 0}
    write(c, ds, op(doc, (p, "pages", 5), partial=False))
    assert custom(only(c, ds, doc)) == [("pages", 5)]


def test_partial_update_true_merges_and_does_not_bind_twice(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a, p = field(c, ds, "author"), field(c, ds, "pages", "number")
    write(c, ds, op(doc, (a, "author", "Bob")))
    write(c, ds, op(doc, (p, "pages", "30"), partial=True))
    write(c, ds, op(doc, (a, "author", "x"), (a, "author", "Cy"), partial=True))
    assert custom(only(c, ds, doc)) == [("author", "Cy"), ("pages", "30")]
    counts = {f["name"]: f["count"] for f in c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"]}
    assert counts == {"author": 1, "pages": 1}
    write(c, ds, op(doc, partial=True))  # an empty merge changes nothing
    assert custom(only(c, ds, doc)) == [("author", "Cy"), ("pages", "30")]
    write(c, ds, op(doc, (p, "pages", 1), partial="yes"))  # pydantic reads "yes" as true
    assert custom(only(c, ds, doc)) == [("author", "Cy"), ("pages", 1)]
    r = write(c, ds, op(doc, (p, "pages", 1), partial="junk"))
    assert err(r)[2] == pyd(
        "1 validation error for MetadataOperationData", "operation_data.0.partial_update",
        "  Input should be a valid boolean, unable to interpret input [type=bool_parsing, "
        "input_value='junk', input_type=str]", _link("bool_parsing"))


def test_partial_update_sits_per_operation_not_at_the_top(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a, p = field(c, ds, "author"), field(c, ds, "pages", "number")
    write(c, ds, op(doc, (a, "author", "Ann")))
    write(c, ds, op(doc, (p, "pages", 99)), partial_update=True)  # ignored: replaces
    assert custom(only(c, ds, doc)) == [("pages", 99)]


def test_partial_update_option_false_ignores_the_flag_like_servers_before_1_11() -> None:
    with EmulatorServer(partial_update=False) as old, client_for(old) as c:
        ds = dataset(c)
        doc = document(c, ds)
        a, p = field(c, ds, "author"), field(c, ds, "pages", "number")
        write(c, ds, op(doc, (a, "author", "Ann")))
        assert write(c, ds, op(doc, (p, "pages", 2), partial=True)).status_code == 200
        assert custom(only(c, ds, doc)) == [("pages", 2)]
        assert write(c, ds, op(doc, (p, "pages", 3), partial="junk")).status_code == 200
        assert custom(only(c, ds, doc)) == [("pages", 3)]


def test_values_go_under_the_name_sent_and_the_id_is_only_bound(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a = field(c, ds, "author")
    field(c, ds, "pages", "number")
    write(c, ds, op(doc, (a, "author", "Ann")))
    write(c, ds, op(doc, (a, "pages", "mis")))  # id of author, name of pages
    assert custom(only(c, ds, doc)) == [("author", None)]
    write(c, ds, op(doc, (str(uuid.uuid4()), "ghost", "g")))  # no such field: invisible
    assert custom(only(c, ds, doc)) == []
    names = [i["name"] for i in only(c, ds, doc) or []]
    assert names == BUILT_IN_NAMES  # stored values exist, so doc_metadata is not null
    counts = {f["name"]: f["count"] for f in c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"]}
    assert counts == {"author": 0, "pages": 0}


def test_same_field_twice_in_a_replace_binds_twice(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a = field(c, ds, "author")
    write(c, ds, op(doc, (a, "author", "one"), (a, "author", "two")))
    assert custom(only(c, ds, doc)) == [("author", "two"), ("author", "two")]
    assert c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"][0]["count"] == 2


def test_only_string_number_and_null_values_pass(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a = field(c, ds, "author")
    for value, stored in ((True, 1), (10**20, 10**20), (-3, -3), ("", ""), (None, None),
                          ("12", "12")):
        assert write(c, ds, op(doc, (a, "author", value))).status_code == 200
        assert custom(only(c, ds, doc)) == [("author", stored)]
    r = c.post(f"/datasets/{ds}/documents/metadata", json={"operation_data": [
        {"document_id": doc, "metadata_list": [{"id": a, "name": "author"}]}]})
    assert r.status_code == 200 and custom(only(c, ds, doc)) == [("author", None)]
    assert custom(listed(c, ds)[doc]) == [("author", None)]
    r = write(c, ds, op(doc, (a, "author", [1])))
    assert err(r) == (400, "invalid_param", pyd(
        "3 validation errors for MetadataOperationData",
        "operation_data.0.metadata_list.0.value.str",
        "  Input should be a valid string [type=string_type, input_value=[1], input_type=list]",
        _link("string_type"),
        "operation_data.0.metadata_list.0.value.int",
        "  Input should be a valid integer [type=int_type, input_value=[1], input_type=list]",
        _link("int_type"),
        "operation_data.0.metadata_list.0.value.float",
        "  Input should be a valid number [type=float_type, input_value=[1], input_type=list]",
        _link("float_type")))
    assert err(write(c, ds, op(doc, (a, "author", {"a": 1}))))[:2] == (400, "invalid_param")
    assert custom(only(c, ds, doc)) == [("author", None)]


def test_documents_metadata_body_shape_errors(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    r = c.post(f"/datasets/{ds}/documents/metadata", json={})
    assert err(r) == (400, "invalid_param", pyd(
        "1 validation error for MetadataOperationData", "operation_data",
        "  Field required [type=missing, input_value={}, input_type=dict]", _link("missing")))
    r = c.post(f"/datasets/{ds}/documents/metadata", json={"operation_data": [{"metadata_list": []}]})
    assert err(r)[2].startswith("1 validation error for MetadataOperationData\n"
                                "operation_data.0.document_id\n  Field required")
    r = c.post(f"/datasets/{ds}/documents/metadata", json={"operation_data": [{"document_id": doc}]})
    assert err(r)[2].startswith("1 validation error for MetadataOperationData\n"
                                "operation_data.0.metadata_list\n  Field required")
    assert write(c, ds).json() == {"result": "success"}  # no operations at all


def test_unknown_document_answers_400_and_keeps_earlier_operations(c: httpx.Client) -> None:
    ds = dataset(c)
    d1, d2 = document(c, ds, "1.txt"), document(c, ds, "2.txt")
    a = field(c, ds, "author")
    r = write(c, ds, op(d1, (a, "author", "first")), op(str(uuid.uuid4()), (a, "author", "x")),
              op(d2, (a, "author", "third")))
    assert err(r) == (400, "invalid_param", "Document not found.")
    assert custom(only(c, ds, d1)) == [("author", "first")]
    assert only(c, ds, d2) is None
    other = dataset(c)
    assert err(write(c, other, op(d1)))[2] == "Document not found."  # found by dataset too


def test_non_uuid_document_or_field_id_is_a_500_rolling_back_that_operation(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a = field(c, ds, "author")
    write(c, ds, op(doc, (a, "author", "kept")))
    internal = (500, "unknown", "Internal Server Error")
    assert err(write(c, ds, op("not-a-uuid", (a, "author", "x")))) == internal
    assert err(write(c, ds, op(doc, (a, "author", "y"), ("built-in", "document_name", "z")))) \
        == internal
    assert custom(only(c, ds, doc)) == [("author", "kept")]
    write(c, ds, op(doc.upper(), (a.upper(), "author", "upper")))  # Postgres reads them so
    assert custom(only(c, ds, doc)) == [("author", "upper")]


def test_empty_metadata_list_sets_doc_metadata_back_to_null(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a = field(c, ds, "author")
    write(c, ds, op(doc, (a, "author", "Ann")))
    write(c, ds, op(doc))
    assert only(c, ds, doc) is None and listed(c, ds)[doc] is None
    assert c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"][0]["count"] == 0


def test_writes_bump_last_update_date_only_when_values_change(emu: EmulatorServer,
                                                              c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a = field(c, ds, "author")
    rec = emu.store.get_document(ds, doc)
    rec.updated_at = 1_700_000_000.5
    write(c, ds, op(doc, (a, "author", "Ann")))
    assert rec.updated_at > 1_700_000_000.5
    rec.updated_at = 1_700_000_000.5
    write(c, ds, op(doc, (a, "author", "Ann")))  # the same JSON: no UPDATE in Dify
    write(c, ds, op(doc, partial=True))
    assert rec.updated_at == 1_700_000_000.5
    item = only(c, ds, doc)[-2]
    assert item == {"id": "built-in", "name": "last_update_date", "type": "time",
                    "value": "1700000000.5"}
    assert c.get(f"/datasets/{ds}/documents/{doc}").json()["updated_at"] == 1_700_000_000


# --------------------------------------------------------------- rename / delete
def test_rename_moves_values_of_working_documents_only(emu: EmulatorServer, c: httpx.Client) -> None:
    ds = dataset(c)
    d1, d2 = document(c, ds, "1.txt"), document(c, ds, "2.txt")
    a = field(c, ds, "author")
    write(c, ds, op(d1, (a, "author", "one")), op(d2, (a, "author", "two")))
    emu.store.set_document(ds, d2, enabled=False)
    r = c.patch(f"/datasets/{ds}/metadata/{a}", json={"name": "writer"})
    assert r.status_code == 200 and r.json() == {"id": a, "type": "string", "name": "writer"}
    assert custom(only(c, ds, d1)) == [("writer", "one")]
    assert custom(only(c, ds, d2)) == [("writer", None)]  # disabled: still under "author"
    assert emu.store.get_document(ds, d2).doc_metadata == {"author": "two"}
    assert c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"] == [
        {"id": a, "name": "writer", "type": "string", "count": 2}]


def test_rename_refusals(c: httpx.Client) -> None:
    ds = dataset(c)
    a = field(c, ds, "author")
    field(c, ds, "pages")
    url = f"/datasets/{ds}/metadata/{a}"
    exists = (400, "invalid_param", "Metadata name already exists.")
    assert err(c.patch(url, json={"name": "pages"})) == exists
    assert err(c.patch(url, json={"name": "author"})) == exists  # its own name too
    assert err(c.patch(url, json={"name": "source"})) == (
        400, "invalid_param", "Metadata name already exists in Built-in fields.")
    assert err(c.patch(url, json={"name": "z" * 256})) == (
        400, "invalid_param", "Metadata name cannot exceed 255 characters.")
    assert err(c.patch(url, json={})) == (400, "invalid_param", pyd(
        "1 validation error for MetadataUpdatePayload", "name",
        "  Field required [type=missing, input_value={}, input_type=dict]", _link("missing")))
    assert c.patch(url, json={"name": ""}).json() == {"id": a, "type": "string", "name": ""}


def test_rename_of_an_unknown_id_answers_200_with_nulls(c: httpx.Client) -> None:
    ds = dataset(c)
    field(c, ds, "taken")
    r = c.patch(f"/datasets/{ds}/metadata/{uuid.uuid4()}", json={"name": "brandnew"})
    assert r.status_code == 200 and r.json() == {"id": None, "type": None, "name": None}
    r = c.patch(f"/datasets/{ds}/metadata/{uuid.uuid4()}", json={"name": "taken"})
    assert err(r) == (400, "invalid_param", "Metadata name already exists.")


def test_delete_field_removes_it_and_its_values_204_known_or_not(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a, p = field(c, ds, "author"), field(c, ds, "pages", "number")
    write(c, ds, op(doc, (a, "author", "Ann"), (p, "pages", 5)))
    r = c.delete(f"/datasets/{ds}/metadata/{p}")
    assert r.status_code == 204 and r.content == b""
    assert custom(only(c, ds, doc)) == [("author", "Ann")]
    assert [f["name"] for f in c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"]] == ["author"]
    assert c.delete(f"/datasets/{ds}/metadata/{p}").status_code == 204
    assert c.delete(f"/datasets/{ds}/metadata/{uuid.uuid4()}").status_code == 204
    c.delete(f"/datasets/{ds}/metadata/{a}")
    assert only(c, ds, doc) is None  # no values left


# --------------------------------------------------------------------- built-in
def test_built_in_fields_endpoint(c: httpx.Client) -> None:
    ds = dataset(c)
    r = c.get(f"/datasets/{ds}/metadata/built-in")
    assert r.status_code == 200 and r.json() == {"fields": [
        {"name": "document_name", "type": "string"}, {"name": "uploader", "type": "string"},
        {"name": "upload_date", "type": "time"}, {"name": "last_update_date", "type": "time"},
        {"name": "source", "type": "string"}]}


def test_built_in_enable_and_disable(emu: EmulatorServer, c: httpx.Client) -> None:
    ds = dataset(c)
    d1, d2 = document(c, ds, "1.txt"), document(c, ds, "2.txt")
    emu.store.set_document(ds, d2, enabled=False)
    r = c.post(f"/datasets/{ds}/metadata/built-in/enable")
    assert r.status_code == 200 and r.json() == {"result": "success"}
    assert c.get(f"/datasets/{ds}/metadata").json()["built_in_field_enabled"] is True
    docs = listed(c, ds)
    assert [i["name"] for i in docs[d1]] == BUILT_IN_NAMES and docs[d2] is None  # working only
    a = field(c, ds, "author")
    write(c, ds, op(d2))  # a write while enabled adds the built-in keys
    assert [i["name"] for i in only(c, ds, d2)] == BUILT_IN_NAMES
    write(c, ds, op(d1, (a, "author", "x")))
    assert c.post(f"/datasets/{ds}/metadata/built-in/bogus").json() == {"result": "success"}
    assert c.post(f"/datasets/{ds}/metadata/built-in/disable").status_code == 200
    assert c.get(f"/datasets/{ds}/metadata").json()["built_in_field_enabled"] is False
    assert custom(only(c, ds, d1)) == [("author", "x")]
    assert [i["name"] for i in only(c, ds, d2)] == BUILT_IN_NAMES  # disabled: keys kept
    emu.store.set_document(ds, d2, enabled=True)
    c.post(f"/datasets/{ds}/metadata/built-in/enable")
    c.post(f"/datasets/{ds}/metadata/built-in/disable")
    assert only(c, ds, d2) is None


# ----------------------------------------------------------- document lifecycle
def test_document_update_and_same_name_create_keep_metadata(c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds, "a.txt")
    p = field(c, ds, "pages", "number")
    write(c, ds, op(doc, (p, "pages", 7)))
    r = c.post(f"/datasets/{ds}/document/create-by-text", json={"name": "a.txt", "text": "v2"})
    assert r.json()["document"]["id"] == doc
    assert custom(r.json()["document"]["doc_metadata"]) == [("pages", "7")]
    r = c.post(f"/datasets/{ds}/documents/{doc}/update-by-text",
               json={"name": "b.txt", "text": "v3"})
    meta = r.json()["document"]["doc_metadata"]
    assert custom(meta) == [("pages", "7")]
    assert meta[1] == {"id": "built-in", "name": "document_name", "type": "string", "value": "b.txt"}
    assert custom(only(c, ds, doc)) == [("pages", 7)]


def test_document_delete_drops_its_bindings(c: httpx.Client) -> None:
    ds = dataset(c)
    d1, d2 = document(c, ds, "1.txt"), document(c, ds, "2.txt")
    a = field(c, ds, "author")
    write(c, ds, op(d1, (a, "author", "x")), op(d2, (a, "author", "y")))
    assert c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"][0]["count"] == 2
    assert c.delete(f"/datasets/{ds}/documents/{d2}").status_code == 204
    assert c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"][0]["count"] == 1
    assert err(write(c, ds, op(d2))) == (400, "invalid_param", "Document not found.")


def test_dataset_delete_removes_its_fields(emu: EmulatorServer, c: httpx.Client) -> None:
    ds = dataset(c)
    doc = document(c, ds)
    a = field(c, ds, "author")
    write(c, ds, op(doc, (a, "author", "x")))
    assert c.delete(f"/datasets/{ds}").status_code == 204
    assert ds not in emu.store.metadata_fields and doc not in emu.store.metadata_bindings
    assert err(c.get(f"/datasets/{ds}/metadata")) == (404, "not_found", "Dataset not found.")


# ------------------------------------------------------------ modes and faults
def test_legacy_server_has_no_metadata_routes() -> None:
    with EmulatorServer(legacy=True) as old, client_for(old) as c:
        ds = c.post("/datasets", json={"name": "kb"}).json()["id"]
        r = c.post(f"/datasets/{ds}/document/create_by_file", files={"file": ("a.md", b"x")},
                   data={"data": json.dumps({"indexing_technique": "economy"})})
        doc = r.json()["document"]["id"]
        assert "doc_metadata" not in r.json()["document"]
        assert all("doc_metadata" not in d for d in c.get(f"/datasets/{ds}/documents").json()["data"])
        for method, path in (("GET", "metadata"), ("POST", "metadata"),
                             ("PATCH", f"metadata/{uuid.uuid4()}"),
                             ("DELETE", f"metadata/{uuid.uuid4()}"), ("GET", "metadata/built-in"),
                             ("POST", "metadata/built-in/enable"), ("POST", "documents/metadata")):
            r = c.request(method, f"/datasets/{ds}/{path}", json={})
            assert err(r) == (404, "not_found", NOT_FOUND), (method, path)
        assert doc


def test_metadata_error_rate_fails_only_metadata_routes() -> None:
    with EmulatorServer() as server, client_for(server) as c:
        ds = dataset(c)
        doc = document(c, ds)
        server.faults.update(metadata_error_rate=1.0, error_statuses=[503], seed=1)
        assert c.get(f"/datasets/{ds}/metadata").status_code == 503
        assert c.post(f"/datasets/{ds}/metadata", json={"type": "string", "name": "x"}
                      ).status_code == 503
        assert write(c, ds, op(doc)).status_code == 503
        assert c.get(f"/datasets/{ds}/documents").status_code == 200
        assert c.get(f"/datasets/{ds}/documents/{doc}", params={"metadata": "only"}).status_code == 200
        server.faults.update(metadata_error_rate=0.0)
        assert c.get(f"/datasets/{ds}/metadata").json()["doc_metadata"] == []


def test_fault_rule_with_path_contains_metadata_hits_the_next_metadata_call() -> None:
    with EmulatorServer() as server, client_for(server) as c:
        ds = dataset(c)
        server.faults.update(fail_next=[FaultRule(status=500, path_contains="/metadata")])
        assert c.get(f"/datasets/{ds}/documents").status_code == 200
        assert err(c.get(f"/datasets/{ds}/metadata"))[0] == 500
        assert c.get(f"/datasets/{ds}/metadata").status_code == 200


def test_metadata_persists_in_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with EmulatorServer(state_path=state) as first, client_for(first) as c:
        ds = dataset(c)
        doc = document(c, ds)
        a = field(c, ds, "author")
        write(c, ds, op(doc, (a, "author", "Ann"), (a, "author", "Ann")))
        c.post(f"/datasets/{ds}/metadata/built-in/enable")
        before = (c.get(f"/datasets/{ds}/metadata").json(), only(c, ds, doc))
    with EmulatorServer(state_path=state) as second, client_for(second) as c:
        assert (c.get(f"/datasets/{ds}/metadata").json(), only(c, ds, doc)) == before
        assert before[0]["doc_metadata"][0]["count"] == 2 and before[0]["built_in_field_enabled"]
