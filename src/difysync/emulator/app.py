"""The HTTP face of the emulator: Dify's Knowledge API routes as an ASGI app.

It speaks the wire contract (paths, status codes, error bodies) of a current or an old
("legacy") Dify so the client is tested over real HTTP; an outer ASGI layer records
requests and injects faults, including dropped connections, which a router cannot do.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import metadata as md
from .faults import Faults
from .segments import parse_process_rule
from .store import BUILT_IN_FIELDS, ApiError, Store

DEFAULT_EXTENSIONS = ("txt", "markdown", "md", "mdx", "pdf", "html", "htm", "xlsx", "xls",
                      "docx", "csv", "vtt", "properties")
FORBIDDEN_CHARS_CURRENT = '/\\:*?"<>|'
FORBIDDEN_CHARS_LEGACY = "/\\"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NOT_FOUND_MSG = ("The requested URL was not found on the server. If you entered the URL "
                  "manually please check your spelling and try again.")
# Werkzeug's <uuid:...> converter: a path segment that is not this is no route at all
_UUID_SEGMENT = re.compile(r"^[A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-"
                           r"[A-Fa-f0-9]{12}$")
# the emulator's path parameters spelled as Dify's Flask rules (for "did you mean")
_FLASK_PARAMS = {"{ds}": "<uuid:dataset_id>", "{doc}": "<uuid:document_id>",
                 "{seg}": "<uuid:segment_id>",
                 "{batch}": "<string:batch>", "{metadata_id}": "<uuid:metadata_id>",
                 "{action}": "<string:action>", "{rest:path}": "<path:rest>"}
_FLASK_RULE_PARAMS = re.compile("(<.*>)")  # flask_restx's RE_RULES (greedy, as there)
EVERY_METHOD = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@dataclass
class Options:
    """How this emulated server behaves (fixed at construction)."""

    api_key: str = "test-key"
    legacy: bool = False
    max_file_size_mb: float = 15
    allowed_extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    bare_400_on_create: bool = False
    refuse_delete_while_indexing: bool = False
    # False: ignore the listing's ``status`` filter, as a server that predates it would
    # (the contract marks it optional); a client must notice and not trust the answer.
    # None (the default): filter on current servers, ignore it on legacy ones (0.x Dify's
    # document list reads page, limit and keyword only).
    status_filter: bool | None = None
    # True: documents/metadata honours each operation's ``partial_update`` (Dify 1.11 and
    # later). False: the flag is ignored, unvalidated, and every write replaces the
    # document's values and bindings, as on servers before 1.11.
    partial_update: bool = True

    def __post_init__(self) -> None:
        if self.status_filter is None:
            self.status_filter = not self.legacy

    @property
    def size_limit(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)


@dataclass
class RequestRecord:
    """One /v1 request as the server saw it. ``status`` is what was (or would have been)
    answered: 0 when the connection was dropped before any work; ``dropped`` tells that
    the client got no complete answer."""

    method: str
    path: str
    status: int
    mutating: bool
    at: float
    dropped: bool = False
    query: str = ""
    bytes_in: int = 0  # the request body's length (Content-Length), for benchmarks of what was sent


class RequestLog:
    """Thread-safe list of RequestRecord."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self.items.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self.items)

    def clear(self) -> None:
        with self._lock:
            self.items.clear()


class _DropConnection(Exception):
    """Raised after a response start to make uvicorn close the socket mid-answer."""


