"""The Dify Knowledge API client: httpx, path spellings, error mapping, retries and
client-side rate limiting.

It speaks the underscore path spelling that old and current servers both accept, turns
every non-success into one exception class of ``errors`` (mapped once, there), and
retries only what is safe to retry. It never logs, formats or stores the API key.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# httpx imports its own command-line client, and with it rich and pygments, whenever they
# are installed (about 50 ms of every start-up here). difysync never runs that client; a
# None entry makes the import fail, which httpx answers with a stub ``httpx.main``.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx  # noqa: E402
from tenacity import RetryCallState, Retrying, retry_if_exception, retry_never, stop_after_attempt
from tenacity.wait import wait_base

from . import __version__
from .backoff import delay_after, request_wait
from .events import NOBODY, Observer
from .errors import (DatasetMissing, DifyError, FatalError, NotDifyAPI, NotFoundError,
                     ServerUnreachable, TransientError, error_from_response, verdict)
from .models import RemoteDocument, RemoteSegment
from .tags import parse as tags_of_listing

if TYPE_CHECKING:
    from .config import DifySettings

log = logging.getLogger(__name__)

PAGE_LIMIT = 100  # the server's maximum; larger limits are echoed but silently capped
GC_EVERY_PAGES = 50


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6           # tries per request, the first included
    base_seconds: float = 0.5   # ceiling of the first pause; doubles each time, jittered
    max_seconds: float = 30.0   # cap of one pause
    max_retry_after: float = 120.0  # we honour Retry-After, up to this

    def wait(self) -> wait_base:
        """This policy's pauses as a tenacity wait strategy (see backoff.request_wait)."""
        return request_wait(self.base_seconds, self.max_seconds, self.max_retry_after)

    def pause(self, attempt: int, retry_after: float | None) -> float:
        """The pause before retry ``attempt + 1`` (0 = the first retry)."""
        return delay_after(self.wait(), attempt + 1, retry_after)


class _NoRetry(Exception):
    """Carries an error out of the retry loop that must not be retried even though it is
    transient by class (an untrusted TLS certificate does not fix itself)."""

    def __init__(self, error: DifyError) -> None:
        super().__init__(str(error))
        self.error = error


