"""`difysync status`: a status that tells the truth. `--refresh` asks Dify about what is
pending and records it (and nothing is sent without it); dataset names, not ids; a
table that fits 80 columns, red and yellow on a terminal only; `status PATH` for one
file; `--json` with exactly the keys docs/status-json.md lists, ISO 8601 times and
reason codes. Over real HTTP against one emulator for the module, real SQLite, the real
CLI (in-process, and in a pty for the terminal)."""

from __future__ import annotations

import io
import itertools
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fcntl
import pytest
from rich.cells import cell_len
from rich.console import Console

from difysync.emulator import EmulatorServer
from difysync.models import ErrorKind
from difysync.report import print_status
from difysync.state import FolderSummary, ProblemFile, StateStore

from .sandbox import Sandbox

DOC = Path(__file__).resolve().parent.parent / "docs" / "status-json.md"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RED, YELLOW = "\x1b[31m", "\x1b[33m"
_numbers = itertools.count(1)


def unique(name: str) -> str:
    """A dataset name no other test of the module's emulator has used."""
    return f"{name} {next(_numbers)}"


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def box(tmp_path: Path, emu: EmulatorServer) -> Iterator[Sandbox]:
    """A folder synced by dataset_id into its own dataset of the shared emulator."""
    emu.store.indexing_delay = 0.0
    emu.store.fail_patterns = []
    yield Sandbox(tmp_path, emu, dataset_name=unique("Team docs"))
    emu.store.indexing_delay = 0.0
    emu.store.fail_patterns = []


def status(box: Sandbox, *args: str):
    return box.cli("status", "-c", str(box.config), *args)


def folder_json(box: Sandbox, *args: str) -> dict:
    result = status(box, "--json", *args)
    assert result.code == 0, result.stderr
    (folder,) = result.json["folders"]
    return folder


# --- --refresh ------------------------------------------------------------------------


def test_status_without_refresh_sends_nothing_to_dify(box):
    box.write("a.md", "a")
    box.write("b.png", "b")
    assert box.reconcile().code == 0
    box.emu.reset_requests()
    for args in ((), ("--json",), ("a.md",), ("a.md", "--json")):
        assert status(box, *args).code == 0
    assert box.emu.requests == []


def test_refresh_moves_a_pending_document_to_completed_once_dify_has_indexed_it(box):
    box.emu.store.indexing_delay = 3600  # Dify is slow today
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    assert folder_json(box)["pending"] == 1
    box.emu.store.indexing_delay = 0  # ... and now it has indexed everything
    assert folder_json(box)["pending"] == 1  # the state DB alone does not know that

    box.emu.reset_requests()
    result = status(box, "--refresh", "--json")

    assert result.code == 0, result.stderr
    assert result.json["refresh"] == {"asked": 1, "changed": 1, "answers": {"completed": 1}, "names": 1,
                                      "ok": True, "error": None}
    (folder,) = result.json["folders"]
    assert (folder["synced"], folder["pending"], folder["indexing"]) == (1, 0, 0)
    # The cost: one indexing-status request for the one upload batch, one dataset listing
    # for the name of a dataset configured by id; nothing else, nothing written in Dify.
    assert [r.method for r in box.emu.requests] == ["GET", "GET"]
    assert box.emu.count(path_contains="indexing-status") == 1
    # Recorded: a plain status (which sends nothing) says so from now on.
    assert folder_json(box)["synced"] == 1


def test_refresh_of_a_path_asks_only_about_that_file(box):
    box.emu.store.indexing_delay = 3600
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    box.write("b.md", "b")
    assert box.reconcile().code == 0  # a second upload batch
    box.emu.store.indexing_delay = 0
    box.emu.reset_requests()

    result = status(box, "a.md", "--refresh", "--json")

    (file,) = result.json["files"]
    assert (file["state"], file["indexing_status"]) == ("synced", "completed")
    assert result.json["refresh"]["asked"] == 1
    assert box.emu.count(path_contains="indexing-status") == 1
    assert folder_json(box)["pending"] == 1  # b.md was not asked about


def test_refresh_writes_no_status_over_a_newer_upload_of_the_same_document(tmp_path):
    # Given a row that a pass updated (new batch) after status --refresh asked about it
    with StateStore(tmp_path / "state.db") as store:
        store.settle_upload(None, "/f", "ds", "a.md", document_id="d", document_name="a.md", batch="new",
                            sha256="x", size=1, mtime_ns=1, inode=1, indexing_status="waiting")
        # When the answer about the old batch arrives, then it is not written
        assert store.record_refreshed("/f", {"d": ("completed", None)}, {"d": "old"}) == 0
        assert store.load_folder("/f")["a.md"].indexing_status == "waiting"
        assert store.record_refreshed("/f", {"d": ("completed", None)}, {"d": "new"}) == 1
        assert store.load_folder("/f")["a.md"].indexing_status == "completed"


