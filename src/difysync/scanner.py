"""Walk a folder root into LocalFile records and ScanProblems, and read files for upload.

It must never open anything but a regular file (a FIFO would block the run), never
follow a symlink out of the root or into a directory, and never raise for what it
finds on disk: every entry left out for a reason other than configuration is a ScanProblem.

Patterns (include, exclude, ignores) are globs on the POSIX relative path:

- ``*`` matches within one component, ``?`` one character, ``[...]`` a class
  (``[!...]``/``[^...]`` negated); none of them match ``/``. Matching is case-sensitive.
- ``**`` as a whole component matches any number of components: ``**/*.md`` is every
  Markdown file at any depth (the top level included), ``docs/**`` is docs and all
  below it, ``**/*`` everything.
- A pattern without ``/`` matches a base name at any depth (``*.md``, ``drafts``); a
  leading ``/`` anchors a pattern to the root; a trailing ``/`` is dropped.
- A pattern that matches a directory matches everything below it: an excluded or
  ignored directory is pruned, not descended, and an included one includes its files.

A ScanProblem on a directory means its contents are unknown, not gone: callers must
not treat files they knew below it as deleted.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import NamedTuple

from difysync.models import LocalFile, ScanProblem, SkipCode

__all__ = [
    "DEFAULT_IGNORES",
    "FileColumns",
    "FileTooLarge",
    "PatternMatcher",
    "ScanResult",
    "ScanRules",
    "Split",
    "Subtree",
    "compile_patterns",
    "read_for_upload",
    "scan_tree",
    "sha256_file",
    "scan_rules",
    "sorted_problems",
    "stat_paths",
    "unreadable_root",
    "walk_below",
]

# Hidden entries (.git, .~lock.*#, .#emacs-lock), office owner files, editor swap and backup files.
DEFAULT_IGNORES: tuple[str, ...] = (".*", ".#*", "~$*", "*.swp", "*.swx", "*.tmp", "*~")

PERMISSION_DENIED = "permission denied"
OUTSIDE_ROOT = "symlink points outside the folder"
DIR_SYMLINK = "symlink to a directory not followed"
BROKEN_SYMLINK = "broken symlink"
SYMLINK_LOOP = "symlink loop"

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


# --- patterns ---------------------------------------------------------------------------


def _translate_component_glob(part: str) -> str:
    """Regex for a glob that must stay inside one path component."""
    out = []
    i, n = 0, len(part)
    while i < n:
        ch = part[i]
        if ch == "*":
            while i + 1 < n and part[i + 1] == "*":  # "a**b" is just "a*b"
                i += 1
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            j = i + 1
            if j < n and part[j] in "!^":
                j += 1
            if j < n and part[j] == "]":  # a leading "]" is literal inside the class
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:  # unclosed: a literal "["
                out.append(re.escape(ch))
            else:
                body = part[i + 1 : j]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = "".join("\\" + c if c in "\\^[]&~|" else c for c in body)
                out.append(f"[^/{body}]" if negate else f"(?!/)[{body}]")
                i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def translate_glob(pattern: str) -> str:
    """The regex (for ``re.fullmatch``) of one glob pattern on a relative POSIX path."""
    anchored = pattern.startswith("/")
    pattern = pattern.strip("/")
    if not pattern:
        raise ValueError("empty pattern")
    parts: list[str] = []
    for part in pattern.split("/"):
        if part and not (part == "**" and parts and parts[-1] == "**"):
            parts.append(part)
    if len(parts) == 1 and not anchored and parts[0] != "**":
        return "(?:.*/)?" + _translate_component_glob(parts[0])
    out = ""
    last = len(parts) - 1
    for idx, part in enumerate(parts):
        if part == "**":
            if idx == last:
                # "docs/**" also matches docs itself, so that the directory is pruned.
                out = out[:-1] + "(?:/.*)?" if out else ".*"
            else:
                out += "(?:.*/)?"
        else:
            out += _translate_component_glob(part) + ("/" if idx != last else "")
    return out


@dataclass(frozen=True)
class PatternMatcher:
    """A compiled set of glob patterns; empty matches nothing."""

    patterns: tuple[str, ...]
    _regex: re.Pattern[str] | None = field(repr=False, compare=False, default=None)
    # For patterns that are all "prefix*", "*suffix" or literal base names (the default
    # ignores): string tests, several times faster than the regex on every entry.
    _affixes: tuple[tuple[str, ...], tuple[str, ...], frozenset[str]] | None = \
        field(repr=False, compare=False, default=None)

    def match_exact(self, rel_path: str) -> bool:
        """Whether a pattern matches this path itself (its ancestors not considered)."""
        if self._affixes is not None:
            prefixes, suffixes, names = self._affixes
            name = rel_path.rpartition("/")[2]
            return name.startswith(prefixes) or name.endswith(suffixes) or name in names
        return self._regex is not None and self._regex.fullmatch(rel_path) is not None

    def __call__(self, rel_path: str) -> bool:
        """Whether a pattern matches this path or one of its ancestor directories."""
        if self._regex is None:
            return False
        parts = rel_path.split("/")
        return any(self.match_exact("/".join(parts[:i])) for i in range(1, len(parts) + 1))


def compile_patterns(patterns: Iterable[str]) -> PatternMatcher:
    """Compile glob patterns (see the module docstring); ValueError names a bad pattern."""
    pats = tuple(patterns)
    if not pats:
        return PatternMatcher(())
    parts = []
    for pat in pats:
        try:
            parts.append(re.compile(translate_glob(pat), re.DOTALL).pattern)
        except (ValueError, re.error) as exc:  # empty, or a reversed range like [z-a]
            raise ValueError(f"invalid pattern {pat!r}: {exc}") from None
    return PatternMatcher(pats, re.compile("|".join(f"(?:{p})" for p in parts), re.DOTALL),
                          _affixes_of(pats))


def _affixes_of(patterns: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str]] | None:
    """(prefixes, suffixes, names) when every pattern is a base-name glob with one ``*``
    at an end, or none; None otherwise."""
    prefixes, suffixes, names = [], [], []
    for pat in patterns:
        if "/" in pat or any(c in pat for c in "?[]\\"):
            return None
        stars = pat.count("*")
        if stars == 0:
            names.append(pat)
        elif stars == 1 and pat.endswith("*") and len(pat) > 1:
            prefixes.append(pat[:-1])
        elif stars == 1 and pat.startswith("*") and len(pat) > 1:
            suffixes.append(pat[1:])
        else:
            return None
    return tuple(prefixes), tuple(suffixes), frozenset(names)


# --- walking ----------------------------------------------------------------------------


class FileColumns:
    """The files a walk found, one column per field, in the order the walk met them.

    A quiet pass needs only their digest (marks.scan_digest), so the walk makes no
    LocalFile per file: a tuple and its three ints were a third of the walk's time at 100k
    files, and most of its memory. ``to_files`` makes them, sorted, for a pass that plans.
    """

    __slots__ = ("paths", "sizes", "mtimes", "inodes")

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.sizes = array("q")
        self.mtimes = array("q")    # st_mtime_ns
        self.inodes = array("Q")

    def add(self, found: LocalFile) -> None:
        self.paths.append(found.rel_path)
        self.sizes.append(found.size)
        self.mtimes.append(found.mtime_ns)
        self.inodes.append(found.inode)

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def from_bytes(cls, paths: list[str], sizes: bytes, mtimes: bytes, inodes: bytes) -> FileColumns:
        """The columns another process sent (marshal carries the numbers as bytes)."""
        out = cls()
        out.paths = paths
        out.sizes.frombytes(sizes)
        out.mtimes.frombytes(mtimes)
        out.inodes.frombytes(inodes)
        if not len(out.sizes) == len(out.mtimes) == len(out.inodes) == len(paths):
            raise ValueError("columns of different lengths")
        return out

    def extend(self, other: FileColumns, start: int = 0, stop: int | None = None) -> None:
        """Append ``other``'s files from ``start`` up to ``stop``, in their order."""
        stop = len(other) if stop is None else stop
        self.paths.extend(other.paths[start:stop])
        self.sizes.extend(other.sizes[start:stop])
        self.mtimes.extend(other.mtimes[start:stop])
        self.inodes.extend(other.inodes[start:stop])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FileColumns) and self.to_files() == other.to_files()

    def __getstate__(self) -> tuple[list[str], array, array, array]:
        return self.paths, self.sizes, self.mtimes, self.inodes

    def __setstate__(self, state: tuple[list[str], array, array, array]) -> None:
        self.paths, self.sizes, self.mtimes, self.inodes = state

    def to_files(self) -> list[LocalFile]:
        """A LocalFile per file (unhashed), sorted by path."""
        return sorted(map(LocalFile._make, zip(self.paths, self.sizes, self.mtimes, self.inodes, repeat(None))))


