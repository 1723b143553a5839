"""One walk shared with helper processes (walkshare.py): the very result of one walk, file
for file and in the same order, whoever walked which part; helpers forked only where that
is safe, and none left behind.

The walks that fork run in a fresh interpreter, as a one-shot command or the service runs
them: a test process may have threads of its own, and then nothing is forked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from difysync.marks import scan_digest
from difysync.models import SkipCode
from difysync.scanner import ScanResult, scan_tree
from difysync.walkshare import begin_scan


def varied_tree(root: Path) -> None:
    """Enough directories to share, and every kind of entry the rules decide on."""
    for top in range(12):
        for mid in range(3):
            d = root / f"top{top:02d}" / f"mid{mid}"
            d.mkdir(parents=True)
            for i in range(top % 4 + 1):
                (d / f"f{i}.md").write_text(f"{top} {mid} {i}")
    (root / "at-the-root.md").write_text("root")
    deep = root / "top03" / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("deep")
    (root / "top05" / ".git").mkdir()
    (root / "top05" / ".git" / "HEAD").write_text("ref")
    (root / "top06" / "drafts").mkdir()
    (root / "top06" / "drafts" / "wip.md").write_text("wip")
    (root / "top07" / "link.md").symlink_to(root / "top00" / "mid0" / "f0.md")
    (root / "top07" / "out.md").symlink_to("/etc/hostname")
    (root / "top08" / "dirlink").symlink_to(root / "top01")
    os.mkfifo(root / "top09" / "pipe")
    (root / "top10" / "broken.md").symlink_to(root / "nowhere")
    for i in range(30):  # one flat, wide directory
        (root / "top11" / "mid2" / f"wide{i:02d}.txt").write_text(str(i))


def same_walk(one: ScanResult, shared: dict) -> None:
    assert shared["paths"] == one.found.paths  # the same files, in the same order
    assert shared["sizes"] == list(one.found.sizes)
    assert shared["mtimes"] == list(one.found.mtimes)
    assert shared["inodes"] == list(one.found.inodes)
    assert shared["problems"] == [[p.rel_path, p.reason, p.code.value] for p in one.problems]
    assert shared["root_error"] == one.root_error


WALKS = """
import json, os, sys
from pathlib import Path
import difysync.walkshare as walkshare
from difysync.marks import scan_digest
root, how, count, exclude, fail = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
if fail == "forked":
    walkshare._forked_main = lambda *args: os._exit(3)  # a helper that ends at once, sending nothing
standing = walkshare.StandingHelpers.start(count) if how == "standing" else None
if fail == "standing":
    for helper in standing._helpers:
        os.kill(helper.pid, 9)
        os.waitpid(helper.pid, 0)
out = []
for _ in range(2 if how == "standing" else 1):  # standing helpers serve walk after walk
    with walkshare.begin_scan(Path(root), exclude=exclude, helpers=count if how == "forked" else 0,
                              standing=standing) as walk:
        shared = walk.shared
        r = walk.result()
    out.append({"shared": shared, "paths": r.found.paths, "sizes": list(r.found.sizes),
                "mtimes": list(r.found.mtimes), "inodes": list(r.found.inodes), "root_error": r.root_error,
                "problems": [[p.rel_path, p.reason, p.code.value] for p in r.problems],
                "digest": scan_digest(r.found, r.problems)})
if standing is not None:
    pids = [h.pid for h in standing._helpers]
    standing.close()
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
            raise SystemExit(f"helper {pid} left behind")
        except ChildProcessError:
            pass
