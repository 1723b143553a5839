"""The path <-> document name mapping: examples first, then the properties it must keep."""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difysync.naming import MAX_NAME_CHARS, document_name, rel_path_from_name

FORBIDDEN = set('/\\:*?"<>|')

# Byte pieces chosen to hit every rule: encoded characters, the separator substitute,
# text that looks like an escape or a shortened tail, multi-byte UTF-8, invalid bytes.
PIECES = [
    b"a", b"Z", b"0", b"f", b" ", b".", b"md", b"~", b"%", b"%2F", b"%E2%88%95",
    b"\\", b":", b"*", b"?", b'"', b"<", b">", b"|", b"\x00", b"\n", b"\x1f", b"\x7f",
    "\u2215".encode(), "é".encode(), "中".encode(), "😀".encode(), "e\u0301".encode(),
    b"\xff", b"\xc3", b"\xa9", b"\xed\xa0\x80", b"~0123456789abcdef", b".PDF",
]
components = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map(b"".join)
short_paths = st.lists(components, min_size=1, max_size=5).map(lambda c: os.fsdecode(b"/".join(c)))
long_prefix = "shared/" * 43  # 301 characters
long_paths = short_paths.map(lambda p: long_prefix + p)
paths = st.one_of(short_paths, long_paths)
extensions = st.sampled_from(["md", "MD", "Markdown", "pdf", "x%y", "docx", "a" * 16])


def test_separator_becomes_division_slash():
    assert document_name("guides/install.md") == "guides\u2215install.md"


def test_forbidden_characters_are_percent_encoded():
    assert document_name("a:b?.md") == "a%3Ab%3F.md"
    assert document_name('q"<>|*\\.md') == "q%22%3C%3E%7C%2A%5C.md"


def test_percent_and_the_substitute_slash_are_encoded_so_they_stay_distinct():
    assert document_name("100%.md") == "100%25.md"
    assert document_name("a\u2215b.md") == "a%E2%88%95b.md"
    assert document_name("a%2Fb.md") == "a%252Fb.md"


def test_control_characters_are_encoded():
    assert document_name("line\nbreak\x7f.md") == "line%0Abreak%7F.md"


def test_undecodable_byte_becomes_its_own_escape():
    given_path = os.fsdecode(b"caf\xe9.md")
    assert document_name(given_path) == "caf%E9.md"
    assert rel_path_from_name("caf%E9.md") == given_path


def test_readable_text_is_kept_as_is():
    assert document_name("Société/年报 2024 (v2).md") == "Société\u2215年报 2024 (v2).md"


def test_tilde_that_mimics_a_shortened_tail_is_escaped():
    assert document_name("x~0123456789.md") == "x%7E0123456789.md"
    assert document_name("backup~.md") == "backup~.md"


def test_long_path_is_shortened_with_hash_and_extension():
    given_path = "d/" * 150 + "notes.md"
    name = document_name(given_path)
    digest = hashlib.sha256(given_path.encode()).hexdigest()[:10]
    assert len(name) <= MAX_NAME_CHARS
    assert name.endswith(f"~{digest}.md")
    assert name.startswith("d\u2215d\u2215")
    assert rel_path_from_name(name) is None


def test_shortening_never_cuts_inside_an_escape():
    given_path = "x" * 150 + ":" * 100 + ".md"
    name = document_name(given_path)
    head = name.rsplit("~", 1)[0]
    assert re.fullmatch(r"x{150}(%3A)*", head)


def test_long_extension_is_not_kept():
    name = document_name("y" * 300 + ".averyveryverylongextension")
    assert re.fullmatch(r"y+~[0-9a-f]{10}", name)


def test_strings_no_file_system_can_produce_are_refused():
    with pytest.raises(ValueError):
        document_name("\ud800.md")  # a high surrogate never comes from os.fsdecode
    with pytest.raises(ValueError):
        document_name("\udcc3\udca9.md")  # escaped bytes that are valid UTF-8 ("é")


@pytest.mark.parametrize("name", ["a/b.md", "a%2f.md", "a%.md", "a%4.md", "a:b.md", "a%7Ebackup.md"])
def test_names_we_never_produce_have_no_path(name):
    assert rel_path_from_name(name) is None


@given(paths)
def test_name_is_short_and_free_of_forbidden_characters(path):
    name = document_name(path)
    assert len(name) <= MAX_NAME_CHARS
    assert not FORBIDDEN & set(name)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    name.encode("utf-8")  # no lone surrogates reach the server


@given(paths)
def test_name_is_deterministic(path):
    assert document_name(path) == document_name(str(path))


@given(paths)
def test_round_trip_for_names_not_shortened(path):
    name = document_name(path)
    recovered = rel_path_from_name(name)
    # A path short enough to fit once encoded was never shortened (escapes can make a
    # 99-character path encode to more than 200: that one was).
    if len(path) < 100 and len(name) < MAX_NAME_CHARS and "~" not in name:
        assert recovered == path
    assert recovered in (path, None)


@settings(max_examples=300)
@given(st.lists(paths, min_size=2, max_size=30, unique=True))
def test_distinct_paths_get_distinct_names(given_paths):
    names = {document_name(p) for p in given_paths}
    assert len(names) == len(given_paths)


@given(st.sampled_from(["a/b", "a\u2215b", "a%2Fb", "a%E2%88%95b", "a%252Fb"]),
       st.sampled_from(["a/b", "a\u2215b", "a%2Fb", "a%E2%88%95b", "a%252Fb"]))
def test_slash_lookalikes_never_share_a_name(p, q):
    if p != q:
        assert document_name(p + ".md") != document_name(q + ".md")


@given(paths, extensions)
def test_extension_is_preserved_with_its_case(path, ext):
    name = document_name(f"{path}.{ext}")
    expected = ext.replace("%", "%25")
    assert name.endswith("." + expected)


@given(paths)
def test_shortened_name_is_not_the_name_of_the_path_it_spells(path):
    """A file literally named like a shortened name must not take that document."""
    name = document_name(path)
    if rel_path_from_name(name) is None:  # shortened
        spelled = os.fsdecode(unquote_to_bytes(name.replace("\u2215", "/")))
        assert document_name(spelled) != name