@dataclass(frozen=True)
class ScanResult:
    found: FileColumns
    problems: list[ScanProblem]  # sorted
    root_error: str | None = None

    @cached_property
    def files(self) -> list[LocalFile]:
        """Sorted by rel_path (the first field: paths are unique). Made on first use."""
        return self.found.to_files()


@dataclass(frozen=True)
class ScanRules:
    root: str
    real_root: str
    include: PatternMatcher
    exclude: PatternMatcher
    ignores: PatternMatcher

    def left_out(self, name: str, rel_path: str) -> bool:
        """Ignored or excluded: this entry (and, for a directory, all below) is skipped."""
        return self.ignores.match_exact(name) or self.exclude.match_exact(rel_path)


def scan_rules(root: Path | str, include: Sequence[str], exclude: Sequence[str],
               ignores: Sequence[str] = DEFAULT_IGNORES) -> ScanRules:
    root_s = os.fspath(root)
    return ScanRules(root_s, os.path.realpath(root_s), compile_patterns(include),
                  compile_patterns(exclude), compile_patterns(ignores))


def _root_error(root: str) -> str | None:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return f"folder root does not exist: {root}"
    except PermissionError:
        return f"folder root is not readable: {root}"
    except OSError as exc:
        return f"folder root cannot be read: {root}: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        return f"folder root is not a directory: {root}"
    return None


