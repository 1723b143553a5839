"""Shared helpers for the difysync benchmarks: data generation, an in-process emulator,
config files, timing (warm-up + median), and a subprocess runner that reports the
child's own peak RSS (GNU time, else polling /proc/PID/status VmHWM).

Every figure is reported against a floor measured in the same run on the same data,
because the benchmark machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_KEY = "bench-key"
OWNER = "bench"  # the owner of every config the bench writes (difysync_owner on its documents)
SUPPORTED = ("md", "txt", "csv", "html")
UNSUPPORTED = ("png",)

_WORDS = ("alpha beta gamma delta sync folder dataset knowledge document index segment "
          "reconcile mirror upload hash state emulator python latency throughput").split()


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One line of the results table."""

    name: str
    figure: float | None
    unit: str
    floor: float | None = None
    floor_desc: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "figure": self.figure, "unit": self.unit, "floor": self.floor,
                "floor_desc": self.floor_desc, "ratio": self.ratio, "goal": self.goal,
                "met": self.met, "notes": self.notes}


@dataclass
class Context:
    """What every benchmark gets: a scratch dir, the size switch, a log function."""

    tmp: Path
    quick: bool
    log: Callable[[str], None]
    notes: list[str] = field(default_factory=list)  # context lines printed under the table

    def sub(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d


# --------------------------------------------------------------------------- machine


def machine_line(tmp: Path) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = cores
    fs = filesystem_of(tmp)
    # No path of this machine in results that get committed: the interpreter relative to
    # the working directory, the scratch dir by the filesystem it is on.
    try:
        python = os.path.relpath(sys.executable)
    except ValueError:
        python = Path(sys.executable).name
    return (f"{cpu}; {cores} cores ({affinity} usable); Python {platform.python_version()} "
            f"({python}); temp dir on {fs}; {platform.system()} {platform.release()}")


def filesystem_of(path: Path) -> str:
    """fstype of the mount holding ``path`` (longest matching mount point in /proc/mounts)."""
    best, fstype, dev = "", "unknown", ""
    real = os.path.realpath(path)
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1].replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype, dev = mnt, parts[2], parts[0]
    except OSError:
        pass
    return f"{fstype} ({dev} at {best})" if best else fstype


# --------------------------------------------------------------------------- data


def tree_dirs(n_dirs: int) -> list[str]:
    """``n_dirs`` relative leaf directories, nested 3 levels deep (a/b/c)."""
    side = max(2, round(n_dirs ** (1 / 3) + 0.4999))
    out = []
    for i in range(n_dirs):
        a, rest = divmod(i, side * side)
        b, c = divmod(rest, side)
        out.append(f"top{a:02d}/mid{b:02d}/leaf{c:02d}")
    return out


def make_small_tree(root: Path, n_files: int, *, per_dir: int = 50, unsupported: float = 0.05,
                    seed: int = 1) -> dict[str, int]:
    """A tree of ``n_files`` small files: ~``per_dir`` files per leaf directory, three
    levels deep, mixed md/txt/csv/html and ``unsupported`` (share) .png. Returns counts."""
    rng = random.Random(seed)
    n_dirs = max(1, -(-n_files // per_dir))
    dirs = tree_dirs(n_dirs)
    counts = {"files": 0, "supported": 0, "unsupported": 0, "bytes": 0}
    made: set[str] = set()
    for i in range(n_files):
        d = dirs[i % n_dirs]
        if d not in made:
            (root / d).mkdir(parents=True, exist_ok=True)
            made.add(d)
        if rng.random() < unsupported:
            ext = rng.choice(UNSUPPORTED)
            data = b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randint(200, 2000))
            counts["unsupported"] += 1
        else:
            ext = SUPPORTED[i % len(SUPPORTED)]
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 300)))
            data = f"file {i}\n{words}\n".encode()
            counts["supported"] += 1
        (root / d / f"f{i:07d}.{ext}").write_bytes(data)
        counts["files"] += 1
        counts["bytes"] += len(data)
    return counts


