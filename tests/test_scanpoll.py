"""Watch mode ``poll``: what two walks of a folder say happened between them."""

from __future__ import annotations

import os
from pathlib import Path

from difysync.models import LocalFile
from difysync.scanner import FileColumns, scan_tree
from difysync.scanpoll import PolledFolder, changes_between


def columns(**files: tuple[int, int, int]) -> FileColumns:
    """Files as ``path=(size, mtime_ns, inode)``; ``__`` in a keyword stands for ``/``."""
    out = FileColumns()
    for name, (size, mtime, inode) in files.items():
        out.add(LocalFile(name.replace("__", "/"), size, mtime, inode, None))
    return out


def nothing_exists(rel: str) -> bool:
    return False


def test_two_equal_walks_differ_in_nothing() -> None:
    walk = columns(a=(1, 1, 1), b__c=(2, 2, 2))
    assert changes_between(walk, columns(a=(1, 1, 1), b__c=(2, 2, 2)), exists=nothing_exists) == []


def test_a_new_size_mtime_or_inode_is_a_change() -> None:
    old = columns(a=(1, 1, 1), b=(1, 1, 2), c=(1, 1, 3), d=(1, 1, 4))
    new = columns(a=(9, 1, 1), b=(1, 9, 2), c=(1, 1, 9), d=(1, 1, 4))
    assert sorted(changes_between(old, new, exists=nothing_exists)) == [
        ("changed", "a", None), ("changed", "b", None), ("changed", "c", None)]


def test_new_and_vanished_files_in_known_directories() -> None:
    old = columns(d__keep=(1, 1, 1), d__old=(5, 5, 5))
    new = columns(d__keep=(1, 1, 1), d__new=(6, 6, 6))
    assert sorted(changes_between(old, new, exists=nothing_exists)) == [
        ("changed", "d/new", None), ("deleted", "d/old", None)]


def test_same_inode_size_and_mtime_under_a_new_name_is_a_move() -> None:
    old = columns(a=(3, 3, 7), keep=(1, 1, 1))
    new = columns(b=(3, 3, 7), keep=(1, 1, 1))
    assert changes_between(old, new, exists=nothing_exists) == [("moved", "a", "b")]


def test_a_reused_inode_with_other_content_is_no_move() -> None:
    old = columns(a=(3, 3, 7))
    new = columns(b=(4, 8, 7))
    assert sorted(changes_between(old, new, exists=nothing_exists)) == [
        ("changed", "b", None), ("deleted", "a", None)]


def test_a_whole_directory_renamed_is_one_dir_move() -> None:
    old = columns(top=(1, 1, 1), old__x=(1, 1, 2), old__deep__y=(1, 1, 3))
    new = columns(top=(1, 1, 1), new__x=(1, 1, 2), new__deep__y=(1, 1, 3))
    assert changes_between(old, new, exists=nothing_exists) == [("dir_moved", "old", "new")]


def test_files_moved_out_of_a_directory_that_stays_are_file_moves() -> None:
    old = columns(src__x=(1, 1, 2), src__stays=(1, 1, 3))
    new = columns(dst__x=(1, 1, 2), src__stays=(1, 1, 3))
    assert changes_between(old, new, exists=lambda rel: rel == "src") == [("moved", "src/x", "dst/x")]


def test_a_new_directory_is_one_dir_event_and_a_vanished_one_one_dir_deleted() -> None:
    old = columns(top=(1, 1, 1), gone__a=(1, 1, 2), gone__b__c=(1, 1, 3))
    new = columns(top=(1, 1, 1), inbox__a=(2, 2, 4), inbox__deep__b=(2, 2, 5))
    assert sorted(changes_between(old, new, exists=nothing_exists)) == [
        ("dir", "inbox", None), ("dir_deleted", "gone", None)]


def test_a_poll_walks_with_the_scanners_rules_and_skips_the_state_db(tmp_path: Path) -> None:
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / "build").mkdir()
    for rel in ("a.md", "state.db", ".git/objects/x", "build/out.md"):
        (tmp_path / rel).write_text("x")
    folder = PolledFolder("f", str(tmp_path), ("**/*",), ("build/**",), (".git",), frozenset({"state.db"}))
    walked, why = folder.walk()
    assert why is None and walked is not None and walked.paths == ["a.md"]
    assert scan_tree(tmp_path).found.paths != walked.paths  # the state DB is left out by the poller alone


def test_a_missing_root_says_why(tmp_path: Path) -> None:
    walked, why = PolledFolder("f", os.fspath(tmp_path / "nope"), ("**/*",), (), ()).walk()
    assert walked is None and why