def test_a_refresh_that_cannot_reach_dify_says_so_shows_the_state_db_and_exits_69(box):
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    box.config.write_text(box.config.read_text().replace(box.emu.base_url, "http://127.0.0.1:9/v1"))

    result = status(box, "--refresh")

    assert result.code == 69
    assert "refresh from Dify failed" in result.stderr and "showing what the state DB says" in result.stderr
    assert "synced" in result.stdout and "Traceback" not in result.stderr


# --- names ------------------------------------------------------------------------------


def test_the_table_names_a_dataset_found_by_name(tmp_path, emu):
    name = unique("Engineering handbook")
    box = Sandbox(tmp_path, emu, dataset_name=name, by_name=True)
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    table = status(box).stdout
    assert name in " ".join(table.split())
    assert box.dataset not in table
    assert folder_json(box)["dataset_name"] == name


def test_a_dataset_configured_by_id_is_named_once_refresh_has_asked_and_remembered_after(box):
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    before = status(box).stdout
    assert box.dataset not in before  # not the UUID, which would not fit
    assert f"(id {box.dataset[:8]}…)" in before and "status --refresh" in before
    assert folder_json(box)["dataset_name"] is None

    assert status(box, "--refresh").code == 0

    box.emu.reset_requests()
    after = status(box).stdout
    assert box.emu.requests == []
    assert box.emu.store.get_dataset(box.dataset).name in " ".join(after.split())
    assert folder_json(box)["dataset_name"] == box.emu.store.get_dataset(box.dataset).name


def test_a_configured_folder_that_was_never_synced_is_shown_as_never(box, tmp_path):
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    (tmp_path / "later").mkdir()
    box.config.write_text(box.config.read_text() + '[[folders]]\npath = "later"\ndataset_name = "Later"\n')
    folders = {f["folder"]: f for f in status(box, "--json").json["folders"]}
    later = folders[str(tmp_path / "later")]
    assert (later["dataset_name"], later["synced"], later["last_full_reconcile"]) == ("Later", 0, None)


# --- the table: 80 columns, colour on a terminal only ----------------------------------

LONG_FOLDER = "/srv/knowledge/engineering-department/handbooks/platform-team/current"
SUMMARIES = [
    FolderSummary(folder=LONG_FOLDER, dataset_id="0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", synced=123456,
                  pending=12, indexing=3, error=2, skipped=4321, last_full_reconcile=time.time() - 7200,
                  last_full_listing=time.time() - 9000, journal=1, last_attempt=time.time() - 60,
                  last_attempt_ok=False, last_attempt_error="server unreachable: connection refused"),
    FolderSummary(folder="/srv/docs", dataset_id=None, synced=0, pending=0, indexing=0, error=0, skipped=0,
                  last_full_reconcile=None, last_full_listing=None, journal=0),
]
NAMES = {LONG_FOLDER: "Platform team handbook (current edition)", "/srv/docs": None}
PROBLEMS = [ProblemFile(LONG_FOLDER, "guides/deployment/kubernetes/rolling-upgrades-without-downtime.md",
                        "error", "indexing failed in Dify: the embedding model is not available", "indexing_failed"),
            ProblemFile(LONG_FOLDER, "pics/diagram.png", "skipped", "unsupported file type (.png)",
                        "unsupported_type")]


def render(**console_options) -> str:
    out = io.StringIO()
    console = Console(file=out, width=80, highlight=False, **console_options)
    print_status(SUMMARIES, PROBLEMS, names=NAMES, owner="host-a", console=console)
    return out.getvalue()


def test_the_table_fits_80_columns_and_breaks_no_word_of_its_essential_columns():
    lines = render().splitlines()

    assert max(cell_len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("folder / dataset"))
    assert header.split()[-8:] == ["synced", "pending", "indexing", "error", "skipped", "last", "ok", "pass"]
    row = next(line for line in lines if "123456" in line)
    assert row.split()[-8:] == ["123456", "12", "3", "2", "4321", "2", "h", "ago"]  # counts and age whole
    # The long folder path breaks only after a slash, and reads whole when joined.
    table = "\n".join(lines)
    pieces = [line.split("  ")[0].strip() for line in lines[lines.index(header) + 2:]][:4]
    assert "".join(pieces) == LONG_FOLDER and all(p.endswith("/") for p in pieces[:3])
    assert "Platform team handbook" in " ".join(table.split())
    # The files table: the path breaks at its slashes, the reason at spaces only.
    words = set(table.split())
    assert set("indexing failed in Dify: the embedding model is not available".split()) <= words
    assert "rolling-upgrades-without-downtime.md" in words


