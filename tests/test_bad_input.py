"""Bad input, one test each: what is on disk, in the config, in the state DB or on the
server is wrong in some way, and difysync says so clearly (skip reason, exit code, one
line naming the problem), never with a traceback, and the daemon keeps running and keeps
syncing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from difysync.emulator import EmulatorServer
from difysync.emulator.faults import FaultRule, nginx_html
from difysync.naming import document_name

from .sandbox import Sandbox
from .test_daemon import DEBOUNCE, Daemon, daemon_box, wait_until


def own_traceback(stderr: str) -> bool:
    """A traceback through difysync's own code (not the in-process emulator's logs)."""
    return "Traceback" in stderr and re.search(r'File "[^"]*/difysync/(?!emulator/)', stderr) is not None


def problems(box: Sandbox) -> dict[str, tuple[str, str]]:
    status = box.cli("status", "-c", str(box.config), "--json")
    assert status.code == 0, status.stderr
    return {p["rel_path"]: (p["kind"], p["reason"]) for p in status.json["problems"]}


def state_row(box: Sandbox, rel: str) -> dict:
    db = sqlite3.connect(box.tmp / "state.db")
    db.row_factory = sqlite3.Row
    row = db.execute("SELECT * FROM files WHERE rel_path = ?", [rel]).fetchone()
    db.close()
    return dict(row) if row else {}


@pytest.fixture
def box(tmp_path, emulator):
    return Sandbox(tmp_path, emulator)


@pytest.fixture
def daemon(tmp_path, emulator):
    box = daemon_box(tmp_path, emulator)
    box.write("keep.md", "keeps the folder from looking emptied")
    d = Daemon(box)
    try:
        d.wait_ready()
        wait_until(lambda: "keep.md" in box.docs(), 5, what="first pass")
        yield box, d
    finally:
        d.kill()


def still_syncs(box: Sandbox, daemon: Daemon, name: str = "after.md", timeout: float = DEBOUNCE + 4) -> None:
    assert daemon.proc.poll() is None, daemon.log[-3000:]
    box.write(name, f"written after: {name}")
    wait_until(lambda: box.contents().get(name) == f"written after: {name}".encode(), timeout,
               what=f"{name} synced")
    assert daemon.proc.poll() is None
    assert not own_traceback(daemon.log), daemon.log[-3000:]


# ------------------------------------------------------------------- what is skipped

@pytest.mark.parametrize("rel, content, reason", [
    ("image.png", b"png bytes", "unsupported file type (.png)"),
    ("big.md", b"x" * (15 * 1024 * 1024 + 1), "file too large"),
    ("empty.md", b"", "empty file"),
])
def test_refused_before_sending(box, rel, content, reason):
    # given a file difysync must not send, next to a good one
    box.write(rel, content)
    box.write("ok.md", "fine")
    # when reconciling
    result = box.reconcile()
    # then it is skipped with its reason, nothing is sent for it, and the pass succeeds
    assert result.code == 0 and not own_traceback(result.stderr)
    assert result.json["skipped"] == 1 and result.json["failed"] == 0
    assert set(box.docs()) == {"ok.md"}
    kind, why = problems(box)[rel]
    assert kind == "skipped" and why.startswith(reason)


def _special_files(root: Path) -> dict[str, str]:
    """Make a FIFO, a UNIX socket and (when permitted) a char device; rel -> reason."""
    made = {}
    os.mkfifo(root / "pipe.md")
    made["pipe.md"] = "special file (fifo)"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(root / "sock.md"))
    sock.close()  # the socket file stays
    made["sock.md"] = "special file (socket)"
    try:
        os.mknod(root / "null.md", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        made["null.md"] = "special file (character device)"
    except PermissionError:
        pass
    return made


def test_fifo_socket_and_device_are_recorded_never_opened(box):
    # given a FIFO, a socket and a device node (root only) among normal files
    box.write("ok.md", "fine")
    special = _special_files(box.root)
    # when reconciling in a subprocess (opening a FIFO would block forever)
    result = box.subprocess("reconcile", "-c", str(box.config), "--json", timeout=30)
    # then it finishes, each is recorded with its reason, and nothing else happens
    assert result.code == 0, result.stderr
    assert not own_traceback(result.stderr)
    assert set(box.docs()) == {"ok.md"}
    found = problems(box)
    for rel, reason in special.items():
        assert found[rel] == ("skipped", reason), found


def test_daemon_survives_fifo_socket_and_device(daemon):
    box, d = daemon
    special = _special_files(box.root)
    time.sleep(DEBOUNCE + 1)
    still_syncs(box, d)
    assert not any(document_name(rel) in box.docs() for rel in special)


def test_symlink_loop_and_symlink_leaving_the_root(box, tmp_path):
    # given a symlink loop, a symlink to a file outside the root, and one inside it
    box.write("ok.md", "fine")
    os.symlink("loop-b.md", box.root / "loop-a.md")
    os.symlink("loop-a.md", box.root / "loop-b.md")
    outside = tmp_path / "secret.md"
    outside.write_text("outside the root")
    os.symlink(outside, box.root / "escape.md")
    os.symlink("ok.md", box.root / "alias.md")
    # when reconciling
    result = box.reconcile()
    # then the loop and the escape are recorded, the inside link is followed
    assert result.code == 0 and not own_traceback(result.stderr)
    assert set(box.docs()) == {"ok.md", "alias.md"}
    found = problems(box)
    assert found["loop-a.md"] == ("skipped", "symlink loop")
    assert found["loop-b.md"] == ("skipped", "symlink loop")
    assert found["escape.md"] == ("skipped", "symlink points outside the folder")


# --------------------------------------------------------------- unreadable content

def _without_root_read_powers() -> list[str] | None:
    """A command prefix under which file modes apply to us: nothing as a normal user; as
    root, setpriv dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (so the test really
    runs in CI as root; a plain setuid to nobody cannot run the interpreter under
    /root). None when neither works."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_file_and_folder(box):
    prefix = _without_root_read_powers()
    if prefix is None:
        pytest.skip("root, and no way to drop the capabilities that bypass file modes")

    def reconcile() -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, sys.executable, "-m", "difysync", "reconcile", "-c", str(box.config),
                               "--json"], capture_output=True, text=True, cwd=box.tmp, timeout=60,
                              env={**os.environ, **box.env})

    box.write("ok.md", "fine")
    box.write("locked.md", "secret")
    box.write("closed/inside.md", "kept")
    first = reconcile()
    assert first.returncode == 0, first.stderr
    assert set(box.docs()) == {"ok.md", "locked.md", "closed∕inside.md"}
    # given a file and a folder that become unreadable
    os.chmod(box.root / "locked.md", 0)
    os.chmod(box.root / "closed", 0)
    try:
        # when reconciling without the power to read them
        second = reconcile()
    finally:
        os.chmod(box.root / "closed", 0o755)
        os.chmod(box.root / "locked.md", 0o644)
    # then both are recorded, nothing is deleted (unknown is not deleted), no traceback
    assert second.returncode in (0, 1), second.stderr
    assert not own_traceback(second.stderr), second.stderr
    assert set(box.docs()) == {"ok.md", "locked.md", "closed∕inside.md"}
    found = problems(box)
    assert found.get("locked.md", ("", ""))[0] == "skipped", found
    assert "permission denied" in found["locked.md"][1].lower(), found
    assert found.get("closed", ("", ""))[0] == "skipped", found
    assert "permission denied" in found["closed"][1].lower(), found
    # and once readable again, the next pass is clean
    third = box.reconcile()
    assert third.code == 0 and third.json["failed"] == 0
    assert problems(box) == {}


