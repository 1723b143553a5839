"""Splitting a text file into the chunks that become its Dify segments, one segment each.

For segment-level sync difysync splits a file itself, uploads it by text with the chunks
joined by a separator (and a custom process rule that splits at that separator), and
later updates, adds and deletes segments one chunk at a time. That only works if the
server turns every chunk into exactly one segment, so the rules below are shaped by what
Dify (1.14.1) does to a create-by-text: it cleans the text (deletes control characters,
and by a quirk the characters ``ï ¿ ¾``), splits at the separator, splits again any
piece longer than ``max_tokens`` characters, removes each piece's leading punctuation
(``## Third`` -> ``Third``), strips it, and drops the pieces left empty.

The algorithm, in plain words:

1. Line endings become ``\\n`` (``\\r\\n`` and a lone ``\\r``); a byte-order mark at the
   very start is dropped.
2. Markdown only: the text is cut before every ATX heading line (up to three spaces,
   one to six ``#``, then a space, a tab or the end of the line) that is not inside a
   fenced code block (CommonMark fences: three or more backticks or tildes, closed by a
   line of the same character at least as long; an unclosed fence runs to the end). The
   text before the first heading is a section of its own. Setext headings, and headings
   inside block quotes or list items, do not cut; a ``#`` line inside an HTML block
   does (CommonMark would not call it a heading). Plain text is one section.
3. A section that fits the budget is one chunk. A longer one is cut at blank lines: its
   paragraphs (a fenced code block, blank lines and all, belongs whole to its
   paragraph) are packed greedily from the start of the section, as many consecutive
   paragraphs per chunk as fit. A paragraph longer than the budget is packed the same
   way by lines, and a line longer than the budget is cut every ``budget`` characters.
   Because packing starts afresh at each heading and runs from the front, an edit in one
   section changes only that section's chunks, and an edit late in a long section
   leaves its earlier chunks alone.
4. A piece with no letter or digit the server keeps (see :func:`content_key`) would
   vanish on the server, so it is glued to its neighbour before packing, at every
   level: to the piece before it, or to the one after it when it comes first. A
   section with none at all is glued to the previous section's last chunk (the next
   section's first, for the first section); a text with none gives no chunks.

Every chunk is an exact slice of the normalised text: no blank line at its start and no
whitespace at its end (the first line keeps its indentation), nothing changed inside.
Between chunks lies only whitespace. A chunk is at most ``budget`` characters, with one
exception: glued punctuation. Where text without a letter or digit cannot be packed
with a neighbour (a rule line after a line that just fits, a long run of symbols), the
chunk carries it anyway and is longer than the budget; what lies between its first and
its last letter or digit is still within the budget.

No I/O here; standard library only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_LOCAL_TYPES",
    "MARKDOWN_SUFFIXES",
    "MAX_BUDGET",
    "MIN_BUDGET",
    "SERVER_MAX_TOKENS",
    "chunk_digest",
    "chunks_of",
    "content_key",
    "join_chunks",
    "max_tokens_for",
    "separator_for",
    "split_markdown",
    "split_plain",
]

DEFAULT_BUDGET = 500
DEFAULT_LOCAL_TYPES = frozenset({"md", "markdown", "mdx", "txt"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdx"})
MIN_BUDGET = 50      # Dify refuses a max_tokens below 50 ...
MAX_BUDGET = 3999    # ... and above 4000, and max_tokens must exceed the budget
SERVER_MAX_TOKENS = 4000

_Span = tuple[int, int]  # [start, end) in the normalised text
_Splitter = Callable[[str, _Span, int], list[_Span]]

_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t]|\Z)")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_FENCE_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")
# Characters the server removes from text it keeps, so they never count as content:
# its cleaner's class [\xEF\xBF\xBE] (meant as the bytes of U+FFFE) deletes ï ¿ ¾, and
# its leading-symbol stripper takes these three blocks, which hold a few "alphanumeric"
# characters (〇, the Hangzhou numerals, ⸯ).
_NOT_CONTENT = re.compile("[\u00be\u00bf\u00ef\ufffe\u2000-\u206f\u2e00-\u2e7f\u3000-\u303f]")
# The server's default cleaning, which runs on the joined text before it is split.
_CLEANER_DELETES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u00ef\u00bf\u00be\ufffe]")
_MARKER = "<!--difysync-chunk{}-->"


def split_markdown(text: str, budget: int) -> list[str]:
    """Chunks of a Markdown text: one per section (heading), longer sections packed
    by paragraphs, lines, then characters; see the module docstring."""
    return _split(text, budget, markdown=True)


def split_plain(text: str, budget: int) -> list[str]:
    """Chunks of a plain text: paragraphs packed greedily, then lines, then characters."""
    return _split(text, budget, markdown=False)


def chunks_of(rel_path: str, text: str, budget: int) -> list[str]:
    """The chunks of a file: Markdown rules for .md, .markdown and .mdx (any case), plain
    otherwise. The path only chooses the rules; nothing is read."""
    markdown = PurePosixPath(rel_path).suffix.lower() in MARKDOWN_SUFFIXES
    return _split(text, budget, markdown=markdown)


def separator_for(chunks: Sequence[str]) -> str:
    """The separator to join ``chunks`` with: ``\\n\\n<!--difysync-chunk-->\\n\\n``, or
    the first of ``<!--difysync-chunk-1-->``, ``-2``, ... that no chunk contains.

    An HTML comment is invisible in rendered Markdown and self-explaining in plain text.
    It is printable ASCII and newlines only, with no backslash (the server unescapes the
    separator) and no ``<|`` or ``|>`` (its cleaner rewrites those). The marker is looked
    for in each chunk both as sent and as the server's cleaner leaves it (which deletes
    characters and so can form a marker), so the server's split finds exactly the
    joins. The newlines around it are harmless: the server strips every piece.
    """
    texts = [t for chunk in chunks for t in (chunk, _server_clean(chunk))]
    n = 0
    while True:
        marker = _MARKER.format(f"-{n}" if n else "")
        if not any(marker in t for t in texts):
            return f"\n\n{marker}\n\n"
        n += 1


def join_chunks(chunks: Sequence[str], separator: str) -> str:
    """The text to create the document from; ValueError if a chunk holds the separator
    (the server would then split that chunk in two)."""
    for i, chunk in enumerate(chunks):
        if separator in chunk:
            raise ValueError(f"chunk {i} contains the separator")
    return separator.join(chunks)


def chunk_digest(chunk: str) -> str:
    """SHA-256 (hex) of the chunk's UTF-8 bytes: how a chunk is recognised unchanged."""
    return hashlib.sha256(chunk.encode("utf-8")).hexdigest()