def _special_reason(mode: int) -> str:
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return f"special file ({kind})"
    return "special file (unknown type)"


def _inside(real_root: str, target: str) -> bool:
    try:
        return os.path.commonpath([real_root, target]) == real_root
    except ValueError:
        return False


def _classify_file(rules: ScanRules, path: str, rel_path: str,
                   lst: os.stat_result) -> LocalFile | ScanProblem | None:
    """A non-directory entry -> LocalFile, ScanProblem, or None when it vanished.

    Decided from the lstat result (and, for a symlink, a stat of its target): special
    files are never opened.
    """
    st = lst
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return ScanProblem(rel_path, BROKEN_SYMLINK, SkipCode.NOT_A_FILE)
        except PermissionError:
            return ScanProblem(rel_path, PERMISSION_DENIED)
        except OSError as exc:  # ELOOP, or a target below a file (ENOTDIR)
            if exc.errno == errno.ELOOP:
                return ScanProblem(rel_path, SYMLINK_LOOP, SkipCode.NOT_A_FILE)
            return ScanProblem(rel_path, BROKEN_SYMLINK, SkipCode.NOT_A_FILE)
        if not _inside(rules.real_root, os.path.realpath(path)):
            return ScanProblem(rel_path, OUTSIDE_ROOT, SkipCode.NOT_A_FILE)
        if stat.S_ISDIR(st.st_mode):
            return ScanProblem(rel_path, DIR_SYMLINK, SkipCode.NOT_A_FILE)
    if not stat.S_ISREG(st.st_mode):
        return ScanProblem(rel_path, _special_reason(st.st_mode), SkipCode.NOT_A_FILE)
    if not os.access(path, os.R_OK):
        return ScanProblem(rel_path, PERMISSION_DENIED) if os.path.lexists(path) else None
    return LocalFile(rel_path, st.st_size, st.st_mtime_ns, st.st_ino)


