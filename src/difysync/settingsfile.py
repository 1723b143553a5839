"""What a command needs of its configuration before pydantic is loaded: which config file,
the API key, and the validated settings kept between runs.

Validating a config costs little, but loading pydantic and pydantic-settings to do it costs
about a fifth of a quiet pass over 100,000 files. So a command that validated a config
keeps the result beside the user's other caches (``$XDG_CACHE_HOME/difysync``, or systemd's
``$CACHE_DIRECTORY``), as plain values, and the next command that finds every input of that
validation unchanged reads them back instead (``read_snapshot``). Its inputs are:

- the config file (its path and its bytes),
- every ``DIFYSYNC_*`` variable but the key (the key is never part of the settings),
- ``$HOME`` (``~`` in paths) and the host name (the default ``owner``),
- the file system where relative or symlinked paths were resolved: every path the
  validation resolved is resolved again and must come out the same,
- difysync's version.

Anything else (no snapshot, a damaged one, one written by another version) means a full
validation (config.load_settings), which writes a new one. The service (``run``) and
``check`` always validate. The snapshot holds no secret: the settings never contain the key.

Snapshot objects answer the same attributes and derived properties as the models in
config.py (``folder.key``, ``folder.label``, ``metrics.address``...), which use the helpers
here for them; tests/test_config.py holds the two side by side.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .errors import ConfigError

__all__ = ["API_KEY_ENV_VAR", "CONFIG_ENV_VAR", "SettingsValues", "api_key_path", "find_config_path",
           "folder_label", "parse_listen", "read_api_key", "read_snapshot", "render_problems",
           "resolve_path", "write_snapshot"]

log = logging.getLogger("difysync")

ENV_PREFIX = "DIFYSYNC_"
CONFIG_ENV_VAR = "DIFYSYNC_CONFIG"
API_KEY_ENV_VAR = "DIFYSYNC_API_KEY"
LOCAL_CONFIG_NAME = "sync.toml"
SYSTEM_CONFIG_PATH = Path("/etc/difysync/sync.toml")
NO_API_KEY = f"no API key: set {API_KEY_ENV_VAR} or dify.api_key_file"
SNAPSHOT_FORMAT = 1

Resolved = tuple[str, str, str]  # (the value as given, the folder it was resolved against, the result)


# --- finding the config file ------------------------------------------------------------


def find_config_path(explicit: str | os.PathLike[str] | None = None,
                     environ: Mapping[str, str] = os.environ) -> Path:
    """The config file to use: ``-c`` value, else ``$DIFYSYNC_CONFIG``, else ``./sync.toml``,
    else ``/etc/difysync/sync.toml``.

    A path the user named (``-c`` or the variable) must exist; we never fall back past it.
    """
    for named, origin in ((explicit, "-c"), (environ.get(CONFIG_ENV_VAR) or None, f"${CONFIG_ENV_VAR}")):
        if named is not None:
            path = Path(named).expanduser()
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                raise ConfigError(f"config file {path} (from {origin}) {what}")
            return path.absolute()
    tried = [Path(LOCAL_CONFIG_NAME), SYSTEM_CONFIG_PATH]
    for path in tried:
        if path.is_file():
            return path.absolute()
    raise ConfigError(
        f"no configuration file: tried {', '.join(str(p.absolute()) for p in tried)}; "
        f"pass -c PATH or set {CONFIG_ENV_VAR}")


def render_problems(err: ConfigError) -> str:
    """The problems of ``err``, one per line, ready for stderr."""
    return "\n".join(f"difysync: config error: {problem}" for problem in err.problems)


def resolve_path(value: Path | str, base: Path) -> Path:
    """A configured path: ``~`` expanded, relative to ``base``, symlinks resolved."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


# --- the API key ----------------------------------------------------------------------

_CREDENTIALS = re.compile(r"\$(?:\{CREDENTIALS_DIRECTORY\}|CREDENTIALS_DIRECTORY(?![A-Za-z0-9_]))")


