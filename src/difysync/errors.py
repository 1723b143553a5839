"""difysync's exceptions, and the one table that maps Dify's answers onto them.

Errors are classed by what the caller does next, not by where they came from::

    DifySyncError                  catch this to catch everything of ours
    ├── ConfigError                invalid configuration               -> exit 78
    ├── StateError                 state DB unreadable / newer schema  -> exit 78
    │   └── StateWriteError        disk full, I/O error: back off, try again
    ├── LeaseBusy                  another process writes the folder   -> exit 75
    ├── LeaseAbandoned             stopped while waiting for the folder
    └── DifyError                  the server (or the road to it) said no
        ├── TransientError         retry with backoff
        │   ├── ServerUnreachable  connection refused, DNS, timeout, a
        │   │                      proxy's 502/503/504 page             -> exit 69
        │   └── RateLimited        429, or Dify Cloud's 403 rate-limit message
        ├── NotReadyError          wait: document queued/indexing, "not available"
        ├── RefusedError           skip and record: type, size, name, archived
        ├── NotFoundError          the document is gone (a 404 on a document)
        └── FatalError             stop this folder (or the run) with a message naming the fix
            ├── NotDifyAPI         base_url answers, but not as Dify does -> exit 69
            ├── AuthError          the API key was rejected               -> exit 77
            ├── DatasetMissing     the configured dataset does not exist
            └── QuotaError         quota, plan limit, embedding provider not set up

What each class means for the program (retry, wait, skip, stop, outage, and the exit
code) is decided in one table at the end, ``verdict()``; the executor, the pass, the
daemon and the CLI all read it rather than deciding by themselves.

Nothing here ever holds the API key: messages are built from the server's answer and
our own words only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


class DifySyncError(Exception):
    """Base of every error difysync raises on purpose."""

    def describe(self) -> str:
        """The one line a person reads (DifyError adds the status and code)."""
        return str(self)


class ConfigError(DifySyncError):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class StateError(DifySyncError):
    """The state DB cannot be used (corrupt, newer schema)."""


class StateWriteError(StateError):
    """A write to the state DB failed (disk full, I/O error): worth trying again later."""


class DifyError(DifySyncError):
    """An answer from Dify (or its proxy) that was not a success."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = []
        if self.status is not None:
            parts.append(str(self.status))
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        return f"{head}: {self.message}" if head else self.message