def content_key(text: str) -> str:
    """The letters and digits of ``text`` that the server keeps, casefolded.

    After a create-by-text the server's segments must be paired with the chunks sent,
    but the server does not store a chunk verbatim: it strips whitespace and leading
    punctuation (``## Setup`` is stored as ``Setup``), deletes control characters and
    ``ï ¿ ¾``, may collapse spaces, and rewrites ``<|`` and ``|>``. All of that touches
    only characters this key leaves out, so a chunk and what the server stores for it
    have the same key. Casefolding makes the key blind to case as well; pairing is by
    position, so the key only has to tell a chunk from its neighbours. A chunk whose key
    is empty would be dropped by the server, which is why no chunk has one.
    """
    return "".join(ch for ch in _NOT_CONTENT.sub("", text) if ch.isalnum()).casefold()


def max_tokens_for(budget: int) -> int:
    """The process rule's ``max_tokens`` for chunks of ``budget`` characters: above the
    budget, so the server never splits a chunk again, with room for glued punctuation
    (twice the budget), but no more than the server's 4000."""
    if not MIN_BUDGET <= budget <= MAX_BUDGET:
        raise ValueError(f"budget must be {MIN_BUDGET}..{MAX_BUDGET} characters, not {budget}")
    return max(budget + 1, min(SERVER_MAX_TOKENS, 2 * budget))


# --- the splitting -------------------------------------------------------------------

def _split(text: str, budget: int, *, markdown: bool) -> list[str]:
    """Normalise, cut into sections, pack each, then glue any section without content
    to a neighbour; a text without content gives nothing."""
    if budget < 1:
        raise ValueError(f"budget must be positive, not {budget}")
    text = _normalise(text)
    lines = _line_spans(text, 0, len(text))
    fenced = _fence_flags(text, lines) if markdown else [False] * len(lines)
    sections = _sections(text, lines, fenced) if markdown else [(0, len(lines))]
    spans: list[_Span] = []
    for first, stop in sections:
        spans.extend(_split_section(text, lines[first:stop], fenced[first:stop], budget))
    chunks = [text[s:e] for s, e in _glue(text, spans)]
    return [c for c in chunks if _has_content(c)]