# ------------------------------------------------------------------- awkward names

def _latin1_file(box: Sandbox) -> None:
    with open(os.fsencode(box.root) + b"/caf\xe9.md", "wb") as f:
        f.write(b"menu")


def test_file_name_that_is_not_utf8_round_trips(box):
    # given a file whose name is latin-1 bytes
    _latin1_file(box)
    # when reconciling twice (text output: see the --json test below)
    first = box.cli("reconcile", "-c", str(box.config))
    assert first.code == 0 and "1 created" in first.stdout, first.stderr
    box.emu.reset_requests()
    second = box.cli("reconcile", "-c", str(box.config))
    # then it is uploaded under a percent-encoded name, and the second pass sends nothing
    assert box.contents() == {"caf%E9.md": b"menu"}
    assert second.code == 0 and "1 unchanged" in second.stdout
    assert box.mutations() == 0
    assert problems(box) == {}


def test_json_output_with_a_non_utf8_file_name_is_valid_utf8_json(box):
    _latin1_file(box)
    proc = subprocess.run([sys.executable, "-m", "difysync", "reconcile", "-c", str(box.config), "--json"],
                          capture_output=True, env={**os.environ, **box.env}, cwd=box.tmp, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.decode("utf-8"))
    assert out["created"] == 1
    in_process = box.reconcile()  # strict UTF-8 stdout
    assert in_process.code == 0