def make_big_tree(root: Path, total_bytes: int, *, min_mb: int = 1, max_mb: int = 15,
                  seed: int = 2) -> list[Path]:
    """Files of ``min_mb``..``max_mb`` MB of random content (.txt) totalling ``total_bytes``."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    left, i = total_bytes, 0
    block = 1 << 20
    while left > 0:
        size = min(left, rng.randint(min_mb, max_mb) * block)
        p = root / f"sub{i % 8}" / f"blob{i:04d}.txt"
        p.parent.mkdir(exist_ok=True)
        with open(p, "wb") as fh:
            written = 0
            while written < size:
                n = min(block, size - written)
                fh.write(os.urandom(n))
                written += n
        paths.append(p)
        left -= size
        i += 1
    return paths


def tree_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


# --------------------------------------------------------------------------- emulator


def start_emulator(*, indexing_delay: float = 0.0, latency: float = 0.0):  # -> EmulatorServer
    from difysync.emulator import EmulatorServer
    from difysync.emulator.faults import Faults

    emu = EmulatorServer(api_key=API_KEY, indexing_delay=indexing_delay, faults=Faults(latency=latency))
    return emu.start()


def write_config(where: Path, emu: Any, root: Path, dataset_id: str, *, concurrency: int = 4,
                 state_db: str = "state.db", extra_dify: str = "") -> Path:
    """A sync.toml in ``where`` for one folder (written like tests/sandbox.py does)."""
    cfg = where / "sync.toml"
    cfg.write_text(
        f'state_db = "{state_db}"\n'
        f'owner = "{OWNER}"\n'
        "[dify]\n"
        f'base_url = "{emu.base_url}"\n'
        f"concurrency = {concurrency}\n"
        "timeout_seconds = 30\n"
        f"{extra_dify}\n"
        "[[folders]]\n"
        f'path = "{root}"\n'
        f'dataset_id = "{dataset_id}"\n', encoding="utf-8")
    return cfg


# --------------------------------------------------------------------------- running


@dataclass
class Proc:
    rc: int
    seconds: float
    max_rss_kb: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0  # user + system, the processes it waited for included (its walk helpers)

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


GNU_TIME = "/usr/bin/time"


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _child_env() -> dict[str, str]:
    """The bench's environment for its children, with Python's bytecode cache on.

    An installed difysync has its bytecode compiled (pip does it at install), so no user
    compiles its sources at every start. A machine with PYTHONDONTWRITEBYTECODE set (this
    one is) would make every run recompile them: about 0.1 s that no user pays. The
    children write and read their bytecode under the bench's own scratch directory."""
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "difysync-bench-pycache"))
    # The settings each config's first run validates and keeps (settingsfile.py) go to a
    # cache of the bench's own, not to the user's.
    env["XDG_CACHE_HOME"] = os.path.join(tempfile.gettempdir(), "difysync-bench-cache")
    env.pop("CACHE_DIRECTORY", None)
    return env


_CHILD_ENV = _child_env()


def run_proc(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
             stdout_devnull: bool = False, timeout: float | None = None) -> Proc:
    """Run ``argv``, wall-time it, and measure its peak RSS.

    Not from the parent's ``wait4``/``RUSAGE_CHILDREN``: on Linux a child started by
    vfork/fork+exec inherits the *parent's* RSS high-water mark at exec, so with a big
    emulator in the bench process every child would read ~ the bench's own RSS. GNU
    ``/usr/bin/time -f %M`` (a small process of its own) reports the true figure; without
    it, /proc/PID/status VmHWM is polled every 10 ms (may miss a final short peak).
    """
    full_env = {**_CHILD_ENV, **(env or {})}
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        cmd = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv] if use_time else argv
        started = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if stdout_devnull else out, stderr=err,
                             env=full_env, cwd=cwd)
        hwm = 0
        try:
            deadline = None if timeout is None else started + timeout
            while True:
                pid, status, _usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if not use_time:
                    hwm = max(hwm, _vm_hwm_kb(p.pid))
                if deadline is not None and time.perf_counter() > deadline:
                    p.kill()
                    _, status, _usage = os.wait4(p.pid, 0)
                    break
                time.sleep(0.002 if use_time else 0.01)
        except BaseException:
            p.kill()
            raise
        elapsed = time.perf_counter() - started
        cpu = _usage.ru_utime + _usage.ru_stime
        p.returncode = os.waitstatus_to_exitcode(status)
        if use_time:
            lines = [ln for ln in Path(rss_file.name).read_text().splitlines() if ln.strip().isdigit()]
            hwm = int(lines[-1]) if lines else 0
        out.seek(0)
        err.seek(0)
        return Proc(p.returncode, elapsed, hwm, out.read().decode("utf-8", "replace"),
                    err.read().decode("utf-8", "replace"), cpu)


def difysync(config: Path, *args: str, timeout: float | None = None) -> Proc:
    """``python -m difysync reconcile -c CONFIG --json [args]`` as a real subprocess."""
    return run_proc([sys.executable, "-m", "difysync", "reconcile", "-c", str(config), "--json", *args],
                    env={"DIFYSYNC_API_KEY": API_KEY}, cwd=config.parent, timeout=timeout)