def _normalise(text: str) -> str:
    """One line ending (as Python's universal newlines would read the file), no BOM."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.removeprefix("\ufeff")


def _line_spans(text: str, start: int, end: int) -> list[_Span]:
    """The lines of ``text[start:end]``, each without its ``\\n``."""
    spans = []
    while True:
        nl = text.find("\n", start, end)
        if nl < 0:
            spans.append((start, end))
            return spans
        spans.append((start, nl))
        start = nl + 1


def _fence_flags(text: str, lines: list[_Span]) -> list[bool]:
    """For each line, whether it belongs to a fenced code block (fence lines included).

    CommonMark's rules: an opening fence is 3+ backticks or tildes after at most three
    spaces (a backtick fence's info string holds no backtick); the closing fence is the
    same character, at least as many, followed only by spaces or tabs.
    """
    flags = []
    fence: tuple[str, int] | None = None
    for s, e in lines:
        line = text[s:e]
        if fence is None:
            m = _FENCE_OPEN.match(line)
            if m and not (m.group(1)[0] == "`" and "`" in m.group(2)):
                fence = (m.group(1)[0], len(m.group(1)))
            flags.append(fence is not None)
        else:
            flags.append(True)
            m = _FENCE_CLOSE.fullmatch(line)
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= fence[1]:
                fence = None
    return flags


def _sections(text: str, lines: list[_Span], fenced: list[bool]) -> list[tuple[int, int]]:
    """Line ranges [first, stop): the text before the first heading, then one range per
    heading outside code fences."""
    starts = [0] + [
        i for i, (s, e) in enumerate(lines) if i and not fenced[i] and _HEADING.match(text, s, e)
    ]
    return list(zip(starts, starts[1:] + [len(lines)]))


def _split_section(text: str, lines: list[_Span], fenced: list[bool], budget: int) -> list[_Span]:
    """A section's pieces: its paragraphs, glued and packed (the whole section when it
    fits). A blank line inside a code fence does not end a paragraph."""
    blocks: list[_Span] = []
    start: int | None = None
    end = 0
    for (s, e), in_fence in zip(lines, fenced):
        if in_fence or text[s:e].strip():
            start = s if start is None else start
            end = e
        elif start is not None:
            blocks.append((start, end))
            start = None
    if start is not None:
        blocks.append((start, end))
    units = [t for t in (_trim(text, b) for b in blocks) if t]
    return _pack(text, _glue(text, units), budget, _split_block)


def _split_block(text: str, span: _Span, budget: int) -> list[_Span]:
    """An over-budget paragraph's pieces: its non-blank lines, glued and packed."""
    lines = [t for t in (_trim(text, ln) for ln in _line_spans(text, *span)) if t]
    return _pack(text, _glue(text, lines), budget, _hard_cut)


def _hard_cut(text: str, span: _Span, budget: int) -> list[_Span]:
    """An over-budget line cut every ``budget`` characters (the last resort), glued."""
    start, end = span
    cuts = [_trim(text, (i, min(i + budget, end))) for i in range(start, end, budget)]
    return _glue(text, [c for c in cuts if c])


def _pack(text: str, units: list[_Span], budget: int, split_big: _Splitter) -> list[_Span]:
    """Greedy packing from the front: each piece takes consecutive units while the span
    from its first to its last fits the budget; a unit too big alone is split by
    ``split_big`` and stands apart. Units are trimmed, so a span's length is its size."""
    pieces: list[_Span] = []
    current: _Span | None = None
    for s, e in units:
        if e - s > budget:
            if current is not None:
                pieces.append(current)
                current = None
            pieces.extend(split_big(text, (s, e), budget))
        elif current is not None and e - current[0] <= budget:
            current = (current[0], e)
        else:
            if current is not None:
                pieces.append(current)
            current = (s, e)
    if current is not None:
        pieces.append(current)
    return pieces


def _glue(text: str, spans: list[_Span]) -> list[_Span]:
    """Spans without content joined to the one before (the leading ones to the first
    span with content); if none has content, one span covering them all."""
    out: list[_Span] = []
    lead: int | None = None
    for s, e in spans:
        if not _has_content(text[s:e]):
            if out:
                out[-1] = (out[-1][0], e)
            elif lead is None:
                lead = s
            continue
        if lead is not None:
            s, lead = lead, None
        out.append((s, e))
    if lead is not None:
        out.append((lead, spans[-1][1]))
    return out


def _trim(text: str, span: _Span) -> _Span | None:
    """``span`` without leading whitespace-only lines and trailing whitespace; None if
    nothing is left."""
    start, end = span
    piece = text[start:end]
    kept = piece.rstrip()
    if not kept:
        return None
    first = len(kept) - len(kept.lstrip())
    line_start = kept.rfind("\n", 0, first) + 1
    return (start + line_start, start + len(kept))


def _has_content(piece: str) -> bool:
    """Whether the server would keep ``piece`` as a segment: it has a letter or digit
    that survives cleaning and leading-symbol stripping (the same test as a non-empty
    :func:`content_key`, stopping at the first one)."""
    return any(ch.isalnum() and not _NOT_CONTENT.match(ch) for ch in piece)


def _server_clean(text: str) -> str:
    """What the server's default cleaning makes of ``text``, in its order."""
    text = text.replace("<|", "<").replace("|>", ">")
    return _CLEANER_DELETES.sub("", text)
