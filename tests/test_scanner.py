"""The scanner: what becomes a LocalFile, what becomes a ScanProblem, what is left out.

Every test builds a real tree under tmp_path; the suite must pass when run as root.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import pickle
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from difysync.models import LocalFile, ScanProblem, SkipCode
from difysync.scanner import (
    BROKEN_SYMLINK,
    DIR_SYMLINK,
    OUTSIDE_ROOT,
    PERMISSION_DENIED,
    SYMLINK_LOOP,
    FileTooLarge,
    ScanResult,
    compile_patterns,
    read_for_upload,
    scan_tree,
    sha256_file,
    stat_paths,
)

NOBODY = 65534


@pytest.fixture
def as_user(tmp_path_factory):
    """(a folder, a scan) for permission tests. Root reads and lists mode-000 entries, so
    under root the scan runs in a forked child that has become ``nobody`` (real and
    effective ids, no groups), in a folder outside pytest's private 0700 tree."""
    if os.geteuid() != 0:
        yield tmp_path_factory.mktemp("perm"), scan_tree
        return
    base = Path(tempfile.mkdtemp(prefix="difysync-perm-"))
    base.chmod(0o755)

    def scan_as_nobody(root: Path) -> ScanResult:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: drop root for good, scan, send the result, leave
            code = 0
            try:
                os.close(read_end)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                with os.fdopen(write_end, "wb") as out:
                    pickle.dump(scan_tree(root), out)
            except BaseException:  # noqa: BLE001 - reported by the parent as an empty answer
                code = 1
            os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as answer:
            data = answer.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and data, "the unprivileged scan failed"
        return pickle.loads(data)

    try:
        yield base, scan_as_nobody
    finally:
        shutil.rmtree(base, ignore_errors=True)


def write(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rel_paths(result) -> list[str]:
    return [f.rel_path for f in result.files]


def reasons(result) -> dict[str, str]:
    return {p.rel_path: p.reason for p in result.problems}


# --- patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.md", "a.md", True),
        ("*.md", "deep/er/a.md", True),  # no "/": a base name at any depth
        ("*.md", "a.mdx", False),
        ("**/*.md", "a.md", True),  # ** matches zero components
        ("**/*.md", "x/y/z.md", True),
        ("docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/sub/a.md", False),  # * stays in one component
        ("docs/*.md", "other/docs/a.md", False),  # a pattern with "/" is anchored
        ("docs/**", "docs", True),
        ("docs/**", "docs/a/b/c.txt", True),
        ("docs/**", "docsx/a", False),
        ("**/*", "anything/at/all", True),
        ("**", "x", True),
        ("a/**/b.md", "a/b.md", True),
        ("a/**/b.md", "a/x/y/b.md", True),
        ("?.md", "a.md", True),
        ("?.md", "ab.md", False),
        ("[ab].md", "b.md", True),
        ("[!ab].md", "b.md", False),
        ("[!ab].md", "c.md", True),
        ("[^ab].md", "c.md", True),
        ("[^ab].md", "a.md", False),
        ("[a-c]x", "bx", True),
        ("a?b", "a/b", False),  # ? never matches the separator
        ("[!x]b", "/b", False),
        ("/top.md", "top.md", True),
        ("/top.md", "sub/top.md", False),  # leading "/" anchors to the root
        ("drafts/", "x/drafts", True),
        ("a[", "a[", True),  # an unclosed bracket is literal
        ("*.MD", "a.md", False),  # case-sensitive
        ("*.md", "new\nline.md", True),
        ("x+(y).md", "x+(y).md", True),  # regex metacharacters are literal
    ],
)
def test_glob_pattern_matches_relative_path(pattern, path, expected):
    assert compile_patterns([pattern]).match_exact(path) is expected


def test_pattern_matching_a_directory_matches_everything_below_it():
    matcher = compile_patterns(["drafts"])
    assert matcher("notes/drafts/old/a.md")
    assert not matcher("notes/drafts.md")


def test_empty_pattern_list_matches_nothing():
    assert not compile_patterns([])("a.md")


