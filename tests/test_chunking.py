"""How difysync splits a text file into chunks (one Dify segment each): the rules by
example first, then the properties every split keeps, checked with hypothesis."""

from __future__ import annotations

import codecs
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difysync.chunking import (
    DEFAULT_BUDGET,
    DEFAULT_LOCAL_TYPES,
    chunk_digest,
    chunks_of,
    content_key,
    join_chunks,
    max_tokens_for,
    separator_for,
    split_markdown,
    split_plain,
)

FAST = settings(max_examples=60, deadline=None)


def para(tag: str, n: int) -> str:
    """A one-line paragraph of exactly ``n`` characters that starts with ``tag``."""
    return (tag + " " + "w" * n)[:n]


# --- a model of what Dify 1.14.1 does to a create-by-text ----------------------------

_LEADING_SYMBOLS = re.compile(
    r"^[\u2000-\u206F\u2E00-\u2E7F\u3000-\u303F!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]+"
)


def dify_segments(text: str, separator: str, max_tokens: int, extra_spaces: bool = False) -> list[str]:
    """The segments the server keeps: clean, split at the separator, then per piece
    drop leading punctuation, strip, and drop the empty ones. A piece over max_tokens
    would be split again, which must never happen to our chunks."""
    text = re.sub(r"<\|", "<", text)
    text = re.sub(r"\|>", ">", text)
    text = re.sub(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\xEF\xBF\xBE]", "", text)
    text = text.replace("\ufffe", "")
    if extra_spaces:  # the optional pre-processing rule remove_extra_spaces
        text = re.sub(r"\n{3,}", "\n\n", text)
        text = re.sub(r"[\t\f\r\x20\u00a0\u1680\u180e\u2000-\u200a\u202f\u205f\u3000]{2,}", " ", text)
    separator = codecs.decode(separator.replace("\\n", "\n"), "unicode_escape")
    pieces = text.split(separator)
    assert all(len(p) <= max_tokens for p in pieces), "the server would split a chunk again"
    kept = (_LEADING_SYMBOLS.sub("", p).strip() for p in pieces if p.strip())
    return [p for p in kept if p]


# --- sections: headings --------------------------------------------------------------

def test_a_document_of_thirty_sections_gives_its_thirty_chunks_in_order():
    sections = [f"## Section {i}\n\nThe text of section {i}.\n\n- item {i}" for i in range(30)]
    assert split_markdown("\n\n".join(sections) + "\n", DEFAULT_BUDGET) == sections


def test_every_atx_level_starts_a_section():
    text = "\n".join(f"{'#' * n} Level {n}\nbody {n}" for n in range(1, 7))
    assert split_markdown(text, 500) == [f"{'#' * n} Level {n}\nbody {n}" for n in range(1, 7)]


@pytest.mark.parametrize("line", ["#hashtag here", "####### seven hashes", "    # four spaces: code", "\\# escaped"])
def test_lines_that_are_not_headings_do_not_split(line):
    text = f"# Title\nintro\n{line}\nmore"
    assert split_markdown(text, 500) == [text]


@pytest.mark.parametrize("line", ["# one space", "#\ttab", "   # three spaces", "## closing ##", "#"])
def test_lines_that_are_headings_split(line):
    chunks = split_markdown(f"Intro text\n{line}\nbody", 500)
    assert chunks == ["Intro text", f"{line}\nbody"]


def test_text_before_the_first_heading_is_its_own_chunk():
    assert split_markdown("Preamble.\n\n# First\nOne.", 500) == ["Preamble.", "# First\nOne."]


def test_headings_inside_backtick_and_tilde_fences_do_not_split():
    for fence in ("```", "~~~", "````"):
        text = f"# Code\n{fence}python\n# a comment\n\n## another\n{fence}\n# Next\nafter"
        assert split_markdown(text, 500) == [text.split("\n# Next")[0], "# Next\nafter"]


def test_a_fence_closes_only_with_its_own_character_at_least_as_long():
    text = "# A\n````\n```\n~~~\n# inside\n````\n# B\nb"
    assert split_markdown(text, 500) == ["# A\n````\n```\n~~~\n# inside\n````", "# B\nb"]


def test_a_backtick_line_whose_info_string_has_a_backtick_is_no_fence():
    assert split_markdown("# A\n``` a`b\n# B\nb", 500) == ["# A\n``` a`b", "# B\nb"]


def test_an_unclosed_fence_runs_to_the_end():
    text = "# A\n```\ncode\n# not a heading\n\n# nor this"
    assert split_markdown(text, 500) == [text]