# A directory listed through a descriptor of its own: each entry's lstat is then an
# fstatat relative to it (as find does), not a lookup of the whole path again (a walk of
# the 100k bench tree took 0.95-0.98x the time). Where scandir takes no descriptor, paths do.
_BY_DESCRIPTOR = os.scandir in os.supports_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def _list_dir(dir_path: str, dir_rel: str, problems: set[ScanProblem]) -> tuple[list[os.DirEntry[str]], int | None]:
    """A directory's entries, and the descriptor their ``stat`` works through (None: their
    paths), which the caller closes once it has stat'ed them; no entries (and a problem,
    unless it vanished since it was listed) when it cannot be read."""
    fd = None
    try:
        if _BY_DESCRIPTOR:
            fd = os.open(dir_path, _DIR_FLAGS)
        with os.scandir(dir_path if fd is None else fd) as it:
            return list(it), fd
    except FileNotFoundError:
        pass  # vanished since it was listed: nothing there any more
    except PermissionError:
        problems.add(ScanProblem(dir_rel, PERMISSION_DENIED))
    except OSError as exc:
        problems.add(ScanProblem(dir_rel, f"cannot read directory: {exc.strerror or exc}"))
    if fd is not None:
        os.close(fd)
    return [], None


class Subtree(NamedTuple):
    """A directory left out of a walk cut at its depth, to be walked on its own."""

    at: int  # where its files go: the number of files the cut walk had found when it met it
    path: str
    rel: str
    included: bool


@dataclass
class Split:
    """Where a walk stops going down (walkshare.py)."""

    depth: int
    subtrees: list[Subtree] = field(default_factory=list)


def walk_below(rules: ScanRules, start: str, start_rel: str, start_included: bool,
               found: FileColumns, problems: set[ScanProblem], split: Split | None = None) -> None:
    """Depth-first walk below directory ``start`` with an explicit stack (deep trees are fine).

    Each directory is listed, its entries stat'ed, and it is closed before its children are
    visited, so open file descriptors never grow with the depth. With ``split``, a
    directory at ``split.depth`` is not walked: it is left in ``split.subtrees`` with the
    place its files take in ``found``, for a walk of its own (walkshare.py).
    """
    visit = _DirVisit(rules, found, problems)
    split_depth = split.depth if split is not None else -1
    stack = [(start, start_rel, start_included, 0)]
    while stack:
        dir_path, dir_rel, dir_included, depth = stack.pop()
        if depth == split_depth:
            split.subtrees.append(Subtree(len(found.paths), dir_path, dir_rel, dir_included))  # type: ignore[union-attr]
            continue
        entries, fd = _list_dir(dir_path, dir_rel, problems)
        try:
            below = visit(entries, dir_path, dir_rel, dir_included)
        finally:
            if fd is not None:
                os.close(fd)
        stack.extend((path, rel, included, depth + 1) for path, rel, included in below)


class _DirVisit:
    """One walk's rule for the entries of a directory: a plain readable file, nearly every
    entry of a big tree, is decided inline from its lstat; everything else goes to
    _classify_file. Returns the subdirectories to walk, in the order met."""

    def __init__(self, rules: ScanRules, found: FileColumns, problems: set[ScanProblem]) -> None:
        self.rules, self.found, self.problems = rules, found, problems
        self.me = os.geteuid() if hasattr(os, "geteuid") else -1

    def __call__(self, entries: list[os.DirEntry[str]], dir_path: str, dir_rel: str,
                 dir_included: bool) -> list[tuple[str, str, bool]]:
        rules, found, problems, me = self.rules, self.found, self.problems, self.me
        ignored = rules.ignores.match_exact
        # The default ignores are affixes: tested inline, without a call per entry.
        prefixes, suffixes, names = rules.ignores._affixes or ((), (), frozenset())
        affixes_only = rules.ignores._affixes is not None
        excluded = rules.exclude.match_exact if rules.exclude.patterns else None
        included_exact = rules.include.match_exact
        access, readable, is_dir, is_reg, join = os.access, os.R_OK, stat.S_ISDIR, stat.S_ISREG, os.path.join
        add_path, add_size, add_mtime, add_inode = (found.paths.append, found.sizes.append, found.mtimes.append,
                                                    found.inodes.append)
        prefix = dir_rel + "/" if dir_rel else ""
        below = []
        for entry in entries:
            name = entry.name
            rel = prefix + name
            if affixes_only:
                if name.startswith(prefixes) or name.endswith(suffixes) or name in names:
                    continue
            elif ignored(name):
                continue
            if excluded is not None and excluded(rel):
                continue
            try:
                lst = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.add(ScanProblem(rel, PERMISSION_DENIED if isinstance(exc, PermissionError)
                                         else f"cannot stat: {exc.strerror or exc}"))
                continue
            included = dir_included or included_exact(rel)
            mode = lst.st_mode
            if is_dir(mode):
                below.append((join(dir_path, name), rel, included))
            elif not included:
                continue
            # The owner's read bit is the whole answer for the owner (ACLs only add
            # entries for others), which spares a syscall on most files.
            elif is_reg(mode) and ((lst.st_uid == me and mode & 0o400) or access(join(dir_path, name), readable)):
                add_path(rel)
                add_size(lst.st_size)
                add_mtime(lst.st_mtime_ns)
                add_inode(lst.st_ino)
            else:
                other = _classify_file(rules, join(dir_path, name), rel, lst)
                if isinstance(other, LocalFile):
                    found.add(other)
                elif other is not None:
                    problems.add(other)
        return below


