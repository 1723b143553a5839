"""difysync's settings: the models, loading one TOML file plus ``DIFYSYNC_*`` overrides, and
turning every validation failure into one line that names the key (exit 78 material).

It never reads the API key into the settings (see ``load_api_key``) and never prints a
value that could be one; it does not touch the watched folders (a missing root is a
runtime condition, not a config error).
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import socket
import os
import re
import sys
import unicodedata
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from difysync.errors import ConfigError
from difysync.settingsfile import (API_KEY_ENV_VAR, CONFIG_ENV_VAR, LISTEN_FORM, LOCAL_CONFIG_NAME,  # noqa: F401
                                   MAX_ATTEMPTS_DEPRECATED, NO_API_KEY, SYSTEM_CONFIG_PATH, Resolved, api_key_path,
                                   find_config_path, folder_label, parse_listen, read_api_key, render_problems,
                                   resolve_path, write_snapshot)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DifySettings",
    "FolderSettings",
    "MetadataSettings",
    "MetricsSettings",
    "ScheduleSettings",
    "Settings",
    "WatchSettings",
    "find_config_path",
    "load_api_key",
    "load_settings",
    "render_problems",
]

ENV_PREFIX = "DIFYSYNC_"
ENV_NESTED_DELIMITER = "__"
DATASET_NAME_MAX = 40  # Dify refuses longer dataset names
FOLDER_NAME_MAX = 64  # a label for log lines: short enough to read at the start of one

API_KEY_IN_CONFIG = ("the API key is never read from the config file; "
                     f"set {API_KEY_ENV_VAR} or dify.api_key_file")

WatchMode = Literal["auto", "events", "poll", "off"]

# Paths are resolved against the folder of the config file being loaded. Validators cannot
# be handed arguments through BaseSettings(), so one load publishes what it needs here; a
# ContextVar keeps concurrent or successive loads (threads, tests) from seeing each other's.
_LOADING: ContextVar[_Load | None] = ContextVar("difysync_config_loading", default=None)


@dataclass(frozen=True)
class _Load:
    config_path: Path | None
    toml_data: Mapping[str, Any]
    resolved: list[Resolved] = field(default_factory=list)  # every path resolved, for the snapshot

    @property
    def config_dir(self) -> Path:
        return self.config_path.parent if self.config_path else Path.cwd()


def _current_config_dir() -> Path:
    load = _LOADING.get()
    return load.config_dir if load else Path.cwd()


def _resolve(value: Path | str, base: Path) -> Path:
    result = resolve_path(value, base)
    load = _LOADING.get()
    if load is not None:
        load.resolved.append((os.fspath(value), os.fspath(base), os.fspath(result)))
    return result


def _problems(detail: list[tuple[str, str]]) -> PydanticCustomError:
    """A validation error carrying several (relative key, message) problems.

    ``load_settings`` expands it into one line each; anyone constructing the models
    directly still gets a readable pydantic error.
    """
    joined = "; ".join(f"{key}: {msg}" if key else msg for key, msg in detail)
    return PydanticCustomError("difysync_problems", "{detail}", {"detail": joined, "problems": detail})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DifySettings(_Strict):
    """How to reach Dify and how hard to push it."""

    base_url: str = Field("https://api.dify.ai/v1", description=(
        "The Knowledge (Service) API root of your Dify: https://api.dify.ai/v1 for Dify Cloud, "
        "http(s)://your-host/v1 self-hosted. It must end in /v1; /console/api is the web "
        "console's API, which dataset keys cannot use."))
    api_key_file: str = Field("", description=(
        "A file holding the dataset API key (surrounding whitespace ignored); relative paths "
        "resolve against the config file's folder. Under systemd's LoadCredential= write "
        "\"$CREDENTIALS_DIRECTORY/dify-api-key\". Empty: the key comes from $DIFYSYNC_API_KEY. "
        "The key itself is never read from the config file."))
    timeout_seconds: float = Field(30.0, gt=0, description=(
        "Seconds one request may take; raise it for large PDFs over slow links."))
    concurrency: int = Field(4, ge=1, le=32, description=(
        "Requests (uploads) in flight at once per folder; lower it if Dify's workers fall behind."))
    max_file_size_mb: float = Field(15.0, gt=0, description=(
        "Larger files are skipped (reason too_large); match the server's UPLOAD_FILE_SIZE_LIMIT "
        "(Dify's default is 15)."))
    allowed_extensions: list[str] = Field(
        default_factory=lambda: ["txt", "markdown", "md", "pdf", "html", "htm", "xlsx", "docx", "csv"],
        description=("File types sent to Dify, without the dot (case and a leading dot are "
                     "ignored); others are skipped and listed by `difysync status`. Add what your "
                     "Dify accepts (e.g. mdx, xls, vtt on newer servers)."))
    requests_per_minute: int = Field(0, ge=0, description=(
        "Client-side ceiling on requests per minute, spacing them out; 0 means none. Dify "
        "Cloud's per-minute write limits are 10 (Sandbox), 100 (Professional), 1,000 (Team)."))
    quarantine_after: int = Field(3, ge=1, description=(
        "Failed indexing runs (or refusals) of one content before the file is quarantined: "
        "not sent again until it changes or `difysync retry` is run on it."))
    max_attempts: int | None = Field(None, ge=1, description=(
        "Deprecated: the old name of dify.quarantine_after, still read, with a warning."))
    retries: int = Field(5, ge=0, le=20, description=(
        "Re-sends of one request after a transient failure (connection, timeout, 5xx, 429, "
        "Dify Cloud's rate-limit 403) before it counts as failed."))
    backoff_base_seconds: float = Field(0.5, gt=0, description=(
        "First pause before a re-send, doubled each time (with jitter); a Retry-After from the "
        "server wins."))
    backoff_max_seconds: float = Field(30.0, gt=0, description="Longest single pause between re-sends.")
    allow_insecure_http: bool = Field(False, description=(
        "Allow plain http:// to a host that is not loopback; only on a network you trust, "
        "since the API key then travels in clear."))

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_attempts") is not None:
            data = {**data}
            data.setdefault("quarantine_after", data["max_attempts"])
        return data

    @property
    def deprecations(self) -> list[str]:
        """One line per old key still in use, naming its new name."""
        return [] if self.max_attempts is None else [MAX_ATTEMPTS_DEPRECATED]

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.strip()
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ValueError("has an invalid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL such as https://api.dify.ai/v1")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        path = parts.path.rstrip("/")
        if not path.endswith("/v1"):
            # The Service API lives under /v1. /console/api is the web console's API:
            # it answers a dataset key with 401, which would read as "key rejected".
            console = " (/console/api is the web console's API, which dataset keys cannot use)" \
                if "/console/api" in path else ""
            raise ValueError(f"must be the Service API URL, ending in /v1, such as https://your-host/v1{console}")
        return value.rstrip("/")

    @field_validator("allowed_extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        for raw in value:
            ext = raw.strip().lower().lstrip(".")
            if not ext:
                raise ValueError("must not contain an empty extension")
            seen.setdefault(ext, None)
        if not seen:
            raise ValueError("must list at least one extension")
        return list(seen)

    @model_validator(mode="after")
    def _refuse_plain_http(self) -> DifySettings:
        parts = urlsplit(self.base_url)
        if parts.scheme == "http" and not self.allow_insecure_http and not _is_loopback(parts.hostname):
            raise _problems([("base_url", (
                f"plain http to {parts.hostname} would send the API key unencrypted; "
                "use https, or set dify.allow_insecure_http = true if the network is trusted"))])
        return self


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WatchSettings(_Strict):
    """When filesystem events turn into a look at the folder."""

    mode: WatchMode = Field("auto", description=(
        "\"events\" (inotify), \"poll\" (a scan every poll_interval_seconds: network shares, "
        "FUSE), \"auto\" (events, polling where they cannot work) or \"off\" (no watcher: "
        "scheduled full passes only)."))
    debounce_seconds: float = Field(3.0, ge=0, description=(
        "Quiet seconds after the last change to a file before it is synced; raise it for "
        "editors that save in bursts."))
    delete_delay_seconds: float = Field(10.0, ge=0, description=(
        "Seconds a deleted file must stay gone before its document is deleted, so that a "
        "save-by-rename or a move is seen as one change."))
    max_delay_seconds: float = Field(60.0, gt=0, description=(
        "A file that keeps changing is synced at least this often anyway (seconds)."))
    poll_interval_seconds: float = Field(30.0, gt=0, description=(
        "Seconds between scans in poll mode; lower is quicker but means more disk activity."))


class MetadataSettings(_Strict):
    """difysync's own metadata fields on its documents (owner, path, content hash, mtime)."""

    enabled: bool = Field(True, description=(
        "Write difysync_path, difysync_sha256, difysync_owner and difysync_mtime on every "
        "document (Dify's knowledge metadata, so apps can filter retrieval by them); false: "
        "do not, and know its documents by the state DB alone."))