def test_chunks_of_chooses_markdown_rules_by_suffix_in_any_case():
    text = "# A\na\n# B\nb"
    for path in ("x.md", "dir/READ.ME.MD", "y.markdown", "z.mdx", "z.MdX"):
        assert chunks_of(path, text, 500) == ["# A\na", "# B\nb"], path
    for path in ("notes.txt", "md", "x.md.txt", ".md"):
        assert chunks_of(path, text, 500) == [text], path


# --- packing under the budget --------------------------------------------------------

def test_a_long_section_is_packed_greedily_at_blank_lines():
    p = [para(f"p{i}", 20) for i in range(5)]
    text = "\n\n".join(p)
    assert split_markdown(text, 50) == [f"{p[0]}\n\n{p[1]}", f"{p[2]}\n\n{p[3]}", p[4]]
    assert split_plain(text, 50) == [f"{p[0]}\n\n{p[1]}", f"{p[2]}\n\n{p[3]}", p[4]]


def test_a_paragraph_over_budget_is_packed_by_lines():
    lines = [para(f"l{i}", 20) for i in range(5)]
    text = "# Head\n\n" + "\n".join(lines)
    assert split_markdown(text, 50) == [
        "# Head", f"{lines[0]}\n{lines[1]}", f"{lines[2]}\n{lines[3]}", lines[4],
    ]


def test_a_line_over_budget_is_cut_every_budget_characters():
    line = "".join(chr(ord("a") + i % 26) for i in range(120))
    assert split_plain(line, 50) == [line[:50], line[50:100], line[100:]]


def test_a_code_block_that_fits_is_one_chunk_even_with_blank_lines_inside():
    code = "```\n" + "\n\n".join(f"step_{i}()" for i in range(6)) + "\n```"
    text = f"# Build\n\n{para('intro', 40)}\n\n{code}\n\n{para('after', 40)}"
    assert len(code) <= 80 < len(text)
    assert split_markdown(text, 80) == [f"# Build\n\n{para('intro', 40)}", code, para("after", 40)]


def test_a_code_block_over_budget_is_split_at_line_ends():
    body = [f"call_number_{i:02}()" for i in range(8)]  # 16 characters each
    code = "```\n" + "\n".join(body) + "\n```"
    chunks = split_markdown(code, 40)
    assert chunks == ["```\n" + "\n".join(body[0:2]), *("\n".join(body[i:i + 2]) for i in (2, 4)),
                      "\n".join(body[6:8]) + "\n```"]


def test_plain_text_splits_only_at_blank_lines_and_never_at_headings():
    text = "# not special\nline two\n\nsecond paragraph"
    assert split_plain(text, 500) == [text]
    assert split_plain(text, 30) == ["# not special\nline two", "second paragraph"]


def test_an_edit_late_in_a_long_section_leaves_its_earlier_chunks_alone():
    p = [para(f"p{i}", 30) for i in range(9)]
    before = split_markdown("# Long\n\n" + "\n\n".join(p), 100)
    p[-1] = para("changed", 90)
    after = split_markdown("# Long\n\n" + "\n\n".join(p), 100)
    assert after[: len(before) - 1] == before[:-1]
    assert after != before


# --- what a chunk looks like ---------------------------------------------------------

def test_chunks_have_no_surrounding_blank_lines_or_trailing_whitespace_and_keep_the_inside():
    text = "\n  \n  indented first line  \nhard break  \nnext\t \n\n \n"
    assert split_plain(text, 500) == ["  indented first line  \nhard break  \nnext"]


def test_line_endings_are_normalised_and_a_leading_bom_dropped():
    assert split_markdown("\ufeff# A\r\na\r\n# B\rb\r\n", 500) == ["# A\na", "# B\nb"]


@pytest.mark.parametrize("text", ["", " ", "\n\n\t\n", "\r\n"])
def test_empty_or_blank_text_gives_no_chunks(text):
    assert split_markdown(text, 500) == split_plain(text, 500) == []


def test_a_text_without_a_letter_or_digit_gives_no_chunks():
    assert split_markdown("---\n\n# 🚀\n\n***", 500) == []


def test_a_piece_without_letter_or_digit_joins_its_neighbour():
    # A rule line that would start a chunk of its own joins the chunk before it.
    text = f"{para('a', 40)}\n\n{'-' * 20}\n\n{para('b', 40)}"
    assert split_plain(text, 62) == [f"{para('a', 40)}\n\n{'-' * 20}", para("b", 40)]
    # First in its section, it joins the chunk after it, even if that one must then be cut.
    body = para("body", 60)
    assert split_markdown(f"# 🚀\n\n{body}", 500) == [f"# 🚀\n\n{body}"]
    assert split_markdown(f"# 🚀\n\n{body}", 60) == [f"# 🚀\n\n{body[:55]}", body[55:]]


