"""The command line contract: exit codes, one-line config errors, where the key may
never appear, and the commands around reconcile (status, check, demo)."""

from __future__ import annotations

import json
import logging

import pytest

from difysync.emulator import EmulatorServer
from difysync.emulator.faults import FaultRule

from .sandbox import Sandbox


@pytest.fixture
def box(tmp_path, emulator):
    return Sandbox(tmp_path, emulator)


def test_invalid_config_exits_78_with_one_line_naming_the_key(box):
    box.config.write_text(box.config.read_text().replace("timeout_seconds = 5", "timeout_seconds = -1"))
    result = box.reconcile()
    assert result.code == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dify.timeout_seconds" in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_key_and_missing_config_exit_78(box, tmp_path):
    box.config.write_text(box.config.read_text() + "\nbogus = 1\n")
    result = box.reconcile()
    assert result.code == 78 and "bogus" in result.stderr
    missing = box.cli("reconcile", "-c", str(tmp_path / "nope.toml"))
    assert missing.code == 78 and "nope.toml" in missing.stderr


def test_missing_api_key_exits_78(box):
    result = box.reconcile(env={"DIFYSYNC_API_KEY": ""})
    assert result.code == 78 and "DIFYSYNC_API_KEY" in result.stderr


def test_rejected_key_exits_77(box):
    box.write("a.md", "a")
    result = box.reconcile(env={"DIFYSYNC_API_KEY": "wrong-key"})
    assert result.code == 77
    assert "API key was rejected" in " ".join(result.json["errors"])


def test_unreachable_server_exits_69(tmp_path):
    with EmulatorServer() as emu:
        box = Sandbox(tmp_path, emu)
    box.write("a.md", "a")
    result = box.reconcile()
    assert result.code == 69
    assert "cannot reach" in " ".join(result.json["errors"])


def test_html_answer_from_a_wrong_base_url_is_a_clear_error(box):
    box.write("a.md", "a")
    box.emu.faults.fail_next.append(FaultRule(status=200, body="<html>hello</html>", method="GET"))
    result = box.reconcile()
    assert result.code == 69
    assert "dify.base_url" in " ".join(result.json["errors"])


def test_failed_actions_exit_1(box):
    box.write("a.md", "a")
    box.emu.faults.fail_next.extend([FaultRule(status=500, method="POST") for _ in range(10)])
    result = box.reconcile()
    assert result.code == 1 and result.json["failed"] == 1


def test_json_output_has_the_documented_keys(box):
    box.write("a.md", "a")
    out = box.reconcile().json
    for key in ("created", "updated", "renamed", "deleted", "unchanged", "skipped", "failed"):
        assert isinstance(out[key], int)
    (action,) = out["actions"]
    assert action["action"] == "create" and action["path"] == "a.md" and action["result"] == "ok"


def test_api_key_never_appears_in_any_output(box, caplog):
    caplog.set_level(logging.DEBUG)
    box.write("a.md", "a")
    box.write("b.png", "b")
    box.emu.faults.fail_next.extend([FaultRule(status=503, method="POST"), FaultRule(status=429, headers={"Retry-After": "0"})])
    outputs = [box.cli("--log-level", "debug", "reconcile", "-c", str(box.config), "--json")]
    outputs.append(box.cli("--log-level", "debug", "--log-format", "json", "reconcile", "-c", str(box.config)))
    outputs.append(box.cli("status", "-c", str(box.config), "--json"))
    outputs.append(box.cli("check", "-c", str(box.config)))
    outputs.append(box.reconcile(env={"DIFYSYNC_API_KEY": "bad-" + box.emu.api_key}))
    key = box.emu.api_key
    for result in outputs:
        assert key not in result.stdout and key not in result.stderr
    assert all(key not in r.getMessage() for r in caplog.records)


def test_api_key_from_a_credentials_file(box, tmp_path):
    (tmp_path / "key").write_text(box.emu.api_key + "\n")
    box.config.write_text(box.config.read_text().replace("[dify]\n", '[dify]\napi_key_file = "key"\n'))
    box.write("a.md", "a")
    assert box.reconcile(env={"DIFYSYNC_API_KEY": ""}).code == 0


def test_status_reports_counts_and_reasons_from_the_state_alone(box):
    box.write("a.md", "a")
    box.write("b.png", "b")
    box.reconcile()
    box.emu.stop()  # status must not need the server
    result = box.cli("status", "-c", str(box.config), "--json")
    assert result.code == 0
    (folder,) = result.json["folders"]
    assert folder["synced"] + folder["pending"] + folder["indexing"] == 1 and folder["skipped"] == 1
    text = box.cli("status", "-c", str(box.config))
    assert "b.png" in text.stdout and "unsupported file type" in text.stdout


def test_status_before_any_reconcile_explains(box):
    result = box.cli("status", "-c", str(box.config))
    assert result.code == 78 and "run `difysync reconcile` first" in result.stderr