@pytest.mark.parametrize("pattern", ["/", "", "[z-a].md"])
def test_invalid_pattern_is_a_value_error(pattern):
    with pytest.raises(ValueError):
        compile_patterns([pattern])


@settings(max_examples=500)
@given(st.text("ab.*?[]!\\", min_size=1, max_size=8), st.text("ab.[]!^\\", max_size=6))
def test_pattern_on_a_base_name_agrees_with_fnmatch(pattern, name):
    """Within one component our globs mean what fnmatch means (except "[^", negated here as in git)."""
    assume("/" not in pattern and pattern.strip("/"))
    assert compile_patterns([pattern]).match_exact(name) == fnmatch.fnmatchcase(name, pattern)


# --- scan_tree: what is found ------------------------------------------------------------


def test_nested_regular_files_are_listed_sorted_with_stat_and_no_hash(tmp_path):
    # given
    write(tmp_path, "b.md", b"hello")
    write(tmp_path, "a/z.md")
    write(tmp_path, "a/b/c.txt")
    # when
    result = scan_tree(tmp_path)
    # then
    assert rel_paths(result) == ["a/b/c.txt", "a/z.md", "b.md"]
    st = os.stat(tmp_path / "b.md")
    assert result.files[-1] == LocalFile("b.md", 5, st.st_mtime_ns, st.st_ino, None)
    assert result.problems == [] and result.root_error is None


def test_hidden_and_temporary_entries_are_left_out_silently(tmp_path):
    for rel in [".hidden.md", ".git/config", ".git/objects/x.md", "~$report.docx", "a.swp",
                "a.swx", "a.tmp", "a.md~", ".#a.md", ".~lock.a.docx#", "sub/.obsidian/x.md"]:
        write(tmp_path, rel)
    write(tmp_path, "keep.md")
    result = scan_tree(tmp_path)
    assert rel_paths(result) == ["keep.md"]
    assert result.problems == []