def test_a_section_without_letter_or_digit_joins_the_previous_section():
    text = "# A\na\n## ---\n\n***\n# B\nb"
    assert split_markdown(text, 500) == ["# A\na\n## ---\n\n***", "# B\nb"]
    assert split_markdown("## ***\n# B\nb", 500) == ["## ***\n# B\nb"]


def test_characters_the_server_deletes_do_not_count_as_content():
    # Dify's cleaner deletes ï ¿ ¾ (a byte class applied to characters), and strips 〇
    # as leading punctuation: alone, they would leave the server an empty segment.
    assert split_plain("ï ¾ 〇", 500) == []
    assert split_plain("a\n\n¾", 3) == ["a\n\n¾"]


def test_glued_punctuation_is_the_one_way_past_the_budget():
    text = "word\n" + "-" * 80
    assert split_plain(text, 50) == [text]


# --- content keys, digests, the separator, max_tokens ---------------------------------

def test_content_key_matches_what_the_server_stores():
    assert content_key("## Setup\n\nRun  it!") == content_key("Setup\n\nRun it!") == "setuprunit"
    assert content_key("naïve ¾ 〇 中文") == "nave中文"
    assert content_key("---") == ""


def test_chunk_digest_is_sha256_of_utf8():
    assert chunk_digest("中") == hashlib.sha256("中".encode()).hexdigest()


def test_the_separator_is_an_html_comment_unless_a_chunk_holds_it():
    assert separator_for(["a", "b"]) == "\n\n<!--difysync-chunk-->\n\n"
    assert separator_for(["see <!--difysync-chunk-->"]) == "\n\n<!--difysync-chunk-1-->\n\n"
    # The server's cleaner deletes \x00 and rewrites "<|": neither may form the marker.
    assert separator_for(["<!--difysync-\x00chunk-->"]) == "\n\n<!--difysync-chunk-1-->\n\n"
    assert separator_for(["<|!--difysync-chunk-->"]) == "\n\n<!--difysync-chunk-1-->\n\n"


def test_join_chunks_refuses_a_chunk_that_holds_the_separator():
    assert join_chunks(["a", "b"], "\n\n<!--x-->\n\n") == "a\n\n<!--x-->\n\nb"
    with pytest.raises(ValueError):
        join_chunks(["a\n\n<!--x-->\n\nb"], "\n\n<!--x-->\n\n")


@pytest.mark.parametrize(("budget", "max_tokens"), [(50, 100), (500, 1000), (2000, 4000), (3999, 4000)])
def test_max_tokens_is_above_the_budget_and_at_most_4000(budget, max_tokens):
    assert max_tokens_for(budget) == max_tokens


@pytest.mark.parametrize("budget", [49, 4000, 0, -1])
def test_max_tokens_refuses_a_budget_out_of_range(budget):
    with pytest.raises(ValueError):
        max_tokens_for(budget)


def test_defaults():
    assert DEFAULT_BUDGET == 500
    assert DEFAULT_LOCAL_TYPES == frozenset({"md", "markdown", "mdx", "txt"})


# --- properties ------------------------------------------------------------------------

word = st.text(alphabet="abcdxyzABC0123éÉ中文", min_size=1, max_size=9)
line = st.lists(word, min_size=1, max_size=8).map(" ".join)
prose = st.lists(line, min_size=1, max_size=4).map("\n".join)
symbols = st.sampled_from(["---", "***", "🚀", "| --- | --- |", "> ...", "- - -"])
code = st.lists(st.sampled_from(["x = 1", "# comment", "", "    return y", "## not a heading"]),
                max_size=5).map(lambda body: "\n".join(["```py", *body, "```"]))
heading = st.builds(lambda n, title: "#" * n + " " + title, st.integers(1, 6), st.one_of(line, symbols))
body = st.lists(st.one_of(prose, prose, symbols, code), max_size=5).map("\n\n".join)


@st.composite
def sections(draw) -> str:
    """A heading and its body, with a letter or digit somewhere, and fences closed."""
    text = draw(heading) + "\n\n" + draw(body)
    return text if content_key(text) else text + "\n\n" + draw(prose)


# Anything at all: heading-, fence- and rule-like lines, odd spaces and line endings.
LINES = ["# A", "## ", "#", "#x", "```", "~~~", "````", "``` a`", "", " ", "  \t", "text here",
         "---", "    # indented", "x" * 60, "-" * 70, "a b ï ¾ 〇", "🚀🚀", "中文字", "<|", "|>"]