def test_check_verifies_key_and_datasets(box):
    ok = box.cli("check", "-c", str(box.config))
    assert ok.code == 0 and "API key accepted" in ok.stdout
    bad = box.cli("check", "-c", str(box.config), env={"DIFYSYNC_API_KEY": "nope"})
    assert bad.code == 77
    box.config.write_text(box.config.read_text().replace(box.dataset_id, "no-such-dataset"))
    missing = box.cli("check", "-c", str(box.config))
    assert missing.code == 1 and "does not exist" in missing.stdout


def test_python_dash_m_runs_the_cli(box):
    result = box.subprocess("--version")
    assert result.code == 0 and "difysync" in result.stdout


def test_reconcile_as_a_subprocess_logs_actions_but_not_the_key(box):
    box.write("a.md", "a")
    result = box.subprocess("--log-level", "debug", "reconcile", "-c", str(box.config))
    assert result.code == 0, result.stderr
    assert "created a.md" in result.stderr
    assert box.emu.api_key not in result.stderr + result.stdout


def test_demo_mirrors_the_sample_folder(tmp_path):
    result = Sandbox.__new__(Sandbox)
    result.env, result.tmp = {}, tmp_path
    out = Sandbox.subprocess(result, "demo", env={"COLUMNS": "200"}, timeout=120)
    assert out.code == 0, out.stderr
    assert "second pass (nothing changed): " in out.stdout and "0 files hashed" in out.stdout
    assert "diagram.png" in out.stdout  # the skipped sample file is listed with its reason


def test_json_is_one_object_on_stdout(box):
    box.write("a.md", "a")
    result = box.reconcile()
    assert json.loads(result.stdout.strip().splitlines()[-1]) == result.json


def _refusing_box(tmp_path):
    """A server that refuses .csv (difysync allows it): what it refuses is recorded as such."""
    emu = EmulatorServer(allowed_extensions=["md"])
    emu.start()
    box = Sandbox(tmp_path, emu)
    box.write("ok.md", "fine")
    box.write("data/table.csv", "a,b\n1,2\n")
    for i in range(5):
        box.write(f"pics/{i}.png", b"\x89PNG")  # refused locally: unsupported type
    assert box.reconcile().code == 0  # refusals are skips, not failures
    return emu, box


def test_retry_takes_a_path_as_status_prints_it(tmp_path):
    emu, box = _refusing_box(tmp_path)
    try:
        status = box.cli("status", "-c", str(box.config))
        assert "data/table.csv" in status.stdout
        result = box.cli("retry", "-c", str(box.config), "data/table.csv")
        assert result.code == 0, result.stdout + result.stderr
        assert result.stdout.startswith("1 file(s)")
        missing = box.cli("retry", "-c", str(box.config), "nowhere/else.md")
        assert missing.code == 2 and "status" in missing.stderr  # a usage error
    finally:
        emu.stop()


def test_retry_all_counts_only_what_it_lifts(tmp_path):
    emu, box = _refusing_box(tmp_path)
    try:
        result = box.cli("retry", "-c", str(box.config), "--all")
        assert result.stdout.startswith("1 file(s)")  # the refused csv, not the five .png
        again = box.cli("retry", "-c", str(box.config), "--all")
        assert again.stdout.startswith("0 file(s)")
    finally:
        emu.stop()