print(json.dumps(out))
"""


def walks(root: Path, how: str = "forked", count: int = 1, exclude: tuple[str, ...] = (),
          fail: str = "") -> list[dict]:
    """begin_scan in a fresh process of one thread, with ``count`` helpers forked for the
    walk (``how`` "forked") or standing ones serving two walks in a row ("standing")."""
    proc = subprocess.run([sys.executable, "-c", WALKS, str(root), how, str(count), json.dumps(list(exclude)),
                           fail], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


@pytest.mark.parametrize(("how", "count"), [("forked", 1), ("forked", 3), ("standing", 1), ("standing", 2)])
def test_a_shared_walk_finds_what_one_walk_finds_in_the_same_order(tmp_path: Path, how: str, count: int) -> None:
    varied_tree(tmp_path)
    one = scan_tree(tmp_path, exclude=["**/drafts/**"])
    assert len(one.found) > 70 and any(p.code is SkipCode.NOT_A_FILE for p in one.problems)
    for shared in walks(tmp_path, how, count, ("**/drafts/**",)):
        assert shared["shared"] >= 1, "a tree this wide is shared"
        same_walk(one, shared)
        assert shared["digest"] == scan_digest(one.found, one.problems)


def test_a_narrow_tree_is_cut_deeper_and_a_flat_one_not_at_all(tmp_path: Path) -> None:
    narrow = tmp_path / "narrow"
    for a in range(3):
        for b in range(4):
            (narrow / f"a{a}" / f"b{b}").mkdir(parents=True)
            (narrow / f"a{a}" / f"b{b}" / "x.md").write_text("x")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(50):
        (flat / f"{i}.md").write_text("x")
    for root, shared in ((narrow, True), (flat, False)):
        (walked,) = walks(root)
        assert bool(walked["shared"]) is shared
        same_walk(scan_tree(root), walked)


@pytest.mark.parametrize("how", ["forked", "standing"])
def test_a_helper_that_fails_costs_time_not_files(tmp_path: Path, how: str) -> None:
    varied_tree(tmp_path)
    one = scan_tree(tmp_path)
    for walked in walks(tmp_path, how, fail=how):
        same_walk(one, walked)


def test_no_helper_is_forked_while_another_thread_runs(tmp_path: Path) -> None:
    """A fork copies only the calling thread; a lock another one held would stay held in
    the copy. The service has threads: it forks its standing helpers before them."""
    from difysync.walkshare import StandingHelpers

    varied_tree(tmp_path)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert StandingHelpers.start(2) is None
        with begin_scan(tmp_path, helpers=1) as walk:
            assert walk.shared == 0
            assert walk.result().found.paths == scan_tree(tmp_path).found.paths
    finally:
        stop.set()
        other.join()


GIVEN_UP = """
import os, sys
from pathlib import Path
from difysync.walkshare import begin_scan
with begin_scan(Path(sys.argv[1]), helpers=1) as walk:
    pids = [answer.pid for answer in walk._answers]
assert pids
for pid in pids:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        continue  # reaped already: no zombie, no orphan
    raise SystemExit(f"helper {pid} left behind")
"""


def test_a_walk_given_up_leaves_no_process_behind(tmp_path: Path) -> None:
    varied_tree(tmp_path)
    subprocess.run([sys.executable, "-c", GIVEN_UP, str(tmp_path)], check=True, timeout=60)


def test_a_missing_root_is_reported_with_helpers_too(tmp_path: Path) -> None:
    with begin_scan(tmp_path / "gone", helpers=1) as walk:
        result = walk.result()
    assert result.root_error and len(result.found) == 0


BUSY_ELSEWHERE = """
import json, sys, time
from pathlib import Path
from difysync.walkshare import begin_scan
with begin_scan(Path(sys.argv[1]), helpers=1) as walk:
    shared = walk.shared
    time.sleep(1.5)  # the command loads its modules, opens its state DB, takes its lease
    r = walk.result()
print(json.dumps({"shared": shared, "walked_here": walk.walked_here, "paths": r.found.paths}))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a helper needs a second CPU")
def test_a_command_busy_elsewhere_leaves_the_walk_to_its_helpers(tmp_path: Path) -> None:
    """Forked helpers take the subtrees as they go: a command that joins its walk late
    finds it done, and the result is still the one walk's."""
    varied_tree(tmp_path)
    proc = subprocess.run([sys.executable, "-c", BUSY_ELSEWHERE, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=True)
    walked = json.loads(proc.stdout)
    assert walked["shared"] == 1
    assert walked["walked_here"] == 0
    assert walked["paths"] == scan_tree(tmp_path).found.paths
