"""`difysync emulator` as an operator runs it: a real subprocess on a free port, talked to
over HTTP. Its state file survives a stop and a kill -9, a bad one is one line and exit 78,
-v logs each request without the key, and a taken port is one line and exit 75 before any
banner."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from difysync.cli import main
from difysync.emulator.statefile import StateFileError
from difysync.emulator.store import Store

KEY = "a-key-only-this-test-knows"
BANNER = re.compile(r"Dify emulator listening on (http://127\.0\.0\.1:(\d+)/v1)")
EX_TEMPFAIL, EX_CONFIG = 75, 78


class Emulator:
    """One `difysync emulator` process: started on a free port, its stderr collected line
    by line as it comes, so a test waits for the banner instead of sleeping."""

    def __init__(self, *args: str, module: str = "difysync emulator") -> None:
        env = {**os.environ, "DIFYSYNC_EMULATOR_API_KEY": KEY}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module.split(), "--indexing-delay", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 15) -> re.Match[str]:
        """The first stderr line matching ``pattern``, once it has been printed."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} in {self.lines}")
                self._seen.wait(min(left, 0.2))

    def start(self) -> Emulator:
        self.base_url = self.wait_for(BANNER).group(1)
        return self

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {KEY}"},
                            timeout=10)

    def finish(self, sig: int | None = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        """Send ``sig`` (None: let it exit by itself); the exit code and all of stderr."""
        if sig is not None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code, "\n".join(self.lines)


def _documents(emu: Emulator, dataset_id: str) -> list[dict]:
    """A dataset's documents as the emulator keeps them (with each content's sha256)."""
    root = emu.base_url.removesuffix("/v1")
    return httpx.get(f"{root}/_admin/documents/{dataset_id}", timeout=10).json()["data"]


def _write_config(tmp_path: Path, base_url: str) -> Path:
    config = tmp_path / "sync.toml"
    config.write_text(
        'state_db = "state.db"\nowner = "test-host"\n'
        f'[dify]\nbase_url = "{base_url}"\ntimeout_seconds = 5\n'
        '[[folders]]\npath = "docs"\ndataset_name = "Synced"\n', encoding="utf-8")
    return config


def _reconcile(config: Path) -> dict:
    """One pass by the real CLI, in this process (the emulator is the subprocess here)."""
    done = CliRunner().invoke(main, ["reconcile", "-c", str(config), "--json"],
                              env={"DIFYSYNC_API_KEY": KEY}, catch_exceptions=False)
    assert done.exit_code == 0, done.stderr
    return json.loads(done.stdout)


def test_a_state_file_keeps_datasets_and_documents_across_a_restart_and_the_next_sync_sends_nothing(tmp_path):
    state = tmp_path / "emulator.json"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# a\n\nalpha", encoding="utf-8")
    (tmp_path / "docs" / "b.txt").write_text("beta", encoding="utf-8")
    first = Emulator("--port", "0", "--state-file", str(state)).start()
    with first.http() as http:
        ds = http.post("/datasets", json={"name": "Handmade"}).json()["id"]
        doc = http.post(f"/datasets/{ds}/document/create_by_text",
                        json={"name": "note.txt", "text": "kept", "indexing_technique": "economy"}
                        ).json()["document"]["id"]
    config = _write_config(tmp_path, first.base_url)
    assert _reconcile(config)["created"] == 2
    before = {d["id"]: (d["name"], d["sha256"]) for d in _documents(first, ds)}
    code, _ = first.finish(signal.SIGTERM)
    assert code == 0

    second = Emulator("--port", "0", "--state-file", str(state)).start()
    try:
        with second.http() as http:
            names = {d["name"]: d["id"] for d in http.get("/datasets").json()["data"]}
            assert names["Handmade"] == ds and "Synced" in names
            assert {d["id"]: (d["name"], d["sha256"]) for d in _documents(second, ds)} == before
            assert before[doc][0] == "note.txt"
            config = _write_config(tmp_path, second.base_url)
            again = _reconcile(config)
            assert (again["created"], again["updated"], again["renamed"], again["deleted"]) == (0, 0, 0, 0)
            assert again["unchanged"] == 2
            root = second.base_url.removesuffix("/v1")
            sent = httpx.get(f"{root}/_admin/requests", timeout=10).json()["data"]
            assert not [r for r in sent if r["mutating"]]
    finally:
        assert second.finish(signal.SIGTERM)[0] == 0


def test_a_kill_9_loses_at_most_the_last_second_of_changes(tmp_path):
    # `python -m difysync.emulator`: the same runner as `difysync emulator`, quicker to start
    state = tmp_path / "emulator.json"
    emu = Emulator("--port", "0", "--state-file", str(state), module="difysync.emulator").start()
    with emu.http() as http:
        ds = http.post("/datasets", json={"name": "Saved soon"}).json()["id"]
    deadline = time.monotonic() + 5
    while ds not in (state.read_text(encoding="utf-8") if state.exists() else ""):
        assert time.monotonic() < deadline, "the change was not saved within 5 s"
        time.sleep(0.05)
    emu.finish(signal.SIGKILL)
    again = Emulator("--port", "0", "--state-file", str(state), module="difysync.emulator").start()
    with again.http() as http:
        assert [d["id"] for d in http.get("/datasets").json()["data"]] == [ds]
    assert again.finish()[0] == 0


def test_a_corrupt_state_file_is_one_line_naming_it_and_exit_78(tmp_path):
    state = tmp_path / "emulator.json"
    content = '{"format": "difysync-emulator-state", "version": 1, "datasets": ['
    state.write_text(content, encoding="utf-8")
    code, stderr = Emulator("--port", "0", "--state-file", str(state)).finish(sig=None)
    assert code == EX_CONFIG
    assert len(stderr.splitlines()) == 1 and str(state) in stderr
    assert "Traceback" not in stderr and "listening" not in stderr
    assert state.read_text(encoding="utf-8") == content  # left for the operator to look at


@pytest.mark.parametrize("content", ['{"format": "difysync-emulator-state", "version": 99}', '["a list"]',
                                     '{"format": "something else", "version": 1}',
                                     '{"version": 1, "datasets": [{"no": "id"}]}',
                                     '{"version": 1, "documents": [{"id": "x"}]}'])
def test_a_state_file_of_another_version_or_shape_is_refused_with_its_name(tmp_path, content):
    state = tmp_path / "emulator.json"
    state.write_text(content, encoding="utf-8")
    with pytest.raises(StateFileError, match=re.escape(str(state))):
        Store(state_path=state)


def test_a_state_file_in_a_folder_that_does_not_exist_is_refused_at_start(tmp_path):
    state = tmp_path / "missing" / "emulator.json"
    with pytest.raises(StateFileError, match="does not exist"):
        Store(state_path=state)


def test_v_logs_one_line_per_request_with_method_path_status_and_never_the_key():
    emu = Emulator("--port", "0", "-v").start()
    with emu.http() as http:
        http.get("/datasets", params={"page": 1})
        http.post("/datasets", json={"name": "Logged"})
        http.get("/datasets", headers={"Authorization": "Bearer wrong"})
    emu.wait_for(r"GET /v1/datasets 401")
    code, stderr = emu.finish()
    requests = [line for line in stderr.splitlines() if "/v1/datasets" in line and "listening" not in line]
    assert len(requests) == 3
    assert re.search(r"GET /v1/datasets\?page=1 200 [\d.]+ ms 0 B in", requests[0])
    assert re.search(r"POST /v1/datasets 200 [\d.]+ ms \d+ B in", requests[1])
    assert KEY not in stderr and "Bearer" not in stderr and code == 0


def test_without_v_no_request_is_logged():
    emu = Emulator("--port", "0").start()
    with emu.http() as http:
        assert http.get("/datasets").status_code == 200
    code, stderr = emu.finish()
    assert code == 0 and "/v1/datasets" not in stderr and KEY not in stderr


@pytest.mark.parametrize("module", ["difysync emulator", "difysync.emulator"])
def test_a_taken_port_is_one_line_naming_it_before_any_banner_and_exit_75(module):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = Emulator("--port", str(port), module=module).finish(sig=None)
    assert code == EX_TEMPFAIL
    assert stderr.splitlines() == [stderr]
    assert f"port {port}" in stderr and "--port 0" in stderr
    assert "listening" not in stderr and "Traceback" not in stderr


def test_the_emulators_listening_socket_sends_answers_without_delay(emulator):
    # Nagle's algorithm would hold each answer for the client's delayed ACK (40 ms a
    # request): the socket the emulator listens on, whose options its connections inherit,
    # has it off.
    import socket

    listener = emulator._server.servers[0].sockets[0]
    assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