class _QuietDrops(logging.Filter):
    """Hide uvicorn's traceback for connections we drop on purpose (and for requests
    cancelled at shutdown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, (_DropConnection, asyncio.CancelledError))


_quiet = _QuietDrops()
logging.getLogger("uvicorn.error").addFilter(_quiet)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "status": status}, status_code=status)


# ---------------------------------------------------------------------------- routes
class _Api:
    """Route handlers bound to one store, fault set and option set."""

    def __init__(self, store: Store, faults: Faults, options: Options) -> None:
        self.store = store
        self.faults = faults
        self.opt = options
        self.flask_rules: list[str] = []  # filled by routes()

    # helpers ----------------------------------------------------------------
    def auth(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None or not header.startswith("Bearer "):
            raise ApiError(401, "unauthorized",
                           "Authorization header must be provided and start with 'Bearer'")
        if header[len("Bearer "):].strip() != self.opt.api_key:
            raise ApiError(401, "unauthorized", "Access token is invalid")

    @staticmethod
    def int_arg(request: Request, name: str, default: int) -> int:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ApiError(400, "invalid_param", f"{name} must be an integer") from None

    @staticmethod
    async def json_body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(400, "invalid_param",
                           "Failed to decode JSON object: invalid JSON body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_param", "JSON body must be an object")
        return body

    def check_quota(self) -> None:
        if self.faults.provider_not_initialize:
            raise ApiError(400, "provider_not_initialize",
                           "No valid model provider credentials found. Please go to Settings "
                           "-> Model Provider to complete your provider credentials.")
        if self.faults.quota_exceeded:
            raise ApiError(400, "provider_quota_exceeded",
                           "Your quota for Dify Hosted Model Provider has been exhausted. "
                           "Please go to Settings -> Model Provider to complete your own "
                           "provider credentials.")

    def check_document_limit(self) -> None:
        if self.faults.document_limit:
            raise ApiError(403, "forbidden",
                           "The number of documents has reached the limit of your subscription.")

    def _data_field(self, form: Any) -> dict[str, Any]:
        raw = form.get("data")
        if raw is None:
            return {}
        if not isinstance(raw, str):
            raw = raw.file.read().decode("utf-8", "replace") if hasattr(raw, "file") else str(raw)
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ApiError(400, "invalid_param", "data is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_param", "data must be a JSON object")
        return data

    async def read_upload(self, form: Any, *, create: bool) -> tuple[str, bytes, str] | None:
        """Dify's FileService.upload_file checks: returns (name, bytes, extension)."""
        files = [(k, v) for k, v in form.multi_items() if not isinstance(v, str)]
        if len(files) > 1:
            raise ApiError(400, "too_many_files", "Only one file is allowed.")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            if create:
                raise ApiError(400, "no_file_uploaded", "Please upload your file.")
            return None
        name = upload.filename or ""
        content = await upload.read()
        forbidden = FORBIDDEN_CHARS_LEGACY if self.opt.legacy else FORBIDDEN_CHARS_CURRENT
        if any(c in name for c in forbidden):
            raise ApiError(400, "invalid_param", "Filename contains invalid characters")
        extension = name.rsplit(".", 1)[1].lower() if "." in name else ""
        if len(name) > 200:
            name = name.split(".")[0][:200] + "." + extension
        bare = create and self.opt.bare_400_on_create
        allowed = {e.lower() for e in self.opt.allowed_extensions}
        if not extension or extension not in allowed:
            if bare:
                raise ApiError(400, "invalid_param", "")
            raise ApiError(415, "unsupported_file_type", "File type not allowed.")
        if len(content) > self.opt.size_limit:
            if bare:
                raise ApiError(400, "invalid_param", "")
            raise ApiError(413, "file_too_large", "File size exceeded. {message}")
        return name, content, extension

    def answer(self, doc: Any, batch: str) -> JSONResponse:
        return JSONResponse({"document": self.store.document_dict(doc, fresh=True),
                             "batch": batch})

    # datasets ----------------------------------------------------------------
    async def datasets(self, request: Request) -> Response:
        self.auth(request)
        if request.method == "GET":
            page = max(self.int_arg(request, "page", 1), 1)
            limit = max(self.int_arg(request, "limit", 20), 1)
            keyword = request.query_params.get("keyword") or None
            return JSONResponse(self.store.list_datasets(page, limit, keyword))
        body = await self.json_body(request)
        ds_id = self.store.create_dataset(
            body.get("name"), body.get("indexing_technique"),
            description=body.get("description") or "",
            permission=body.get("permission") or "only_me")
        return JSONResponse(self.store.dataset_dict(self.store.get_dataset(ds_id)))

    async def dataset(self, request: Request) -> Response:
        self.auth(request)
        ds_id = request.path_params["ds"]
        if request.method == "GET":
            if self.opt.legacy:
                raise HTTPException(404)
            return JSONResponse(self.store.dataset_dict(self.store.get_dataset(ds_id)))
        if request.method == "PATCH":
            body = await self.json_body(request)
            self.store.update_dataset(ds_id, **{k: body.get(k) for k in (
                "name", "description", "permission", "indexing_technique")})
            return JSONResponse(self.store.dataset_dict(self.store.get_dataset(ds_id)))
        self.store.delete_dataset(ds_id)
        return Response(status_code=204)

    # documents ---------------------------------------------------------------
    async def create_by_file(self, request: Request) -> Response:
        self.auth(request)
        ds_id = request.path_params["ds"]
        ds = self.store.get_dataset(ds_id)
        self.check_document_limit()
        form = await request.form(max_files=10, max_fields=100)
        try:
            data = self._data_field(form)
            technique = data.get("indexing_technique")
            if not ds.indexing_technique and not technique:
                raise ApiError(400, "invalid_param", "indexing_technique is required.")
            if technique not in (None, "high_quality", "economy"):
                raise ApiError(400, "invalid_param", "Invalid indexing technique.")
            upload = await self.read_upload(form, create=True)
            assert upload is not None
            rule = parse_process_rule(data.get("process_rule"), "KnowledgeConfig")
            self.check_quota()
            name, content, extension = upload
            doc, batch = self.store.add_document(
                ds_id, name, content, extension=extension, indexing_technique=technique,
                doc_form=data.get("doc_form"), doc_language=data.get("doc_language"),
                process_rule=rule)
            return self.answer(doc, batch)
        finally:
            await form.close()

    async def create_by_text(self, request: Request) -> Response:
        self.auth(request)
        ds_id = request.path_params["ds"]
        ds = self.store.get_dataset(ds_id)
        self.check_document_limit()
        body = await self.json_body(request)
        technique = body.get("indexing_technique")
        if not ds.indexing_technique and not technique:
            raise ApiError(400, "invalid_param", "indexing_technique is required.")
        name, text = body.get("name"), body.get("text")
        if not isinstance(name, str) or not name or not isinstance(text, str):
            raise ApiError(400, "invalid_param", "name and text are required.")
        rule = parse_process_rule(body.get("process_rule"), "DocumentTextCreatePayload")
        self.check_quota()
        doc, batch = self.store.add_document(
            ds_id, name, text.encode("utf-8"), extension="txt", mime_type="text/plain",
            indexing_technique=technique, doc_form=body.get("doc_form"),
            doc_language=body.get("doc_language"), process_rule=rule)
        return self.answer(doc, batch)

    async def update_by_file(self, request: Request) -> Response:
        ds_id, doc_id = self.editable_document(request)
        form = await request.form(max_files=10, max_fields=100)
        try:
            data = self._data_field(form)
            upload = await self.read_upload(form, create=False)
            rule = parse_process_rule(data.get("process_rule"), "KnowledgeConfig")
            self.check_quota()
            if upload is None:
                doc, batch = self.store.update_document(ds_id, doc_id, process_rule=rule)
            else:
                name, content, extension = upload
                doc, batch = self.store.update_document(ds_id, doc_id, name=name,
                                                        content=content, extension=extension,
                                                        process_rule=rule)
            return self.answer(doc, batch)
        finally:
            await form.close()

    def editable_document(self, request: Request) -> tuple[str, str]:
        """What both update routes check first: the key, the dataset, the plan's document
        limit, and a document that exists and is not archived. Returns (dataset, document)."""
        self.auth(request)
        ds_id, doc_id = request.path_params["ds"], request.path_params["doc"]
        self.store.get_dataset(ds_id)
        self.check_document_limit()
        doc = self.store.get_document(ds_id, doc_id)
        if doc.archived:
            raise ApiError(403, "archived_document_immutable",
                           "The archived document is not editable.")
        return ds_id, doc_id

    async def update_by_text(self, request: Request) -> Response:
        ds_id, doc_id = self.editable_document(request)
        body = await self.json_body(request)
        name, text = body.get("name"), body.get("text")
        if text is not None and not isinstance(text, str):
            raise ApiError(400, "invalid_param", "text must be a string.")
        rule = parse_process_rule(body.get("process_rule"), "DocumentTextUpdate")
        self.check_quota()
        doc, batch = self.store.update_document(
            ds_id, doc_id, name=name if isinstance(name, str) and name else None,
            content=text.encode("utf-8") if text is not None else None,
            extension="txt" if text is not None else None,
            mime_type="text/plain" if text is not None else None, process_rule=rule)
        return self.answer(doc, batch)

    async def documents(self, request: Request) -> Response:
        self.auth(request)
        ds_id = request.path_params["ds"]
        page = max(self.int_arg(request, "page", 1), 1)
        limit = max(self.int_arg(request, "limit", 20), 1)
        keyword = request.query_params.get("keyword") or None
        status = (request.query_params.get("status") or None) if self.opt.status_filter else None
        return JSONResponse(self.store.list_documents(ds_id, page, limit, keyword, status))

    async def document(self, request: Request) -> Response:
        self.auth(request)
        ds_id, doc_id = request.path_params["ds"], request.path_params["doc"]
        if request.method == "DELETE":
            self.store.api_delete_document(
                ds_id, doc_id, refuse_while_indexing=self.opt.refuse_delete_while_indexing)
            if self.opt.legacy:
                return JSONResponse({"result": "success"})
            return Response(status_code=204)
        if self.opt.legacy:  # GET detail and PATCH update do not exist on old servers
            raise HTTPException(404)
        if request.method == "PATCH":
            return await self.update_by_file(request)
        self.store.get_dataset(ds_id)
        try:
            doc = self.store.get_document(ds_id, doc_id)
        except ApiError as exc:  # the detail route words it so in Dify 1.14.1
            raise ApiError(404, "not_found", "Document not found.") from exc
        mode = request.query_params.get("metadata", "all")
        if mode not in ("all", "only", "without"):
            raise ApiError(400, "invalid_metadata", f"Invalid metadata value: {mode}")
        if mode == "only":
            return JSONResponse({"id": doc.id, "doc_type": None, "doc_metadata":
                                 self.store.doc_metadata_details(doc, typed=True)})
        data = self.store.document_dict(doc, detail=True)
        data["doc_type"] = None
        if mode == "without":
            del data["doc_metadata"], data["doc_type"]
        return JSONResponse(data)

    async def indexing_status(self, request: Request) -> Response:
        self.auth(request)
        ds_id, batch = request.path_params["ds"], request.path_params["batch"]
        return JSONResponse({"data": self.store.batch_status(ds_id, batch)})

    async def console(self, request: Request) -> Response:
        """/console/api/datasets...: the web console's API, which takes a console login
        token, never a dataset key. Dify 1.14.1 answers any Bearer token it did not issue
        (a dataset key included) 401 "Invalid token.", and a missing or non-Bearer header
        401 "Invalid Authorization token."."""
        header = request.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            raise ApiError(401, "unauthorized", "Invalid token.")
        raise ApiError(401, "unauthorized", "Invalid Authorization token.")

    async def status_action(self, request: Request) -> Response:
        self.auth(request)
        ds_id = request.path_params["ds"]
        self.store.get_dataset(ds_id)
        body = await self.json_body(request)
        ids = body.get("document_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "invalid_param", "document_ids must be a list of strings.")
        self.store.set_status(ds_id, request.path_params["action"], ids)
        return JSONResponse({"result": "success"})

    # metadata ----------------------------------------------------------------
    # Dify 1.14.1's api/controllers/service_api/dataset/metadata.py over
    # MetadataService (the state rules are in Store). Current servers only: a legacy
    # server has none of these routes (404 as any unknown route).
    def _help_on_404(self, path: str, message: str) -> str:
        """flask_restx appends "did you mean" to a 404 when the path is close (difflib,
        cutoff 0.6) to a rule with its parameters cut out (e.g. metadata/built-in and
        documents/metadata, not metadata or metadata/{id})."""
        rules = {_FLASK_RULE_PARAMS.sub("", r): r for r in self.flask_rules}
        close = difflib.get_close_matches(path, list(rules))
        if not close:
            return message
        return (message.rstrip(".") + ". " if message else "") + \
            f"You have requested this URI [{path}] but did you mean " + \
            " or ".join(rules[m] for m in close) + " ?"

    def _route_checks(self, request: Request, methods: tuple[str, ...], uuid_params: tuple[str, ...]) -> None:
        """Werkzeug's and Flask's checks before any handler, in their order: an id that is
        not a UUID is no route (404), a method the route lacks is 405; then the key."""
        for name in uuid_params:
            if not _UUID_SEGMENT.match(request.path_params[name]):
                raise HTTPException(404)
        if request.method not in methods and not (request.method == "HEAD" and "GET" in methods):
            raise HTTPException(405)
        self.auth(request)

    def metadata_prelude(self, request: Request, methods: tuple[str, ...],
                         uuid_params: tuple[str, ...] = ("ds",)) -> str:
        """What Dify checks before a metadata handler runs, in its order: the route (a
        non-UUID id is no route: 404), the method (405), the key, the dataset (404, with
        flask_restx's hint where it gives one). Returns the (lower-case) dataset id."""
        self._route_checks(request, methods, uuid_params)
        ds_id = request.path_params["ds"].lower()
        try:
            self.store.get_dataset(ds_id)
        except ApiError as exc:
            raise ApiError(exc.status, exc.code,
                           self._help_on_404(request.url.path, exc.message)) from None
        return ds_id

    @staticmethod
    async def flask_json(request: Request) -> Any:
        """Flask's request.get_json() as Dify's routes call it: 415 unless the body is
        declared JSON, 400 bad_request when it does not parse (an empty body included)."""
        mimetype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not (mimetype == "application/json" or
                (mimetype.startswith("application/") and mimetype.endswith("+json"))):
            raise ApiError(415, "unsupported_media_type",
                           "Did not attempt to load JSON data because the request "
                           "Content-Type was not 'application/json'.")
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "bad_request", "The browser (or proxy) sent a request that "
                           "this server could not understand.") from None

    async def metadata(self, request: Request) -> Response:
        """GET: ``{"doc_metadata": [{id, name, type, count}], "built_in_field_enabled"}``.
        POST ``{"type", "name"}``: 201 ``{id, type, name}``."""
        ds_id = self.metadata_prelude(request, ("GET", "POST"))
        if request.method == "GET":
            return JSONResponse(self.store.list_metadata(ds_id))
        args = md.validate(md.MetadataArgs, await self.flask_json(request))
        return JSONResponse(self.store.create_metadata(ds_id, args.type, args.name),
                            status_code=201)

    async def metadata_field(self, request: Request) -> Response:
        """PATCH ``{"name"}``: 200 ``{id, type, name}`` (all None for an unknown id).
        DELETE: 204, known id or not."""
        ds_id = self.metadata_prelude(request, ("PATCH", "DELETE"), ("ds", "metadata_id"))
        field_id = request.path_params["metadata_id"].lower()
        if request.method == "PATCH":
            args = md.validate(md.MetadataUpdatePayload, await self.flask_json(request))
            return JSONResponse(self.store.rename_metadata(ds_id, field_id, args.name))
        self.store.delete_metadata(ds_id, field_id)
        return Response(status_code=204, media_type="application/json")  # as Dify sends it

    async def metadata_built_in(self, request: Request) -> Response:
        """GET: ``{"fields": [{name, type}]}``, the five built-in fields."""
        self.metadata_prelude(request, ("GET",))
        return JSONResponse({"fields": [{"name": n, "type": t} for n, t in BUILT_IN_FIELDS]})

    async def metadata_built_in_action(self, request: Request) -> Response:
        """POST .../built-in/enable|disable: ``{"result": "success"}``; any other action
        is a successful no-op, as in Dify."""
        ds_id = self.metadata_prelude(request, ("POST",))
        action = request.path_params["action"]
        if action in ("enable", "disable"):
            self.store.set_built_in(ds_id, action == "enable")
        return JSONResponse({"result": "success"})

    # segments ----------------------------------------------------------------
    # Dify 1.14.1's api/controllers/service_api/dataset/segment.py over SegmentService
    # (the rules are in segments.py). Routed under documents/ only (no "document/" or
    # singular "segment" spelling); Store.segment_api=False removes them all.
    def segment_prelude(self, request: Request, methods: tuple[str, ...],
                        uuid_params: tuple[str, ...]) -> tuple[str, ...]:
        """The route (non-UUID ids: 404), the method (405), the key, the dataset ("Dataset
        not found."), in Dify's order. Returns the path's ids, lower-cased."""
        if not self.store.segment_api:
            raise HTTPException(404)
        self._route_checks(request, methods, uuid_params)
        ids = tuple(request.path_params[name].lower() for name in uuid_params)
        self.store.get_dataset(ids[0])
        return ids

    async def segments(self, request: Request) -> Response:
        """GET ?page&limit&keyword&status (status repeatable): ``{"data", "doc_form",
        "total", "has_more", "limit", "page"}``. POST ``{"segments": [{"content",
        "answer"?, "keywords"?}]}``: ``{"data": [segment], "doc_form"}``."""
        ds_id, doc_id = self.segment_prelude(request, ("GET", "POST"), ("ds", "doc"))
        book = self.store.segments
        if request.method == "POST":
            book.check_addable(ds_id, doc_id)
            payload = await self.flask_json(request)
            return JSONResponse(book.add_segments(ds_id, doc_id, payload))
        query = request.query_params
        return JSONResponse(book.list_segments(
            ds_id, doc_id, _flask_int(query.get("page"), 1), _flask_int(query.get("limit"), 20),
            query.get("keyword"), query.getlist("status")))

    async def segment(self, request: Request) -> Response:
        """GET: ``{"data": segment, "doc_form"}``; POST ``{"segment": {content, answer,
        keywords, enabled}}``: the same shape, updated; DELETE: 204 without a body."""
        ds_id, doc_id, seg_id = self.segment_prelude(request, ("GET", "POST", "DELETE"),
                                                     ("ds", "doc", "seg"))
        book = self.store.segments
        if request.method == "POST":
            book.check_segment(ds_id, doc_id, seg_id)
            payload = await self.flask_json(request)
            return JSONResponse(book.update_segment(ds_id, doc_id, seg_id, payload))
        if request.method == "DELETE":
            book.delete_segment(ds_id, doc_id, seg_id)
            return Response(status_code=204, media_type="application/json")  # as Dify sends it
        return JSONResponse(book.segment_detail(ds_id, doc_id, seg_id))

    async def no_route(self, request: Request) -> Response:
        raise HTTPException(404)

    async def documents_metadata(self, request: Request) -> Response:
        """POST ``{"operation_data": [{"document_id", "metadata_list": [{"id", "name",
        "value"}], "partial_update"?}]}``: ``{"result": "success"}``."""
        ds_id = self.metadata_prelude(request, ("POST",))
        ops = md.operations(await self.flask_json(request),
                            partial_update=bool(self.opt.partial_update))
        self.store.update_documents_metadata(ds_id, ops)
        return JSONResponse({"result": "success"})

    # routing -----------------------------------------------------------------
    def routes(self) -> list[Route]:
        legacy = self.opt.legacy
        v = "/v1/datasets"
        routes = [
            Route(v, self.datasets, methods=["GET", "POST"]),
            Route(v + "/{ds}", self.dataset, methods=["GET", "DELETE"] + ([] if legacy else
                                                                          ["PATCH"])),
            Route(v + "/{ds}/documents", self.documents, methods=["GET"]),
        ]
        routes += self._metadata_routes(v)
        routes += [
            Route(v + "/{ds}/documents/{doc}/segments", self.segments, methods=EVERY_METHOD),
            Route(v + "/{ds}/documents/{doc}/segments/{seg}", self.segment,
                  methods=EVERY_METHOD),
            Route(v + "/{ds}/documents/{batch}/indexing-status", self.indexing_status,
                  methods=["GET"]),
            Route(v + "/{ds}/documents/{doc}", self.document,
                  methods=["GET", "DELETE", "PATCH"]),
        ]
        if not legacy:
            routes.append(Route(v + "/{ds}/documents/status/{action}", self.status_action,
                                methods=["PATCH"]))
            everything = ["GET", "POST", "PUT", "PATCH", "DELETE"]
            routes.append(Route("/console/api/datasets", self.console, methods=everything))
            routes.append(Route("/console/api/datasets/{rest:path}", self.console,
                                methods=everything))
        routes += self._upload_routes(v)
        self.flask_rules = [_flask_rule(route.path) for route in routes]
        return routes

    def _metadata_routes(self, v: str) -> list[Route]:
        if self.opt.legacy:  # no such route (not even {doc}: "metadata" is no UUID): the plain 404
            return [Route(v + "/{ds}/documents/metadata", self.no_route, methods=EVERY_METHOD)]
        # every method, so that the handler answers 404/405 in Dify's order (and
        # documents/metadata and metadata/built-in win over {doc} and {metadata_id})
        return [
            Route(v + "/{ds}/metadata", self.metadata, methods=EVERY_METHOD),
            Route(v + "/{ds}/metadata/built-in", self.metadata_built_in, methods=EVERY_METHOD),
            Route(v + "/{ds}/metadata/built-in/{action}", self.metadata_built_in_action,
                  methods=EVERY_METHOD),
            Route(v + "/{ds}/metadata/{metadata_id}", self.metadata_field, methods=EVERY_METHOD),
            Route(v + "/{ds}/documents/metadata", self.documents_metadata, methods=EVERY_METHOD),
        ]

    def _upload_routes(self, v: str) -> list[Route]:
        """Create and update, by file and by text: the underscore spelling, plus the hyphen
        one on current servers."""
        routes = []
        for path, handler in ((v + "/{ds}/document/create_by_file", self.create_by_file),
                              (v + "/{ds}/document/create_by_text", self.create_by_text),
                              (v + "/{ds}/documents/{doc}/update_by_file", self.update_by_file),
                              (v + "/{ds}/documents/{doc}/update_by_text", self.update_by_text)):
            hyphen = path.replace("_by_", "-by-")
            for spelled in [path] if self.opt.legacy else [path, hyphen]:
                routes.append(Route(spelled, handler, methods=["POST"]))
        return routes


