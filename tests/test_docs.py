"""The docs against the code they describe: the configuration reference is regenerated and
compared, the troubleshooting page is read for every Dify code and exit code the modules
define, service.md for the paths the unit files use, and shell completion is run for real."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.shell_completion import get_completion_class

from difysync import cli, configdoc, errors
from difysync.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
SERVICE = DOCS / "service.md"


def _headings(path: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", path.read_text(), re.MULTILINE)]


def _section(path: Path, heading: str) -> str:
    """The text under ``heading`` down to the next heading of any level."""
    text = path.read_text()
    start = text.index(f" {heading}\n")
    following = re.search(r"^#{1,6} ", text[start + len(heading) + 2:], re.MULTILINE)
    return text[start: start + len(heading) + 2 + (following.start() if following else len(text))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# --- configuration.md ---------------------------------------------------------------------


def test_configuration_md_is_what_the_settings_models_generate():
    assert configdoc.DOC_PATH == DOCS / "configuration.md"
    assert configdoc.render() == configdoc.DOC_PATH.read_text(encoding="utf-8"), \
        f"docs/configuration.md is out of date: run {configdoc.WRITE_COMMAND}"


def test_configdoc_prints_the_reference_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "difysync.configdoc"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == configdoc.render()


def test_every_setting_has_a_description():
    keys = [k for s in configdoc.sections() for k in s.keys]
    assert len(keys) > 30
    missing = [k.path for k in keys if not k.description]
    assert not missing, f"add Field(description=...) in config.py for: {', '.join(missing)}"


def test_the_reference_gives_each_key_its_toml_path_type_default_and_variable():
    page = configdoc.render()
    assert "### `dify.base_url`\n\n- type: string\n- default: `\"https://api.dify.ai/v1\"`\n" \
           "- environment: `DIFYSYNC_DIFY__BASE_URL`" in page
    assert "### `folders[].path`\n\n- type: path\n- default: required\n" in page
    assert "`DIFYSYNC_FOLDERS` sets the whole list" in page
    assert "### `dify.concurrency`\n\n- type: integer, >= 1, <= 32\n- default: `4`" in page
    assert "- default: this host's name" in page  # owner: not the host that generated the page


def test_the_documented_environment_variables_are_the_ones_that_are_read(tmp_path, monkeypatch):
    # given every numeric key outside [[folders]] set, through its documented variable, to
    # one more than its default
    (tmp_path / "docs").mkdir()
    config = tmp_path / "sync.toml"
    config.write_text('[[folders]]\npath = "docs"\ndataset_id = "ds"\n')
    numeric = [k for s in configdoc.sections() for k in s.keys
               if k.env and k.type.startswith(("integer", "number")) and k.default.startswith("`")]
    assert len(numeric) > 10
    expected = {}
    for key in numeric:
        value = float(key.default.strip("`")) + 1
        expected[key.path] = value
        monkeypatch.setenv(key.env, str(int(value)) if key.type.startswith("integer") else str(value))
    # when the config is loaded
    settings = load_settings(config)
    # then each one took its value
    for path, value in expected.items():
        found = settings
        for part in path.split("."):
            found = getattr(found, part)
        assert found == value, path


# --- troubleshooting.md --------------------------------------------------------------------


def test_every_dify_error_code_in_the_mapping_table_has_a_heading():
    headings = set(_headings(TROUBLESHOOTING))
    missing = [code for code in errors._CODE_TABLE if f"`{code}`" not in headings]
    assert not missing, f"docs/troubleshooting.md has no heading for: {missing}"


def test_each_dify_code_section_names_the_class_the_code_maps_to():
    for code, cls in errors._CODE_TABLE.items():
        assert f"class `{cls.__name__}`" in _section(TROUBLESHOOTING, f"`{code}`"), code


def _exit_constants() -> dict[str, int]:
    found = {}
    for module in (errors, cli):
        found.update({name: value for name, value in vars(module).items()
                      if name.startswith("EX_") and isinstance(value, int)})
    return found


def test_every_exit_code_constant_has_a_heading():
    constants = _exit_constants()
    assert {0, 1, 2, 69, 75, 77, 78, 130} <= set(constants.values())
    headings = set(_headings(TROUBLESHOOTING))
    missing = [f"{name} = {value}" for name, value in constants.items()
               if f"Exit code {value} (`{name}`)" not in headings]
    assert not missing, f"docs/troubleshooting.md has no heading for: {missing}"


def _verdict_of(cls: type[BaseException]) -> errors.Verdict:
    return next(found for row, found in errors._VERDICTS if issubclass(cls, row))


def test_the_table_of_error_classes_says_what_errors_verdict_says():
    rows = {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| `(\w+)` \|(.+)\|$", TROUBLESHOOTING.read_text(), re.MULTILINE)}
    classes = {cls for cls, _ in errors._VERDICTS} | set(errors._CODE_TABLE.values())
    assert {c.__name__ for c in classes} <= set(rows), "a class of errors.verdict is missing from the table"
    for cls in classes:
        found = _verdict_of(cls)
        resend, item, folder, others, code = rows[cls.__name__]
        assert resend == ("yes" if found.resend else "no"), cls
        assert (item, folder) == (found.item.value, found.folder.value), cls
        assert others == ("stopped too" if found.stops_run else "go on"), cls
        assert int(code) == found.exit_code, cls


def test_links_within_the_docs_point_at_headings_that_exist():
    for page in (TROUBLESHOOTING, SERVICE, DOCS / "configuration.md"):
        text = page.read_text()
        for target, anchor in re.findall(r"\]\(([\w./-]*)#([\w-]+)\)", text):
            linked = page.parent / target if target else page
            assert anchor in {_slug(h) for h in _headings(linked)}, f"{page.name}: {target}#{anchor}"


# --- service.md against the unit files -----------------------------------------------------


def _unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd" / name)
    return parser["Service"]


def test_service_md_uses_the_binary_config_user_and_key_of_the_unit():
    unit, doc = _unit("difysync.service"), SERVICE.read_text()
    binary, _run, _c, config = unit["ExecStart"].split()
    assert (binary, _run, _c) == ("/usr/local/bin/difysync", "run", "-c")
    assert f"ln -s /opt/difysync/bin/difysync {binary}" in doc
    assert f"{binary} check -c {config}" in doc
    assert f"cat > {config} <<" in doc
    assert f"--shell /usr/sbin/nologin {unit['User']}" in doc
    credential, source = unit["LoadCredential"].split(":")
    assert f"-p LoadCredential={credential}:{source}" in doc
    assert f'api_key_file = "$CREDENTIALS_DIRECTORY/{credential}"' in doc
    assert f"install -m 0600 -o root -g root /dev/null {source}" in doc


def test_service_md_makes_the_state_directory_before_the_first_check():
    unit, doc = _unit("difysync.service"), SERVICE.read_text()
    state_dir = f"/var/lib/{unit['StateDirectory']}"
    made = doc.index(f"install -d -o {unit['User']} -g {unit['Group']} -m {unit['StateDirectoryMode']} "
                     f"{state_dir}\n")
    assert made < doc.index("difysync check -c")
    assert f'state_db = "{state_dir}/state.db"' in doc


def test_service_md_installs_from_the_checkout_or_a_wheel_not_an_index():
    doc = SERVICE.read_text()
    assert "pip install difysync" not in doc  # it is on no public index
    assert "/opt/difysync/bin/pip install /usr/src/difysync" in doc
    assert "pip wheel /usr/src/difysync" in doc and "pip install /tmp/wheels/difysync-*.whl" in doc
    assert "apt-get install python3-venv" in doc


def test_service_md_creates_the_template_units_state_directory_too():
    unit, doc = _unit("difysync@.service"), SERVICE.read_text()
    assert unit["StateDirectory"] == "difysync/%i"
    assert unit["ExecStart"] == "/usr/local/bin/difysync run -c /etc/difysync/%i.toml"
    assert "install -d -o difysync -g difysync -m 0700 /var/lib/difysync /var/lib/difysync/handbook" in doc
    assert 'state_db = "/var/lib/difysync/handbook/state.db"' in doc


# --- shell completion ----------------------------------------------------------------------


def _complete(shell_var: str, program: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(program, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "_DIFYSYNC_COMPLETE": shell_var, **env})


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _difysync_completion difysync"),
                                           ("zsh", "#compdef difysync"),
                                           ("fish", "function _difysync_completion")])
def test_completion_scripts_name_the_difysync_completion_function(shell, marker):
    # what `_DIFYSYNC_COMPLETE={shell}_source difysync` prints, asked of click in-process
    # (the bash one is also run for real, through the installed script, below)
    script = get_completion_class(shell)(cli.main, {}, "difysync", "_DIFYSYNC_COMPLETE").source()
    assert marker in script


def test_completing_rec_suggests_reconcile():
    done = _complete("bash_complete", [sys.executable, "-m", "difysync"],
                     COMP_WORDS="difysync rec", COMP_CWORD="1")
    assert done.stdout.split() == ["plain,reconcile"]


def test_bash_completes_through_the_installed_script_as_the_readme_says(tmp_path):
    # the entry point pip installed beside this interpreter (it imports the tree under test)
    script = Path(sys.executable).with_name("difysync")
    if not script.exists() or shutil.which("bash") is None:
        pytest.skip("no installed difysync script beside the interpreter, or no bash")
    line = 'eval "$(_DIFYSYNC_COMPLETE=bash_source difysync)"'
    assert line in (ROOT / "README.md").read_text()
    done = subprocess.run(
        ["bash", "-c", (f'{line}; COMP_WORDS=(difysync rec); COMP_CWORD=1; '
                        '_difysync_completion difysync; printf "%s\\n" "${COMPREPLY[@]}"')],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PATH": f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["reconcile"]
