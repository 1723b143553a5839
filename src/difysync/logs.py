"""Logging set-up: stderr, plain or JSON lines, no timestamps under journald, and a
filter that scrubs the API key from any record as a last line of defence."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class _Redactor(logging.Filter):
    """Replaces known secrets wherever they would appear in a formatted record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                if secret and secret in message:
                    message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


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
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
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
