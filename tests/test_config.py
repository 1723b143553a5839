"""Settings: loading one TOML file plus DIFYSYNC_* overrides, one line per problem, the API key."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from difysync import config, settingsfile
from difysync.config import (
    DifySettings,
    FolderSettings,
    ScheduleSettings,
    Settings,
    WatchSettings,
    find_config_path,
    load_api_key,
    load_settings,
    render_problems,
)
from difysync.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SECRET = "dataset-SECRET-abc123"
ONE_FOLDER = '[[folders]]\npath = "docs"\ndataset_id = "ds-1"\n'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DIFYSYNC_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "sync.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value.problems


# --- defaults and paths --------------------------------------------------------------


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    # given a file with only one folder
    path = write(tmp_path, ONE_FOLDER)
    # when it is loaded
    settings = load_settings(path)
    # then everything else is the documented default
    assert settings.dify == DifySettings()
    assert settings.watch == WatchSettings()
    assert settings.schedule == ScheduleSettings()
    assert settings.shutdown_timeout_seconds == 20
    assert settings.dify.base_url == "https://api.dify.ai/v1"
    assert settings.dify.concurrency == 4
    assert settings.dify.allowed_extensions == ["txt", "markdown", "md", "pdf", "html", "htm", "xlsx",
                                                "docx", "csv"]
    folder = settings.folders[0]
    assert folder.indexing_technique == "high_quality"
    assert folder.include == ["**/*"] and folder.exclude == [] and folder.delete is True
    assert folder.process_rule == {"mode": "automatic"}
    assert folder.effective_watch_mode(settings) == "auto"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a config in a sub-folder and a different working directory
    path = write(tmp_path, 'state_db = "state/x.db"\n' + ONE_FOLDER, name="etc/sync.toml")
    monkeypatch.chdir(tmp_path)
    # when it is loaded
    settings = load_settings(path)
    # then relative paths hang off the config's folder, not the cwd
    etc = (tmp_path / "etc").resolve()
    assert settings.state_db == etc / "state" / "x.db"
    assert settings.folders[0].path == etc / "docs"
    assert settings.config_path == path.absolute()
    assert settings.config_dir == path.absolute().parent


def test_missing_folder_root_does_not_make_the_config_invalid(tmp_path: Path) -> None:
    # given a folder path that does not exist
    path = write(tmp_path, '[[folders]]\npath = "/nowhere/at/all"\ndataset_id = "x"\n')
    # when / then it loads
    assert load_settings(path).folders[0].path == Path("/nowhere/at/all")


def test_two_loads_of_different_files_do_not_leak(tmp_path: Path) -> None:
    # given two configs in different folders
    first = write(tmp_path, '[dify]\nconcurrency = 7\n' + ONE_FOLDER, name="a/sync.toml")
    second = write(tmp_path, ONE_FOLDER, name="b/sync.toml")
    # when both are loaded in turn
    one, two = load_settings(first), load_settings(second)
    # then neither sees the other's values or folder
    assert one.dify.concurrency == 7 and two.dify.concurrency == 4
    assert two.folders[0].path == (tmp_path / "b" / "docs").resolve()
    assert two.config_path == second.absolute()


def test_extensions_are_normalised(tmp_path: Path) -> None:
    # given extensions spelled carelessly
    path = write(tmp_path, '[dify]\nallowed_extensions = [".MD", "md", " Txt "]\n' + ONE_FOLDER)
    # when loaded
    settings = load_settings(path)
    # then they are lower-case, dotless and unique
    assert settings.dify.allowed_extensions == ["md", "txt"]


def test_trailing_slash_of_base_url_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, '[dify]\nbase_url = "https://dify.example.com/v1/"\n' + ONE_FOLDER)
    assert load_settings(path).dify.base_url == "https://dify.example.com/v1"


def test_folder_watch_mode_overrides_the_global_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[watch]\nmode = "events"\n' + ONE_FOLDER
                 + '[[folders]]\npath = "b"\ndataset_name = "B"\nwatch_mode = "poll"\n')
    settings = load_settings(path)
    assert [f.effective_watch_mode(settings) for f in settings.folders] == ["events", "poll"]


# --- environment ---------------------------------------------------------------------


def test_environment_overrides_top_level_and_nested_keys(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # given a file value and environment overrides, one nested with "__"
    path = write(tmp_path, '[dify]\nconcurrency = 2\n' + ONE_FOLDER)
    monkeypatch.setenv("DIFYSYNC_DIFY__CONCURRENCY", "8")
    monkeypatch.setenv("DIFYSYNC_STATE_DB", "/var/lib/difysync/state.db")
    monkeypatch.setenv("DIFYSYNC_WATCH__MODE", "poll")
    # when loaded
    settings = load_settings(path)
    # then the environment wins
    assert settings.dify.concurrency == 8
    assert settings.state_db == Path("/var/lib/difysync/state.db")
    assert settings.watch.mode == "poll"


def test_precedence_is_kwargs_then_environment_then_file_then_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given the same key in the file, the environment and the call
    path = write(tmp_path, 'shutdown_timeout_seconds = 5\n[dify]\ntimeout_seconds = 11\n' + ONE_FOLDER)
    monkeypatch.setenv("DIFYSYNC_SHUTDOWN_TIMEOUT_SECONDS", "6")
    # when loaded with and without an override
    plain = load_settings(path)
    overridden = load_settings(path, shutdown_timeout_seconds=7)
    # then kwargs > environment > file > default
    assert plain.shutdown_timeout_seconds == 6
    assert overridden.shutdown_timeout_seconds == 7
    assert plain.dify.timeout_seconds == 11
    assert plain.dify.quarantine_after == 3


def test_the_old_name_max_attempts_still_works_with_a_warning(tmp_path: Path, caplog) -> None:
    path = write(tmp_path, "[dify]\nmax_attempts = 5\n" + ONE_FOLDER)
    settings = load_settings(path)
    assert settings.dify.quarantine_after == 5
    assert any("dify.max_attempts is deprecated" in r.getMessage() and "dify.quarantine_after" in r.getMessage()
               for r in caplog.records)


def test_api_key_variable_is_not_an_unknown_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given the key and the config location in the environment
    monkeypatch.setenv("DIFYSYNC_API_KEY", SECRET)
    monkeypatch.setenv("DIFYSYNC_CONFIG", str(tmp_path / "sync.toml"))
    # when loaded
    settings = load_settings(write(tmp_path, ONE_FOLDER))
    # then it loads, and the key is in no field
    assert SECRET not in settings.model_dump_json()


def test_bad_value_from_the_environment_names_the_variable(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFYSYNC_DIFY__CONCURRENCY", "0")
    assert problems_of(write(tmp_path, ONE_FOLDER)) == [
        "DIFYSYNC_DIFY__CONCURRENCY (dify.concurrency): must be greater than or equal to 1 (got '0')"]


def test_list_from_the_environment_must_be_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a list written the shell way
    monkeypatch.setenv("DIFYSYNC_DIFY__ALLOWED_EXTENSIONS", "txt,md")
    # when loaded, then one line names the variable and the fix
    assert problems_of(write(tmp_path, ONE_FOLDER)) == [
        'DIFYSYNC_DIFY__ALLOWED_EXTENSIONS (dify): cannot parse it; lists and tables given in the environment '
        'must be JSON, e.g. ["md", "txt"]']


def test_list_from_the_environment_as_json_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFYSYNC_DIFY__ALLOWED_EXTENSIONS", '["TXT", ".md"]')
    assert load_settings(write(tmp_path, ONE_FOLDER)).dify.allowed_extensions == ["txt", "md"]


# --- one line per problem ------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param('[dify]\nconcurrency = 0\n' + ONE_FOLDER,
                 "dify.concurrency: must be greater than or equal to 1 (got 0)", id="zero-concurrency"),
    pytest.param('[dify]\nconcurrency = 33\n' + ONE_FOLDER,
                 "dify.concurrency: must be less than or equal to 32 (got 33)", id="too-much-concurrency"),
    pytest.param('[watch]\ndebounce_seconds = -1\n' + ONE_FOLDER,
                 "watch.debounce_seconds: must be greater than or equal to 0 (got -1)", id="negative-debounce"),
    pytest.param('[schedule]\nfull_reconcile_minutes = 0\n' + ONE_FOLDER,
                 "schedule.full_reconcile_minutes: must be greater than 0 (got 0)", id="zero-reconcile"),
    pytest.param('[dify]\nrequests_per_minute = -5\n' + ONE_FOLDER,
                 "dify.requests_per_minute: must be greater than or equal to 0 (got -5)", id="negative-rpm"),
    pytest.param('bogus = 1\n' + ONE_FOLDER, "bogus: unknown key", id="unknown-top-level"),
    pytest.param('[dify]\nconcurency = 4\n' + ONE_FOLDER,
                 "dify.concurency: unknown key (did you mean concurrency?)", id="unknown-nested"),
    pytest.param('[dify]\nverify_tls = false\n' + ONE_FOLDER, "dify.verify_tls: unknown key", id="no-verify-tls"),
    pytest.param('[[folders]]\npath = "a"\ndataset_id = "x"\ndataset_name = "X"\n',
                 "folders[0].dataset_id: give either dataset_id or dataset_name, not both", id="both-datasets"),
    pytest.param('[[folders]]\npath = "a"\n',
                 "folders[0].dataset_id: give dataset_id or dataset_name (one of them is required)",
                 id="no-dataset"),
    pytest.param(ONE_FOLDER + '[[folders]]\npath = "b"\ndataset_id = "ds-1"\n',
                 "folders[1].dataset_id: folders[0] already syncs into dataset ds-1; "
                 "two folders may not share a dataset", id="duplicate-dataset-id"),
    pytest.param('[[folders]]\npath = "a"\ndataset_name = "N"\n[[folders]]\npath = "b"\ndataset_name = "N"\n',
                 "folders[1].dataset_name: folders[0] already syncs into dataset 'N'; "
                 "two folders may not share a dataset", id="duplicate-dataset-name"),
    pytest.param('[[folders]]\npath = "a"\ndataset_name = "' + "n" * 41 + '"\n',
                 "folders[0].dataset_name: must be at most 40 characters (Dify's limit) (got '" + "n" * 41 + "')",
                 id="long-dataset-name"),
    pytest.param('[[folders]]\npath = "a"\ndataset_id = "x"\nindexing_technique = "fast"\n',
                 "folders[0].indexing_technique: must be 'high_quality' or 'economy' (got 'fast')",
                 id="bad-indexing-technique"),
    pytest.param('[[folders]]\npath = "a"\ndataset_id = "x"\nprocess_rule = { mode = "magic" }\n',
                 "folders[0].process_rule.mode: must be 'automatic', 'custom' or 'hierarchical' (got 'magic')",
                 id="bad-process-rule"),
    pytest.param('[dify]\nbase_url = "ftp://dify.example.com/v1"\n' + ONE_FOLDER,
                 "dify.base_url: must be an http:// or https:// URL such as https://api.dify.ai/v1 "
                 "(got 'ftp://dify.example.com/v1')", id="bad-base-url"),
    pytest.param('[dify]\nbase_url = "http://dify.example.com/v1"\n' + ONE_FOLDER,
                 "dify.base_url: plain http to dify.example.com would send the API key unencrypted; use https, "
                 "or set dify.allow_insecure_http = true if the network is trusted", id="insecure-http"),
    pytest.param('[dify]\nbase_url = "https://dify.example.com/console/api"\n' + ONE_FOLDER,
                 "dify.base_url: must be the Service API URL, ending in /v1, such as https://your-host/v1 "
                 "(/console/api is the web console's API, which dataset keys cannot use) "
                 "(got 'https://dify.example.com/console/api')", id="console-base-url"),
    pytest.param('[dify]\nbase_url = "https://dify.example.com"\n' + ONE_FOLDER,
                 "dify.base_url: must be the Service API URL, ending in /v1, such as https://your-host/v1 "
                 "(got 'https://dify.example.com')", id="base-url-without-v1"),
    pytest.param('[dify]\napi_key = "' + SECRET + '"\n' + ONE_FOLDER,
                 "dify.api_key: the API key is never read from the config file; "
                 "set DIFYSYNC_API_KEY or dify.api_key_file", id="api-key-in-file"),
    pytest.param('state_db = "docs/state.db"\n' + ONE_FOLDER,
                 "state_db: {dir}/docs/state.db is inside folders[0].path ({dir}/docs); "
                 "keep the state DB outside every watched folder", id="state-db-in-folder"),
    pytest.param('[watch]\nmode = "later"\n',
                 "folders: at least one [[folders]] table is required", id="no-folders"),
])
def test_each_problem_is_one_line_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    # given a config with one mistake (the no-folders case has two: the bad mode is checked too)
    path = write(tmp_path, text)
    # when loaded
    problems = problems_of(path)
    # then that mistake is reported in one line naming the key
    assert expected.format(dir=tmp_path.resolve()) in problems
    assert all("\n" not in line for line in problems)
    if "later" not in text:
        assert len(problems) == 1


def test_same_folder_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, ONE_FOLDER + '[[folders]]\npath = "./docs/"\ndataset_id = "ds-2"\n')
    assert problems_of(path) == [f"folders[1].path: folders[0] already watches {(tmp_path / 'docs').resolve()}"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:5001/v1", "http://127.8.9.10/v1", "http://localhost/v1",
                                 "http://[::1]:8080/v1"])
def test_plain_http_to_loopback_is_allowed(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'[dify]\nbase_url = "{url}"\n' + ONE_FOLDER)
    assert load_settings(path).dify.base_url == url


def test_plain_http_elsewhere_is_allowed_when_asked_for(tmp_path: Path) -> None:
    path = write(tmp_path, '[dify]\nbase_url = "http://dify.lan/v1"\nallow_insecure_http = true\n' + ONE_FOLDER)
    assert load_settings(path).dify.base_url == "http://dify.lan/v1"


def test_api_key_anywhere_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    # given a key pasted into a folder table
    path = write(tmp_path, '[[folders]]\npath = "a"\ndataset_id = "x"\napi_key = "' + SECRET + '"\n')
    # when loaded
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    # then the key's place is named, its value never shown
    assert caught.value.problems == [
        "folders[0].api_key: the API key is never read from the config file; "
        "set DIFYSYNC_API_KEY or dify.api_key_file"]
    assert SECRET not in str(caught.value)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    # given a file broken on line 3
    path = write(tmp_path, '[dify]\nconcurrency = 4\nbase_url = \n' + ONE_FOLDER)
    # when loaded
    problems = problems_of(path)
    # then one line names the file and the line
    assert len(problems) == 1
    assert problems[0].startswith(f"config file {path} line 3")


def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "absent.toml")
    assert len(problems) == 1 and problems[0].startswith(f"config file {tmp_path / 'absent.toml'}: cannot read")


def test_several_problems_give_several_lines(tmp_path: Path) -> None:
    # given three independent mistakes
    path = write(tmp_path, 'bogus = 1\n[dify]\nconcurrency = 0\n[watch]\nmode = "sometimes"\n' + ONE_FOLDER)
    # when loaded
    problems = problems_of(path)
    # then each has its own line
    assert sorted(problems) == sorted([
        "bogus: unknown key",
        "dify.concurrency: must be greater than or equal to 1 (got 0)",
        "watch.mode: must be 'auto', 'events', 'poll' or 'off' (got 'sometimes')",
    ])


def test_render_problems_prefixes_each_line() -> None:
    rendered = render_problems(ConfigError(["a: one", "b: two"]))
    assert rendered == "difysync: config error: a: one\ndifysync: config error: b: two"


# --- finding the file ----------------------------------------------------------------


def test_explicit_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path, ONE_FOLDER, name="explicit.toml")
    monkeypatch.setenv("DIFYSYNC_CONFIG", str(write(tmp_path, ONE_FOLDER, name="env.toml")))
    monkeypatch.chdir(tmp_path)
    write(tmp_path, ONE_FOLDER)
    assert find_config_path(explicit) == explicit


def test_environment_variable_comes_before_the_working_directory(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from_env = write(tmp_path, ONE_FOLDER, name="env.toml")
    monkeypatch.setenv("DIFYSYNC_CONFIG", str(from_env))
    monkeypatch.chdir(tmp_path)
    write(tmp_path, ONE_FOLDER)
    assert find_config_path(None) == from_env


def test_working_directory_comes_before_etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settingsfile, "SYSTEM_CONFIG_PATH", write(tmp_path, ONE_FOLDER, name="etc/sync.toml"))
    monkeypatch.chdir(tmp_path)
    local = write(tmp_path, ONE_FOLDER)
    assert find_config_path(None) == local


def test_etc_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = write(tmp_path, ONE_FOLDER, name="etc/sync.toml")
    monkeypatch.setattr(settingsfile, "SYSTEM_CONFIG_PATH", system)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert find_config_path(None) == system


def test_no_file_anywhere_lists_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settingsfile, "SYSTEM_CONFIG_PATH", tmp_path / "etc" / "sync.toml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^no configuration file: tried .*sync\.toml.*etc/sync\.toml"):
        find_config_path(None)


def test_explicit_path_that_does_not_exist_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a ./sync.toml that would otherwise be found
    monkeypatch.chdir(tmp_path)
    write(tmp_path, ONE_FOLDER)
    # when / then a missing explicit path is an error, not a fallback
    with pytest.raises(ConfigError, match="missing.toml"):
        find_config_path(tmp_path / "missing.toml")
    monkeypatch.setenv("DIFYSYNC_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="gone.toml"):
        find_config_path(None)


# --- the API key ---------------------------------------------------------------------


def test_api_key_comes_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ONE_FOLDER))
    key = load_api_key(settings, {"DIFYSYNC_API_KEY": f" {SECRET}\n"})
    assert isinstance(key, SecretStr) and key.get_secret_value() == SECRET


def test_api_key_file_wins_over_the_environment(tmp_path: Path) -> None:
    # given a relative key file next to the config, and a different key in the environment
    (tmp_path / "key").write_text(SECRET + "\n")
    settings = load_settings(write(tmp_path, '[dify]\napi_key_file = "key"\n' + ONE_FOLDER))
    # when the key is loaded
    key = load_api_key(settings, {"DIFYSYNC_API_KEY": "other"})
    # then the file's content, stripped, is used
    assert key.get_secret_value() == SECRET


@pytest.mark.parametrize("spelling", ["$CREDENTIALS_DIRECTORY/dify", "${CREDENTIALS_DIRECTORY}/dify"])
def test_api_key_file_expands_the_systemd_credentials_directory(tmp_path: Path, spelling: str) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dify").write_text(SECRET)
    settings = load_settings(write(tmp_path, f'[dify]\napi_key_file = "{spelling}"\n' + ONE_FOLDER))
    assert load_api_key(settings, {"CREDENTIALS_DIRECTORY": str(creds)}).get_secret_value() == SECRET


def test_credentials_directory_unset_is_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[dify]\napi_key_file = "$CREDENTIALS_DIRECTORY/dify"\n' + ONE_FOLDER))
    with pytest.raises(ConfigError, match=r"^dify.api_key_file: .*CREDENTIALS_DIRECTORY"):
        load_api_key(settings, {})


def test_missing_key_file_names_the_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[dify]\napi_key_file = "nokey"\n' + ONE_FOLDER))
    with pytest.raises(ConfigError) as caught:
        load_api_key(settings, {"DIFYSYNC_API_KEY": SECRET})
    assert caught.value.problems == [f"dify.api_key_file: cannot read {(tmp_path / 'nokey').resolve()}: "
                                     "No such file or directory"]


def test_empty_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\n")
    settings = load_settings(write(tmp_path, '[dify]\napi_key_file = "key"\n' + ONE_FOLDER))
    with pytest.raises(ConfigError, match="is empty"):
        load_api_key(settings, {})


@pytest.mark.parametrize("environ", [{}, {"DIFYSYNC_API_KEY": "  "}])
def test_no_api_key_at_all_is_a_config_error(tmp_path: Path, environ: dict[str, str]) -> None:
    settings = load_settings(write(tmp_path, ONE_FOLDER))
    with pytest.raises(ConfigError) as caught:
        load_api_key(settings, environ)
    assert caught.value.problems == ["no API key: set DIFYSYNC_API_KEY or dify.api_key_file"]


def test_api_key_never_appears_in_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given the key in the environment and in a key file
    monkeypatch.setenv("DIFYSYNC_API_KEY", SECRET)
    (tmp_path / "key").write_text(SECRET)
    settings = load_settings(write(tmp_path, '[dify]\napi_key_file = "key"\n' + ONE_FOLDER))
    # when the key is loaded and the settings are shown every way
    key = load_api_key(settings)
    # then the key is nowhere in them
    for shown in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump()),
                  repr(key), str(key)):
        assert SECRET not in shown


# --- the example file ----------------------------------------------------------------


def test_example_config_loads(tmp_path: Path) -> None:
    # given the shipped example (its folders do not exist here)
    settings = load_settings(REPO / "sync.example.toml")
    # then it loads, and shows the defaults for every section
    assert settings.dify == DifySettings()
    assert settings.watch == WatchSettings()
    assert settings.schedule == ScheduleSettings()
    assert settings.shutdown_timeout_seconds == Settings.model_fields["shutdown_timeout_seconds"].default
    assert settings.state_db == REPO / "difysync.db"
    assert len(settings.folders) == 2
    assert {bool(f.dataset_id) for f in settings.folders} == {True, False}


def _expected_keys(model: type[BaseModel], section: str = "") -> set[tuple[str, str]]:
    """(section, key) for every field; a field holding a model is a section of its own."""
    keys: set[tuple[str, str]] = set()
    for name, field in model.model_fields.items():
        nested = [arg for arg in (field.annotation, *getattr(field.annotation, "__args__", ()))
                  if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if nested:
            keys |= _expected_keys(nested[0], name)
        else:
            keys.add((section, name))
    return keys


def _example_keys(text: str) -> set[tuple[str, str]]:
    """(section, key) for every key in the example, counting commented-out ``# key = value`` lines."""
    keys: set[tuple[str, str]] = set()
    section = ""
    for line in text.splitlines():
        header = re.match(r"^\[\[?\s*([\w.]+)\s*\]\]?", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^\s*#?\s*(\w+)\s*=", line)
        if key:
            keys.add((section, key.group(1)))
    return keys


def test_example_config_shows_every_field() -> None:
    # given every field of every settings model, by section
    expected = _expected_keys(Settings)
    assert {("dify", "concurrency"), ("watch", "mode"), ("folders", "process_rule"), ("", "state_db")} <= expected
    # when the example is read
    shown = _example_keys((REPO / "sync.example.toml").read_text())
    # then each appears in its section (commented out only when it has no TOML spelling, like None)
    assert expected - shown == set()


def test_folder_settings_field_names_are_stable() -> None:
    # the daemon and the planner read these names; renaming one is a breaking change
    assert set(FolderSettings.model_fields) == {
        "path", "dataset_id", "dataset_name", "indexing_technique", "include", "exclude", "delete",
        "watch_mode", "process_rule", "name_prefix", "chunking", "local_chunk_types", "chunk_max_tokens",
        "recreate_dataset", "name"}