def check_ok(proc: Proc, what: str) -> dict[str, Any]:
    try:
        data = proc.json
    except ValueError:
        data = {}
    if proc.rc != 0:
        raise RuntimeError(f"{what}: difysync exited {proc.rc}: {proc.stderr[-2000:]}"
                           f" / {proc.stdout[-500:]}")
    return data


def median_of(fn: Callable[[], float], runs: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Call ``fn`` (returns seconds) ``warmup`` times unmeasured, then ``runs`` times;
    return (median, all measured)."""
    for _ in range(warmup):
        fn()
    times = [fn() for _ in range(runs)]
    return statistics.median(times), times


def drop_caches() -> bool:
    """Drop the page cache (needs root outside a restricting container). True if done."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def startup_seconds(runs: int = 5) -> tuple[float, float]:
    """Median wall time of ``python -c pass`` and of ``python -m difysync --version``."""
    bare, _ = median_of(lambda: run_proc([sys.executable, "-c", "pass"]).seconds, runs=runs)
    ver, _ = median_of(lambda: run_proc([sys.executable, "-m", "difysync", "--version"]).seconds, runs=runs)
    return bare, ver


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def preload_documents(emu: Any, dataset_id: str, root: Path) -> int:
    """Put every supported file of ``root`` into the emulator directly (no HTTP), named as
    difysync names them, with identical content and with the metadata difysync would have
    written (owner OWNER): a following reconcile adopts them (no upload). Used to build the
    synced state of big trees quickly. Returns the count."""
    import hashlib

    from difysync import tags
    from difysync.naming import document_name

    fields = {name: emu.store.create_metadata(dataset_id, kind, name)["id"] for name, kind in tags.FIELDS}
    operations = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            ext = name.rsplit(".", 1)[-1].lower()
            if ext not in SUPPORTED:
                continue
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            content = p.read_bytes()
            doc, _ = emu.store.add_document(dataset_id, document_name(rel), content, match_by_name=False)
            op = tags.operation(doc.id, tags.expected(rel, hashlib.sha256(content).hexdigest(), OWNER,
                                                      p.stat().st_mtime_ns), fields)
            operations.append((doc.id, [(m["id"], m["name"], m["value"]) for m in op["metadata_list"]], True))
    emu.store.update_documents_metadata(dataset_id, operations)
    return len(operations)


# --------------------------------------------------------------------------- shared synced trees


@dataclass
class SyncedTree:
    """A small-file tree already mirrored into a running emulator (reused by benchmarks)."""

    n_files: int
    root: Path
    config: Path
    emu: Any
    dataset_id: str
    counts: dict[str, int]
    build_seconds: float
    build_how: str
    documents: int


_SYNCED: dict[int, SyncedTree] = {}

# Above this many files the synced state is built by preloading the emulator and letting
# one reconcile adopt the documents; below it, by a real import over HTTP (--quick:
# always preloaded, to stay within a minute).
HTTP_IMPORT_MAX = 20_000


def synced_tree(ctx: Context, n_files: int) -> SyncedTree:
    """A tree of ``n_files`` small files whose synced state is built once per run."""
    if n_files in _SYNCED:
        return _SYNCED[n_files]
    where = ctx.sub(f"synced-{n_files}")
    root = where / "docs"
    root.mkdir(exist_ok=True)
    t = time.perf_counter()
    counts = make_small_tree(root, n_files)
    ctx.log(f"generated {n_files} files in {time.perf_counter() - t:.1f} s")
    emu = start_emulator()
    dataset_id = emu.store.create_dataset(f"bench-{n_files}", "high_quality")
    config = write_config(where, emu, root, dataset_id, concurrency=8)
    if n_files <= HTTP_IMPORT_MAX and not ctx.quick:
        how = "HTTP import, concurrency 8"
        proc = difysync(config)
        check_ok(proc, f"import of {n_files} files")
        seconds = proc.seconds
    else:
        how = "emulator preloaded directly, then one reconcile adopts (no upload)"
        t = time.perf_counter()
        preload_documents(emu, dataset_id, root)
        pre = time.perf_counter() - t
        proc = difysync(config)
        out = check_ok(proc, f"adoption of {n_files} files")
        seconds = proc.seconds
        how += f"; preload {pre:.1f} s, adopting reconcile {proc.seconds:.1f} s ({out.get('unchanged')} unchanged)"
    docs = len(emu.store.documents(dataset_id))
    ctx.log(f"synced state for {n_files} files ({docs} documents): {seconds:.1f} s ({how})")
    tree = SyncedTree(n_files, root, config, emu, dataset_id, counts, seconds, how, docs)
    _SYNCED[n_files] = tree
    return tree


def stop_all() -> None:
    for tree in _SYNCED.values():
        try:
            tree.emu.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    _SYNCED.clear()
