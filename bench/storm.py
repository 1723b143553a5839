"""Benchmark 12: event storms and scheduled passes in the service (issue 13).

1. **Event storm.** A generated tree of 100k small files (quick: 10k) is a git repository
   with two branches; `other` differs from `main` in 20k files (quick: 2k): 60% edited,
   20% deleted, 20% added (a quarter of them in new directories). `difysync run` watches
   the tree, synced on `main` (documents preloaded into the emulator and adopted by one
   reconcile, as for the no-op rows), with the default watch settings. Then
   `git checkout other`, and the service is left alone until the dataset matches the new
   tree and no mutating request has come for a while. Rows: the mutating requests by kind
   against the changed files (goal: one create per added file, one update per edited
   file, one delete per deleted file, no duplicate; difysync's metadata writes are counted
   apart), the time to convergence, and the service's peak RSS (VmRSS sampled every
   0.2 s from the checkout on) against its resting RSS (goal < 2x).
2. **Scheduled full pass.** On the same synced tree, before the storm: a service whose
   `schedule.full_reconcile_minutes` is 0.05 (3 s, below the 4 s from which the schedule
   adds jitter) runs scheduled full passes with nothing changed. Their duration is read
   from the state DB's `runs` table (started_at/finished_at, written by every whole pass;
   the service logs neither the end nor the duration of a pass). The floor is the one-shot
   quiet pass (`reconcile`, median of 3 after the pass that leaves the mark) minus the
   start-up of `python -m difysync --version` (goal: <= 1.0x).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    API_KEY,
    SUPPORTED,
    Context,
    Row,
    check_ok,
    difysync,
    make_small_tree,
    median_of,
    preload_documents,
    start_emulator,
    startup_seconds,
    write_config,
)

RSS_GOAL = 2.0            # peak RSS during the storm, at most this times the resting RSS
SCHEDULE_MINUTES = 0.05   # 3 s: the config allows any value > 0; below 4 s no jitter is added
SCHEDULED_PASSES = 3      # scheduled passes measured (after the service's start-up pass)
SETTLE_S = 10.0           # after "ready", before the resting RSS is sampled
QUIET_S = 12.0            # no mutating request for this long (> delete_delay_seconds, 10) = settled
SAMPLE_S = 0.2            # RSS sampling period during the storm
SHARE_EDIT, SHARE_DELETE = 0.6, 0.2  # of the changed files; the rest are added
GIT_ID = ["-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false",
          "-c", "gc.auto=0", "-c", "core.fsmonitor=false", "-c", "init.defaultBranch=main"]


# --------------------------------------------------------------------------- the repository


@dataclass
class Branches:
    """What `git checkout other` changes, as relative paths of supported files."""

    edited: set[str]
    deleted: set[str]
    added: set[str]

    @property
    def changed(self) -> int:
        return len(self.edited) + len(self.deleted) + len(self.added)


def _git(root: Path, *args: str) -> float:
    """Run git in ``root`` (no system or user config); returns its wall time."""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    t = time.perf_counter()
    done = subprocess.run(["git", *GIT_ID, "-C", str(root), *args], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr[-1000:]}")
    return time.perf_counter() - t


def _supported_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).as_posix()
        out.extend(f"{rel}/{f}" if rel != "." else f for f in sorted(files)
                   if f.rsplit(".", 1)[-1] in SUPPORTED)
    return out


def _new_paths(existing: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` new paths: three quarters in existing directories, a quarter in new ones."""
    dirs = sorted({p.rpartition("/")[0] for p in existing})
    out = []
    for i in range(n):
        ext = SUPPORTED[i % len(SUPPORTED)]
        if i % 4 == 3:
            top = dirs[(i // 200) % len(dirs)].split("/")[0]
            out.append(f"{top}/branch{(i // 200):03d}/new{i:07d}.{ext}")
        else:
            out.append(f"{rng.choice(dirs)}/g{i:07d}.{ext}")
    return out


def make_repo(root: Path, n_files: int, n_changes: int) -> tuple[Branches, dict[str, float]]:
    """The tree as a git repository on ``main``, with a branch ``other`` that differs from it
    in ``n_changes`` supported files; left checked out on ``main``. Returns the changes and
    the seconds each step took."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    make_small_tree(root, n_files, seed=12)
    times["generate"] = time.perf_counter() - t
    t = time.perf_counter()
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "--no-verify", "-m", "main")
    _git(root, "checkout", "-q", "-b", "other")
    rng = random.Random(13)
    files = _supported_files(root)
    picked = rng.sample(files, int(n_changes * (SHARE_EDIT + SHARE_DELETE)))
    n_edit = int(n_changes * SHARE_EDIT)
    changes = Branches(set(picked[:n_edit]), set(picked[n_edit:]),
                       set(_new_paths(files, n_changes - len(picked), rng)))
    for rel in changes.edited:
        with open(root / rel, "ab") as fh:
            fh.write(b"edited on branch other\n")
    for rel in changes.deleted:
        (root / rel).unlink()
    for i, rel in enumerate(sorted(changes.added)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"added on branch other {i}\n{rng.random()}\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "--no-verify", "-m", "other")
    _git(root, "checkout", "-q", "main")
    times["git"] = time.perf_counter() - t
    return changes, times


# --------------------------------------------------------------------------- the service


def _start(config: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DIFYSYNC_API_KEY": API_KEY}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "difysync", "run", "-c", str(config), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=out, cwd=config.parent)


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float = 900) -> float:
    started = time.monotonic()
    while "ready: first full pass" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() - started > timeout:
            raise RuntimeError(f"the service did not get ready: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return time.monotonic() - started


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _private_kb(pid: int) -> int:
    """Memory of ``pid`` no other process shares (its helpers are forks of the service)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return total


class RssSampler(threading.Thread):
    """VmRSS of ``pid`` every ``every`` seconds until stopped; keeps the peak. Also the
    peak of its child processes' private memory (the walk's standing helpers), apart."""

    def __init__(self, pid: int, every: float = SAMPLE_S) -> None:
        super().__init__(name="storm-rss", daemon=True)
        self.pid, self.every = pid, every
        self.peak_kb, self.samples, self.peak_at = 0, 0, 0.0
        self.helpers_peak_kb, self.helpers = 0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = _status_kb(self.pid, "VmRSS")
            if rss > self.peak_kb:
                self.peak_kb, self.peak_at = rss, time.time()
            children = _children(self.pid)
            self.helpers = max(self.helpers, len(children))
            self.helpers_peak_kb = max(self.helpers_peak_kb, sum(_private_kb(c) for c in children))
            self.samples += 1
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def _resting_rss_mb(pid: int, samples: int = 5) -> float:
    got = []
    for _ in range(samples):
        got.append(_status_kb(pid, "VmRSS") / 1024)
        time.sleep(1.0)
    return statistics.median(got)


def _runs(db: Path) -> dict[str, tuple[float, float]]:
    """kind -> (started_at, finished_at) of the state DB's last run rows."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return {kind: (start, end) for kind, start, end in
                    conn.execute("SELECT kind, started_at, finished_at FROM runs")}
    except sqlite3.Error:
        return {}


# --------------------------------------------------------------------------- goal 2: scheduled pass


@dataclass
class Scheduled:
    seconds: list[float]
    listings: int          # of the measured passes, how many listed the dataset
    list_calls: list[int]  # GET .../documents requests during each pass
    other_requests: list[int]


def _scheduled_config(config: Path) -> Path:
    text = config.read_text().replace("[[folders]]", f"[schedule]\nfull_reconcile_minutes = {SCHEDULE_MINUTES}\n"
                                                     "[[folders]]")
    out = config.with_name("sync-scheduled.toml")
    out.write_text(text)
    return out


def _collect_passes(proc: subprocess.Popen[bytes], db: Path, since: float, n: int,
                    timeout: float) -> tuple[list[tuple[float, float]], set[float]]:
    """The (started, finished) of the ``n`` whole passes after the service's start-up pass
    (the first one started after ``since``), and the started_at of every listing seen."""
    seen: list[tuple[float, float]] = []
    listings: set[float] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < n + 1:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"saw {len(seen) - 1} of {n} scheduled passes (service exit {proc.poll()})")
        runs = _runs(db)
        full = runs.get("full")
        if full is not None and full[0] >= since and full not in seen:
            seen.append(full)
        if "listing" in runs:
            listings.add(runs["listing"][0])
        time.sleep(0.1)
    time.sleep(0.5)
    listings.add(_runs(db).get("listing", (0.0, 0.0))[0])
    return seen[1:], listings


def measure_scheduled(ctx: Context, config: Path, emu: Any) -> Scheduled:
    cfg = _scheduled_config(config)
    log = config.parent / "service-scheduled.log"
    db = config.parent / "state.db"
    emu.reset_requests()
    since = time.time()
    proc = _start(cfg, log)
    try:
        _wait_ready(proc, log)
        passes, listings = _collect_passes(proc, db, since, SCHEDULED_PASSES, timeout=600)
    finally:
        _stop(proc)
    requests = emu.requests
    calls, others = [], []
    for start, end in passes:
        during = [r for r in requests if start <= r.at <= end]
        calls.append(sum(1 for r in during if r.method == "GET" and r.path.endswith("/documents")))
        others.append(len(during) - calls[-1])
    ctx.log(f"storm: scheduled passes {', '.join(f'{e - s:.2f} s' for s, e in passes)}")
    return Scheduled([end - start for start, end in passes], sum(1 for s, _ in passes if s in listings),
                     calls, others)


def scheduled_row(ctx: Context, config: Path, emu: Any, n_docs: int) -> Row:
    remote: list[str] = []

    def quiet() -> float:
        proc = difysync(config)
        remote.extend(check_ok(proc, "one-shot quiet pass").get("remote_checks", {}).values())
        return proc.seconds

    oneshot, runs = median_of(quiet, runs=3, warmup=1)  # the warm-up leaves the mark
    _bare, start_up = startup_seconds(runs=3)
    floor = oneshot - start_up
    got = measure_scheduled(ctx, config, emu)
    figure = statistics.median(got.seconds)
    ratio = figure / floor if floor > 0 else None
    row = Row(name=f"storm: scheduled full pass, nothing changed, {n_docs:,} documents", figure=figure, unit="s",
              floor=floor, floor_desc="one-shot quiet pass minus start-up", ratio=ratio, goal="<= 1.0x",
              met=ratio is not None and ratio <= 1.0)
    row.notes.append(f"{len(got.seconds)} scheduled passes (full_reconcile_minutes = {SCHEDULE_MINUTES}): "
                     f"{', '.join(f'{s:.3f}' for s in got.seconds)} s, from the state DB's runs rows (the "
                     "service logs no line at the end of a pass and no duration); one-shot quiet pass "
                     f"{oneshot:.3f} s (runs {', '.join(f'{s:.3f}' for s in runs)}; remote checks of the "
                     f"measured runs: {', '.join(remote[1:])}), `difysync --version` {start_up:.3f} s")
    kind = "full listings" if got.listings == len(got.seconds) else \
        "quiet probes" if got.listings == 0 else f"{got.listings} listings, the rest probes"
    row.notes.append(f"the scheduled passes were {kind}: GET .../documents calls per pass "
                     f"{got.list_calls}, other requests {got.other_requests} (a quiet probe is 7 requests, "
                     f"a listing ceil(documents/100) = {-(-n_docs // 100)})")
    return row


# --------------------------------------------------------------------------- goal 1: the storm


@dataclass
class Storm:
    checkout_s: float
    converged_s: float | None   # last mutating request after the checkout began
    matched_s: float | None     # first time the dataset matched the tree
    resting_mb: float
    peak_mb: float
    hwm_mb: float
    samples: int
    requests: list[Any]
    log_lines: list[dict[str, Any]]
    full_pass_after: bool       # a whole pass ran after the checkout (a rescan)
    t0: float                   # when the checkout began (time.time())
    mismatch: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _expected(root: Path) -> dict[str, str]:
    """document name -> sha256 of every supported file of the tree as it is now."""
    from difysync.naming import document_name

    return {document_name(rel): hashlib.sha256((root / rel).read_bytes()).hexdigest()
            for rel in _supported_files(root)}


def _mismatch(emu: Any, dataset_id: str, expected: dict[str, str]) -> str:
    """'' when the dataset holds exactly one document per file, with its content."""
    docs = emu.store.documents(dataset_id)
    names = Counter(d.name for d in docs)
    dupes = [n for n, c in names.items() if c > 1]
    missing = expected.keys() - names.keys()
    extra = names.keys() - expected.keys()
    if dupes or missing or extra:
        return (f"{len(docs)} documents for {len(expected)} files: {len(missing)} missing "
                f"{sorted(missing)[:3]}, {len(extra)} extra {sorted(extra)[:3]}, {len(dupes)} names twice "
                f"{sorted(dupes)[:3]}")
    stale = [d.name for d in docs if d.sha256 != expected[d.name]]
    return f"{len(stale)} documents with old content {sorted(stale)[:3]}" if stale else ""


def _wait_converged(proc: subprocess.Popen[bytes], emu: Any, dataset_id: str, expected: dict[str, str],
                    t0: float, timeout: float) -> tuple[float | None, float | None, str]:
    """Until the dataset matches and no mutating request came for QUIET_S seconds.
    Returns (last mutating request, first match, mismatch at the timeout) relative to t0."""
    matched: float | None = None
    problem = "not checked"
    while time.time() - t0 < timeout and proc.poll() is None:
        time.sleep(1.0)
        mutating = emu.mutating_requests()
        last = mutating[-1].at if mutating else t0
        problem = _mismatch(emu, dataset_id, expected)
        if problem:
            matched = None
            continue
        matched = matched or time.time()
        if time.time() - last >= QUIET_S:
            return last - t0, matched - t0, ""
    return None, None if matched is None else matched - t0, problem or "the service exited"


def _log_entries(log: Path, since: float) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("ts", 0) >= since:
            out.append(entry)
    return out


def measure_storm(ctx: Context, config: Path, emu: Any, dataset_id: str, root: Path, timeout: float) -> Storm:
    log = config.parent / "service-storm.log"
    db = config.parent / "state.db"
    proc = _start(config, log, "--log-format", "json")
    sampler: RssSampler | None = None
    try:
        ready = _wait_ready(proc, log)
        time.sleep(SETTLE_S)
        resting = _resting_rss_mb(proc.pid)
        ctx.log(f"storm: service ready after {ready:.0f} s, resting RSS {resting:.0f} MB; git checkout other")
        emu.reset_requests()
        sampler = RssSampler(proc.pid)
        sampler.start()
        t0 = time.time()
        checkout = _git(root, "checkout", "-q", "other")
        expected = _expected(root)
        converged, matched, problem = _wait_converged(proc, emu, dataset_id, expected, t0, timeout)
        sampler.stop()
        hwm = _status_kb(proc.pid, "VmHWM") / 1024
        full_after = _runs(db).get("full", (0.0, 0.0))[0] >= t0
    finally:
        if sampler is not None:
            sampler.stop()
        _stop(proc)
        if os.environ.get("DIFYSYNC_BENCH_LOGS"):  # keep the service's log for a post-mortem
            shutil.copy(log, Path(os.environ["DIFYSYNC_BENCH_LOGS"]) / log.name)
    return Storm(checkout, converged, matched, resting, sampler.peak_kb / 1024, hwm, sampler.samples,
                 emu.mutating_requests(), _log_entries(log, t0), full_after, t0, problem,
                 {"peak_at_s": sampler.peak_at - t0, "helpers": sampler.helpers,
                  "helpers_peak_mb": sampler.helpers_peak_kb / 1024})


def _kind(r: Any) -> str:
    path = r.path.rstrip("/")
    if "/metadata" in path:
        return "metadata"
    if "create_by_" in path or "create-by-" in path:
        return "create"
    if "update_by_" in path or "update-by-" in path:
        return "update"
    if r.method == "DELETE" and "/documents/" in path and "/segments" not in path:
        return "delete"
    return f"{r.method} {path.rsplit('/', 1)[-1]}"


def _duplicates(storm: Storm) -> tuple[list[str], dict[str, Counter]]:
    """What was done twice: a path created/updated/deleted more than once (the service's log
    lines), a document updated or deleted twice (the requests' paths)."""
    by_path: dict[str, Counter] = {}
    for e in storm.log_lines:
        if e.get("result") == "ok" and e.get("action") in ("create", "update", "delete", "rename", "recreate"):
            by_path.setdefault(e["action"], Counter())[e.get("path", "")] += 1
    found = [f"{action} of {p} x{c}" for action, counts in by_path.items() for p, c in counts.items() if c > 1]
    per_doc = Counter((k, r.path.rstrip("/").split("/")[-2 if k == "update" else -1])
                      for r in storm.requests if (k := _kind(r)) in ("update", "delete"))
    found += [f"{k} of document {d} x{c}" for (k, d), c in per_doc.items() if c > 1]
    return found, by_path


def _path_notes(by_path: dict[str, Counter], changes: Branches) -> list[str]:
    notes = []
    for action, want in (("create", changes.added), ("update", changes.edited), ("delete", changes.deleted)):
        got = set(by_path.get(action, Counter()))
        missing, extra = sorted(want - got), sorted(got - want)
        if missing or extra:
            notes.append(f"{action}: {len(missing)} changed files without one (e.g. {missing[:3]}), "
                         f"{len(extra)} other paths (e.g. {extra[:3]})")
    for action in ("rename", "recreate"):
        if by_path.get(action):
            notes.append(f"{sum(by_path[action].values())} {action}s, e.g. {sorted(by_path[action])[:3]}")
    return notes


def _odd_paths(by_path: dict[str, Counter], changes: Branches) -> set[str]:
    """The paths that got an action other than the one their change called for."""
    odd: set[str] = set()
    for action, want in (("create", changes.added), ("update", changes.edited), ("delete", changes.deleted)):
        odd |= set(by_path.get(action, Counter())) ^ want
    return odd


def _traces(storm: Storm, paths: set[str], limit: int = 3) -> list[str]:
    """The service's log lines about the first few odd paths, so that a row that is not met
    says what happened to them."""
    out = []
    for path in sorted(paths)[:limit]:
        lines = [e for e in storm.log_lines if path in (e.get("path"), e.get("old_path"))
                 or path in e.get("message", "")]
        told = "; ".join(f"{e.get('ts', 0) - storm.t0:.1f} s {e.get('level')} {e.get('message', '')[:160]!r}"
                         for e in lines[:12])
        out.append(f"log of {path}: {told or 'no line names it'}")
    return out


def _timeline(storm: Storm) -> str:
    """When each kind of request came (seconds after the checkout began), and the service's
    warnings and errors meanwhile."""
    t0 = storm.t0
    spans = []
    for kind in ("create", "update", "delete", "metadata"):
        at = [r.at - t0 for r in storm.requests if _kind(r) == kind]
        if at:
            spans.append(f"{kind} {min(at):.1f}-{max(at):.1f} s")
    bad = [e for e in storm.log_lines if e.get("level") in ("warning", "error", "critical")]
    told = f"; e.g. {bad[0].get('message', '')[:200]!r}" if bad else ""
    return f"requests after the checkout began: {', '.join(spans) or 'none'}; service warnings/errors: {len(bad)}{told}"


def storm_rows(storm: Storm, changes: Branches, n_files: int) -> list[Row]:
    kinds = Counter(_kind(r) for r in storm.requests)
    failed = Counter(_kind(r) for r in storm.requests if r.status >= 400 or r.dropped)
    sent = kinds["create"] + kinds["update"] + kinds["delete"]
    dupes, by_path = _duplicates(storm)
    exact = (kinds["create"], kinds["update"], kinds["delete"]) == \
        (len(changes.added), len(changes.edited), len(changes.deleted))
    others = {k: c for k, c in kinds.items() if k not in ("create", "update", "delete", "metadata")}
    req = Row(name=f"storm: mutating requests, git checkout of {changes.changed:,} changed files in {n_files:,}",
              figure=sent, unit="requests", floor=changes.changed, floor_desc="changed files",
              ratio=sent / changes.changed, goal="1 per changed file, by kind; no duplicate",
              met=exact and not dupes and not others and not storm.mismatch)
    req.notes.append(f"creates {kinds['create']} (added {len(changes.added)}), updates {kinds['update']} "
                     f"(edited {len(changes.edited)}), deletes {kinds['delete']} (deleted {len(changes.deleted)}); "
                     f"metadata writes apart: {kinds['metadata']}; other mutating requests: {others or 'none'}; "
                     f"answered >= 400 or dropped: {dict(failed) or 'none'}")
    req.notes.append(f"duplicates: {len(dupes)}" + (f" ({'; '.join(dupes[:5])})" if dupes else ""))
    req.notes.extend(_path_notes(by_path, changes))
    req.notes.extend(_traces(storm, _odd_paths(by_path, changes)))
    if storm.mismatch:
        req.notes.append(f"NOT CONVERGED: {storm.mismatch}")
    conv = Row(name=f"storm: convergence after git checkout, {changes.changed:,} changed files",
               figure=storm.converged_s, unit="s", goal="reported (the dataset matches the tree)", met=None)
    conv.notes.append(f"git checkout took {storm.checkout_s:.1f} s; the dataset first matched the tree "
                      f"{storm.matched_s if storm.matched_s is None else round(storm.matched_s, 1)} s after it "
                      f"began; figure = its last mutating request; a whole pass (rescan) ran after the "
                      f"checkout: {'yes' if storm.full_pass_after else 'no'}; watch defaults (debounce 3 s, "
                      f"delete delay 10 s)")
    conv.notes.append(_timeline(storm))
    ratio = storm.peak_mb / storm.resting_mb if storm.resting_mb else None
    rss = Row(name="storm: peak RSS during the storm", figure=storm.peak_mb, unit="MB", floor=storm.resting_mb,
              floor_desc="resting RSS", ratio=ratio, goal=f"< {RSS_GOAL:g}x", met=ratio is not None and ratio < RSS_GOAL)
    rss.notes.append(f"VmRSS sampled every {SAMPLE_S} s ({storm.samples} samples) from the checkout on; "
                     f"resting = median of 5 samples {SETTLE_S:.0f} s after ready; the peak came "
                     f"{storm.extra.get('peak_at_s', 0):.1f} s after the checkout began; VmHWM at the end "
                     f"{storm.hwm_mb:.0f} MB (includes the start-up pass)")
    rss.notes.append(f"the service's walk helpers (walkshare.py: {storm.extra.get('helpers', 0)} process(es), "
                     f"not in the figure): peak private memory {storm.extra.get('helpers_peak_mb', 0):.1f} MB "
                     f"(smaps_rollup Private_Clean + Private_Dirty; the rest of theirs is shared with the service)")
    return [req, conv, rss]


# --------------------------------------------------------------------------- run


def run(ctx: Context) -> list[Row]:
    n_files, n_changes = (10_000, 2_000) if ctx.quick else (100_000, 20_000)
    work = ctx.sub("storm")
    root = work / "docs"
    root.mkdir(exist_ok=True)
    changes, times = make_repo(root, n_files, n_changes)
    ctx.log(f"storm: {n_files:,} files generated in {times['generate']:.0f} s, git repository with branch "
            f"'other' ({changes.changed:,} changes) in {times['git']:.0f} s")
    emu = start_emulator()
    try:
        dataset_id = emu.store.create_dataset(f"storm-{n_files}", "high_quality")
        config = write_config(work, emu, root, dataset_id, concurrency=8)
        docs = preload_documents(emu, dataset_id, root)
        out = check_ok(difysync(config), f"adopting pass over {n_files} files")
        ctx.log(f"storm: {docs:,} documents preloaded and adopted ({out.get('unchanged')} unchanged)")
        scheduled = scheduled_row(ctx, config, emu, docs)
        storm = measure_storm(ctx, config, emu, dataset_id, root, timeout=180 if ctx.quick else 1800)
        rows = storm_rows(storm, changes, n_files)
        rows[1].notes.append(f"tree generated in {times['generate']:.1f} s, git repository and branch in "
                             f"{times['git']:.1f} s")
        return rows + [scheduled]
    finally:
        emu.stop()
        shutil.rmtree(work, ignore_errors=True)