def scan_tree(root: Path, include: Sequence[str] = ("**/*",), exclude: Sequence[str] = (),
              *, ignores: Sequence[str] = DEFAULT_IGNORES) -> ScanResult:
    """Every included regular file below ``root`` (unhashed), and every entry refused and why.

    Never raises for what is on disk: a missing, non-directory or unreadable root sets
    ``root_error`` and returns no files. ValueError only for an empty pattern.
    (walkshare.begin_scan gives the same result, sooner when helper processes can share it.)
    """
    rules = scan_rules(root, include, exclude, ignores)
    error = unreadable_root(rules.root)
    found = FileColumns()
    if error is not None:
        return ScanResult(found, [], error)
    problems: set[ScanProblem] = set()
    walk_below(rules, rules.root, "", False, found, problems)
    return ScanResult(found, sorted_problems(problems), None)


def sorted_problems(problems: Iterable[ScanProblem]) -> list[ScanProblem]:
    return sorted(problems, key=lambda p: (p.rel_path, p.reason))


def unreadable_root(root: str) -> str | None:
    """Why the root cannot be walked, or None."""
    error = _root_error(root)
    if error is None:
        try:
            with os.scandir(root):
                pass
        except OSError as exc:
            error = (f"folder root is not readable: {root}" if isinstance(exc, PermissionError)
                     else f"folder root cannot be read: {root}: {exc.strerror or exc}")
    return error


