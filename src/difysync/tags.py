"""difysync's own fields in Dify's knowledge metadata: their names and types, the values a
file's document should carry, how they read in a listing, and the write operation that
sets them without dropping the values other people set.

Pure values only: the requests are dify.py's, when to send them apply.py's, and what a
document's tags mean for ownership plan.py's.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from .models import NO_TAGS, Tags

PATH, SHA256, OWNER, MTIME = "difysync_path", "difysync_sha256", "difysync_owner", "difysync_mtime"
# (name, Dify field type), in Tags order.
FIELDS: tuple[tuple[str, str], ...] = ((PATH, "string"), (SHA256, "string"), (OWNER, "string"), (MTIME, "time"))
NAMES = frozenset(name for name, _ in FIELDS)
T = TypeVar("T")
BUILT_IN_ID = "built-in"  # how Dify marks its built-in fields (document_name, uploader, ...) in doc_metadata
# One request sets the values of this many documents (the endpoint takes a list).
BATCH = 100


def expected(rel_path: str, sha256: str | None, owner: str, mtime_ns: int | None) -> Tags:
    """The values a document holding this file's content should carry, as a listing shows them."""
    return Tags(path=path_value(rel_path), sha256=sha256, owner=owner,
                mtime=str(mtime_ns // 1_000_000_000) if mtime_ns is not None else None)


def path_value(rel_path: str) -> str:
    """The path as a metadata value: text, so a byte that is not UTF-8 (a surrogate escape
    of os.fsdecode) is written as ``\\xNN``."""
    try:
        rel_path.encode("utf-8")
        return rel_path
    except UnicodeEncodeError:
        return rel_path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def parse(doc_metadata: Any) -> tuple[Tags, tuple[tuple[str, str, str | None], ...]]:
    """(our values, everyone else's (id, name, value)) from a listing's ``doc_metadata``
    (null until a document has values; built-in fields are left out: Dify fills those)."""
    if not isinstance(doc_metadata, list) or not doc_metadata:
        return NO_TAGS, ()
    ours: dict[str, str | None] = {}
    others: list[tuple[str, str, str | None]] = []
    for item in doc_metadata:
        if not isinstance(item, dict) or item.get("id") == BUILT_IN_ID:
            continue
        name, value = str(item.get("name") or ""), item.get("value")
        text = None if value is None else _text(value)
        if name in NAMES:
            ours[name] = text
        elif name:
            others.append((str(item.get("id") or ""), name, text))
    if not ours:
        return NO_TAGS, tuple(others)
    owner = ours.get(OWNER)
    # A dataset's documents have one owner, or a few: one string object for all of them,
    # not one per document of a million-document listing.
    return Tags(ours.get(PATH), ours.get(SHA256), sys.intern(owner) if owner else owner,
                ours.get(MTIME)), tuple(others)


def others_now(doc_metadata: Any) -> tuple[tuple[str, str, Any], ...]:
    """Everyone else's (id, name, value) from a document's detail, values as typed there."""
    if not isinstance(doc_metadata, list):
        return ()
    return tuple((str(item.get("id") or ""), str(item.get("name") or ""), item.get("value"))
                 for item in doc_metadata if isinstance(item, dict) and item.get("id") != BUILT_IN_ID
                 and item.get("name") and item.get("name") not in NAMES)


def _text(value: Any) -> str:
    """A value as the list shows it: numbers that are whole print without a fraction."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def operation(document_id: str, tags: Tags, field_ids: Mapping[str, str],
              keep: Sequence[tuple[str, str, Any]] = ()) -> dict[str, Any]:
    """One entry of ``POST /datasets/{ds}/documents/metadata``: our four values, and the
    document's other values sent along, so that a server that replaces the whole set
    (before 1.11, which ignores ``partial_update``) keeps them too."""
    values = {PATH: tags.path, SHA256: tags.sha256, OWNER: tags.owner,
              MTIME: int(tags.mtime) if tags.mtime is not None else None}
    ours = [{"id": field_ids[name], "name": name, "value": values[name]} for name, _ in FIELDS]
    theirs = [{"id": field_id, "name": name, "value": value} for field_id, name, value in keep if name not in NAMES]
    return {"document_id": document_id, "metadata_list": ours + theirs, "partial_update": True}


def batches(items: Iterable[T]) -> list[list[T]]:
    """``items`` in runs of at most BATCH, one request each."""
    out: list[list[T]] = []
    for item in items:
        if not out or len(out[-1]) >= BATCH:
            out.append([])
        out[-1].append(item)
    return out


__all__ = ["BATCH", "BUILT_IN_ID", "FIELDS", "MTIME", "NAMES", "OWNER", "PATH", "SHA256", "batches", "expected",
           "operation", "parse"]