def api_key_path(settings: Any, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The file ``dify.api_key_file`` names (``$CREDENTIALS_DIRECTORY`` expanded), or None."""
    name = settings.dify.api_key_file.strip()
    if not name:
        return None
    if _CREDENTIALS.search(name):
        credentials = environ.get("CREDENTIALS_DIRECTORY")
        if not credentials:
            raise ConfigError(f"dify.api_key_file: {name} refers to $CREDENTIALS_DIRECTORY, which is "
                              "not set (add LoadCredential= to the systemd unit)")
        name = _CREDENTIALS.sub(lambda _: credentials, name)
    return resolve_path(name, settings.config_dir)


def read_api_key(settings: Any, environ: Mapping[str, str] = os.environ) -> str:
    """The Dify API key: from ``dify.api_key_file`` when set, else ``$DIFYSYNC_API_KEY``.

    ``$CREDENTIALS_DIRECTORY`` in the file name is expanded (systemd LoadCredential=).
    Errors name the file, never its content. (config.load_api_key wraps it in a SecretStr.)
    """
    path = api_key_path(settings, environ)
    if path is not None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"dify.api_key_file: cannot read {path}: {exc.strerror or type(exc).__name__}"
                              ) from None
        except UnicodeDecodeError:
            raise ConfigError(f"dify.api_key_file: {path} is not UTF-8 text") from None
        if not key:
            raise ConfigError(f"dify.api_key_file: {path} is empty")
        return key
    key = (environ.get(API_KEY_ENV_VAR) or "").strip()
    if not key:
        raise ConfigError(NO_API_KEY)
    return key


# --- what the settings derive (the models in config.py use these too) ------------------

_HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
LISTEN_FORM = "must be HOST:PORT with a port from 1 to 65535, such as 127.0.0.1:9464 or [::1]:9464"
MAX_ATTEMPTS_DEPRECATED = "dify.max_attempts is deprecated: it is now called dify.quarantine_after (same meaning)"


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError (the one message) for anything else."""
    try:
        parts = urlsplit(f"//{value}")
        port, host = parts.port, parts.hostname or ""
        if ":" in host:
            ipaddress.IPv6Address(host)
        elif not _HOST_NAME.match(host):
            raise ValueError(host)
    except ValueError:
        port = None
    if port is None or not 0 < port < 65536 or parts.path or parts.username is not None:
        raise ValueError(LISTEN_FORM)
    return host, port


def folder_label(name: str | None, dataset_name: str, path: Path) -> str:
    """How log lines name a folder: its ``name``, else its dataset name, else the last
    component of its path."""
    return name or dataset_name or path.name or str(path)


# --- settings as plain values -----------------------------------------------------------


class _Values:
    """Validated values, read-only, as attributes."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("settings are read-only")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._values!r})"


class DifyValues(_Values):
    __slots__ = ()

    @property
    def deprecations(self) -> list[str]:
        return [] if self._values.get("max_attempts") is None else [MAX_ATTEMPTS_DEPRECATED]


class MetricsValues(_Values):
    __slots__ = ()

    @property
    def address(self) -> tuple[str, int] | None:
        listen = self._values["listen"]
        return parse_listen(listen) if listen else None


class FolderValues(_Values):
    __slots__ = ()

    def __init__(self, values: Mapping[str, Any]) -> None:
        super().__init__({**values, "path": Path(values["path"])})

    @property
    def key(self) -> str:
        return str(self._values["path"])

    @property
    def label(self) -> str:
        v = self._values
        return folder_label(v["name"], v["dataset_name"], v["path"])

    def effective_watch_mode(self, settings: Any) -> str:
        return self._values["watch_mode"] or settings.watch.mode


class SettingsValues(_Values):
    """Settings read back from a snapshot: what config.Settings answers, without pydantic."""

    __slots__ = ()
    _NESTED = {"dify": DifyValues, "watch": _Values, "schedule": _Values, "metadata": _Values,
               "metrics": MetricsValues}

    def __init__(self, values: Mapping[str, Any], config_path: Path) -> None:
        out = {name: kind(values[name]) for name, kind in self._NESTED.items()}
        out.update(state_db=Path(values["state_db"]), owner=values["owner"],
                   shutdown_timeout_seconds=values["shutdown_timeout_seconds"],
                   folders=[FolderValues(f) for f in values["folders"]], config_path=config_path)
        super().__init__(out)

    @property
    def config_dir(self) -> Path:
        return self._values["config_path"].parent


# --- the snapshot ------------------------------------------------------------------------


def read_snapshot(path: Path, environ: Mapping[str, str] = os.environ) -> SettingsValues | None:
    """The settings the last validation of ``path`` gave, if every input is unchanged."""
    where = _snapshot_file(path, environ)
    try:
        text = path.read_bytes()
        raw = json.loads(where.read_text(encoding="utf-8")) if where is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("key") != _inputs_key(path, text, environ):
        return None
    try:
        if any(str(resolve_path(given, Path(base))) != result for given, base, result in raw["resolved"]):
            return None
        settings = SettingsValues(raw["settings"], path)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError):
        return None
    for line in settings.dify.deprecations:
        log.warning("%s: %s", path, line)
    return settings


def write_snapshot(path: Path, text: bytes, values: Mapping[str, Any], resolved: Iterable[Resolved],
                   environ: Mapping[str, str] = os.environ) -> None:
    """Keep validated settings (``values``: the model dumped as JSON values) for the next
    command; a cache that cannot be written is only a slower start next time."""
    where = _snapshot_file(path, environ)
    if where is None:
        return
    body = json.dumps({"key": _inputs_key(path, text, environ), "resolved": [list(r) for r in resolved],
                       "settings": values}, ensure_ascii=False)
    temp = where.with_name(f"{where.name}.{os.getpid()}.tmp")
    try:
        where.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "w", encoding="utf-8") as out:
            out.write(body)
        os.replace(temp, where)
    except OSError as exc:
        log.debug("settings not kept for the next start (%s): %s", where, exc)
        with suppress(OSError):
            temp.unlink()


def _snapshot_file(path: Path, environ: Mapping[str, str]) -> Path | None:
    """Where the snapshot of ``path`` lives: one file per config file."""
    systemd = (environ.get("CACHE_DIRECTORY") or "").split(":")[0]
    if systemd:
        folder = Path(systemd)
    elif environ.get("XDG_CACHE_HOME"):
        folder = Path(environ["XDG_CACHE_HOME"]) / "difysync"
    elif environ.get("HOME"):
        folder = Path(environ["HOME"]) / ".cache" / "difysync"
    else:
        return None
    name = hashlib.blake2b(os.fsencode(path), digest_size=12).hexdigest()
    return folder / f"settings-{name}.json"


def _inputs_key(path: Path, text: bytes, environ: Mapping[str, str]) -> str:
    """One value for everything a validation of ``path`` depends on, but the file system
    (checked apart: see read_snapshot)."""
    env = sorted((name.upper(), value) for name, value in environ.items()
                 if name.upper().startswith(ENV_PREFIX) and name.upper() != API_KEY_ENV_VAR)
    parts = [SNAPSHOT_FORMAT, __version__, os.fsdecode(path), hashlib.sha256(text).hexdigest(), env,
             environ.get("HOME", ""), socket.gethostname()]
    return hashlib.blake2b(json.dumps(parts).encode("utf-8", "surrogateescape"), digest_size=20).hexdigest()