def _clean_rel_path(rel_path: str) -> str | None:
    parts = [p for p in rel_path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        return None
    return "/".join(parts)


def stat_paths(root: Path, rel_paths: Iterable[str], include: Sequence[str] = ("**/*",),
               exclude: Sequence[str] = (), *, ignores: Sequence[str] = DEFAULT_IGNORES,
               ) -> tuple[list[LocalFile], list[ScanProblem], list[str]]:
    """The scan rules applied to just ``rel_paths`` (a watcher's hints).

    Returns (files found, problems, gone): ``gone`` holds the given paths at which no
    file is found any more: vanished, now ignored or excluded, below a directory that
    is now a symlink, or now a directory (whose files are returned in ``files``; the
    caller compares them with what it knew below that directory). When the root
    itself is unusable every path gets a problem and none is reported gone.
    """
    rules = scan_rules(root, include, exclude, ignores)
    files: dict[str, LocalFile] = {}
    problems: set[ScanProblem] = set()
    gone: set[str] = set()
    root_error = _root_error(rules.root)
    for given in sorted(set(rel_paths)):
        if root_error is not None:
            problems.add(ScanProblem(given, root_error))
        else:
            _stat_given(rules, given, files, problems, gone)
    return (sorted(files.values()),
            sorted(problems, key=lambda p: (p.rel_path, p.reason)), sorted(gone))



def _stat_given(rules: ScanRules, given: str, files: dict[str, LocalFile], problems: set[ScanProblem],
                gone: set[str]) -> None:
    """One of stat_paths' paths: its file (or, for a directory, the files below it) into
    ``files``, or the path into ``problems`` or ``gone``."""
    rel = _clean_rel_path(given)
    if rel is None:
        problems.add(ScanProblem(given, "not a path inside the folder"))
        return
    parts = rel.split("/")
    if any(rules.left_out(parts[i], "/".join(parts[: i + 1])) for i in range(len(parts))):
        gone.add(given)
        return
    path = os.path.join(rules.root, *parts)
    # The walk never descends through a symlinked directory; neither do we.
    if os.path.realpath(os.path.dirname(path)) != os.path.join(rules.real_root, *parts[:-1]):
        gone.add(given)
        return
    try:
        lst = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        gone.add(given)
        return
    except PermissionError:
        problems.add(ScanProblem(rel, PERMISSION_DENIED))
        return
    except OSError as exc:
        problems.add(ScanProblem(rel, f"cannot stat: {exc.strerror or exc}"))
        return
    included = rules.include(rel)
    if stat.S_ISDIR(lst.st_mode):
        gone.add(given)
        below = FileColumns()
        walk_below(rules, path, rel, included, below, problems)
        files.update((f.rel_path, f) for f in below.to_files())
        return
    if not included:
        gone.add(given)
        return
    found = _classify_file(rules, path, rel, lst)
    if isinstance(found, LocalFile):
        files[rel] = found
    elif found is None:
        gone.add(given)
    else:
        problems.add(found)

# --- reading ----------------------------------------------------------------------------


class FileTooLarge(ValueError):
    """The file is larger than the upload limit."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        self.path, self.size, self.limit = path, size, limit
        super().__init__(f"{path}: {size} bytes is over the upload limit of {limit} bytes")


def _open_regular(path: Path | str) -> tuple[io.FileIO, int]:
    """Open for binary reading, refusing anything that is not a regular file; with the
    file's size when it was opened.

    Checked before the open (a device is never opened) and again on the open file
    descriptor; O_NONBLOCK keeps a FIFO swapped in between from blocking the open.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"not a regular file: {os.fsdecode(path)} ({_special_reason(mode)})")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file: {os.fsdecode(path)} ({_special_reason(st.st_mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return open(fd, "rb", buffering=0), st.st_size
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: Path | str, *, block_size: int = 1 << 20) -> tuple[str, int]:
    """(hex SHA-256, bytes read) of a regular file, streamed in ``block_size`` blocks.

    OSError if the path is not a regular file once opened.
    """
    # hashlib.file_digest (3.11+) is this same loop with a fixed 256 KiB buffer. The
    # buffer is no bigger than the file (plus the byte that shows its end): a zeroed
    # megabyte for each small file was most of the time of hashing a tree of them.
    digest = hashlib.sha256()
    f, size = _open_regular(path)
    buf = bytearray(max(1, min(block_size, size + 1)))
    view = memoryview(buf)
    total = 0
    with f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
            total += n
    return digest.hexdigest(), total


def read_for_upload(path: Path | str, *, max_bytes: int) -> tuple[bytes, str]:
    """(content, SHA-256 of exactly that content) of a regular file of at most ``max_bytes``.

    The hash is computed from the very buffer that will be uploaded, so the recorded
    hash always describes what the server received. Raises FileTooLarge over the
    limit, OSError for a non-regular file. (Whether the file changed during the read
    is the caller's to judge, from stat before and after.)
    """
    f, size = _open_regular(path)
    with f:
        if size > max_bytes:
            raise FileTooLarge(os.fsdecode(path), size, max_bytes)
        chunks = []
        total = 0
        # Asked for by the size the file had (and one byte more, to notice growth), not by
        # the limit: each read allocates what it asks for, and a 15 MB buffer for every
        # small file sent, by each of the upload threads, was most of a storm's peak memory.
        want = size + 1
        while total <= max_bytes:  # read one byte past the limit to notice growth
            chunk = f.read(min(want, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = 1 << 20  # it grew while read: the rest by the megabyte
    if total > max_bytes:
        raise FileTooLarge(os.fsdecode(path), total, max_bytes)
    data = b"".join(chunks)
    return data, hashlib.sha256(data).hexdigest()