def test_hidden_directory_is_pruned_not_descended(tmp_path):
    # given a hidden directory that cannot even be listed
    hidden = tmp_path / ".secret"
    write(tmp_path, ".secret/a.md")
    (hidden / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(hidden / "fifo")
    # when
    result = scan_tree(tmp_path)
    # then nothing below it was looked at, not even the fifo
    assert result.files == [] and result.problems == []


def test_include_and_exclude_patterns_select_files(tmp_path):
    for rel in ["a.md", "a.txt", "docs/b.md", "docs/drafts/c.md", "notes/drafts/d.md", "e.pdf"]:
        write(tmp_path, rel)
    result = scan_tree(tmp_path, include=["**/*.md", "*.pdf"], exclude=["drafts"])
    assert rel_paths(result) == ["a.md", "docs/b.md", "e.pdf"]


def test_excluded_directory_is_pruned(tmp_path):
    # given an excluded directory holding a fifo (a problem if it were looked at)
    write(tmp_path, "build/out.md")
    os.mkfifo(tmp_path / "build" / "pipe")
    write(tmp_path, "src.md")
    # when
    result = scan_tree(tmp_path, exclude=["build/**"])
    # then
    assert rel_paths(result) == ["src.md"]
    assert result.problems == []


def test_included_directory_includes_its_files(tmp_path):
    write(tmp_path, "docs/x/a.txt")
    write(tmp_path, "other/b.txt")
    assert rel_paths(scan_tree(tmp_path, include=["docs"])) == ["docs/x/a.txt"]


def test_special_file_outside_the_include_patterns_is_not_reported(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    result = scan_tree(tmp_path, include=["**/*.md"])
    assert result.problems == []


def test_deep_tree_is_walked_without_recursion_limits(tmp_path):
    # given 200 nested directories
    deep = tmp_path.joinpath(*(["d"] * 200))
    deep.mkdir(parents=True)
    (deep / "bottom.md").write_bytes(b"deep")
    # when
    result = scan_tree(tmp_path)
    # then
    assert rel_paths(result) == ["d/" * 200 + "bottom.md"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_walk_holds_one_directory_open_at_a_time_and_leaves_none_open(tmp_path, monkeypatch):
    """Each directory is listed and its entries stat'ed through a descriptor of its own,
    closed before its children are visited: descriptors never grow with the depth."""
    import difysync.scanner as scanner

    deep = tmp_path.joinpath(*(["d"] * 100))
    deep.mkdir(parents=True)
    (deep / "bottom.md").write_bytes(b"deep")
    before = len(os.listdir("/proc/self/fd"))
    most = []
    list_dir = scanner._list_dir

    def counting(*args):  # looks at the descriptors while a directory's entries are stat'ed
        listed = list_dir(*args)
        most.append(len(os.listdir("/proc/self/fd")) - before)
        return listed

    monkeypatch.setattr(scanner, "_list_dir", counting)
    result = scan_tree(tmp_path)
    assert rel_paths(result) == ["d/" * 100 + "bottom.md"]
    assert max(most) <= 1
    assert len(os.listdir("/proc/self/fd")) == before


def test_file_name_that_is_not_utf8_is_kept_as_surrogate_escape(tmp_path):
    # given
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.md"), "wb") as f:
        f.write(b"x")
    # when
    result = scan_tree(tmp_path)
    # then
    assert rel_paths(result) == ["caf\udce9.md"]
    assert os.fsencode(result.files[0].rel_path) == b"caf\xe9.md"


# --- scan_tree: what is refused ----------------------------------------------------------


def test_fifo_is_reported_and_never_opened(tmp_path):
    # given a fifo with no writer: opening it for reading would block forever
    os.mkfifo(tmp_path / "pipe.md")
    write(tmp_path, "ok.md")
    # when the scan runs in a thread we can time out
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("r", scan_tree(tmp_path)), daemon=True)
    worker.start()
    worker.join(10)
    # then
    assert not worker.is_alive(), "scan blocked on the fifo"
    assert rel_paths(box["r"]) == ["ok.md"]
    assert box["r"].problems == [ScanProblem("pipe.md", "special file (fifo)", SkipCode.NOT_A_FILE)]


def test_unix_socket_is_reported(tmp_path, monkeypatch):
    # given (bound by a relative name: AF_UNIX paths must be short)
    monkeypatch.chdir(tmp_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("s.sock")
        # when
        result = scan_tree(tmp_path)
    finally:
        sock.close()
    # then
    assert result.problems == [ScanProblem("s.sock", "special file (socket)", SkipCode.NOT_A_FILE)]
    assert result.files == []


def test_symlink_to_a_device_outside_the_root_is_refused(tmp_path):
    (tmp_path / "null.md").symlink_to("/dev/null")
    result = scan_tree(tmp_path)
    assert reasons(result) == {"null.md": OUTSIDE_ROOT}


def test_character_device_is_reported_and_never_opened(tmp_path):
    # given a device node (needs CAP_MKNOD; containers often drop it)
    try:
        os.mknod(tmp_path / "zero.md", stat.S_IFCHR | 0o644, os.makedev(1, 5))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here: {exc}")
    # when
    result = scan_tree(tmp_path)
    # then
    assert result.problems == [ScanProblem("zero.md", "special file (character device)", SkipCode.NOT_A_FILE)]


def test_symlink_to_file_inside_root_is_followed(tmp_path):
    # given
    target = write(tmp_path, "real/target.md", b"12345")
    (tmp_path / "link.md").symlink_to("real/target.md")
    # when
    result = scan_tree(tmp_path)
    # then the link carries the target's size, mtime and inode
    st = os.stat(target)
    link = next(f for f in result.files if f.rel_path == "link.md")
    assert (link.size, link.mtime_ns, link.inode) == (5, st.st_mtime_ns, st.st_ino)
    assert result.problems == []


def test_symlink_pointing_outside_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write(tmp_path, "outside.md")
    (root / "escape.md").symlink_to(tmp_path / "outside.md")
    (root / "relative.md").symlink_to("../outside.md")
    result = scan_tree(root)
    assert result.files == []
    assert reasons(result) == {"escape.md": OUTSIDE_ROOT, "relative.md": OUTSIDE_ROOT}


def test_symlink_to_directory_is_not_followed(tmp_path):
    # given a directory symlink to its own parent (a cycle if followed)
    write(tmp_path, "sub/a.md")
    (tmp_path / "sub" / "up").symlink_to("..")
    # when
    result = scan_tree(tmp_path)
    # then
    assert rel_paths(result) == ["sub/a.md"]
    assert result.problems == [ScanProblem("sub/up", DIR_SYMLINK, SkipCode.NOT_A_FILE)]


def test_broken_symlink_and_symlink_loop_are_reported(tmp_path):
    (tmp_path / "dangling.md").symlink_to("nowhere.md")
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    result = scan_tree(tmp_path)
    assert result.files == []
    assert reasons(result) == {"dangling.md": BROKEN_SYMLINK, "a": SYMLINK_LOOP, "b": SYMLINK_LOOP}


def test_root_that_is_a_symlink_is_walked(tmp_path):
    write(tmp_path, "real/a.md")
    write(tmp_path, "real/target.md")
    (tmp_path / "real" / "link.md").symlink_to("target.md")
    (tmp_path / "alias").symlink_to("real")
    result = scan_tree(tmp_path / "alias")
    assert rel_paths(result) == ["a.md", "link.md", "target.md"]


def test_unreadable_directory_is_reported_and_the_walk_goes_on(as_user):
    where, scan = as_user
    write(where, "locked/a.md")
    write(where, "open/b.md")
    (where / "locked").chmod(0)
    try:
        result = scan(where)
    finally:
        (where / "locked").chmod(0o755)
    assert rel_paths(result) == ["open/b.md"]
    assert result.problems == [ScanProblem("locked", PERMISSION_DENIED)]


def test_unreadable_file_is_reported(as_user):
    where, scan = as_user
    write(where, "secret.md").chmod(0)
    result = scan(where)
    assert result.files == []
    assert result.problems == [ScanProblem("secret.md", PERMISSION_DENIED)]


def test_readability_follows_the_owner_bits_for_the_owner_and_the_rest_for_others(as_user):
    where, scan = as_user
    modes = {"own.md": 0o400, "own-no-read.md": 0o200, "group-only.md": 0o040, "other.md": 0o004}
    for name, mode in modes.items():
        path = write(where, name)
        if os.geteuid() == 0:  # the scan runs as nobody: nobody owns own*, root the rest
            os.chown(path, NOBODY if name.startswith("own") else 0, 0)
        path.chmod(mode)
    result = scan(where)
    # For its owner a file is readable by the owner bits alone, whatever the others get.
    readable = ["other.md", "own.md"] if os.geteuid() == 0 else ["own.md"]
    assert rel_paths(result) == readable
    assert result.problems == [ScanProblem(name, PERMISSION_DENIED) for name in sorted(modes)
                               if name not in readable]


def test_missing_root_is_a_root_error_not_an_exception(tmp_path):
    result = scan_tree(tmp_path / "gone")
    assert result.root_error == f"folder root does not exist: {tmp_path / 'gone'}"
    assert result.files == [] and result.problems == []


def test_root_that_is_a_file_is_a_root_error(tmp_path):
    result = scan_tree(write(tmp_path, "file.md"))
    assert result.root_error is not None and "not a directory" in result.root_error
    assert result.files == []


def test_unreadable_root_is_a_root_error(as_user):
    where, scan = as_user
    root = where / "root"
    write(root, "a.md")
    root.chmod(0)
    try:
        result = scan(root)
    finally:
        root.chmod(0o755)
    assert result.root_error is not None and "not readable" in result.root_error


# --- stat_paths ---------------------------------------------------------------------------


def test_stat_paths_reports_found_files_and_vanished_paths(tmp_path):
    # given one file created, one deleted
    write(tmp_path, "new.md", b"abc")
    # when
    files, problems, gone = stat_paths(tmp_path, ["new.md", "deleted.md", "nodir/x.md"], ["**/*"], [])
    # then
    assert [f.rel_path for f in files] == ["new.md"] and files[0].size == 3
    assert problems == []
    assert gone == ["deleted.md", "nodir/x.md"]


def test_stat_paths_reports_now_excluded_and_ignored_paths_as_gone(tmp_path):
    write(tmp_path, "drafts/a.md")
    write(tmp_path, "b.txt")
    write(tmp_path, "c.md.swp")
    files, problems, gone = stat_paths(tmp_path, ["drafts/a.md", "b.txt", "c.md.swp"],
                                       ["**/*.md"], ["drafts"])
    assert files == [] and problems == []
    assert gone == ["b.txt", "c.md.swp", "drafts/a.md"]


def test_stat_paths_scans_a_path_that_is_now_a_directory(tmp_path):
    write(tmp_path, "dir/a.md")
    write(tmp_path, "dir/sub/b.md")
    write(tmp_path, "dir/.hidden.md")
    files, problems, gone = stat_paths(tmp_path, ["dir"], ["**/*"], [])
    assert [f.rel_path for f in files] == ["dir/a.md", "dir/sub/b.md"]
    assert gone == ["dir"]  # no file at "dir" itself any more


def test_stat_paths_applies_the_same_refusals_as_the_walk(tmp_path):
    os.mkfifo(tmp_path / "pipe.md")
    (tmp_path / "out.md").symlink_to("/etc/hostname")
    files, problems, gone = stat_paths(tmp_path, ["pipe.md", "out.md"], ["**/*"], [])
    assert files == [] and gone == []
    assert problems == [ScanProblem("out.md", OUTSIDE_ROOT, SkipCode.NOT_A_FILE), ScanProblem("pipe.md", "special file (fifo)", SkipCode.NOT_A_FILE)]


def test_stat_paths_does_not_look_through_a_symlinked_directory(tmp_path):
    write(tmp_path, "real/a.md")
    (tmp_path / "alias").symlink_to("real")
    files, problems, gone = stat_paths(tmp_path, ["alias/a.md"], ["**/*"], [])
    assert files == [] and gone == ["alias/a.md"]


def test_stat_paths_with_missing_root_reports_nothing_gone(tmp_path):
    files, problems, gone = stat_paths(tmp_path / "gone", ["a.md"], ["**/*"], [])
    assert files == [] and gone == []
    assert [p.rel_path for p in problems] == ["a.md"]


def test_stat_paths_refuses_paths_leaving_the_root(tmp_path):
    files, problems, gone = stat_paths(tmp_path, ["../etc/passwd"], ["**/*"], [])
    assert files == [] and gone == []
    assert problems == [ScanProblem("../etc/passwd", "not a path inside the folder")]


# --- hashing and reading --------------------------------------------------------------------


def test_sha256_file_matches_hashlib_on_a_multi_megabyte_file(tmp_path):
    data = os.urandom(3 * (1 << 20) + 12345)
    path = write(tmp_path, "big.bin", data)
    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_file(str(path), block_size=4096) == (hashlib.sha256(data).hexdigest(), len(data))


def test_sha256_file_of_empty_file(tmp_path):
    assert sha256_file(write(tmp_path, "empty.md", b"")) == (hashlib.sha256(b"").hexdigest(), 0)


def test_sha256_file_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OSError):
        sha256_file(tmp_path / "pipe")


def test_read_for_upload_returns_bytes_and_their_hash(tmp_path):
    path = write(tmp_path, "a.md", b"content")
    assert read_for_upload(path, max_bytes=100) == (b"content", hashlib.sha256(b"content").hexdigest())


def test_read_for_upload_accepts_exactly_the_limit_and_refuses_one_byte_more(tmp_path):
    assert read_for_upload(write(tmp_path, "at.md", b"x" * 10), max_bytes=10)[0] == b"x" * 10
    with pytest.raises(FileTooLarge) as info:
        read_for_upload(write(tmp_path, "over.md", b"x" * 11), max_bytes=10)
    assert isinstance(info.value, ValueError) and info.value.size == 11


def test_read_for_upload_refuses_a_special_file(tmp_path):
    os.mkfifo(tmp_path / "pipe.md")
    with pytest.raises(OSError):
        read_for_upload(tmp_path / "pipe.md", max_bytes=100)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe.md").st_mode)
