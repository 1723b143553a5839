"""The validated settings kept between runs (settingsfile.py): read back only while every
input of the validation is unchanged, equal to what a validation gives, never a secret."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from difysync.config import FolderSettings, Settings, load_settings
from difysync.errors import ConfigError
from difysync.settingsfile import SettingsValues, read_snapshot

FULL = """
state_db = "state/difysync.db"
owner = "host-a"
[dify]
base_url = "https://dify.example.com/v1"
max_attempts = 4
allowed_extensions = ["MD", ".txt"]
[watch]
mode = "poll"
[metrics]
listen = "[::1]:9464"
[[folders]]
path = "docs"
dataset_id = "ds-1"
name = "handbook"
watch_mode = "events"
exclude = ["drafts/**"]
[[folders]]
path = "~/notes"
dataset_name = "Notes"
chunking = "local"
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DIFYSYNC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)


def config_file(tmp_path: Path, text: str = FULL) -> Path:
    (tmp_path / "docs").mkdir(exist_ok=True)
    path = tmp_path / "sync.toml"
    path.write_text(text, encoding="utf-8")
    return path


def kept(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "difysync").glob("settings-*.json"))


def test_settings_read_back_answer_everything_the_validated_ones_do(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    validated = load_settings(path, keep=True)
    snapshot = read_snapshot(path)
    assert isinstance(snapshot, SettingsValues)
    assert_same(validated, snapshot)


def assert_same(model: Any, values: Any) -> None:
    """Every field (nested models and lists of them included) and every derived property."""
    for name, field in type(model).model_fields.items():
        mine, theirs = getattr(model, name), getattr(values, name)
        if isinstance(mine, BaseModel):
            assert_same(mine, theirs)
        elif isinstance(mine, list) and mine and isinstance(mine[0], BaseModel):
            assert len(mine) == len(theirs)
            for a, b in zip(mine, theirs):
                assert_same(a, b)
        else:
            assert (name, theirs) == (name, mine) and type(theirs) is type(mine), name
    for name, attr in vars(type(model)).items():
        if isinstance(attr, property):
            assert getattr(values, name) == getattr(model, name), name
    if isinstance(model, FolderSettings):
        assert values.effective_watch_mode(values_of_watch("auto")) == model.effective_watch_mode(
            values_of_watch("auto"))  # type: ignore[arg-type]


def values_of_watch(mode: str) -> Any:
    class Holder:
        class watch:  # noqa: N801 - stands in for settings.watch
            pass
    Holder.watch.mode = mode  # type: ignore[attr-defined]
    return Holder


def test_nothing_is_kept_unless_asked_and_a_plain_load_reads_nothing(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    load_settings(path)
    assert kept(tmp_path) == [] and read_snapshot(path) is None


@pytest.mark.parametrize("change", ["file", "environment", "home", "version"])
def test_a_changed_input_is_validated_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    if change == "file":
        path.write_text(FULL.replace('owner = "host-a"', 'owner = "host-b"'), encoding="utf-8")
    elif change == "environment":
        monkeypatch.setenv("DIFYSYNC_DIFY__CONCURRENCY", "2")
    elif change == "home":
        monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    else:
        monkeypatch.setattr("difysync.settingsfile.__version__", "0.0.0-other")
    assert read_snapshot(path) is None


def test_the_api_key_is_no_input_and_never_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFYSYNC_API_KEY", "dataset-SECRET-kept?")
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    monkeypatch.setenv("DIFYSYNC_API_KEY", "dataset-another-one")
    assert read_snapshot(path) is not None  # (a new key changes no setting)
    (only,) = kept(tmp_path)
    assert "SECRET" not in only.read_text(encoding="utf-8") and "another" not in only.read_text(encoding="utf-8")
    assert stat.S_IMODE(only.stat().st_mode) == 0o600
    assert stat.S_IMODE(only.parent.stat().st_mode) == 0o700


def test_a_folder_whose_symlink_now_points_elsewhere_is_resolved_again(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "docs").symlink_to(tmp_path / "a")
    path = config_file(tmp_path, '[[folders]]\npath = "docs"\ndataset_id = "ds-1"\n')
    assert load_settings(path, keep=True).folders[0].path == tmp_path / "a"
    assert read_snapshot(path).folders[0].path == tmp_path / "a"  # type: ignore[union-attr]
    (tmp_path / "docs").unlink()
    (tmp_path / "docs").symlink_to(tmp_path / "b")
    assert read_snapshot(path) is None


def test_an_invalid_config_is_never_kept(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    path.write_text(FULL.replace('dataset_id = "ds-1"', 'dataset_id = "ds-1"\nbogus = 1'), encoding="utf-8")
    with pytest.raises(ConfigError):
        load_settings(path, keep=True)
    assert read_snapshot(path) is None


@pytest.mark.parametrize("damage", ["", "{", "[]", '{"key": 1}', "garbage"])
def test_a_damaged_snapshot_only_means_a_validation(tmp_path: Path, damage: str) -> None:
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    (only,) = kept(tmp_path)
    only.write_text(damage, encoding="utf-8")
    assert read_snapshot(path) is None


def test_a_snapshot_with_the_right_key_but_missing_values_is_not_used(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    (only,) = kept(tmp_path)
    body = json.loads(only.read_text(encoding="utf-8"))
    del body["settings"]["folders"]
    only.write_text(json.dumps(body), encoding="utf-8")
    assert read_snapshot(path) is None


def test_without_a_cache_folder_nothing_is_kept_and_nothing_fails(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("XDG_CACHE_HOME", "HOME", "CACHE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    path = config_file(tmp_path)
    assert load_settings(path, keep=True).owner == "host-a"
    assert read_snapshot(path) is None


def test_systemd_cache_directory_is_used_when_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "systemd-cache"))
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    assert len(list((tmp_path / "systemd-cache").glob("settings-*.json"))) == 1
    assert read_snapshot(path) is not None


def test_an_unwritable_cache_is_only_a_slower_start(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the folder would go", encoding="utf-8")
    path = config_file(tmp_path)
    assert load_settings(path, keep=True).owner == "host-a"
    assert read_snapshot(path) is None


def test_deprecations_are_still_said_when_read_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    caplog.clear()
    read_snapshot(path)
    assert "dify.max_attempts is deprecated" in caplog.text


def test_settings_read_back_are_read_only(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    load_settings(path, keep=True)
    snapshot = read_snapshot(path)
    assert snapshot is not None
    with pytest.raises(AttributeError):
        snapshot.owner = "someone else"
    with pytest.raises(AttributeError):
        snapshot.folders[0].nothing_like_this  # noqa: B018


def test_every_path_field_of_the_models_is_a_path_when_read_back(tmp_path: Path) -> None:
    """settingsfile makes Paths of exactly state_db and folders[].path: if a model gains
    another Path field, this says so."""
    def path_fields(model: type[BaseModel]) -> set[str]:
        return {name for name, f in model.model_fields.items() if f.annotation is Path}

    assert path_fields(Settings) == {"state_db"} and path_fields(FolderSettings) == {"path"}
