"""Progress on a terminal and the end summary: what `difysync reconcile` shows a person
watching it (rows per folder, retry notices, --wait's indexing counts, a table per
folder), and that nobody else (a pipe, --json, -q) gets any of it.

The terminal tests run the real CLI in a real pseudo-terminal against the emulator, made
slow enough (latency, indexing delay) for the rows to be drawn; the bookkeeping tests feed
the observer events and read it back, on rich's own in-memory terminal.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from difysync.emulator import EmulatorServer
from difysync.emulator.faults import FaultRule
from difysync.errors import RateLimited, ServerUnreachable, TransientError
from difysync.events import Phase
from difysync.logs import setup_logging
from difysync.outcomes import Outcome, Result
from difysync.plan import Action, Kind, Plan
from difysync.config import FolderSettings
from difysync.progress import ProgressDisplay, WaitClock, folder_labels, indexing_counts, retry_notice
from difysync.report import FolderReport, RunReport, summary_tables

from .sandbox import Sandbox

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
THREE = {"a.md": "alpha " * 300, "b.md": "bravo " * 300, "c.md": "charlie " * 300}


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    """One emulator for the module (each test has its own dataset and folder)."""
    with EmulatorServer() as server:
        yield server


@pytest.fixture
def server(emu):
    """The module's emulator, its faults and indexing delay reset after the test."""
    yield emu
    emu.faults.reset()
    emu.store.indexing_delay = 0.0


def sandbox(tmp_path: Path, emu: EmulatorServer, files: dict[str, str], name: str) -> Sandbox:
    box = Sandbox(tmp_path, emu, dataset_name=name, by_name=True)
    for rel, content in files.items():
        box.write(rel, content)
    return box


@dataclass
class Screen:
    """What a terminal received: the raw bytes (as text) and the same without escapes."""

    code: int
    raw: str

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw).replace("\r\n", "\n")

    @property
    def lines(self) -> list[str]:
        """Each line as the terminal left it: what follows the last carriage return."""
        return [line.split("\r")[-1] for line in self.text.split("\n")]


