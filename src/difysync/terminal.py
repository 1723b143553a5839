"""Whether a person watches the CLI's output, and how folders are labelled for them.

Kept apart from progress.py, which draws with rich: a pass nobody watches (cron, a
pipe, ``--json``) answers these questions without loading rich at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .config import FolderSettings

QUIET_LEVELS = frozenset({"warning", "error"})  # -q / --log-level warning: no progress, no table


def watched(as_json: bool, level: str, stream: object) -> bool:
    """Someone is watching ``stream`` (a terminal, not a dumb one) and wants more than
    warnings, and the output is not for a program (--json)."""
    if as_json or level in QUIET_LEVELS:
        return False
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return os.isatty(fd) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown")


def folder_labels(folders: Iterable[FolderSettings]) -> dict[str, str]:
    """A short label per folder key: the folder's ``label`` (its name, dataset name or
    directory name, as log lines name it), or its whole path when two folders share one."""
    folders = list(folders)
    labels = [f.label for f in folders]
    return {f.key: label if labels.count(label) == 1 else f.key for f, label in zip(folders, labels)}


__all__ = ["QUIET_LEVELS", "folder_labels", "watched"]