any_text = st.one_of(
    st.lists(st.sampled_from(LINES), max_size=25).map("\n".join),
    st.text(alphabet=list("ab中 #`~-*\n\n\n\r\t!ï🚀<|>\x00\ufeff"), max_size=300),
)
budgets = st.integers(1, 80)


def stretch(chunk: str) -> int:
    """From the first letter or digit the server keeps to the last, in characters."""
    at = [i for i, ch in enumerate(chunk) if content_key(ch)]
    return at[-1] - at[0] + 1


def normalised(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.removeprefix("\ufeff")


def squeeze(text: str) -> str:
    return "".join(text.split())


split_either = st.sampled_from([split_markdown, split_plain])


@FAST
@given(split_either, any_text, budgets)
def test_every_chunk_has_content_and_fits_the_budget_but_for_glued_punctuation(split, text, budget):
    for chunk in split(text, budget):
        assert content_key(chunk)                                  # (b) never empty, never dropped
        assert chunk == chunk.rstrip() and chunk.split("\n")[0].strip()
        assert len(chunk) <= budget or stretch(chunk) <= budget    # (a) the documented exception


prose_section = st.builds(lambda n, title, text: "#" * n + " " + title + "\n\n" + text,
                          st.integers(1, 6), line, st.lists(prose, max_size=4).map("\n\n".join))


@FAST
@given(st.lists(prose_section, min_size=1, max_size=6), st.integers(8, 80))
def test_chunks_of_ordinary_markdown_never_exceed_the_budget(secs, budget):
    for chunk in split_markdown("\n\n".join(secs), budget):     # (a) nothing to glue here
        assert len(chunk) <= budget


@FAST
@given(split_either, any_text, budgets)
def test_nothing_is_lost_or_doubled_only_whitespace_lies_between_chunks(split, text, budget):
    chunks = split(text, budget)
    source = normalised(text)
    if content_key(source):
        assert squeeze("".join(chunks)) == squeeze(source)        # (c)
    pos = 0
    for chunk in chunks:                                           # exact slices, in order
        at = source.find(chunk, pos)
        assert at >= 0 and not source[pos:at].strip()
        pos = at + len(chunk)
    assert not source[pos:].strip() or not chunks and not content_key(source)


@FAST
@given(st.lists(sections(), min_size=2, max_size=6), st.data(), st.integers(20, 200))
def test_editing_one_section_changes_only_that_sections_chunks(secs, data, budget):
    k = data.draw(st.integers(0, len(secs) - 1))
    edited = data.draw(sections())

    def doc(parts: list[str]) -> list[str]:
        return split_markdown("\n\n".join(parts), budget) if parts else []

    head, tail = doc(secs[:k]), doc(secs[k + 1:])               # (d)
    assert split_markdown("\n\n".join(secs), budget) == head + doc([secs[k]]) + tail
    edited_doc = "\n\n".join(secs[:k] + [edited] + secs[k + 1:])
    assert split_markdown(edited_doc, budget) == head + doc([edited]) + tail


chunk_lists = st.lists(st.one_of(
    st.text(max_size=40),
    st.sampled_from(["<!--difysync-chunk-->", "<!--difysync-chunk-1-->", "<!--difysync-\x00chunk-2-->",
                     "<|!--difysync-chunk-3-->", "\n\n<!--difysync-chunk-->\n\n"]),
), max_size=6)


@FAST
@given(chunk_lists)
def test_the_separator_is_printable_ascii_and_in_no_chunk(chunks):
    sep = separator_for(chunks)                                    # (e)
    assert all(ch == "\n" or " " <= ch <= "~" for ch in sep) and "\\" not in sep
    assert not any(sep in c for c in chunks)
    assert join_chunks(chunks, sep).split(sep) == (chunks or [""])
    assert separator_for(tuple(chunks)) == sep                     # (f) deterministic


@FAST
@given(split_either, any_text, budgets)
def test_splitting_is_deterministic(split, text, budget):
    assert split(text, budget) == split(text, budget)              # (f)


@FAST
@given(split_either, any_text, st.integers(50, 120), st.booleans())
def test_the_server_keeps_one_segment_per_chunk_with_the_same_content_key(split, text, budget, extra_spaces):
    chunks = split(text * 3, budget)
    if any(len(c) > max_tokens_for(budget) for c in chunks):
        return  # only long runs of glued punctuation get here
    sep = separator_for(chunks)
    stored = dify_segments(join_chunks(chunks, sep), sep, max_tokens_for(budget), extra_spaces)
    assert [content_key(s) for s in stored] == [content_key(c) for c in chunks]