def _flask_rule(path: str) -> str:
    """A route's path as Flask writes it (what a 404's "did you mean" hint shows)."""
    for ours, flask in _FLASK_PARAMS.items():
        path = path.replace(ours, flask)
    return path


def _flask_int(raw: str | None, default: int) -> int:
    """``request.args.get(name, default=..., type=int)``: anything int() refuses (an empty
    value included) is the default, never an error."""
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, "not_found", _NOT_FOUND_MSG)
    if exc.status_code == 405:
        return _error(405, "method_not_allowed", "The method is not allowed for the requested URL.")
    return _error(exc.status_code, "bad_request" if exc.status_code == 400 else "error",
                  str(exc.detail))


async def _crash(request: Request, exc: Exception) -> Response:
    logging.getLogger("difysync.emulator").exception("emulator route crashed")
    return _error(500, "internal_server_error", f"Emulator bug: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- admin
class _Admin:
    """The out-of-band control routes (/_admin/...): no auth, not recorded."""

    def __init__(self, store: Store, faults: Faults, log: RequestLog) -> None:
        self.store, self.faults, self.log = store, faults, log

    async def faults_route(self, request: Request) -> Response:
        if request.method == "POST":
            body = await _Api.json_body(request)
            try:
                self.faults.update(**body)
            except (TypeError, ValueError) as exc:
                raise ApiError(400, "invalid_param", str(exc)) from None
        return JSONResponse(self.faults.to_dict())

    async def reset(self, request: Request) -> Response:
        self.store.reset()
        self.faults.reset()
        self.log.clear()
        return JSONResponse({"result": "success"})

    async def requests(self, request: Request) -> Response:
        return JSONResponse({"data": [asdict(r) for r in self.log.snapshot()]})

    async def set_document(self, request: Request) -> Response:
        ds, doc = request.path_params["ds"], request.path_params["doc"]
        body = await _Api.json_body(request)
        try:
            self.store.set_document(ds, doc, **body)
        except ValueError as exc:
            raise ApiError(400, "invalid_param", str(exc)) from None
        return JSONResponse(self.store.document_dict(self.store.get_document(ds, doc)))

    async def list_documents(self, request: Request) -> Response:
        ds = request.path_params["ds"]
        docs = self.store.documents(ds)
        return JSONResponse({"data": [
            {**self.store.document_dict(d), "sha256": d.sha256, "size": d.size,
             "batch": d.batch} for d in docs]})

    async def fail_patterns(self, request: Request) -> Response:
        if request.method == "POST":
            raw = await request.body()
            try:
                body = json.loads(raw) if raw.strip() else []
            except ValueError:
                raise ApiError(400, "invalid_param", "invalid JSON body") from None
            patterns = body.get("patterns", []) if isinstance(body, dict) else body
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                raise ApiError(400, "invalid_param", "patterns must be a list of strings")
            with self.store.lock:
                self.store.fail_patterns = list(patterns)
                self.store.changed()
        return JSONResponse({"patterns": list(self.store.fail_patterns)})

    def routes(self) -> list[Route]:
        return [
            Route("/_admin/faults", self.faults_route, methods=["GET", "POST"]),
            Route("/_admin/reset", self.reset, methods=["POST"]),
            Route("/_admin/requests", self.requests, methods=["GET"]),
            Route("/_admin/documents/{ds}", self.list_documents, methods=["GET"]),
            Route("/_admin/documents/{ds}/{doc}", self.set_document, methods=["POST"]),
            Route("/_admin/fail_patterns", self.fail_patterns, methods=["GET", "POST"]),
        ]


# ----------------------------------------------------------------- the outer layer
class EmulatorApp:
    """ASGI entry point: admin routes as is; /v1 routes through logging and faults."""

    def __init__(self, store: Store, faults: Faults, options: Options,
                 log: RequestLog | None = None, *, log_requests: bool = False) -> None:
        self.store, self.faults, self.options = store, faults, options
        self.log = log if log is not None else RequestLog()
        self.log_requests = log_requests
        handlers: dict[Any, Any] = {ApiError: _api_error, HTTPException: _http_error,
                                    Exception: _crash}
        self.api = Starlette(routes=_Api(store, faults, options).routes(),
                             exception_handlers=handlers)
        self.admin = Starlette(routes=_Admin(store, faults, self.log).routes(),
                               exception_handlers=handlers)

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        record = _record_of(scope)
        started = time.perf_counter()
        try:
            if record.path.startswith("/_admin/"):
                await self.admin(scope, receive, _status_into(record, send))
            else:
                self.log.add(record)
                await self._v1(scope, receive, send, record)
        finally:
            if self.log_requests:
                _log_request(record, time.perf_counter() - started)

    async def _v1(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                  send: Callable[[dict], Awaitable[None]], record: RequestRecord) -> None:
        """A /v1 request: recorded, then faulted or answered by the routes."""
        method, path, mutating = record.method, record.path, record.mutating
        decision = self.faults.decide(method, path, mutating)
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        if decision.hang > 0:
            await asyncio.sleep(decision.hang)
        if decision.action == "drop":
            record.dropped = True
            await self._drop(send)
        if decision.action == "respond":
            record.status = decision.status
            headers = [(b"content-type", decision.content_type.encode()),
                       (b"content-length", str(len(decision.body)).encode())]
            headers += [(k.lower().encode(), str(v).encode())
                        for k, v in decision.headers.items()]
            await send({"type": "http.response.start", "status": decision.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": decision.body})
            return
        commit_then_drop = decision.action == "drop_after_commit"

        async def recording_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
            if not commit_then_drop:
                await send(message)

        await self.api(scope, receive, recording_send)
        if commit_then_drop:
            record.dropped = True
            await self._drop(send)

    @staticmethod
    async def _drop(send: Callable[[dict], Awaitable[None]]) -> None:
        """Promise a body, then fail: uvicorn closes the socket, the client sees a
        truncated answer (a protocol error), never a 500."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"1024")]})
        raise _DropConnection("connection dropped by fault injection")


_requests_log = logging.getLogger("difysync.emulator.requests")


def _record_of(scope: dict) -> RequestRecord:
    """What the request says of itself: method, path, query, body length (never its
    headers beyond Content-Length: the Authorization header stays out of every record)."""
    method: str = scope["method"].upper()
    length = dict(scope.get("headers") or []).get(b"content-length", b"0")
    return RequestRecord(method=method, path=scope["path"], status=0,
                         mutating=method in MUTATING_METHODS, at=time.time(),
                         query=scope.get("query_string", b"").decode("latin-1"),
                         bytes_in=int(length) if length.isdigit() else 0)


def _status_into(record: RequestRecord,
                 send: Callable[[dict], Awaitable[None]]) -> Callable[[dict], Awaitable[None]]:
    """``send``, noting the answer's status in ``record`` on the way."""
    async def noting_send(message: dict) -> None:
        if message["type"] == "http.response.start":
            record.status = int(message["status"])
        await send(message)
    return noting_send


def _log_request(record: RequestRecord, seconds: float) -> None:
    """The request log line (`-v`): method, path, status (or "dropped"), duration, bytes
    received. A request that broke off before any answer shows status 0."""
    target = record.path + (f"?{record.query}" if record.query else "")
    status = "dropped" if record.dropped else str(record.status)
    _requests_log.info("%s %s %s %.1f ms %d B in", record.method, target, status,
                       seconds * 1000, record.bytes_in)


def create_app(store: Store | None = None, faults: Faults | None = None,
               options: Options | None = None, log: RequestLog | None = None) -> EmulatorApp:
    """Build the ASGI app (the server module wires it into uvicorn)."""
    options = options or Options()
    store = store if store is not None else Store(legacy=options.legacy)
    return EmulatorApp(store, faults if faults is not None else Faults(), options, log)


__all__ = ["DEFAULT_EXTENSIONS", "EmulatorApp", "Options", "RequestLog", "RequestRecord",
           "create_app"]
