"""The emulator's state file: one versioned JSON document, read once at start and replaced
atomically (temp file, fsync, rename), and the autosaver that writes it soon after changes.

It knows the file's envelope (format name, version) and how to write it safely; what goes
inside is the store's business. It must never leave a half-written file in place.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

FORMAT = "difysync-emulator-state"
VERSION = 1

log = logging.getLogger("difysync.emulator")


class StateFileError(Exception):
    """The state file cannot be used: unreadable, not JSON, not ours, or of a version this
    emulator does not know. The message names the file and what to do."""


def read_state(path: str) -> dict[str, Any] | None:
    """The state stored at ``path`` (None when there is no such file yet).

    A file written before the envelope existed (no ``version``, but ``datasets``) is read
    as version 1: its layout is the same."""
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise StateFileError(f"the folder of the state file {path} does not exist; "
                                 "create it or give another --state-file") from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateFileError(f"cannot read the state file {path}: {_reason(exc)}") from None
    except ValueError as exc:
        raise StateFileError(f"the state file {path} is not valid JSON ({exc}); "
                             "move it away to start empty") from None
    if not isinstance(state, dict) or state.get("format", FORMAT) != FORMAT:
        raise StateFileError(f"{path} is not an emulator state file; "
                             "give another --state-file or move it away")
    version = state.get("version", VERSION if "datasets" in state else None)
    if version != VERSION:
        raise StateFileError(f"the state file {path} has version {version!r}, this emulator "
                             f"reads version {VERSION}; move it away to start empty")
    return state


def envelope(content: dict[str, Any]) -> dict[str, Any]:
    """The document to write: the format name and version, then the store's content."""
    return {"format": FORMAT, "version": VERSION, **content}


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` with ``text``: a reader (or a crash) sees the old file or the new
    one, never a part. The temp file sits beside it (same filesystem, so the rename is
    atomic) and is private (mkstemp's 0600): the state holds documents' content."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".emulator-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (not possible everywhere; best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


class Autosaver:
    """Calls ``save`` at most ``delay`` seconds after the first unsaved change.

    The timer starts at the first change and is not pushed back by later ones, so a steady
    stream of requests cannot starve it: a kill -9 loses at most ``delay`` seconds plus one
    write. The thread exists only while changes are waiting, so an idle emulator has none.
    """

    def __init__(self, save: Callable[[], None], delay: float) -> None:
        self._save = save
        self._delay = max(delay, 0.0)
        self._lock = threading.Lock()
        self._pending = False
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        """A change happened: make sure a save follows within ``delay``."""
        with self._lock:
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="emulator-autosave",
                                                daemon=True)
                self._thread.start()

    def saved(self) -> None:
        """The state was just taken for writing (by anyone): nothing is waiting any more,
        so a timer still running does not write an older state over a newer one."""
        with self._lock:
            self._pending = False

    def _run(self) -> None:
        while True:
            time.sleep(self._delay)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                self._pending = False
            try:
                self._save()
            except OSError as exc:  # a full disk, say: try again after the next delay
                log.error("could not save the emulator state: %s", _reason(exc))
                with self._lock:
                    self._pending = True


__all__ = [
    "FORMAT",
    "VERSION",
    "Autosaver",
    "StateFileError",
    "envelope",
    "read_state",
    "write_atomically",
]