def in_terminal(box: Sandbox, *args: str, width: int = 120, timeout: float = 30,
                watch: Callable[[str], None] | None = None) -> Screen:
    """`python -m difysync reconcile -c CONFIG ARGS` with stdout and stderr on a pty;
    ``watch`` sees what the terminal received so far, after each read."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, width, 0, 0))
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "JOURNAL_STREAM")}
    env.update(box.env, TERM="xterm-256color")
    proc = subprocess.Popen([sys.executable, "-m", "difysync", "reconcile", "-c", str(box.config), *args],
                            stdin=slave, stdout=slave, stderr=slave, cwd=box.tmp, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError("the command did not finish")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child is gone and the pty closed
                break
            if not data:
                break
            chunks.append(data)
            if watch is not None:
                watch(b"".join(chunks).decode("utf-8", "replace"))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return Screen(proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace"))


# --- on a terminal ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_import(emu, tmp_path_factory) -> Screen:
    """Three new files imported on a terminal, with requests slowed down so that the rows
    are drawn while the pass runs, and the first listing request dropped once."""
    box = sandbox(tmp_path_factory.mktemp("import"), emu, THREE, "Team docs")
    emu.faults.latency = 0.05
    emu.faults.fail_next = [FaultRule(action="drop", method="GET", path_contains="/documents")]
    try:
        return in_terminal(box)
    finally:
        emu.faults.reset()


def test_a_pass_on_a_terminal_shows_each_folder_s_row_with_counts_bytes_and_rate(first_import):
    text = first_import.text
    assert first_import.code == 0
    assert "docs syncing" in text and "scanned 3" in text and "hashed 3/3" in text
    assert re.search(r"to send 3 \(\d+(\.\d)? kB\)", text)
    assert re.search(r"sent 3 \(\d+(\.\d)? kB\)", text) and "3/3" in text
    assert re.search(r"\d+\.\d files/s, [\d.]+ (k?B|bytes)/s", text)


def test_the_rows_go_and_a_table_per_folder_and_the_summary_line_stay(first_import):
    lines = [line.rstrip() for line in first_import.lines if line.strip()]
    assert lines[-1].startswith("3 created, 0 failed in ")
    title, header, _rule, row = lines[-5:-1]
    assert re.fullmatch(r"Team docs · \d+\.\d s", title)  # labelled by its dataset: named once
    assert header.split() == ["created", "updated", "renamed", "deleted", "unchanged", "skipped", "failed",
                              "held", "back"]
    assert row.split() == ["3", "0", "0", "0", "0", "0", "0", "0"]
    # the live rows were erased: none is left on the screen after the pass
    assert "\x1b[?25h" in first_import.raw and not any("━" in line for line in lines[-5:])


def test_log_lines_are_printed_above_the_rows_not_through_them(first_import):
    created = [line for line in first_import.lines if "INFO" in line and "created a.md" in line]
    assert created and all(re.match(r"\d{4}-\d\d-\d\dT", line) and "━" not in line for line in created)


def test_wait_shows_the_indexing_counts_and_the_summary_time_includes_the_wait(server, tmp_path):
    box = sandbox(tmp_path, server, THREE, "Waited")
    server.store.indexing_delay = 3600.0  # in flight until the terminal shows the wait ...

    def finish_once_shown(output: str) -> None:
        if "indexing: 3 queued" in output:
            server.store.indexing_delay = 0.0  # ... then done at the next poll (1 s later)

    screen = in_terminal(box, "--wait", watch=finish_once_shown)
    text = screen.text
    assert screen.code == 0 and "Waited waiting" in text
    seen = [(int(q), int(i)) for q, i in re.findall(r"indexing: (\d) queued, (\d) indexing, \d completed, 0 error",
                                                    text)]
    assert any(q + i for q, i in seen) and re.search(r"waited \d+ s", text)  # documents in flight were shown ...
    assert "indexing: 0 queued, 0 indexing, 3 completed, 0 error" in text  # ... and then all of them done
    lines = [line.rstrip() for line in screen.lines if line.strip()]
    total = float(re.search(r"in (\d+\.\d) s$", lines[-1]).group(1))
    folder = float(re.search(r"· (\d+\.\d) s$", lines[-5]).group(1))
    assert total >= 1.0 and folder >= 1.0  # the wait (a pause of 1 s between polls) is in both


def test_a_request_that_fails_once_shows_a_retry_notice_above_the_rows(first_import):
    notices = [line for line in first_import.lines if "server unreachable, retry 1/5 in" in line]
    assert notices and all("━" not in line for line in notices)


def test_a_guard_that_holds_back_deletes_is_counted_in_the_table_and_matches_the_exit_code(emu, tmp_path):
    box = sandbox(tmp_path, emu, {f"{n}.md": n for n in ("a", "b", "c", "d")}, "Guarded")
    assert box.reconcile().code == 0
    for n in ("a", "b", "c"):
        box.remove(f"{n}.md")
    screen = in_terminal(box)
    lines = [line.rstrip() for line in screen.lines if line.strip()]
    assert screen.code == 1
    assert lines[-1].startswith("0 created, 1 unchanged, 0 failed in ") and "exit 1: " in lines[-1]
    assert "would delete 3 of 4 tracked documents" in lines[-1]
    caption = next(i for i, line in enumerate(lines) if line.startswith("held back: deletes a mass-delete guard"))
    assert lines[caption - 1].split() == ["0", "0", "0", "0", "1", "0", "0", "3"]
    assert "\x1b[31m" in screen.raw.split("Team docs ·")[-1]  # the folder's table is red


# --- nobody watching ----------------------------------------------------------------------


def test_without_a_terminal_the_output_is_the_plain_summary_line_only(emu, tmp_path):
    box = sandbox(tmp_path, emu, THREE, "Piped")
    result = box.subprocess("reconcile", "-c", str(box.config))
    assert result.code == 0 and re.fullmatch(r"3 created, 0 failed in \d+\.\d s\n", result.stdout)
    assert "\x1b" not in result.stdout + result.stderr and "━" not in result.stderr
    assert "created a.md" in result.stderr


def test_json_on_a_terminal_prints_the_object_and_no_progress(emu, tmp_path):
    box = sandbox(tmp_path, emu, THREE, "As JSON")
    screen = in_terminal(box, "--json")
    assert screen.code == 0 and "\x1b" not in screen.raw and "━" not in screen.raw
    assert json.loads(screen.lines[-2])["created"] == 3  # stderr's log lines come before it


def test_quiet_on_a_terminal_shows_no_progress_and_no_table(emu, tmp_path):
    box = sandbox(tmp_path, emu, THREE, "Quiet")
    screen = in_terminal(box, "-q")
    assert screen.code == 0 and "\x1b" not in screen.raw
    assert [line for line in screen.lines if line.strip()] == [screen.lines[-2]]
    assert screen.lines[-2].startswith("3 created, 0 failed in ")


# --- the observer's bookkeeping -----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def display() -> ProgressDisplay:
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    return ProgressDisplay(console, {"/data/docs": "docs"}, clock=Clock())


def upload(rel: str, kind: Kind = Kind.CREATE) -> Action:
    return Action(kind, rel, document_name=rel)


def rendered(display: ProgressDisplay) -> str:
    console = Console(file=io.StringIO(), width=160)
    console.print(display.progress.get_renderable())
    return console.file.getvalue()


def test_the_row_counts_scanned_hashed_to_send_and_sent_files_and_bytes(display):
    key, clock = "/data/docs", display.clock
    display.phase(key, Phase.SCANNING)
    display.scanned(key, 5)
    display.phase(key, Phase.HASHING)
    display.hashing(key, 1, 2, 1000)
    display.hashing(key, 2, 2, 3000)
    plan = Plan((upload("a.md"), upload("b.md", Kind.UPDATE), Action(Kind.DELETE, "old.md", document_id="d"),
                 Action(Kind.SKIP, "x.exe")), unchanged=2)
    display.planned(key, plan, 3000)
    display.phase(key, Phase.SYNCING)
    clock.now += 2.0
    display.outcome(key, Outcome(plan.actions[0], Result.OK, document_id="1"), 1000)
    display.outcome(key, Outcome(plan.actions[1], Result.FAILED, "500"), 0)
    display.outcome(key, Outcome(plan.actions[3], Result.SKIPPED), 0)
    row = display.folders[key]
    assert (row.scanned, row.hashed, row.hash_total, row.hashed_bytes) == (5, 2, 2, 3000)
    assert (row.to_send, row.send_bytes, row.actions) == (2, 3000, 3)
    assert (row.sent, row.sent_bytes, row.failed, row.ended) == (1, 1000, 1, 2)
    assert row.bar() == (2, 3) and row.rate(clock.now) == "0.5 files/s, 500 bytes/s"
    assert row.detail(clock.now) == ("scanned 5 · hashed 2/2 (3.0 kB) · to send 2 (3.0 kB) · sent 1 (1.0 kB)"
                                     " · failed 1")
    shown = rendered(display)
    assert "docs" in shown and "syncing" in shown and "2/3" in shown and "0.5 files/s" in shown
    clock.now += 2.0
    display.phase(key, Phase.IDLE)  # the row that stays says how fast the sending went, on average
    assert row.rate(clock.now + 60) == "0.2 files/s, 250 bytes/s" and "done" in rendered(display)


def test_a_retry_is_noted_on_the_folder_s_row_until_an_answer_comes(display):
    key = "/data/docs"
    display.phase(key, Phase.LISTING)
    display.retry("list documents", ServerUnreachable("list documents: cannot reach x"), 4.0, 3, 5)
    assert display.notices == ["list documents: server unreachable, retry 3/5 in 4.0 s"]
    assert display.folders[key].note == "retry 3/5" and "retry 3/5" in rendered(display)
    assert "server unreachable, retry 3/5 in 4.0 s" in display.console.file.getvalue()
    display.request("GET", "/datasets/{id}/documents", None, 0.1)  # no answer yet: still retrying
    assert display.folders[key].note == "retry 3/5"
    display.request("GET", "/datasets/{id}/documents", 200, 0.1)
    assert display.folders[key].note == ""


def test_wait_shows_indexing_counts_settled_of_all_and_the_time_waited(display):
    key, clock = "/data/docs", display.clock
    display.phase(key, Phase.IDLE)
    display.indexing(key, {"waiting": 1, "splitting": 1, "indexing": 1, "completed": 2, "error": 1}, 3.0)
    row = display.folders[key]
    assert row.phase is Phase.WAITING and row.bar() == (3, 6)
    clock.now += 2.0
    assert row.detail(clock.now).endswith("indexing: 1 queued, 2 indexing, 2 completed, 1 error · waited 5 s")


def test_indexing_statuses_are_grouped_as_a_person_reads_them():
    assert indexing_counts({}) == "0 queued, 0 indexing, 0 completed, 0 error"
    assert indexing_counts({"queuing": 2, "parsing": 1, "cleaning": 1, "paused": 1, "gone": 1}) == \
        "2 queued, 2 indexing, 0 completed, 0 error, 1 paused, 1 gone"


def test_retry_notices_name_what_went_wrong():
    assert retry_notice("upload a.md", RateLimited("slow down", status=429), 12.0, 1, 5) == \
        "upload a.md: rate limited, retry 1/5 in 12 s"
    assert retry_notice("upload a.md", TransientError("x", status=503), 0.5, 2, 5) == \
        "upload a.md: server error 503, retry 2/5 in 0.5 s"


def test_the_wait_clock_keeps_the_time_each_folder_s_documents_settled():
    clock = WaitClock()
    clock.indexing("a", {"indexing": 2}, 1.0)
    clock.indexing("b", {"completed": 1}, 1.0)
    clock.indexing("a", {"completed": 1, "error": 1}, 3.0)
    clock.indexing("a", {"completed": 2}, 4.0)  # (polls after it settled change nothing)
    clock.indexing("b", {"completed": 1}, 4.0)
    assert clock.seconds == {"a": 3.0, "b": 1.0}


def test_log_lines_go_through_the_display_while_it_is_live_and_back_to_stderr_after(display):
    setup_logging("info", "text")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_difysync", False)]
    with display:
        logging.getLogger("difysync").info("created [a].md")
        assert not any(h in logging.getLogger().handlers for h in ours)
    assert all(h in logging.getLogger().handlers for h in ours)
    assert "INFO    created [a].md" in ANSI.sub("", display.console.file.getvalue())


def test_folders_are_labelled_as_log_lines_label_them_unless_two_share_a_label():
    def folder(path: str, **keys: str) -> FolderSettings:
        return FolderSettings(path=path, dataset_name=keys.pop("dataset_name", "x"), **keys)

    assert folder_labels([folder("/srv/docs", name="handbook"), folder("/srv/wiki", dataset_name="Wiki")]) \
        == {"/srv/docs": "handbook", "/srv/wiki": "Wiki"}
    assert folder_labels([folder("/a/docs", dataset_name="Docs"), folder("/b/docs", dataset_name="Docs")]) \
        == {"/a/docs": "/a/docs", "/b/docs": "/b/docs"}


def test_the_table_names_the_dataset_or_its_id_and_times_the_folder_with_its_wait():
    named = FolderReport("/data/docs", "ds-1", dataset_name="Team docs", seconds=1.5, waited=2.0)
    by_id = FolderReport("/data/wiki", "3f6c1d2e", plan=Plan((), held_back=4), seconds=0.25,
                         errors=["this pass would delete 4 of 5 tracked documents"])
    console = Console(file=io.StringIO(), width=80)
    console.print(summary_tables(RunReport([named, by_id]), {"/data/docs": "docs", "/data/wiki": "wiki"}))
    out = console.file.getvalue()
    assert "docs → dataset Team docs · 3.5 s" in out and "wiki → dataset 3f6c1d2e · 0.2 s" in out
    # 80 columns take every header whole, on one line
    assert "created  updated  renamed  deleted  unchanged  skipped  failed  held back" in out
    assert "held back: deletes a mass-delete guard refused" in out
    assert by_id.held_back == 4 and named.held_back == 0 and not by_id.ok
