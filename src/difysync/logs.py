"""Logging set-up: stderr, plain or JSON lines, no timestamps under journald, and a
filter that scrubs the API key from any record as a last line of defence.

A line about a folder or a file carries structured fields (``log_fields(...)`` as the log
call's ``extra=``): JSON lines show them beside the message, the text format never does.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from enum import Enum
from typing import Any

_FIELDS_ATTR = "difysync_fields"  # one record attribute, so no field can clash with LogRecord's own


def log_fields(*, folder: str | None = None, path: str | None = None, action: Enum | str | None = None,
               document_id: str | None = None, result: Enum | str | None = None,
               duration_ms: float | None = None, reason_code: Enum | str | None = None) -> dict[str, Any]:
    """The ``extra=`` of a log call about a folder (its label) or a file in it. Its keywords
    are the fields a JSON line may carry (callers never spell the keys); what is not known
    is left out of the line."""
    given = {"folder": folder, "path": path, "action": action, "document_id": document_id, "result": result,
             "duration_ms": None if duration_ms is None else round(duration_ms, 1), "reason_code": reason_code}
    return {_FIELDS_ATTR: {name: value.value if isinstance(value, Enum) else value
                           for name, value in given.items() if value is not None and value != ""}}


class _Redactor(logging.Filter):
    """Replaces known secrets wherever they would appear in a formatted record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self._scrub(record.getMessage()), None
            extra = getattr(record, _FIELDS_ATTR, None)
            if extra:
                setattr(record, _FIELDS_ATTR, {name: self._scrub(value) if isinstance(value, str) else value
                                               for name, value in extra.items()})
        return True

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret and secret in text:
                text = text.replace(secret, "***")
        return text


_redactor = _Redactor()


def add_secret(secret: str) -> None:
    """Never let this string reach a log line."""
    if secret and secret not in _redactor.secrets:
        _redactor.secrets.append(secret)


class _WatchdogStopNoise(logging.Filter):
    """watchdog logs an ERROR when its inotify thread is stopped mid-read; on a clean
    shutdown that is noise that would page someone at 3 a.m."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, the structured fields the call gave
    (see ``log_fields``) and the message."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, **getattr(record, _FIELDS_ATTR, {}),
                                 "message": record.getMessage()}
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once (idempotent). Under systemd (JOURNAL_STREAM set)
    journald stamps lines itself, so ours carry none."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_difysync", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._difysync = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    handler.addFilter(_redactor)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("httpx", "httpcore", "watchdog", "uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler.addFilter(_WatchdogStopNoise())