class MetricsSettings(_Strict):
    """The service's own HTTP endpoint (`run` only): Prometheus metrics, /healthz and a
    read-only status page. Off unless ``listen`` names an address."""

    listen: str = Field("", description=(
        "HOST:PORT for `difysync run` to serve /metrics (Prometheus text), /healthz and a "
        "read-only status page at /, e.g. \"127.0.0.1:9464\"; empty: off. A port that is taken "
        "stops the service at start with exit 78."))

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        value = value.strip()
        if value:
            parse_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to bind, the host without IPv6 brackets; None when off."""
        return parse_listen(self.listen) if self.listen else None


class ScheduleSettings(_Strict):
    """Timers that run regardless of events."""

    full_reconcile_minutes: float = Field(60.0, gt=0, description=(
        "Minutes between full passes of a folder under `difysync run` (plus up to 25% jitter); "
        "they catch missed events and remote edits."))
    full_listing_minutes: float = Field(360.0, ge=0, description=(
        "A pass that finds no local change checks the dataset with a few small requests "
        "instead of listing all of it (one request per 100 documents); it still lists "
        "everything at least this often (minutes). 0 lists every time."))
    status_poll_seconds: float = Field(10.0, gt=0, description=(
        "Seconds before the first check of the indexing status of documents in flight."))
    status_poll_max_seconds: float = Field(60.0, gt=0, description=(
        "Longest pause (seconds) between indexing status checks as they stretch for long jobs."))


class FolderSettings(_Strict):
    """One local folder mirrored into one Dify dataset."""

    path: Path = Field(description=(
        "The folder to mirror (relative paths resolve against the config file's folder). A "
        "missing folder is reported at run time (the pass is refused); it does not make the "
        "config invalid."))
    name: str | None = Field(None, description=(
        "A short label naming the folder in log lines, the summary and the status page "
        "(unique, at most 64 characters); unset: its dataset_name, else the folder's last "
        "path component."))
    dataset_id: str = Field("", description=(
        "An existing dataset's id (from its URL in Dify); give this or dataset_name, not both."))
    dataset_name: str = Field("", description=(
        "Find the dataset by its name instead (created if absent), at most 40 characters "
        "(Dify's limit); give this or dataset_id, not both."))
    indexing_technique: Literal["high_quality", "economy"] = Field("high_quality", description=(
        "\"high_quality\" (embeddings) or \"economy\" (keyword index, no embedding cost); "
        "applied to what difysync creates."))
    include: list[str] = Field(default_factory=lambda: ["**/*"], description=(
        "Glob patterns (relative to path) of the files to sync; `**` spans folders, a pattern "
        "without `/` matches the file name at any depth."))
    exclude: list[str] = Field(default_factory=list, description=(
        "Glob patterns left out even when included, e.g. [\"drafts/**\", \"**/.~lock.*\"]."))
    delete: bool = Field(True, description=(
        "Delete a document when its file is deleted; false keeps the documents of removed files."))
    name_prefix: str = Field("", description=(
        "Put in front of every document name of this folder (\"host-a/\" gives "
        "\"host-a∕guides∕x.md\"), so two hosts can mirror trees with the same paths into one "
        "dataset: each needs its own."))
    watch_mode: WatchMode | None = Field(None, description=(
        "This folder's own watch mode (\"auto\", \"events\", \"poll\" or \"off\"); unset "
        "means watch.mode."))
    process_rule: dict[str, Any] = Field(default_factory=lambda: {"mode": "automatic"}, description=(
        "Dify's process_rule, sent as is with every upload: mode \"automatic\", \"custom\" "
        "(with rules) or \"hierarchical\"."))
    chunking: Literal["server", "local"] = Field("server", description=(
        "\"server\": Dify splits each uploaded file (process_rule). \"local\": difysync "
        "splits text files itself and keeps each chunk's segment in step, so a one-line edit "
        "re-indexes one chunk (README \"Segment-level sync\")."))
    local_chunk_types: list[str] = Field(default_factory=lambda: ["md", "markdown", "mdx", "txt"],
                                         description=(
        "The file types chunking = \"local\" splits; other types in the folder are sent as files."))
    chunk_max_tokens: int = Field(500, ge=50, le=2000, description=(
        "The largest local chunk, in Dify's segmentation unit (what Dify calls max_tokens: "
        "characters on current servers)."))
    recreate_dataset: bool = Field(False, description=(
        "A dataset found by dataset_name that was deleted in Dify is made again and the "
        "folder uploaded into it; false: the pass stops with an error saying so "
        "(`reconcile --recreate-dataset` does it once)."))

    @field_validator("local_chunk_types")
    @classmethod
    def _normalise_chunk_types(cls, value: list[str]) -> list[str]:
        types = {raw.strip().lower().lstrip(".") for raw in value}
        if "" in types:
            raise ValueError("must not contain an empty extension")
        return sorted(types)

    @field_validator("path", mode="before")
    @classmethod
    def _resolve_path(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            if not str(value).strip():
                raise ValueError("must not be empty")
            # Resolved but never required to exist: a missing root is handled at run time.
            return _resolve(value, _current_config_dir())
        return value

    @field_validator("dataset_id", "dataset_name")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("must not be empty (leave it out to label the folder by its dataset name)")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError("must be one line without tabs or other control characters")
        if len(value) > FOLDER_NAME_MAX:
            raise ValueError(f"must be at most {FOLDER_NAME_MAX} characters (it is a label for log lines)")
        return value

    @field_validator("dataset_name")
    @classmethod
    def _check_name_length(cls, value: str) -> str:
        if len(value) > DATASET_NAME_MAX:
            raise ValueError(f"must be at most {DATASET_NAME_MAX} characters (Dify's limit)")
        return value

    @field_validator("process_rule")
    @classmethod
    def _check_process_rule(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("mode") not in ("automatic", "custom", "hierarchical"):
            raise PydanticCustomError("difysync_problems", "mode must be automatic, custom or hierarchical", {
                "detail": "mode must be automatic, custom or hierarchical",
                "problems": [("mode", "must be 'automatic', 'custom' or 'hierarchical' "
                                      + (f"(got {_show(value['mode'])})" if "mode" in value else "(missing)"))]})
        return value

    @model_validator(mode="after")
    def _one_dataset(self) -> FolderSettings:
        if self.dataset_id and self.dataset_name:
            raise _problems([("dataset_id", "give either dataset_id or dataset_name, not both")])
        if not self.dataset_id and not self.dataset_name:
            raise _problems([("dataset_id", "give dataset_id or dataset_name (one of them is required)")])
        return self

    @property
    def key(self) -> str:
        """The folder's identity in the state DB and the lock files: its absolute path."""
        return str(self.path)

    @property
    def label(self) -> str:
        """How log lines name the folder: its ``name``, else its dataset name, else the last
        component of its path. Only for people: the state DB knows it by ``key``."""
        return folder_label(self.name, self.dataset_name, self.path)

    def effective_watch_mode(self, settings: Settings) -> WatchMode:
        """This folder's watch mode: its own ``watch_mode`` if set, else ``[watch].mode``."""
        return self.watch_mode or settings.watch.mode