def test_300_character_path_gets_a_short_stable_name(box):
    rel = "/".join(["deeply-nested-folder"] * 14) + "/notes.md"
    assert len(rel) >= 300
    box.write(rel, "deep")
    first = box.reconcile()
    assert first.code == 0 and first.json["created"] == 1, first.stderr
    (name,) = box.docs()
    assert len(name) <= 200 and name.endswith(".md") and "~" in name
    assert name == document_name(rel)
    box.emu.reset_requests()
    second = box.reconcile()
    assert second.code == 0 and second.json["unchanged"] == 1
    assert box.mutations() == 0 and list(box.docs()) == [name]


# ------------------------------------------------------------- races with the disk

def test_file_deleted_between_scan_and_upload(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator, extra_dify="concurrency = 1")
    box.write("a.md", "a")
    box.write("b.md", "b")
    # given the first create hangs, and b.md is deleted meanwhile
    emulator.faults.fail_next.append(FaultRule(action="hang", method="POST", hang_seconds=1.0))

    def delete_b():
        wait_until(lambda: emulator.count(method="POST") >= 1, 10, what="first create")
        box.remove("b.md")

    deleter = threading.Thread(target=delete_b)
    deleter.start()
    result = box.reconcile()
    deleter.join()
    # then no failure and no document for it; the next pass is clean
    assert result.code == 0 and result.json["failed"] == 0, (result.stderr, result.json)
    assert set(box.docs()) == {"a.md"}
    box.emu.reset_requests()
    again = box.reconcile()
    assert again.code == 0 and again.json["failed"] == 0 and box.mutations() == 0
    assert "b.md" not in problems(box)


def test_file_modified_during_upload(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "version one")
    emulator.faults.fail_next.append(FaultRule(action="hang", method="POST", hang_seconds=1.0))

    def modify():
        wait_until(lambda: emulator.count(method="POST") >= 1, 10, what="create in flight")
        box.write("a.md", "version two, longer")

    writer = threading.Thread(target=modify)
    writer.start()
    result = box.reconcile()
    writer.join()
    assert result.code == 0, result.stderr
    uploaded = box.docs()["a.md"]
    # the state's hash is that of the bytes actually uploaded
    assert state_row(box, "a.md")["sha256"] == uploaded.sha256
    assert uploaded.content == b"version one"
    # and the next pass sends the new content
    again = box.reconcile()
    assert again.code == 0 and again.json["updated"] == 1
    assert box.contents() == {"a.md": b"version two, longer"}
    assert state_row(box, "a.md")["sha256"] == hashlib.sha256(b"version two, longer").hexdigest()


# ------------------------------------------------------------------ the folder root

def test_root_moved_away_deletes_nothing(box):
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    os.rename(box.root, box.tmp / "elsewhere")
    result = box.reconcile()
    assert result.code == 1 and not own_traceback(result.stderr)
    assert result.json["deleted"] == 0
    assert any("does not exist" in e and str(box.root) in e for e in result.json["errors"])
    assert list(box.docs()) == ["a.md"]


def test_root_replaced_by_an_empty_folder_deletes_nothing(box):
    box.write("a.md", "a")
    box.write("b/c.md", "c")
    assert box.reconcile().code == 0
    os.rename(box.root, box.tmp / "old")
    box.root.mkdir()
    result = box.reconcile()
    assert result.code == 1 and result.json["deleted"] == 0
    assert result.json["errors"]
    assert set(box.docs()) == {"a.md", "b∕c.md"}


# --------------------------------------------------------------- the server's side

def test_document_deleted_in_the_dify_ui_is_created_again(box):
    box.write("a.md", "a")
    box.reconcile()
    box.emu.store.delete_document(box.dataset, box.docs()["a.md"].id)
    result = box.reconcile()
    assert result.code == 0 and result.json["created"] == 1
    assert box.contents() == {"a.md": b"a"}


def test_dataset_deleted_in_dify(box):
    box.write("a.md", "a")
    box.reconcile()
    box.emu.store.delete_dataset(box.dataset_id)
    result = box.reconcile()
    assert result.code == 1 and not own_traceback(result.stderr)
    assert any(box.dataset_id in e for e in result.json["errors"]), result.json["errors"]


def test_daemon_survives_its_dataset_being_deleted(daemon):
    box, d = daemon
    store = box.emu.store
    saved_ds, saved_docs = store.datasets[box.dataset_id], store.docs[box.dataset_id]
    store.delete_dataset(box.dataset_id)
    box.write("during.md", "while the dataset is gone")
    wait_until(lambda: box.dataset_id in d.log.split("ready:")[-1], 5, what="error line")
    time.sleep(3)
    lines = [line for line in d.log.split("ready:")[-1].splitlines()
             if box.dataset_id in line and ("WARNING" in line or "ERROR" in line)]
    assert len(lines) == 1, lines  # one line on the state change, not one per retry
    assert d.proc.poll() is None
    with store.lock:
        store.datasets[box.dataset_id] = saved_ds
        store.docs[box.dataset_id] = saved_docs
    wait_until(lambda: "during.md" in box.docs(), 15, what="catch-up after the dataset is back")
    still_syncs(box, d)