def test_errors_are_red_and_warnings_yellow_on_a_terminal_and_there_is_no_colour_without_one():
    coloured = render(force_terminal=True, color_system="standard")
    assert RED in coloured and YELLOW in coloured
    red_line = next(line for line in coloured.splitlines() if "server unreachable" in line)
    assert red_line.startswith(RED) and "failed: server unreachable" in ANSI.sub("", red_line)
    plain = render(force_terminal=False)
    assert "\x1b[" not in plain
    assert ANSI.sub("", coloured).splitlines() == plain.splitlines()


def test_in_a_terminal_of_80_columns_no_line_is_longer_and_errors_are_red(box):
    box.write("a.md", "a")
    box.write("b.png", "b")
    assert box.reconcile().code == 0
    with StateStore(box.tmp / "state.db") as store:
        store.settle_failure(None, str(box.root), box.dataset, "c.md", "create 'c.md': 503 server error",
                             ErrorKind.REQUEST_FAILED)

    output = run_in_pty(box, ["status", "-c", str(box.config)], columns=80)

    text = ANSI.sub("", output).replace("\r", "")
    assert max(cell_len(line) for line in text.splitlines()) <= 80, text
    assert RED in output and YELLOW in output  # the error count and c.md red, b.png yellow
    assert "create 'c.md': 503 server error" in " ".join(text.split())
    assert status(box).stdout.count("\x1b[") == 0  # no terminal: no colour


def run_in_pty(box: Sandbox, args: list[str], columns: int) -> str:
    """The CLI as a subprocess on a pseudo-terminal of ``columns`` x 24."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES")}
    env.update(box.env, TERM="xterm-256color", COLUMNS=str(columns))
    proc = subprocess.Popen([sys.executable, "-m", "difysync", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=box.tmp, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0
    return b"".join(chunks).decode("utf-8", "replace")


# --- status PATH ------------------------------------------------------------------------


def test_status_path_describes_a_synced_file_by_the_path_status_prints_or_on_disk(box):
    box.write("guides/install.md", "install it")
    assert box.reconcile("--wait").code == 0
    doc = box.docs()["guides∕install.md"]

    for path in ("guides/install.md", str(box.root / "guides" / "install.md")):
        (file,) = status(box, path, "--json").json["files"]
        assert (file["path"], file["state"], file["indexing_status"]) == ("guides/install.md", "synced", "completed")
        assert file["document_id"] == doc.id and file["document_name"] == "guides∕install.md"
        assert file["sha256"] == doc.sha256 and file["size"] == len("install it")
        assert file["on_disk"]["changed"] is False and file["journal"] is None

    text = status(box, "guides/install.md")
    assert text.code == 0
    for expected in (doc.id, doc.sha256, "synced", "completed", "10 bytes", "as recorded"):
        assert expected in text.stdout


def test_status_path_gives_a_skip_reason_with_its_code(box):
    box.write("diagram.png", "png")
    assert box.reconcile().code == 0
    (file,) = status(box, "diagram.png", "--json").json["files"]
    assert (file["state"], file["skip_code"], file["skip_reason"]) == (
        "skipped", "unsupported_type", "unsupported file type (.png)")
    assert file["document_id"] is None
    assert "unsupported file type (.png) (unsupported_type)" in status(box, "diagram.png").stdout


def test_status_path_tells_a_quarantined_file_and_its_attempts(tmp_path, emu):
    box = Sandbox(tmp_path, emu, dataset_name=unique("Quarantine"), extra_dify="quarantine_after = 2")
    emu.store.fail_patterns = ["poison*"]
    try:
        box.write("poison.md", "this breaks the embedder")
        for _ in range(4):
            box.reconcile()
    finally:
        emu.store.fail_patterns = []
    (file,) = status(box, "poison.md", "--json").json["files"]
    assert (file["state"], file["skip_code"], file["quarantine_after"]) == ("skipped", "quarantined", 2)
    assert file["attempts"] >= 2 and file["indexing_status"] == "error"
    text = " ".join(status(box, "poison.md").stdout.split())
    assert "quarantined after" in text and "difysync retry" in text


def test_status_path_shows_a_request_begun_and_not_settled(box):
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    with StateStore(box.tmp / "state.db") as store:
        store.journal_begin(str(box.root), box.dataset, "update", "a.md", "a.md", "doc-1", "f" * 64)
    (file,) = status(box, "a.md", "--json").json["files"]
    assert file["journal"]["op"] == "update" and ISO.match(file["journal"]["started_at"])
    assert "update begun" in status(box, "a.md").stdout


def test_status_of_a_directory_lists_its_files(box):
    box.write("sub/a.md", "a")
    box.write("sub/b.png", "b")
    assert box.reconcile("--wait").code == 0
    files = status(box, "sub", "--json").json["files"]
    assert [(f["path"], f["state"]) for f in files] == [("sub/a.md", "synced"), ("sub/b.png", "skipped")]
    text = status(box, "sub").stdout
    assert "sub/a.md" in text and "unsupported file type" in text


@pytest.mark.parametrize(("path", "says"), [
    ("nowhere/else.md", "neither inside a configured folder"),
    ("/etc/hostname", "neither inside a configured folder"),
    ("DOCS/gone.md", "no such file, and difysync has no record of it"),
    ("DOCS/new.md", "on disk, but difysync has no record of it"),
])
def test_status_of_an_unknown_path_is_one_line_and_exit_1(box, path, says):
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    box.write("new.md", "written after the pass")
    result = status(box, path.replace("DOCS", str(box.root)))
    assert result.code == 1
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1 and says in result.stderr


# --- --json: the documented schema --------------------------------------------------------


def documented(section: str) -> set[str]:
    """The keys of one table of docs/status-json.md, by its heading."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", body, flags=re.MULTILINE))


