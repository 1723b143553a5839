"""Log lines name their folder: by its `name`, else its dataset name, else the last part of
its path; `--log-format json` carries the structured fields (folder, path, action,
document_id, result, duration_ms, reason_code) beside the message. Real subprocesses
against one emulator for the module, over loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from difysync.config import FolderSettings
from difysync.emulator import EmulatorServer

from .sandbox import Result, Sandbox


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer() as server:
        yield server


def two_folder_box(tmp_path: Path, emu: EmulatorServer, dataset: str) -> Sandbox:
    """Folder "docs" named "handbook" (a.md, and x.png, which is skipped) into dataset
    ``dataset``; folder "shared" unnamed, into the dataset found by the name ``dataset``-P."""
    box = Sandbox(tmp_path, emu, dataset_name=dataset,
                  extra_folder=f'name = "handbook"\n[[folders]]\npath = "shared"\ndataset_name = "{dataset}-P"\n')
    box.write("a.md", "alpha")
    box.write("x.png", "not sent")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "b.md").write_text("beta")
    return box


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.strip()]


def line_for(lines: list[dict[str, Any]], path: str) -> dict[str, Any]:
    found = [line for line in lines if line.get("path") == path]
    assert len(found) == 1, lines
    return found[0]


@pytest.fixture(scope="module")
def json_run(tmp_path_factory: pytest.TempPathFactory, emu: EmulatorServer) -> tuple[Sandbox, Result]:
    box = two_folder_box(tmp_path_factory.mktemp("json"), emu, "Json")
    result = box.subprocess("--log-format", "json", "reconcile", "-c", str(box.config))
    assert result.code == 0, result.stderr
    return box, result


# --- the label -------------------------------------------------------------------------


def test_a_folder_is_labelled_by_its_name_else_its_dataset_name_else_its_path(tmp_path: Path) -> None:
    named = FolderSettings(path=tmp_path / "docs", dataset_name="Team docs", name="handbook")
    by_dataset = FolderSettings(path=tmp_path / "docs", dataset_name="Team docs")
    by_path = FolderSettings(path=tmp_path / "docs", dataset_id="3f1a9d2e")
    assert (named.label, by_dataset.label, by_path.label) == ("handbook", "Team docs", "docs")
    # the name is only a label: the folder's identity in the state DB stays its path
    assert named.key == by_dataset.key == by_path.key == str(tmp_path / "docs")


# --- JSON lines ------------------------------------------------------------------------


def test_every_json_log_line_parses(json_run) -> None:
    _, result = json_run
    lines = json_lines(result)
    assert lines and all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)


def test_a_created_file_is_logged_with_its_folder_path_action_document_result_and_duration(json_run) -> None:
    box, result = json_run
    line = line_for(json_lines(result), "a.md")
    assert line["folder"] == "handbook"
    assert (line["action"], line["result"]) == ("create", "ok")
    assert line["document_id"] == box.docs()["a.md"].id
    assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    assert "reason_code" not in line
    assert "handbook: created a.md" in line["message"]


def test_a_skipped_file_is_logged_with_its_reason_code(json_run) -> None:
    _, result = json_run
    line = line_for(json_lines(result), "x.png")
    assert (line["folder"], line["result"], line["reason_code"]) == ("handbook", "skipped", "unsupported_type")
    assert "duration_ms" not in line  # nothing was sent for it


def test_with_two_folders_each_line_names_its_own_folder(json_run) -> None:
    _, result = json_run
    lines = json_lines(result)
    # the unnamed folder is labelled by its dataset's name
    assert line_for(lines, "b.md")["folder"] == "Json-P"
    owners = {"a.md": "handbook", "x.png": "handbook", "b.md": "Json-P"}
    about_files = [line for line in lines if "path" in line]
    assert {line["path"] for line in about_files} == set(owners)
    assert all(line["folder"] == owners[line["path"]] for line in about_files)


def test_the_api_key_appears_in_no_output_of_a_json_run(json_run, emu: EmulatorServer) -> None:
    _, result = json_run
    assert emu.api_key not in result.stdout + result.stderr


def test_a_secret_in_a_structured_field_is_scrubbed_like_one_in_the_message() -> None:
    # given a process whose logs know a secret, and a line whose path field holds it
    script = ("import logging; from difysync.logs import add_secret, log_fields, setup_logging; "
              "setup_logging('info', 'json'); add_secret('s3cr3t-k3y'); "
              "logging.getLogger('difysync').info('sent %s', 'a-s3cr3t-k3y.md', "
              "extra=log_fields(folder='f', path='a-s3cr3t-k3y.md'))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    # then neither the message nor the field shows it
    line = json.loads(proc.stderr)
    assert "s3cr3t-k3y" not in proc.stderr
    assert (line["path"], line["message"]) == ("a-***.md", "sent a-***.md")


# --- text lines ------------------------------------------------------------------------


def test_text_lines_name_the_folder_by_its_label_and_carry_no_fields(tmp_path: Path, emu: EmulatorServer) -> None:
    box = two_folder_box(tmp_path, emu, "Text")
    result = box.subprocess("reconcile", "-c", str(box.config))
    assert result.code == 0, result.stderr
    assert "handbook: created a.md (document " in result.stderr
    assert "handbook: skipped x.png: " in result.stderr
    assert "Text-P: created b.md (document " in result.stderr
    assert "duration_ms" not in result.stderr and "reason_code" not in result.stderr
    assert emu.api_key not in result.stdout + result.stderr


# --- the name key's validation -----------------------------------------------------------


@pytest.mark.parametrize(("extra", "key", "says"), [
    ('name = "same"\n[[folders]]\npath = "shared"\ndataset_name = "Other"\nname = "same"\n',
     "folders[1].name", "already named 'same'"),
    ('name = ""\n', "folders[0].name", "must not be empty"),
    ('name = "two\\nlines"\n', "folders[0].name", "control characters"),
    ('name = "Other"\n[[folders]]\npath = "shared"\ndataset_name = "Other"\n',
     "folders[0].name", "already labelled 'Other'"),
], ids=["duplicate", "empty", "newline", "another-folders-label"])
def test_a_bad_folder_name_is_one_config_error_naming_the_key(tmp_path: Path, emu: EmulatorServer,
                                                             extra: str, key: str, says: str) -> None:
    box = Sandbox(tmp_path, emu, extra_folder=extra, by_name=True)  # by name: nothing made in Dify
    result = box.reconcile()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 78, result.stderr
    assert len(lines) == 1 and key in lines[0] and says in lines[0], lines
    assert "Traceback" not in result.stderr