def test_api_key_revoked_while_the_daemon_runs(daemon):
    box, d = daemon
    # the emulator's routes read the accepted key from its Options on every request
    box.emu.options.api_key = "revoked-" + box.emu.api_key
    box.write("during.md", "while the key is rejected")
    wait_until(lambda: "API key was rejected" in d.log, 5, what="rejected-key line")
    time.sleep(3)
    lines = [line for line in d.log.splitlines() if "API key was rejected" in line
             and ("WARNING" in line or "ERROR" in line)]
    assert len(lines) == 1, lines
    assert d.proc.poll() is None
    box.emu.options.api_key = box.emu.api_key
    wait_until(lambda: "during.md" in box.docs(), 15, what="recovery once the key works again")
    still_syncs(box, d)


def test_server_down_when_the_daemon_starts(tmp_path):
    emu = EmulatorServer().start()
    emu.stop()  # keeps its port: start() again serves on the same one
    try:
        box = daemon_box(tmp_path, emu)
        box.write("early.md", "written before the server is up")
        d = Daemon(box)
        try:
            time.sleep(3)
            assert d.proc.poll() is None, d.log
            assert not own_traceback(d.log), d.log
            emu.start()
            wait_until(lambda: "early.md" in box.docs(), 20, interval=0.2, what="sync once it is up")
            still_syncs(box, d)
            assert d.stop() == 0
        finally:
            d.kill()
    finally:
        emu.stop()


def test_html_answer_instead_of_json_names_base_url(box):
    box.write("a.md", "a")
    box.emu.faults.fail_next.append(FaultRule(status=200, body="<html><body>Welcome</body></html>",
                                              content_type="text/html"))
    result = box.reconcile()
    assert result.code == 69, (result.code, result.stderr)
    assert not own_traceback(result.stderr)
    assert any("dify.base_url" in e for e in result.json["errors"])


def test_wrong_base_url_path_names_base_url(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.config.write_text(box.config.read_text().replace(emulator.base_url, emulator.root_url + "/nothing/v1"))
    box.write("a.md", "a")
    result = box.reconcile()
    assert not own_traceback(result.stderr)
    assert result.code == 69, (result.code, result.json["errors"])
    assert any("dify.base_url" in e for e in result.json["errors"])


def test_html_404_from_a_proxy_exits_69(box):
    box.write("a.md", "a")
    for _ in range(20):
        box.emu.faults.fail_next.append(FaultRule(status=404, body=nginx_html(404)))
    result = box.reconcile()
    assert not own_traceback(result.stderr)
    assert any("dify.base_url" in e for e in result.json["errors"])
    assert result.code == 69, (result.code, result.json["errors"])


# ------------------------------------------------------------------- the state DB

def test_corrupt_state_db(box):
    box.write("a.md", "a")
    box.reconcile()
    (box.tmp / "state.db").write_bytes(b"not sqlite at all " * 500)
    for side in ("state.db-wal", "state.db-shm"):
        (box.tmp / side).unlink(missing_ok=True)
    result = box.subprocess("reconcile", "-c", str(box.config))
    assert result.code == 78 and "difysync rebuild-state" in result.stderr
    assert "Traceback" not in result.stderr


def test_state_db_from_a_newer_schema(box):
    box.write("a.md", "a")
    box.reconcile()
    db = sqlite3.connect(box.tmp / "state.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    result = box.subprocess("reconcile", "-c", str(box.config))
    assert result.code == 78 and "newer" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(box.docs()) == ["a.md"]


# ------------------------------------------------------------------ invalid config

@pytest.mark.parametrize("edit, key", [
    (lambda t: t.replace("[dify]\n", "[dify]\ncolour = 'blue'\n"), "dify.colour"),
    (lambda t: t.replace("timeout_seconds = 5", "timeout_seconds = -1"), "dify.timeout_seconds"),
    (lambda t: t.replace("[dify]\n", "[dify]\nretries = -2\n"), "dify.retries"),
    (lambda t: t.replace('path = "docs"\n', ""), "folders[0].path"),
    (lambda t: t.replace('path = "docs"\n', 'path = "docs"\ndataset_name = "Both"\n'), "folders[0].dataset_id"),
], ids=["unknown-key", "negative-timeout", "negative-retries", "missing-path", "id-and-name"])
def test_invalid_config_value(box, edit, key):
    box.config.write_text(edit(box.config.read_text()))
    result = box.subprocess("reconcile", "-c", str(box.config))
    assert result.code == 78, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert key in lines[0], lines
