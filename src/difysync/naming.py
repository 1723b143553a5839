"""Relative path <-> Dify document name: the one mapping by which our documents are
made and recognised again (even after the state DB is lost), so it must stay pure,
deterministic and injective, and must never change its output for an existing path.

The mapping, step by step:

1. Percent-encode (``%XX`` of the UTF-8 bytes, upper-case hex) the characters the
   server refuses or that would make the mapping ambiguous: ``%``, ``\\ : * ? " < > |``,
   control characters (U+0000..U+001F, U+007F) and U+2215 DIVISION SLASH itself. A
   lone surrogate U+DC80..U+DCFF (``os.fsdecode`` of a byte that is not UTF-8)
   becomes ``%XX`` of that original byte.
2. Replace each ``/`` with U+2215 ``∕``, which Dify accepts and shows like a slash.
3. A literal ``~`` that would make the name look like a shortened one (step 4) is
   written ``%7E``, so shortened and plain names can never coincide.
4. If the name is longer than :data:`MAX_NAME_CHARS`, shorten it to
   ``<head>~<h>.<ext>``: ``h`` is the first 10 hex digits of the SHA-256 of the path's
   bytes, ``ext`` the extension of the last component (kept when at most 16
   characters), ``head`` the start of the encoded name, cut between encoded
   characters so the whole is at most 200 characters (the server then never cuts it).

Examples::

    guides/install.md         -> guides∕install.md
    a:b?.md                   -> a%3Ab%3F.md
    100%/x∕y.md               -> 100%25∕x%E2%88%95y.md
    b'caf\\xe9.md' (latin-1)   -> caf%E9.md
    ('d/' * 150) + 'notes.md' -> d∕d∕...d∕~bdc6bdb03b.md   (shortened, 200 chars)

:func:`rel_path_from_name` inverts steps 1-3 and answers None for shortened names
(and for any name this module would not have produced).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["MAX_NAME_CHARS", "HASH_CHARS", "MAX_EXT_CHARS", "document_name", "rel_path_from_name"]

MAX_NAME_CHARS = 200
HASH_CHARS = 10
MAX_EXT_CHARS = 16

SEPARATOR = "\u2215"  # DIVISION SLASH, stands for "/"
_ENCODED_CHARS = frozenset('%\\:*?"<>|\x7f' + SEPARATOR) | {chr(i) for i in range(0x20)}
# The tail of a shortened name; a literal "~" starting such a tail only comes from step 4.
_SHORT_TAIL = "[0-9a-f]{%d}(?:\\.[^.]{0,%d})?\\Z" % (HASH_CHARS, MAX_EXT_CHARS)
_LOOKS_SHORTENED = re.compile("~(?=" + _SHORT_TAIL + ")", re.DOTALL)
_PERCENT_TRIPLE = re.compile("%([0-9A-F]{2})")
# Anything that steps 1, 3 or 4 would touch (any surrogate, to reach _path_bytes' check).
_NEEDS_WORK = re.compile('[%\\\\:*?"<>|\x00-\x1f\x7f~\u2215\ud800-\udfff]')


def _tokens(rel_path: str) -> list[str]:
    """One encoded token per character of ``rel_path`` (steps 1 and 2)."""
    tokens = []
    for ch in rel_path:
        if ch == "/":
            tokens.append(SEPARATOR)
        elif ch in _ENCODED_CHARS:
            tokens.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        elif "\udc80" <= ch <= "\udcff":
            tokens.append(f"%{ord(ch) - 0xDC00:02X}")
        else:
            tokens.append(ch)
    return tokens


def _path_bytes(rel_path: str) -> bytes:
    """The bytes ``rel_path`` stands for; ValueError if no file system could have named it.

    Only strings that ``os.fsdecode`` can produce are accepted: other lone surrogates,
    or escaped bytes that together form valid UTF-8, would make two paths share a name.
    """
    try:
        raw = rel_path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"not a file-system path string: {rel_path!r}") from None
    if raw.decode("utf-8", "surrogateescape") != rel_path:
        raise ValueError(f"not a file-system path string: {rel_path!r}")
    return raw


def document_name(rel_path: str) -> str:
    """The Dify document name for ``rel_path`` (POSIX separators, surrogate escapes allowed).

    Raises ValueError only for strings ``os.fsdecode`` cannot produce (see :func:`_path_bytes`).
    """
    if len(rel_path) <= MAX_NAME_CHARS and not _NEEDS_WORK.search(rel_path):
        # The common case, taken 100k times per pass on a big tree: nothing to encode.
        return rel_path.replace("/", SEPARATOR)
    raw = _path_bytes(rel_path)
    tokens = _tokens(rel_path)
    name = _LOOKS_SHORTENED.sub("%7E", "".join(tokens))
    if len(name) <= MAX_NAME_CHARS:
        return name

    last = name.rsplit(SEPARATOR, 1)[-1]
    ext = last.rsplit(".", 1)[1] if "." in last else None
    suffix = "." + ext if ext is not None and len(ext) <= MAX_EXT_CHARS else ""
    digest = hashlib.sha256(raw).hexdigest()[:HASH_CHARS]
    budget = MAX_NAME_CHARS - 1 - HASH_CHARS - len(suffix)
    head_parts: list[str] = []
    used = 0
    for token in tokens:  # cut between encoded characters, never inside a %XX run
        if used + len(token) > budget:
            break
        head_parts.append(token)
        used += len(token)
    return "".join(head_parts) + "~" + digest + suffix


def rel_path_from_name(name: str) -> str | None:
    """The relative path whose document name is ``name``, or None.

    None for shortened names (their path cannot be recovered: match those by the
    state DB, or by recomputing :func:`document_name` of candidate paths) and for
    names this module would never produce (lower-case hex, stray ``%``, ``/``...).
    """
    buf = bytearray()
    pos = 0
    while pos < len(name):
        ch = name[pos]
        if ch == "%":
            m = _PERCENT_TRIPLE.match(name, pos)
            if m is None:
                return None
            buf.append(int(m.group(1), 16))
            pos = m.end()
            continue
        try:
            buf += ("/" if ch == SEPARATOR else ch).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in the name itself
            return None
        pos += 1
    rel_path = bytes(buf).decode("utf-8", "surrogateescape")
    try:
        if document_name(rel_path) != name:
            return None
    except ValueError:
        return None
    return rel_path