def keys(obj: dict, prefix: str = "") -> set[str]:
    """An object's keys, with those of nested objects as ``outer.inner``."""
    out = set()
    for key, value in obj.items():
        out.add(prefix + key)
        if isinstance(value, dict) and prefix + key in NESTED:
            out |= keys(value, prefix + key + ".")
    return out


NESTED = {"on_disk", "journal"}


def test_status_json_has_exactly_the_documented_keys(box):
    box.write("a.md", "a")
    box.write("b.png", "b")
    box.emu.store.indexing_delay = 3600
    assert box.reconcile().code == 0
    box.emu.store.indexing_delay = 0

    out = status(box, "--json", "--refresh").json

    assert set(out) == documented("Top level (`status --json`)")
    assert set(out["folders"][0]) == documented("A folder (`folders[]`)")
    assert set(out["problems"][0]) == documented("A problem (`problems[]`)")
    assert set(out["refresh"]) == documented("The refresh (`refresh`)")
    box.emu.store.indexing_delay = 3600
    box.write("c.md", "c")
    assert box.reconcile().code == 0
    assert set(status(box, "--json").json["in_flight"][0]) == documented("A document in flight (`in_flight[]`)")
    with StateStore(box.tmp / "state.db") as store:
        store.journal_begin(str(box.root), box.dataset, "update", "a.md", "a.md", "doc-1", "f" * 64)
    one = status(box, "a.md", "--json").json
    assert set(one) == documented("Top level (`status PATH --json`)")
    assert keys(one["files"][0]) == documented("A file (`files[]`)")


def test_a_holder_has_the_documented_keys():
    from difysync.lease import Holder
    from difysync.statusview import holder_json

    since = datetime(2026, 12, 2, 3, 4, 5, 500000, tzinfo=timezone.utc).timestamp()
    shown = holder_json(Holder(pid=42, host="host-a", since=since, what="difysync run"))
    assert set(shown) == documented("A holder (`service`, `writing`)")
    assert shown["since"] == "2026-12-02T03:04:05.500Z"


def test_status_json_times_are_iso_8601_in_utc_and_codes_stand_beside_the_reasons(box):
    box.write("a.md", "a")
    box.write("b.png", "b")
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    assert box.reconcile().code == 0
    out = status(box, "--json").json
    (folder,) = out["folders"]
    times = [out["generated_at"]] + [folder[k] for k in ("last_full_reconcile", "last_full_listing", "last_attempt")]
    for value in times:
        assert ISO.match(value), value
        assert before <= datetime.fromisoformat(value.replace("Z", "+00:00")) <= datetime.now(timezone.utc)
    (problem,) = out["problems"]
    assert (problem["kind"], problem["code"], problem["reason"]) == (
        "skipped", "unsupported_type", "unsupported file type (.png)")
    assert out["schema_version"] == 1 and out["refresh"] is None


def test_status_reads_a_state_db_from_before_dataset_names_were_kept(box):
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    with StateStore(box.tmp / "state.db") as store:
        store.db.execute("DROP TABLE dataset_names")
        store.db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    assert folder_json(box)["dataset_name"] is None  # read as it is: a reader does not migrate
    assert status(box, "a.md").code == 0
    assert status(box, "--refresh").code == 0  # a writer migrates it, and learns the name
    assert folder_json(box)["dataset_name"] == box.emu.store.get_dataset(box.dataset).name