class RateLimiter:
    """Spaces requests so no 60 s window holds more than ``per_minute`` (0 = off).

    Dify Cloud counts write requests per workspace per minute and answers 403 past it; a
    steady spacing keeps a long import under the line instead of bouncing off it.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


@dataclass(frozen=True, slots=True)
class _Page:
    items: list[dict[str, Any]]
    more: bool  # worth asking for the next page: this one was full and said has_more
    total: int | None


@dataclass(frozen=True, slots=True)
class Upload:
    """What the server answered to a create or update."""

    document: RemoteDocument
    batch: str | None


class DifyClient:
    """One API key, one base URL; thread-safe (httpx.Client is), shared by the workers."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 retry: RetryPolicy | None = None, requests_per_minute: int = 0,
                 on_retry: Callable[[str, DifyError, float], None] | None = None,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(requests_per_minute)
        self.on_retry = on_retry
        self.observer: Observer = NOBODY  # requests and retries, for the progress display and metrics
        self.sleep = sleep  # the pause between retries (the rate limiter keeps its own)
        self.list_workers = 4
        self.stats = {"requests": 0, "mutating": 0, "retries": 0}
        self._stats_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"difysync/{__version__}"},
            transport=transport, follow_redirects=False, verify=_tls_for(self.base_url))

    @classmethod
    def from_settings(cls, dify: DifySettings, api_key: str) -> DifyClient:
        """The client the ``[dify]`` section describes."""
        client = cls(dify.base_url, api_key, timeout=dify.timeout_seconds,
                     retry=RetryPolicy(attempts=dify.retries + 1, base_seconds=dify.backoff_base_seconds,
                                       max_seconds=dify.backoff_max_seconds),
                     requests_per_minute=dify.requests_per_minute)
        client.list_workers = dify.concurrency
        return client

    def __repr__(self) -> str:
        return f"DifyClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DifyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ----------------------------------------------------------------------

    def _request(self, method: str, path: str, *, about: str, mutating: bool = False,
                 on_document: bool = False, on_create: bool = False, retry: bool = True,
                 before_retry: Callable[[], Any] | None = None, **kwargs: Any) -> httpx.Response:
        """Send with retries for transient failures; raise the mapped error otherwise.

        ``before_retry`` runs before each re-send of a request that may have reached the
        server; if it returns something truthy, that is the outcome (the server did it).
        """
        policy = self.retry

        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            assert isinstance(error, DifyError) and state.next_action is not None
            pause = state.next_action.sleep
            with self._stats_lock:
                self.stats["retries"] += 1
            if self.on_retry:
                self.on_retry(about, error, pause)
            self.observer.retry(about, error, pause, state.attempt_number, policy.attempts - 1)
            log.debug("retrying %s in %.1fs: %s", about, pause, error)

        retrying = Retrying(
            stop=stop_after_attempt(policy.attempts),
            retry=retry_if_exception(_worth_resending) if retry else retry_never,
            wait=policy.wait(), sleep=self.sleep, before_sleep=note,
            reraise=True)  # the caller sees our exception, never tenacity.RetryError
        try:
            for attempt in retrying:
                if before_retry is not None and attempt.retry_state.attempt_number > 1:
                    outcome = before_retry()  # after the pause, before the re-send
                    if outcome:
                        return outcome
                with attempt:
                    return self._send(method, path, about=about, mutating=mutating,
                                      on_document=on_document, on_create=on_create, **kwargs)
        except _NoRetry as stop:
            raise stop.error from None
        raise AssertionError("unreachable: tenacity either returns an attempt or raises")

    def _send(self, method: str, path: str, *, about: str, mutating: bool, on_document: bool,
              on_create: bool, **kwargs: Any) -> httpx.Response:
        """One attempt: wait for the rate limiter, count it, send; a non-success raises
        the mapped error (transient ones are retried by ``_request``)."""
        self.limiter.acquire()
        with self._stats_lock:
            self.stats["requests"] += 1
            if mutating:
                self.stats["mutating"] += 1
        started = time.monotonic()
        try:
            response = _uncycled(self._http.request(method, path, **kwargs))
        except httpx.TimeoutException:
            self.observer.request(method, route_of(path), None, time.monotonic() - started)
            error: DifyError = ServerUnreachable(f"{about}: no answer within the timeout")
        except httpx.TransportError as exc:
            self.observer.request(method, route_of(path), None, time.monotonic() - started)
            tls = _tls_failure(exc)
            error = ServerUnreachable(f"{about}: cannot reach {self._host()} ({_transport_reason(exc, tls)})")
            if tls is not None:
                raise _NoRetry(error) from None  # a certificate does not fix itself: no retries
        else:
            self.observer.request(method, route_of(path), response.status_code, time.monotonic() - started)
            if response.status_code < 300:
                return response
            error = error_from_response(response.status_code, response.content,
                                        retry_after=response.headers.get("retry-after"),
                                        about=about, on_document=on_document, on_create=on_create)
        raise error  # outside the except blocks: no httpx exception chained onto ours

    def _host(self) -> str:
        return httpx.URL(self.base_url).host or self.base_url

    def _json(self, response: httpx.Response, about: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise NotDifyAPI(f"{about}: the server at {self._host()} answered {response.status_code} "
                             f"with something that is not JSON: check that dify.base_url points at the "
                             f"Dify API (it ends in /v1)") from None

    # --- datasets -----------------------------------------------------------------------

    def list_datasets(self, keyword: str | None = None) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": PAGE_LIMIT}
        if keyword:
            params["keyword"] = keyword
        yield from self._pages("/datasets", params, about="list datasets")

    def create_dataset(self, name: str, indexing_technique: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "permission": "only_me"}
        if indexing_technique:
            body["indexing_technique"] = indexing_technique
        response = self._request("POST", "/datasets", json=body, about=f"create dataset {name!r}",
                                 mutating=True, retry=False)
        return self._json(response, "create dataset")

    def find_dataset(self, name: str) -> dict[str, Any] | None:
        for dataset in self.list_datasets(keyword=name):
            if dataset.get("name") == name:
                return dataset
        return None

    def ensure_dataset(self, name: str, indexing_technique: str | None) -> str:
        """The id of the dataset with exactly this name, created when absent."""
        found = self.find_dataset(name)
        if found:
            return str(found["id"])
        try:
            return str(self.create_dataset(name, indexing_technique)["id"])
        except FatalError as exc:
            if exc.code == "dataset_name_duplicate":
                found = self.find_dataset(name)
                if found:
                    return str(found["id"])
            raise

    def check_dataset(self, dataset_id: str) -> None:
        """Raise DatasetMissing unless the dataset exists (works on old and new servers)."""
        self._request("GET", f"/datasets/{dataset_id}/documents", params={"page": 1, "limit": 1},
                      about=f"dataset {dataset_id}")

    def check_key(self) -> None:
        self._request("GET", "/datasets", params={"page": 1, "limit": 1}, about="API key check")

    # --- documents ----------------------------------------------------------------------

    def list_documents(self, dataset_id: str, keyword: str | None = None, *,
                       status: str | None = None,
                       keep: Callable[[RemoteDocument], bool] | None = None,
                       on_page: Callable[[int, int | None, list[RemoteDocument]], None] | None = None,
                       ) -> list[RemoteDocument]:
        """Every document of the dataset (with this display ``status`` only, if given).
        After the first page, the pages that ``total`` announces are fetched
        ``list_workers`` at a time (a big dataset is hundreds of round trips); pages past
        that are followed one by one as usual. ``on_page(number, total, documents)`` sees
        each page whole; documents for which ``keep`` says False are then dropped (a big
        listing is filtered as it arrives). Both may run on several threads at once."""
        params: dict[str, Any] = {"limit": PAGE_LIMIT}
        if keyword:
            params["keyword"] = keyword
        if status:
            params["status"] = status
        path = f"/datasets/{dataset_id}/documents"
        about = f"list documents of dataset {dataset_id}"
        docs: dict[str, RemoteDocument] = {}

        def fetch(number: int) -> tuple[list[RemoteDocument], bool, int | None]:
            result = self._page(path, params, number, about)
            page = [remote_document(i) for i in result.items]
            if on_page is not None:
                on_page(number, result.total, page)
            if keep is not None:
                page = [d for d in page if keep(d)]
            return page, result.more, result.total

        pages = 0

        def absorb(batch: list[RemoteDocument]) -> None:
            nonlocal pages
            for doc in batch:
                docs.setdefault(doc.id, doc)  # the list shifts when documents are added meanwhile
            pages += 1
            if pages % GC_EVERY_PAGES == 0:
                # What a listing keeps is long-lived (the records): a collection every few
                # dozen pages, then frozen, so that the collector looks only at what came
                # since, not again at every record (a full collection per 50 pages made a
                # listing's cost grow with its square). Page bodies no longer need it
                # (_uncycled frees each response when read), but the freezing still pays:
                # a 100k --full-listing pass without it took 1.07x the CPU (farm-bench, 6
                # pairs, by hand).
                gc.collect()
                gc.freeze()

        try:
            self._every_page(fetch, absorb)
        finally:
            if pages >= GC_EVERY_PAGES:
                gc.unfreeze()  # back to the oldest generation, collected as usual from now on
        return list(docs.values())

    def _every_page(self, fetch: Callable[[int], tuple[list[RemoteDocument], bool, int | None]],
                    absorb: Callable[[list[RemoteDocument]], None]) -> None:
        """Page 1, then the pages its ``total`` announces ``list_workers`` at a time, then
        any further pages one by one (documents added meanwhile)."""
        batch, more, total = fetch(1)
        absorb(batch)
        page = 2
        if more and total is not None and self.list_workers > 1 and -(-total // PAGE_LIMIT) >= page:
            last = -(-total // PAGE_LIMIT)
            with ThreadPoolExecutor(max_workers=self.list_workers, thread_name_prefix="difysync-list") as pool:
                for batch, more, _ in pool.map(fetch, range(page, last + 1)):
                    absorb(batch)
            page = last + 1
        while more:
            batch, more, _ = fetch(page)
            absorb(batch)
            page += 1

    def document_page(self, dataset_id: str, page: int = 1, *,
                      status: str | None = None) -> tuple[list[RemoteDocument], int | None]:
        """One page of the newest-first listing (of one display ``status``, if given) and
        the ``total`` it announces."""
        params: dict[str, Any] = {"limit": PAGE_LIMIT, **({"status": status} if status else {})}
        result = self._page(f"/datasets/{dataset_id}/documents", params, page,
                            f"list documents of dataset {dataset_id}")
        return [remote_document(i) for i in result.items], result.total

    def _page(self, path: str, params: dict[str, Any], page: int, about: str) -> _Page:
        response = self._request("GET", path, params={**params, "page": page}, about=about)
        body = self._json(response, about)
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise FatalError(f"{about}: unexpected answer from the server (no 'data' list)")
        limit = int(body.get("limit") or params.get("limit") or PAGE_LIMIT)
        more = bool(items) and bool(body.get("has_more")) and len(items) >= min(limit, PAGE_LIMIT)
        total = body.get("total")
        return _Page(items, more, total if isinstance(total, int) else None)

    def find_documents(self, dataset_id: str, name: str) -> list[RemoteDocument]:
        """Documents with exactly this name (keyword search is a substring match)."""
        return [d for d in self.list_documents(dataset_id, keyword=name) if d.name == name]

    def create_by_file(self, dataset_id: str, name: str, content: bytes,
                       data: Mapping[str, Any], *, owner: str | None = None) -> Upload:
        """Create a document. A re-send after a failure that may have landed first looks the
        name up, so an old server (no name matching) never gets a duplicate; a document of
        that name that another ``owner`` tagged is not what landed."""
        return self._create(dataset_id, "create_by_file", name, owner, len(content), about=f"create {name!r}",
                            files={"file": (name, content, "application/octet-stream")},
                            data={"data": json.dumps(dict(data))})

    def _create(self, dataset_id: str, route: str, name: str, owner: str | None, size: int | None, *,
                about: str, **body: Any) -> Upload:
        """A create (by file or by text) whose re-send first asks whether it landed: an
        enabled document of that name, of ours or untagged, and of this ``size`` when known
        (a same-named document that was there before is not what landed)."""
        def landed() -> Upload | None:
            try:
                found = self.find_documents(dataset_id, name)
            except TransientError:
                return None
            found = [d for d in found if d.enabled and not d.archived
                     and (size is None or d.size in (None, size)) and d.owner in (None, owner)]
            return Upload(found[0], None) if found else None

        result = self._request("POST", f"/datasets/{dataset_id}/document/{route}", about=about, mutating=True,
                               on_create=True, before_retry=landed, **body)
        if isinstance(result, Upload):
            return result
        return self._upload(result, about)

    def update_by_file(self, dataset_id: str, document_id: str, name: str, content: bytes,
                       data: Mapping[str, Any]) -> Upload:
        """Same id, new content and/or name. Safe to re-send: it names the document."""
        about = f"update {name!r}"
        response = self._request(
            "POST", f"/datasets/{dataset_id}/documents/{document_id}/update_by_file", about=about,
            mutating=True, on_document=True, files={"file": (name, content, "application/octet-stream")},
            data={"data": json.dumps(dict(data))})
        return self._upload(response, about)

    def delete_document(self, dataset_id: str, document_id: str) -> bool:
        """True if deleted now, False if it was already gone (404 counts as done)."""
        try:
            self._request("DELETE", f"/datasets/{dataset_id}/documents/{document_id}",
                          about=f"delete document {document_id}", mutating=True, on_document=True)
        except NotFoundError:
            return False
        return True

    def create_by_text(self, dataset_id: str, name: str, text: str, data: Mapping[str, Any], *,
                       owner: str | None = None) -> Upload:
        """Create a document from text (a locally chunked file); a re-send looks the name up
        first, as create_by_file does (the size is not compared: the server keeps the text
        as a file of its own making)."""
        return self._create(dataset_id, "create_by_text", name, owner, None, about=f"create {name!r} (by text)",
                            json={**data, "name": name, "text": text})

    def update_by_text(self, dataset_id: str, document_id: str, name: str, text: str,
                       data: Mapping[str, Any]) -> Upload:
        """Same id, new text: the server splits it again and replaces every segment."""
        about = f"update {name!r} (by text)"
        response = self._request("POST", f"/datasets/{dataset_id}/documents/{document_id}/update_by_text",
                                 about=about, mutating=True, on_document=True,
                                 json={**data, "name": name, "text": text})
        return self._upload(response, about)

    # --- segments -------------------------------------------------------------------------

    def list_segments(self, dataset_id: str, document_id: str) -> list[RemoteSegment] | None:
        """Every segment of a document in position order, or None when the server has no
        segment API (the route answers with a 404 page)."""
        about = f"list segments of document {document_id}"
        try:
            items = list(self._pages(f"/datasets/{dataset_id}/documents/{document_id}/segments",
                                     {"limit": PAGE_LIMIT}, about=about, on_document=True))
        except NotDifyAPI:
            return None
        found = [remote_segment(i) for i in items]
        return sorted(found, key=lambda seg: seg.position)

    def add_segments(self, dataset_id: str, document_id: str, contents: list[str]) -> list[RemoteSegment]:
        """Add segments at the end of the document, in one request; the answer's segments
        come in the order sent. Not re-sent blindly: a lost answer may have added them."""
        about = f"add {len(contents)} segment(s) to document {document_id}"
        response = self._request("POST", f"/datasets/{dataset_id}/documents/{document_id}/segments",
                                 about=about, mutating=True, on_document=True, retry=False,
                                 json={"segments": [{"content": c} for c in contents]})
        return [remote_segment(i) for i in self._json(response, about).get("data") or []]

    def update_segment(self, dataset_id: str, document_id: str, segment_id: str, content: str) -> RemoteSegment:
        """New content for one segment (indexed before the answer). Safe to re-send."""
        about = f"update segment {segment_id} of document {document_id}"
        response = self._request("POST", f"/datasets/{dataset_id}/documents/{document_id}/segments/{segment_id}",
                                 about=about, mutating=True, on_document=True,
                                 json={"segment": {"content": content}})
        return remote_segment(self._json(response, about).get("data") or {})

    def delete_segment(self, dataset_id: str, document_id: str, segment_id: str) -> bool:
        """True if deleted now, False if it was already gone."""
        try:
            self._request("DELETE", f"/datasets/{dataset_id}/documents/{document_id}/segments/{segment_id}",
                          about=f"delete segment {segment_id} of document {document_id}", mutating=True,
                          on_document=True)
        except NotFoundError:
            return False
        return True

    # --- metadata -------------------------------------------------------------------------

    def metadata_fields(self, dataset_id: str) -> list[dict[str, Any]] | None:
        """The dataset's metadata fields (``id``, ``name``, ``type``), or None when the
        server has no metadata API (an old release answers the route with a 404 page)."""
        about = f"metadata fields of dataset {dataset_id}"
        try:
            response = self._request("GET", f"/datasets/{dataset_id}/metadata", about=about)
        except NotDifyAPI:
            return None
        fields = self._json(response, about).get("doc_metadata")
        return [f for f in fields if isinstance(f, dict)] if isinstance(fields, list) else []

    def create_metadata_field(self, dataset_id: str, name: str, kind: str) -> dict[str, Any]:
        response = self._request("POST", f"/datasets/{dataset_id}/metadata", json={"type": kind, "name": name},
                                 about=f"create metadata field {name!r}", mutating=True)
        return self._json(response, "create metadata field")

    def document_metadata(self, dataset_id: str, document_id: str) -> Any:
        """A document's ``doc_metadata`` as its detail gives it: values keep their types
        (the listing gives strings), and it is read now, not when the pass began."""
        response = self._request("GET", f"/datasets/{dataset_id}/documents/{document_id}",
                                 params={"metadata": "only"}, about=f"metadata of document {document_id}",
                                 on_document=True)
        body = self._json(response, "document metadata")
        return body.get("doc_metadata") if isinstance(body, dict) else None

    def set_document_metadata(self, dataset_id: str, operations: list[dict[str, Any]]) -> None:
        """Set metadata values on several documents in one request (tags.operation builds
        each entry). Safe to re-send: it sets values, it makes nothing."""
        self._request("POST", f"/datasets/{dataset_id}/documents/metadata", json={"operation_data": operations},
                      about=f"set metadata of {len(operations)} document(s)", mutating=True)

    def indexing_status(self, dataset_id: str, batch: str) -> list[dict[str, Any]]:
        response = self._request("GET", f"/datasets/{dataset_id}/documents/{batch}/indexing-status",
                                 about=f"indexing status of batch {batch} in dataset {dataset_id}", on_document=True)
        return list(self._json(response, "indexing status").get("data") or [])

    # --- helpers ------------------------------------------------------------------------

    def _pages(self, path: str, params: dict[str, Any], *, about: str,
               on_document: bool = False) -> Iterator[dict[str, Any]]:
        """Every item of a paginated listing. Stops on a short or empty page too: the
        server's has_more only means "this page was full"."""
        page = 1
        seen: set[str] = set()
        while True:
            response = self._request("GET", path, params={**params, "page": page}, about=about,
                                     on_document=on_document)
            body = self._json(response, about)
            items = body.get("data") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise FatalError(f"{about}: unexpected answer from the server (no 'data' list)")
            fresh = 0
            for item in items:
                key = str(item.get("id"))
                if key in seen:
                    continue  # the list shifts when documents are added meanwhile
                seen.add(key)
                fresh += 1
                yield item
            limit = int(body.get("limit") or params.get("limit") or PAGE_LIMIT)
            if not items or not body.get("has_more") or len(items) < min(limit, PAGE_LIMIT):
                return
            page += 1

    def _upload(self, response: httpx.Response, about: str) -> Upload:
        body = self._json(response, about)
        doc = body.get("document") if isinstance(body, dict) else None
        if not isinstance(doc, dict) or not doc.get("id"):
            raise FatalError(f"{about}: the server's answer holds no document")
        batch = body.get("batch")
        return Upload(remote_document(doc), str(batch) if batch else None)


def _uncycled(response: httpx.Response) -> httpx.Response:
    """The response, freed by reference counting once its users let it go.

    httpx binds a response's stream to the response (each refers to the other), so a
    finished response waits for the cycle collector, body and all: a big listing's pages
    piled up that way between collections, about 7 MB at the peak of the 100k-file storm
    (bench/storm.py). The body has been read by now (this client never streams); an empty
    stream in its place ends the cycle."""
    response.stream = httpx.ByteStream(b"")
    return response


def _tls_for(base_url: str) -> ssl.SSLContext | bool:
    """What the client verifies TLS with: httpx's default (certifi's CAs) for https.

    A plain http:// base URL (a loopback or internal Dify) never makes a TLS connection:
    redirects are not followed, and every request goes to that URL. It gets a context
    that still verifies (hostname check, certificate required) but loads no CA file, so
    the one-shot pass does not pay for reading the CA bundle (30-60 ms per client, timed
    by hand here; no bench row), and a TLS connection, if one were ever made, would fail
    closed."""
    if httpx.URL(base_url).scheme != "http":
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default


_ID = re.compile(r"/[^/]*[0-9][^/]*")  # a path segment with a digit: an id (no route word has one)


def route_of(path: str) -> str:
    """The request's route with its ids (dataset, document, segment, batch) replaced by ``{id}`` (``/datasets/{id}/documents``):
    a label for metrics that stays a small set however many documents there are."""
    return _ID.sub("/{id}", path.split("?", 1)[0])


def remote_document(raw: Mapping[str, Any]) -> RemoteDocument:
    """Reduce a document object D to the fields a sync decision needs."""
    size = None
    uploaded = 0
    detail = raw.get("data_source_detail_dict")
    if isinstance(detail, dict):
        upload = detail.get("upload_file")
        if isinstance(upload, dict) and isinstance(upload.get("size"), int):
            size = upload["size"]
        if isinstance(upload, dict) and isinstance(upload.get("created_at"), (int, float)):
            uploaded = int(upload["created_at"])
    tags, others = tags_of_listing(raw["doc_metadata"]) if "doc_metadata" in raw else (None, ())
    created = raw.get("created_at")
    status = str(raw.get("indexing_status") or "completed")
    display = raw.get("display_status")
    return RemoteDocument(
        id=str(raw["id"]), name=str(raw.get("name") or ""),
        indexing_status=_SHARED.get(status, status),
        display_status=_SHARED.get(display, display) if isinstance(display, str) else display,
        enabled=bool(raw.get("enabled", True)), archived=bool(raw.get("archived", False)),
        error=raw.get("error") or None, size=size,
        created_at=int(created) if isinstance(created, (int, float)) else 0, uploaded_at=uploaded,
        tags=tags, other_metadata=others)


# One string object per status value, shared by every document of a 100k listing.
_SHARED = {s: s for s in ("waiting", "parsing", "cleaning", "splitting", "indexing", "completed", "error",
                          "paused", "queuing", "available", "disabled", "archived")}


def _worth_resending(error: BaseException) -> bool:
    """errors.verdict decides which answers are worth the same request again."""
    return verdict(error).resend


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a transport error (httpx raises its own, from ssl's), if any."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short; never loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _transport_reason(exc: httpx.TransportError, tls: ssl.SSLError | None) -> str:
    if isinstance(tls, ssl.SSLCertVerificationError):
        return "its TLS certificate is not trusted; install the CA in the system trust store"
    if tls is not None:
        return "TLS handshake failed"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host not found"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection dropped"
    return type(exc).__name__


__all__ = ["DifyClient", "RateLimiter", "RetryPolicy", "Upload", "remote_document",
           "DatasetMissing", "NotFoundError"]


def remote_segment(raw: Mapping[str, Any]) -> RemoteSegment:
    """Reduce a segment object to what keeping segments in step needs."""
    if not raw.get("id"):
        raise FatalError("the server's answer holds no segment")
    position = raw.get("position")
    return RemoteSegment(id=str(raw["id"]), position=position if isinstance(position, int) else 0,
                         content=str(raw.get("content") or ""), enabled=raw.get("enabled") is not False)