class TransientError(DifyError):
    """Worth retrying after a pause: the same request may well succeed."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, code=code)


class ServerUnreachable(TransientError):
    """No answer at all: connection refused, DNS failure, timeout, dropped connection."""


class RateLimited(TransientError):
    """The server asked us to slow down (429, or Dify Cloud's 403 rate-limit message)."""


class NotReadyError(DifyError):
    """The document is busy (queued, indexing): try again once it settles."""


class RefusedError(DifyError):
    """The server will never accept this content: record it, do not resend until it changes."""


class NotFoundError(DifyError):
    """The object addressed (a document, a batch) does not exist (any more)."""


class FatalError(DifyError):
    """Nothing will work until a human changes something; the message says what."""


class NotDifyAPI(FatalError):
    """Something answers at dify.base_url, but not the Dify API (wrong path, a web page)."""


class AuthError(FatalError):
    """The API key was rejected."""


class DatasetMissing(FatalError):
    """The configured dataset does not exist for this key."""


class QuotaError(FatalError):
    """A quota, plan limit or provider set-up problem on the server side."""


class LeaseBusy(DifySyncError):
    """Another process holds the folder (lease.py): a second service on it, or a pass
    that is still writing. Exit 75 (EX_TEMPFAIL): try again later."""

    def __init__(self, folder: str, holder: Any, hint: str) -> None:
        self.folder = folder
        self.holder = holder  # a lease.Holder, or None when its record is unreadable
        self.hint = hint
        who = holder.describe() if holder is not None else "another process"
        super().__init__(f"folder {folder} is held by {who}: {hint}")


class LeaseAbandoned(DifySyncError):
    """The wait for a folder's write lease was given up because the process is stopping."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        super().__init__(f"stopped waiting for the write lease on folder {folder}")


# Dify error codes -> the class that says what to do. Codes not listed fall back on the
# HTTP status (see error_from_response).
_CODE_TABLE: dict[str, type[DifyError]] = {
    "unauthorized": AuthError,
    "unsupported_file_type": RefusedError,
    "file_too_large": RefusedError,
    "too_many_files": RefusedError,
    "no_file_uploaded": RefusedError,
    "archived_document_immutable": RefusedError,
    "invalid_metadata": RefusedError,
    "document_indexing": NotReadyError,
    "document_already_finished": NotReadyError,
    "provider_not_initialize": QuotaError,
    "provider_quota_exceeded": QuotaError,
    "model_currently_not_support": QuotaError,
    "dataset_not_initialized": QuotaError,
    "high_quality_dataset_only": QuotaError,
    "dataset_in_use": FatalError,
    "dataset_name_duplicate": FatalError,
}

_RATE_LIMIT_HINTS = ("rate limit",)
_HINTS_BY_CLASS: dict[type[DifyError], str] = {
    AuthError: "the API key was rejected: use a dataset (Knowledge) API key of this workspace",
    DatasetMissing: "the dataset does not exist for this API key: check dataset_id / dataset_name",
}


def error_from_response(status: int, body: bytes | str | None, *, retry_after: str | None = None,
                        about: str = "request", on_document: bool = False,
                        on_create: bool = False) -> DifyError:
    """Turn a non-2xx answer into the one exception class that says what to do next.

    ``about`` names the request in the message (never a URL with secrets, never the key).
    ``on_document`` says a 404 means "this document is gone" rather than "this dataset is
    gone"; ``on_create`` lets a bare 400 (Dify 1.14.1's answer to a refused file) count as
    a refusal.
    """
    payload = _json_or_none(body)
    if payload is None:
        return _from_page(status, body, retry_after, about)
    return _from_dify(status, payload, retry_after, about, on_document=on_document, on_create=on_create)


def _from_page(status: int, body: bytes | str | None, retry_after: str | None, about: str) -> DifyError:
    """An answer without Dify's JSON body: a proxy's page, a web server, an empty body."""
    snippet = _snippet(body)
    if status == 413:
        return RefusedError(f"{about}: file too large for the server or its proxy", status=status)
    if status == 401:
        return AuthError(f"{about}: {_HINTS_BY_CLASS[AuthError]}", status=status)
    if status == 429:
        return RateLimited(f"{about}: the server asked us to slow down (429)", status=status,
                           retry_after=_parse_retry_after(retry_after))
    if status in (502, 503, 504):
        return ServerUnreachable(f"{about}: the proxy in front of Dify answered {status} "
                                 f"(Dify itself is down or restarting)", status=status,
                                 retry_after=_parse_retry_after(retry_after))
    if status in (404, 405):
        return NotDifyAPI(f"{about}: the server answered {status} with a web page, not the Dify API"
                          + (f" ({snippet})" if snippet else "")
                          + " - check dify.base_url (it must end in /v1)", status=status)
    return TransientError(
        f"{about}: the server answered {status} without a Dify JSON body"
        + (f" ({snippet})" if snippet else "")
        + " - check dify.base_url (it must end in /v1)",
        status=status, retry_after=_parse_retry_after(retry_after))


def _from_dify(status: int, payload: dict[str, Any], retry_after: str | None, about: str, *,
               on_document: bool, on_create: bool) -> DifyError:
    """Dify's own ``{"code", "message", "status"}`` answer: the code first, then the status."""
    code = str(payload.get("code") or "") or None
    message = str(payload.get("message") or "")
    lowered = message.lower()
    text = f"{about}: {message}" if message else about

    if status == 429 or (status == 403 and any(h in lowered for h in _RATE_LIMIT_HINTS)):
        return RateLimited(text, status=status, code=code, retry_after=_parse_retry_after(retry_after))
    if status >= 500:
        return TransientError(text, status=status, code=code, retry_after=_parse_retry_after(retry_after))
    if code in _CODE_TABLE:
        cls = _CODE_TABLE[code]
        hint = _HINTS_BY_CLASS.get(cls)
        return cls(f"{about}: {hint}" if hint else text, status=status, code=code)
    if status == 401:
        return AuthError(f"{about}: {_HINTS_BY_CLASS[AuthError]}", status=status, code=code)
    if status == 403:
        if "number of documents" in lowered or "vector space" in lowered or "limit" in lowered:
            return QuotaError(text, status=status, code=code)
        return RefusedError(text, status=status, code=code)
    if status == 404 and "requested url was not found" in lowered:
        return NotDifyAPI(f"{about}: the server has no such API route - check dify.base_url "
                          f"(it must end in /v1)", status=status, code=code)
    if status == 404 and lowered.startswith(("document is not completed", "document is disabled")):
        # the segment API's answer for a document it cannot touch now (still indexing, or
        # disabled by someone): a later pass tries again
        return NotReadyError(text, status=status, code=code)
    if status == 404:
        if on_document and "dataset not found" not in lowered:
            return NotFoundError(text, status=status, code=code)
        return DatasetMissing(f"{about}: {_HINTS_BY_CLASS[DatasetMissing]}", status=status, code=code)
    if status == 405:
        return NotFoundError(text, status=status, code=code)
    if status == 400:
        # "during indexing", not "indexing": "indexing_technique is required." is no wait
        # ("another ... metadata operation is running, please wait": a per-document lock)
        if "not available" in lowered or "during indexing" in lowered or "please wait" in lowered:
            return NotReadyError(text, status=status, code=code)
        if any(h in lowered for h in ("dataset is not exist", "dataset does not exist",
                                      "dataset not found")):
            return DatasetMissing(f"{about}: {_HINTS_BY_CLASS[DatasetMissing]}", status=status, code=code)
        if not message and on_create:
            return RefusedError(f"{about}: the server refused the file (bare 400: type, size or name)",
                                status=status, code=code)
        return RefusedError(text, status=status, code=code)
    if status == 409:
        return FatalError(text, status=status, code=code)
    if status == 413:
        return RefusedError(text, status=status, code=code)
    if status == 415:
        return RefusedError(text, status=status, code=code)
    return FatalError(text or f"{about}: unexpected answer {status}", status=status, code=code)


def _json_or_none(body: bytes | str | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _snippet(body: bytes | str | None, limit: int = 60) -> str:
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# --- what to do next -------------------------------------------------------------------


class Next(str, Enum):
    """What an error means for the thing it happened to."""

    WAIT = "wait"      # the document is busy: leave it to a later pass
    SKIP = "skip"      # never accepted as it is: record it, do not resend until it changes
    GONE = "gone"      # the document no longer exists
    FAIL = "fail"      # this item failed; the rest of the pass goes on
    STOP = "stop"      # nothing more in this folder works until a human changes something
    OUTAGE = "outage"  # the server (or the disk) is away: back off, try the folder again later


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one error class means at each level: whether the client sends the request
    again after a pause, what becomes of the item once it stops trying, what it means
    for the folder's pass and for the whole run, and the exit code of a one-shot command."""

    item: Next          # FAIL, WAIT, SKIP or GONE
    folder: Next        # FAIL (the pass goes on), STOP or OUTAGE
    stops_run: bool     # no other folder can fare better (the key, the URL)
    exit_code: int
    resend: bool = False  # worth the same request again after a pause (dify.py's retries)

    @property
    def backs_off(self) -> bool:
        """A service should pause the folder and try a whole pass again later."""
        return self.folder is not Next.FAIL


EX_FAILED, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 1, 69, 75, 77, 78

# Most specific class first: verdict() takes the first row the error is an instance of.
_VERDICTS: tuple[tuple[type[DifySyncError], Verdict], ...] = (
    (ConfigError, Verdict(Next.FAIL, Next.STOP, True, EX_CONFIG)),
    (LeaseBusy, Verdict(Next.FAIL, Next.STOP, False, EX_TEMPFAIL)),
    (LeaseAbandoned, Verdict(Next.FAIL, Next.STOP, False, EX_TEMPFAIL)),
    (StateWriteError, Verdict(Next.FAIL, Next.OUTAGE, False, EX_FAILED)),
    (StateError, Verdict(Next.FAIL, Next.STOP, True, EX_CONFIG)),
    (ServerUnreachable, Verdict(Next.FAIL, Next.OUTAGE, False, EX_UNAVAILABLE, resend=True)),
    (RateLimited, Verdict(Next.FAIL, Next.OUTAGE, False, EX_FAILED, resend=True)),
    (TransientError, Verdict(Next.FAIL, Next.OUTAGE, False, EX_FAILED, resend=True)),
    (NotReadyError, Verdict(Next.WAIT, Next.FAIL, False, EX_FAILED)),
    (RefusedError, Verdict(Next.SKIP, Next.FAIL, False, EX_FAILED)),
    (NotFoundError, Verdict(Next.GONE, Next.FAIL, False, EX_FAILED)),
    (AuthError, Verdict(Next.FAIL, Next.STOP, True, EX_NOPERM)),
    (NotDifyAPI, Verdict(Next.FAIL, Next.STOP, True, EX_UNAVAILABLE)),
    (FatalError, Verdict(Next.FAIL, Next.STOP, False, EX_FAILED)),
    (DifyError, Verdict(Next.FAIL, Next.FAIL, False, EX_FAILED)),
    (DifySyncError, Verdict(Next.FAIL, Next.STOP, False, EX_FAILED)),
)


def verdict(error: BaseException) -> Verdict:
    """The one place that says what an error means (see ``Verdict``). A request that
    ran out of retries on a transient error fails alone (``item``); what it means for
    the folder (``folder``) applies when the pass itself cannot go on, or, for the
    executor, once several requests in a row have failed that way."""
    for cls, found in _VERDICTS:
        if isinstance(error, cls):
            return found
    return _UNKNOWN


def exit_code(error: BaseException | None) -> int:
    """The exit code a one-shot command gives for this error (0 for none)."""
    return 0 if error is None else verdict(error).exit_code


_UNKNOWN = Verdict(Next.FAIL, Next.STOP, False, EX_FAILED)
