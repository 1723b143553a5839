"""The status page of `difysync run`, loaded from a real service into a real headless
Chromium (Debian's package): after its script ran, the DOM has a row per folder with its
state and counts, the recent actions and errors, and a file name made of HTML shows as
text. A screenshot is saved too; with DIFYSYNC_UPDATE_SCREENSHOT=1 it replaces
docs/status-page.png. Skipped where /usr/bin/chromium is absent (CI has none)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from difysync.emulator import EmulatorServer
from difysync.web import PAGE

from .test_daemon import Daemon, daemon_box, wait_until
from .test_metrics import free_port, with_metrics

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"
TRICKY = '<img src=x onerror="document.title=1">.md'  # a legal file name, and HTML
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt install chromium)")


def chromium(tmp: Path, url: str, *args: str) -> str:
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=5000", *args, url],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A service with two folders: "docs" in step (one file skipped, one named like
    HTML), and "archive" whose dataset does not exist (it backs off)."""
    with EmulatorServer() as emu:
        tmp = tmp_path_factory.mktemp("status-page")
        box = daemon_box(tmp, emu)
        port = free_port()
        with_metrics(box.config, f"127.0.0.1:{port}")
        (tmp / "archive").mkdir()
        (tmp / "archive" / "old.md").write_text("kept for the record")
        box.config.write_text(box.config.read_text() + '\n[[folders]]\npath = "archive"\n'
                              'dataset_id = "0b1e9c9e-5d6f-4bf8-9a44-000000000000"\n')
        for rel, content in {"handbook.md": "welcome", "guide/setup.md": "steps", "notes.txt": "remember",
                             TRICKY: "escaped", "logo.exe": "not a document"}.items():
            box.write(rel, content)
        daemon = Daemon(box)
        try:
            daemon.wait_ready()
            url = f"http://127.0.0.1:{port}/"

            def settled() -> bool:
                folders = {f["folder"]: f for f in httpx.get(url + "status.json", timeout=5).json()["folders"]}
                docs = folders[str(box.root)]
                return docs["counts"]["synced"] == 4 and not folders[str(tmp / "archive")]["healthy"]

            wait_until(settled, 15, interval=0.2, what="docs synced and archive backing off")
            yield url, tmp
        finally:
            daemon.kill()


@dataclass(frozen=True)
class Loaded:
    dom: str
    screenshot: Path
    tmp: Path


@pytest.fixture(scope="module")
def loaded(page: tuple[str, Path]) -> Loaded:
    """The page loaded once: the DOM after its script ran, and a screenshot."""
    url, tmp = page
    shot = tmp / "status-page.png"
    dom = chromium(tmp, url, "--dump-dom", f"--screenshot={shot}", "--window-size=1100,700", "--hide-scrollbars")
    return Loaded(dom, shot, tmp)


class _Rows(HTMLParser):
    """The dumped DOM's folder rows: folder -> {"phase": ..., "state": text, count name -> text}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.images = 0
        self._row: dict[str, str] | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images += 1
        if tag == "tr" and a.get("data-folder"):
            self._row = self.rows.setdefault(a["data-folder"] or "", {"phase": a.get("data-phase") or ""})
        elif self._row is not None and tag == "td" and a.get("data-count"):
            self._cell = a["data-count"]
        elif self._row is not None and tag == "span" and "state" in (a.get("class") or ""):
            self._cell = "state"
        elif self._row is not None and tag == "div" and "warn" in (a.get("class") or ""):
            self._cell = "problem"

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag in ("td", "span", "div"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self._row[self._cell] = self._row.get(self._cell, "") + data


@needs_chromium
def test_the_page_shows_each_folder_with_its_state_and_counts_once_its_script_ran(loaded: Loaded) -> None:
    dom, tmp = loaded.dom, loaded.tmp
    rows = _Rows()
    rows.feed(dom)
    docs, archive = rows.rows[str(tmp / "docs")], rows.rows[str(tmp / "archive")]
    assert (docs["phase"], docs["state"]) == ("idle", "idle")
    assert (docs["synced"], docs["skipped"], docs["error"], docs["quarantined"]) == ("4", "1", "0", "0")
    # archive backs off (a retry pass may be under way: it stays unhealthy through it)
    assert (archive["phase"], archive["state"]) in {("backing_off", "backing off"), ("listing", "scanning"),
                                                    ("error", "error")}
    assert "the dataset does not exist" in archive["problem"]
    assert (archive["synced"], archive["pending"]) == ("0", "0")
    assert 'id="health" class="badge bad">unhealthy<' in dom


@needs_chromium
def test_the_page_lists_recent_actions_and_the_failed_folders_error(loaded: Loaded) -> None:
    dom = loaded.dom
    start = dom.index('id="actions"')
    actions = dom[start:dom.index("</tbody>", start)]
    for path in ("handbook.md", "guide/setup.md", "notes.txt", "logo.exe"):
        assert f">{path}<" in actions
    start = dom.index('id="errors"')
    errors = dom[start:dom.index("</ul>", start)]
    assert re.search(r">archive: </b>[^<]*the dataset does not exist", errors), errors


@needs_chromium
def test_a_file_name_made_of_html_is_shown_as_text(loaded: Loaded) -> None:
    dom = loaded.dom
    rows = _Rows()
    rows.feed(dom)
    assert rows.images == 0
    assert "&lt;img src=x onerror=\"document.title=1\"&gt;.md" in dom
    assert "<title>difysync status</title>" in dom  # the onerror never ran


@needs_chromium
def test_a_screenshot_of_the_page_is_saved(loaded: Loaded) -> None:
    shot = loaded.screenshot
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1100, 700)
    if os.environ.get("DIFYSYNC_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)


def test_the_page_loads_nothing_from_elsewhere() -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", PAGE)
    assert "@import" not in PAGE and "url(" not in PAGE