class _TomlDataSource(PydanticBaseSettingsSource):
    """The TOML file of the load in progress, already parsed (and stripped of any api_key)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self()[field_name] if field_name in self() else None, field_name, False

    def __call__(self) -> dict[str, Any]:
        load = _LOADING.get()
        return dict(load.toml_data) if load else {}


class Settings(BaseSettings):
    """Everything difysync is configured with, except the API key (see ``load_api_key``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    state_db: Path = Field(Path("difysync.db"), description=(
        "The SQLite file remembering what was uploaded (relative paths resolve against the "
        "config file's folder); put it on persistent storage outside every watched folder."))
    owner: str = Field(default_factory=lambda: socket.gethostname() or "difysync", description=(
        "Who this difysync is, written into the difysync_owner field of every document it "
        "makes; it never touches documents another owner holds. A dataset shared by several "
        "hosts (or people) is safe as long as each has its own."),
        json_schema_extra={"default_shown": "this host's name"})
    shutdown_timeout_seconds: float = Field(20.0, gt=0, description=(
        "Seconds `difysync run` waits on a stop (SIGTERM, SIGINT) for requests in flight; "
        "keep it below systemd's TimeoutStopSec."))
    dify: DifySettings = Field(default_factory=DifySettings, description=DifySettings.__doc__)
    watch: WatchSettings = Field(default_factory=WatchSettings, description=WatchSettings.__doc__)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings, description=ScheduleSettings.__doc__)
    metadata: MetadataSettings = Field(default_factory=MetadataSettings, description=MetadataSettings.__doc__)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description=MetricsSettings.__doc__)
    folders: list[FolderSettings] = Field(min_length=1, description=(
        "One [[folders]] table per local folder, each mirrored into its own dataset; at least one."))

    _config_path: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier wins: init kwargs > DIFYSYNC_* environment > the TOML file > defaults.
        return init_settings, env_settings, _TomlDataSource(settings_cls)

    @field_validator("owner")
    @classmethod
    def _check_owner(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty (it names this difysync in its documents' metadata)")
        if len(value) > 255:
            raise ValueError("must be at most 255 characters")
        return value

    @field_validator("state_db", mode="before")
    @classmethod
    def _resolve_state_db(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            if not str(value).strip():
                raise ValueError("must not be empty")
            return _resolve(value, _current_config_dir())
        return value

    @model_validator(mode="after")
    def _check_across_folders(self) -> Settings:
        problems: list[tuple[str, str]] = []
        by_id: dict[str, int] = {}
        by_name: dict[str, int] = {}
        by_path: dict[Path, int] = {}
        for i, folder in enumerate(self.folders):
            if folder.dataset_id:
                if folder.dataset_id in by_id:
                    problems.append((f"folders[{i}].dataset_id", (
                        f"folders[{by_id[folder.dataset_id]}] already syncs into dataset "
                        f"{folder.dataset_id}; two folders may not share a dataset")))
                by_id.setdefault(folder.dataset_id, i)
            if folder.dataset_name:
                if folder.dataset_name in by_name:
                    problems.append((f"folders[{i}].dataset_name", (
                        f"folders[{by_name[folder.dataset_name]}] already syncs into dataset "
                        f"{folder.dataset_name!r}; two folders may not share a dataset")))
                by_name.setdefault(folder.dataset_name, i)
            if folder.path in by_path:
                problems.append((f"folders[{i}].path", (
                    f"folders[{by_path[folder.path]}] already watches {folder.path}")))
            by_path.setdefault(folder.path, i)
            problems.extend(_name_taken(self.folders, i))
            if self.state_db.is_relative_to(folder.path) and not any(k == "state_db" for k, _ in problems):
                problems.append(("state_db", (
                    f"{self.state_db} is inside folders[{i}].path ({folder.path}); "
                    "keep the state DB outside every watched folder")))
        if problems:
            raise _problems(problems)
        return self

    def model_post_init(self, context: Any, /) -> None:
        load = _LOADING.get()
        self._config_path = load.config_path if load else None

    @property
    def config_path(self) -> Path | None:
        """The file these settings were loaded from (None when built in code)."""
        return self._config_path

    @property
    def config_dir(self) -> Path:
        """The folder relative paths were resolved against."""
        return self._config_path.parent if self._config_path else Path.cwd()


def _name_taken(folders: list[FolderSettings], i: int) -> list[tuple[str, str]]:
    """A folder's ``name`` that another folder's log lines already use: two folders one
    label would make the logs ambiguous."""
    name = folders[i].name
    for j, other in enumerate(folders):
        if j == i or name is None:
            continue
        if other.name == name and j < i:
            return [(f"folders[{i}].name", f"folders[{j}] is already named {name!r}; give each folder its own name")]
        if other.name is None and other.label == name:
            return [(f"folders[{i}].name", (f"folders[{j}] is already labelled {name!r} in log lines (its dataset "
                                            "name or folder); give this folder another name"))]
    return []


# --- finding and loading -------------------------------------------------------------


def load_settings(path: str | os.PathLike[str], *, keep: bool = False, **overrides: Any) -> Settings:
    """Read ``path`` (TOML) plus ``DIFYSYNC_*`` variables into validated Settings.

    ``overrides`` (e.g. from the command line) win over the environment. Raises
    ConfigError with one line per problem. ``keep``: a snapshot of the result (settingsfile.py)
    is written, for the next command's start (not with overrides, which it does not know).
    """
    path = Path(path).expanduser().absolute()
    raw = _read_bytes(path)
    data = _parse_toml(path, raw)
    problems = [f"{key}: {API_KEY_IN_CONFIG}" for key in _find_api_keys(data)]
    data = _without_api_keys(data)

    load = _Load(config_path=path, toml_data=data)
    token = _LOADING.set(load)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems.extend(_describe(exc, os.environ, overrides))
    except SettingsError as exc:
        problems.append(_describe_env_parse_error(exc, os.environ))
    else:
        if not problems:
            for line in settings.dify.deprecations:
                logging.getLogger("difysync").warning("%s: %s", path, line)
            if keep and not overrides:
                write_snapshot(path, raw, settings.model_dump(mode="json"), load.resolved)
            return settings
    finally:
        _LOADING.reset(token)
    raise ConfigError(_dedupe(problems))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None


def _parse_toml(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = _one_line(str(exc))
        where = re.search(r"\s*\(at line (\d+), column (\d+)\)", message)
        if where:
            message = message[: where.start()] + message[where.end():]
            raise ConfigError(f"config file {path} line {where.group(1)}, column {where.group(2)}: "
                              f"{message}") from None
        raise ConfigError(f"config file {path}: {message}") from None


def _find_api_keys(data: Any, key: str = "") -> Iterator[str]:
    if isinstance(data, dict):
        for name, value in data.items():
            sub = f"{key}.{name}" if key else name
            if name == "api_key":
                yield sub
            else:
                yield from _find_api_keys(value, sub)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _find_api_keys(value, f"{key}[{i}]")


def _without_api_keys(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_api_keys(v) for k, v in data.items() if k != "api_key"}
    if isinstance(data, list):
        return [_without_api_keys(v) for v in data]
    return data


# --- one line per problem ------------------------------------------------------------


def _describe(exc: ValidationError, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == "difysync_problems":
            for sub, message in ctx["problems"]:
                full = _join(loc, sub)
                lines.append(f"{_label(_dotted(full), full, environ, overrides)}: {message}")
            continue
        key = _dotted(loc)
        if loc and loc[-1] == "api_key":
            lines.append(f"{key}: {API_KEY_IN_CONFIG}")
            continue
        lines.append(f"{_label(key, loc, environ, overrides)}: {_message(error, loc)}")
    return lines


def _describe_env_parse_error(exc: SettingsError, environ: Mapping[str, str]) -> str:
    """pydantic-settings could not decode a list or table given in the environment."""
    field = re.search(r'field "(\w+)"', str(exc))
    if not field:
        return f"environment: {_one_line(str(exc))}"
    prefix = (ENV_PREFIX + field.group(1)).upper()
    names = sorted(n for n in environ if n.upper() == prefix or n.upper().startswith(prefix + ENV_NESTED_DELIMITER))
    return (f"{', '.join(names) or prefix} ({field.group(1)}): cannot parse it; lists and tables given in "
            'the environment must be JSON, e.g. ["md", "txt"]')


def _message(error: Any, loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        return "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    if loc == ("folders",) and kind in ("missing", "too_short"):
        return "at least one [[folders]] table is required"
    if kind == "missing":
        return "is required"
    message = _one_line(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix):]
    if message.startswith("Input should "):
        message = "must " + message[len("Input should "):]
    elif message[:1].isupper():
        message = message[0].lower() + message[1:]
    value = error.get("input")
    if isinstance(value, str | int | float | bool):
        message += f" (got {_show(value)})"
    return message


def _show(value: Any) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return repr(shown)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _label(key: str, loc: tuple[Any, ...], environ: Mapping[str, str], overrides: Mapping[str, Any]) -> str:
    """Name the environment variable when the bad value came from one (it beats the file)."""
    if loc and loc[0] in overrides:
        return key
    upper = {name.upper() for name in environ}
    for end in range(len(loc), 0, -1):
        head = loc[:end]
        if all(isinstance(p, str) for p in head):
            var = ENV_PREFIX + ENV_NESTED_DELIMITER.join(head).upper()
            if var in upper:
                return f"{var} ({key})"
    return key


def _join(loc: tuple[Any, ...], sub: str) -> tuple[Any, ...]:
    # Settings-level problems (empty loc) carry absolute dotted keys; nested ones a field name.
    if not sub:
        return loc
    return loc + tuple(_parse_dotted(sub))


def _parse_dotted(key: str) -> list[Any]:
    parts: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key):
        parts.append(int(index) if index else name)
    return parts


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "config"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        model = inner[0] if inner else annotation
    return list(getattr(model, "model_fields", {}))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def load_api_key(settings: Settings, environ: Mapping[str, str] = os.environ) -> SecretStr:
    """The Dify API key (settingsfile.read_api_key), as a SecretStr."""
    return SecretStr(read_api_key(settings, environ))
