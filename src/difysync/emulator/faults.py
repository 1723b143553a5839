"""Fault injection for the emulator: the ways a real Dify (and the proxy before it) fails.

A client's retry, back-off and duplicate-free resend logic can only be tested against a
server that misbehaves on demand and deterministically (seeded), which is what this does.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from typing import Any

RATE_LIMIT_MESSAGE = ("Sorry, you have reached the knowledge base request rate limit of "
                      "your subscription.")
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Temporarily "
            "Unavailable", 504: "Gateway Time-out", 413: "Request Entity Too Large"}
FLASK_500 = ("The server encountered an internal error and was unable to complete your "
             "request. Either the server is overloaded or there is an error in the application.")


def nginx_html(status: int) -> str:
    """The body nginx sends with its own error pages."""
    title = f"{status} {_REASONS.get(status, 'Error')}"
    return (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}"
            f"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


@dataclass
class FaultRule:
    """One precise injection, consumed by the first request it matches.

    ``action`` is "respond" (answer ``status`` with a JSON error body, or ``body`` as is
    when given), "drop" (close the connection before doing anything), "drop_after_commit"
    (do the work, then close the connection without the answer) or "hang" (sleep
    ``hang_seconds`` first, then answer normally).
    """

    status: int = 500
    code: str = "internal_server_error"
    message: str = ""
    method: str | None = None
    path_contains: str | None = None
    action: str = "respond"
    headers: dict[str, str] | None = None
    body: str | None = None
    content_type: str = "text/html"
    hang_seconds: float | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return not (self.path_contains and self.path_contains not in path)


@dataclass
class Decision:
    """What the fault layer decided for one request."""

    delay: float = 0.0
    hang: float = 0.0
    action: str | None = None  # None (serve normally) | respond | drop | drop_after_commit
    status: int = 0
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Faults:
    """Fault switches; change attributes at any time (from any thread).

    Rates are probabilities in 0..1 drawn from a ``seed``ed generator (setting ``seed``
    re-seeds). Counters (``rate_limit_403``, ``rate_limit_429``) count down per
    request they hit. ``metadata_error_rate`` fails only the metadata routes (paths
    containing "/metadata"), with a status from ``error_statuses``. ``quota_exceeded``, ``provider_not_initialize`` and
    ``document_limit`` make create/update calls fail the way a misconfigured or full
    workspace does.
    """

    error_rate: float = 0.0
    # like error_rate, for the metadata routes only (a path containing "/metadata":
    # /datasets/{ds}/metadata..., /datasets/{ds}/documents/metadata); same statuses
    metadata_error_rate: float = 0.0
    error_statuses: list[int] = field(default_factory=lambda: [500, 502, 503])
    latency: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 1.0
    hang_rate: float = 0.0
    hang_seconds: float = 60.0
    rate_limit_403: int = 0
    rate_limit_429: int = 0
    retry_after: int = 1
    drop_rate: float = 0.0
    drop_after_commit: bool = False
    fail_next: list[FaultRule] = field(default_factory=list)
    quota_exceeded: bool = False
    provider_not_initialize: bool = False
    document_limit: bool = False
    seed: int | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "seed":
            object.__setattr__(self, "_rng", random.Random(value))

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lock", threading.Lock())
        self.fail_next = [r if isinstance(r, FaultRule) else FaultRule(**r)
                          for r in self.fail_next]

    # ------------------------------------------------------------------ control
    def reset(self) -> None:
        """Back to no faults at all (seed kept)."""
        fresh = Faults(seed=self.seed)
        with self._lock:  # type: ignore[attr-defined]
            for name in self.__dataclass_fields__:
                setattr(self, name, getattr(fresh, name))

    def update(self, **values: Any) -> None:
        """Set several switches at once (the admin endpoint's body)."""
        unknown = set(values) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault switches: {sorted(unknown)}")
        with self._lock:  # type: ignore[attr-defined]
            for name, value in values.items():
                if name == "fail_next":
                    value = [r if isinstance(r, FaultRule) else FaultRule(**r) for r in value]
                setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "fail_next":
                value = [dict(r.__dict__) for r in value]
            elif isinstance(value, list):
                value = list(value)
            out[name] = value
        return out

    # ----------------------------------------------------------------- deciding
    def _hit(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate  # type: ignore[attr-defined]

    def decide(self, method: str, path: str, mutating: bool) -> Decision:
        """Draw this request's fate. Called once per /v1 request, in arrival order."""
        with self._lock:  # type: ignore[attr-defined]
            d = Decision(delay=max(self.latency, 0.0))
            if self._hit(self.slow_rate):
                d.delay += max(self.slow_seconds, 0.0)
            for i, rule in enumerate(self.fail_next):
                if rule.matches(method, path):
                    del self.fail_next[i]
                    return self._apply_rule(d, rule)
            if self._hit(self.hang_rate):
                d.hang = max(self.hang_seconds, 0.0)
            if self.rate_limit_429 > 0:
                self.rate_limit_429 -= 1
                return _respond(d, 429, "too_many_requests", "Too many requests.",
                                headers={"Retry-After": str(self.retry_after)})
            if mutating and self.rate_limit_403 > 0:
                self.rate_limit_403 -= 1
                return _respond(d, 403, "forbidden", RATE_LIMIT_MESSAGE)
            if self._hit(self.error_rate) and self.error_statuses:
                status = self._rng.choice(self.error_statuses)  # type: ignore[attr-defined]
                return _error_status(d, status)
            if ("/metadata" in path and self._hit(self.metadata_error_rate)
                    and self.error_statuses):
                status = self._rng.choice(self.error_statuses)  # type: ignore[attr-defined]
                return _error_status(d, status)
            if self._hit(self.drop_rate):
                d.action = "drop_after_commit" if self.drop_after_commit else "drop"
            return d

    def _apply_rule(self, d: Decision, rule: FaultRule) -> Decision:
        if rule.action == "hang":
            d.hang = self.hang_seconds if rule.hang_seconds is None else rule.hang_seconds
            return d
        if rule.action in ("drop", "drop_after_commit"):
            d.action = rule.action
            return d
        if rule.action != "respond":
            raise ValueError(f"unknown fault action {rule.action!r}")
        if rule.body is not None:
            d.action, d.status = "respond", rule.status
            d.body, d.content_type = rule.body.encode(), rule.content_type
            d.headers = dict(rule.headers or {})
            return d
        return _respond(d, rule.status, rule.code, rule.message, headers=rule.headers)


def _respond(d: Decision, status: int, code: str, message: str,
             headers: dict[str, str] | None = None) -> Decision:
    import json

    d.action, d.status = "respond", status
    d.body = json.dumps({"code": code, "message": message, "status": status}).encode()
    d.content_type = "application/json"
    d.headers = dict(headers or {})
    return d


def _error_status(d: Decision, status: int) -> Decision:
    if status in (502, 503, 504, 413):
        d.action, d.status = "respond", status
        d.body, d.content_type = nginx_html(status).encode(), "text/html"
        return d
    if status == 500:
        return _respond(d, 500, "internal_server_error", FLASK_500)
    return _respond(d, status, "unknown", f"Emulated error {status}")


__all__ = ["Decision", "FaultRule", "Faults", "RATE_LIMIT_MESSAGE", "nginx_html"]