def test_ctrl_c_during_reconcile_prints_the_partial_summary_and_exits_130(tmp_path):
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from difysync.emulator.faults import Faults

    with EmulatorServer(faults=Faults(latency=1.0)) as emu:
        box = Sandbox(tmp_path, emu, extra_dify="concurrency = 2")
        for i in range(20):
            box.write(f"{i:02d}.md", f"file {i}")
        proc = subprocess.Popen([sys.executable, "-m", "difysync", "reconcile", "-c", str(box.config)],
                                cwd=tmp_path, env={**__import__("os").environ, **box.env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while emu.count(method="POST") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 130, out + err
        assert "Aborted" not in out + err and "Traceback" not in err
        assert "stopped" in out and "interrupted" in out  # the summary, with what was not attempted
        assert "stopping: letting the requests in flight finish" in err
        created = len(box.docs())
        assert 0 < created < 20
        journal = sqlite3.connect(tmp_path / "state.db").execute("SELECT count(*) FROM journal").fetchone()[0]
        assert journal == 0  # the requests in flight were settled
        emu.faults.latency = 0.0
        result = box.reconcile()
        assert result.code == 0 and result.json["created"] == 20 - created
        assert sorted(box.docs()) == sorted(f"{i:02d}.md" for i in range(20))


def test_logging_options_work_before_and_after_the_subcommand(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    box.write("x.png", "x")  # skipped: said at INFO once, then at DEBUG on every pass
    first = box.cli("reconcile", "-c", str(box.config))
    assert "INFO" in first.stderr and "skipped x.png" in first.stderr
    plain = box.cli("reconcile", "-c", str(box.config))
    assert "skipped x.png" not in plain.stderr
    after = box.cli("reconcile", "-c", str(box.config), "--log-level", "debug")
    assert "DEBUG" in after.stderr and "skipped x.png" in after.stderr
    box.write("b.md", "b")
    quiet = box.cli("reconcile", "-c", str(box.config), "-q")
    assert quiet.code == 0 and quiet.stderr == ""
    later_wins = box.cli("-q", "reconcile", "-c", str(box.config), "-v")
    assert "skipped x.png" in later_wins.stderr
    as_json = box.cli("reconcile", "-c", str(box.config), "--log-format", "json", "-v")
    lines = [json.loads(line) for line in as_json.stderr.splitlines() if line.strip()]
    assert lines and any("x.png" in str(line) for line in lines)


def test_status_keeps_the_last_successful_pass_and_tells_of_a_failed_attempt(tmp_path, emulator):
    import shutil

    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    before = box.cli("status", "-c", str(box.config), "--json").json["folders"][0]
    assert before["last_attempt_ok"] is True and before["last_attempt_error"] is None
    shutil.rmtree(box.root)
    assert box.reconcile().code == 1
    after = box.cli("status", "-c", str(box.config), "--json").json["folders"][0]
    assert after["last_full_reconcile"] == before["last_full_reconcile"]  # a refused pass is no full pass
    assert after["last_attempt"] > before["last_attempt"] and after["last_attempt_ok"] is False
    assert "does not exist" in after["last_attempt_error"]
    table = box.cli("status", "-c", str(box.config))
    assert "failed: folder root does not exist" in " ".join(table.stdout.split())


def test_a_failing_exit_code_comes_with_its_reason_in_the_summary(tmp_path, emulator):
    import shutil

    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    assert box.cli("reconcile", "-c", str(box.config)).code == 0
    shutil.rmtree(box.root)
    result = box.cli("reconcile", "-c", str(box.config))
    assert result.code == 1
    summary = result.stdout.strip().splitlines()[-1]
    assert "0 failed" in summary and "exit 1: " in summary and "folder root does not exist" in summary


def test_check_says_when_the_state_db_cannot_be_written(box):
    (box.tmp / "not-a-dir").write_text("a file where a folder should be")
    box.config.write_text(box.config.read_text().replace('state_db = "state.db"', 'state_db = "not-a-dir/state.db"'))
    result = box.cli("check", "-c", str(box.config))
    assert result.code == 78 and "NOT WRITABLE" in result.stdout and "state_db" in result.stdout


def test_check_warns_about_a_key_file_others_can_read(box):
    key = box.tmp / "key.txt"
    key.write_text(box.emu.api_key)
    key.chmod(0o644)
    box.config.write_text(box.config.read_text().replace("[dify]\n", '[dify]\napi_key_file = "key.txt"\n'))
    loose = box.cli("check", "-c", str(box.config), env={"DIFYSYNC_API_KEY": ""})
    assert loose.code == 0 and "can be read by other users (mode 644): chmod 600" in loose.stdout
    assert box.emu.api_key not in loose.stdout + loose.stderr
    key.chmod(0o600)
    tight = box.cli("check", "-c", str(box.config), env={"DIFYSYNC_API_KEY": ""})
    assert tight.code == 0 and "other users" not in tight.stdout and "state DB" in tight.stdout


def test_datasets_and_ls_show_the_remote_side(box):
    box.write("a.md", "a")
    box.write("sub/b.md", "b")
    assert box.reconcile("--wait").code == 0
    box.emu.store.add_document(box.dataset, "by-hand.md", b"a person's upload", match_by_name=False)
    listed = box.cli("datasets", "-c", str(box.config), "--json")
    assert listed.code == 0, listed.stderr
    (row,) = [d for d in listed.json["datasets"] if d["id"] == box.dataset]
    assert row["documents"] == 3 and row["folder"] == str(box.root) and row["indexing_technique"] == "high_quality"
    ls = box.cli("ls", "-c", str(box.config), "--json")
    assert ls.code == 0, ls.stderr
    docs = {d["name"]: d for d in ls.json["folders"][0]["documents"]}
    assert docs["a.md"]["path"] == "a.md" and docs["a.md"]["owner"] == box.owner
    assert docs["sub∕b.md"]["path"] == "sub/b.md" and docs["sub∕b.md"]["status"] == "available"
    assert docs["by-hand.md"]["path"] is None and docs["by-hand.md"]["owner"] is None
    table = box.cli("ls", "-c", str(box.config), str(box.root))
    assert table.code == 0 and "sub/b.md" in table.stdout and "by-hand.md" in table.stdout
    assert box.cli("ls", "-c", str(box.config), "elsewhere").code == 2
    before = box.mutations()  # both are read-only
    box.cli("datasets", "-c", str(box.config))
    box.cli("ls", "-c", str(box.config))
    assert box.mutations() == before
