"""The command line: parse, load the config, call one library function, print, choose
the exit code. No sync logic lives here.

Exit codes: 0 ok, 1 some actions failed (for ``status PATH``: difysync has no record of
PATH), 2 usage, 69 server unreachable (EX_UNAVAILABLE),
75 the folder is busy: another service holds it, or another pass held its write lease
too long (EX_TEMPFAIL), 77 API key rejected (EX_NOPERM), 78 invalid configuration or
state (EX_CONFIG). Which error gives which code is errors.verdict's decision. `diff`
exits 0 when every folder is in step and 1 when something differs or a folder's root is
missing (nothing compared); 69, 77 and 78 as above.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .errors import (EX_CONFIG, EX_FAILED, EX_TEMPFAIL, ConfigError, DifyError, FatalError, LeaseBusy,
                     StateError, exit_code)
from .events import NOBODY, Observer
from .logs import add_secret, setup_logging
from .settingsfile import find_config_path, read_api_key, read_snapshot, render_problems
from .terminal import folder_labels, watched

# The planner, the report and the state DB are loaded where a command uses them: a
# reconcile begins its walk before it loads them (see walks_ahead).
if TYPE_CHECKING:  # pragma: no cover
    from .config import FolderSettings, Settings
    from .dify import DifyClient
    from .plan import Action, MaxDelete, Plan
    from .progress import ProgressDisplay
    from .state import StateStore
    from .walkshare import Walk

EX_OK, EX_USAGE, EX_INTERRUPTED = 0, 2, 130  # 130: 128 + SIGINT, as shells report Ctrl-C
WALK_HELPERS = 3  # a pass's walk may be shared with this many processes, one per spare CPU (walkshare.py)

log = logging.getLogger("difysync")


def echo_json(value: Any) -> None:
    """One JSON object on stdout. Nearly always every string in it is UTF-8 already, which
    one check of the whole text shows; only otherwise is it walked string by string
    (printable), so a quiet pass listing thousands of skips does not pay that walk."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        from .report import printable

        text = json.dumps(printable(value), ensure_ascii=False)
    click.echo(text)


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"difysync: {message}", err=True)
    sys.exit(code)


def load_config(config: str | None, *, validate: bool = False) -> Settings:
    """The settings: those the last validation of this config gave when nothing they
    depend on changed (settingsfile.py: no pydantic to load), else validated afresh
    (``validate``: always), and kept for the next command."""
    try:
        path = find_config_path(config)
        kept = None if validate else read_snapshot(path)
        if kept is not None:
            return kept  # type: ignore[return-value]  # (the same attributes, as plain values)
        from .config import load_settings

        return load_settings(path, keep=True)
    except ConfigError as exc:
        click.echo(render_problems(exc), err=True)
        sys.exit(EX_CONFIG)


def api_key(settings: Settings) -> str:
    """The configured API key, masked in every log line from here on; a config error
    (exit 78) when there is none."""
    try:
        key = read_api_key(settings)
    except ConfigError as exc:
        click.echo(render_problems(exc), err=True)
        sys.exit(EX_CONFIG)
    add_secret(key)
    return key


def make_client(settings: Settings, key: str | None = None) -> DifyClient:
    """The client of the ``[dify]`` section, with ``key`` or the configured one."""
    key = api_key(settings) if key is None else key
    from .dify import DifyClient  # (httpx: loaded while the walk begun ahead goes on, see walks_ahead)

    return DifyClient.from_settings(settings.dify, key)


@contextmanager
def walks_ahead(settings: Settings) -> Iterator[dict[str, Walk]]:
    """The first folder's walk, begun as soon as the settings are known: while this
    process still runs one thread, so its helpers can be forked (walkshare), and before it
    loads what a pass needs (httpx, the planner, the state DB) and takes the lease; the
    helpers walk meanwhile. Its pass takes it (reconcile.Env.walks_ahead); a walk no pass
    took is given up here."""
    from .walkshare import begin_scan

    begun = {f.key: begin_scan(Path(f.path), f.include, f.exclude, helpers=WALK_HELPERS)
             for f in settings.folders[:1]}
    try:
        yield begun
    finally:
        for walk in begun.values():
            walk.close()


@contextmanager
def open_store(settings: Settings, *, readonly: bool = False) -> Iterator[StateStore]:
    from .state import StateStore

    try:
        store = StateStore(settings.state_db, readonly=readonly)
    except StateError as exc:
        _die(str(exc), exit_code(exc))
    try:
        yield store
    finally:
        store.close()


def _max_delete(value: str | None) -> MaxDelete | None:
    if value is None:
        return None
    from .plan import MaxDelete

    try:
        return MaxDelete.parse(value)
    except ValueError:
        raise click.BadParameter("give a count (10) or a percentage (25%)", param_hint="--max-delete") from None


config_option = click.option("-c", "--config", "config", metavar="FILE", envvar=None,
                             help="Config file (default: $DIFYSYNC_CONFIG, ./sync.toml, /etc/difysync/sync.toml).")


_LOGGING = "difysync.logging"


def _set_logging(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A logging option, given before the subcommand or after it (the later one wins)."""
    if value is None or value is False:
        return
    chosen = ctx.find_root().meta.setdefault(_LOGGING, {"level": "info", "format": "text"})
    if param.name == "log_format":
        chosen["format"] = value
    else:
        chosen["level"] = {"verbose": "debug", "quiet": "warning"}.get(param.name or "", value)
    setup_logging(chosen["level"], chosen["format"])


def _logging_options() -> list[click.Parameter]:
    """The options every command takes, the group too: ``difysync -v reconcile`` and
    ``difysync reconcile -v`` are the same."""
    def option(*decls: str, **kw: Any) -> click.Option:
        return click.Option(list(decls), expose_value=False, callback=_set_logging, **kw)
    return [option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
                   help="How much to log on stderr (default: info)."),
            option("--log-format", type=click.Choice(["text", "json"]), default=None,
                   help="json: one JSON object per line, for log shippers (default: text)."),
            option("-v", "--verbose", is_flag=True, default=False, help="Log debug lines too (--log-level debug)."),
            option("-q", "--quiet", is_flag=True, default=False, help="Only warnings and errors (--log-level warning).")]


class _Commands(click.Group):
    """The group of difysync's commands: each one also takes the logging options."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(_logging_options())
        super().add_command(cmd, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]},
             params=_logging_options())
@click.version_option(__version__, prog_name="difysync")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Keep Dify knowledge bases in step with folders on disk."""
    chosen = ctx.meta.get(_LOGGING)
    if chosen is None:
        setup_logging("info", "text")


lock_timeout_option = click.option(
    "--lock-timeout", type=click.FloatRange(min=0), default=60, show_default=True, metavar="SECONDS",
    help="Wait this long for a folder's write lease (held by a running service's pass, say); then exit 75.")


@main.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Print the plan; send no mutating request.")
@click.option("--wait", "wait_", is_flag=True, help="Then wait until touched documents finish indexing.")
@click.option("--wait-timeout", type=click.FloatRange(min=1), default=900, show_default=True,
              metavar="SECONDS", help="Give up waiting after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the counts and actions.")
@click.option("--max-delete", metavar="N|PCT%",
              help="Refuse a pass that would delete more than this (default 50% of tracked documents).")
@click.option("--full-listing", is_flag=True,
              help="List every document even when a quick check shows nothing changed in Dify.")
@click.option("--recreate-dataset", is_flag=True,
              help="Make a dataset found by name again if it was deleted in Dify (and upload the folder).")
@lock_timeout_option
def reconcile(config: str | None, dry_run: bool, wait_: bool, wait_timeout: float, as_json: bool,
              max_delete: str | None, full_listing: bool, recreate_dataset: bool, lock_timeout: float) -> None:
    """Make the datasets mirror the folders, once (cron, CI, first import)."""
    limit = _max_delete(max_delete)
    settings = load_config(config)
    key = api_key(settings)  # (before the walk: a command that cannot run forks nothing)
    with walks_ahead(settings) as ahead:
        from .reconcile import Env, Hooks, PassOptions
        from .reconcile import reconcile as run_pass

        options = PassOptions(dry_run=dry_run, max_delete=limit, full_listing=full_listing,
                              lock_timeout=lock_timeout, recreate_dataset=recreate_dataset)
        level = click.get_current_context().find_root().meta.get(_LOGGING, {}).get("level", "info")
        display = _progress_display(settings, as_json, level)  # None: nobody watches
        observer = display or NOBODY
        with make_client(settings, key) as client, open_store(settings) as store, _interruptible() as stop, \
                display or nullcontext():
            client.observer = observer
            env = Env(settings, client, store, walk_helpers=WALK_HELPERS, walks_ahead=ahead)
            report = run_pass(env, options, Hooks(on_lease_wait=_say_waiting, should_stop=stop.is_set,
                                                  observer=observer))
            report.interrupted = stop.is_set()
            waited = _wait(client, store, report, wait_timeout, observer) \
                if wait_ and not dry_run and report.fatal is None and not stop.is_set() else None
    code = exit_code(report.fatal)
    unfinished = waited is not None and not waited["finished"]
    if code == EX_OK and (not report.ok or unfinished):
        code = EX_FAILED
    if as_json:
        from .report import run_json

        echo_json(run_json(report, waited))
    else:
        _print_summary(report, code, unfinished,
                       folder_labels(settings.folders) if watched(as_json, level, sys.stdout) else None)
    sys.exit(EX_INTERRUPTED if report.interrupted else code)


def _progress_display(settings: Settings, as_json: bool, level: str) -> ProgressDisplay | None:
    """The live rows on stderr when someone watches there; rich is loaded only then."""
    if not watched(as_json, level, sys.stderr):
        return None
    from .progress import for_terminal

    return for_terminal(settings.folders, as_json=as_json, level=level)


def _print_summary(report: Any, code: int, unfinished: bool, labels: dict[str, str] | None) -> None:
    """A dry run's plan, the errors, the table of each folder (``labels`` given: on a
    terminal), and the summary line with the reason for a failing exit code."""
    from .report import printable, run_errors, summary_line, summary_tables

    if report.dry_run:
        for f in report.folders:
            for a in _planned_actions(f.plan):
                click.echo(printable(f"{f.folder}: {a.describe()}"))
    errors = run_errors(report)
    for e in errors:
        click.echo(f"difysync: error: {e}", err=True)
    if labels is not None:
        from rich.console import Console

        Console().print(summary_tables(report, labels))
    click.echo(summary_line(report) + _why_not_ok(code, report, errors, unfinished))


def _planned_actions(plan: Plan | None) -> Iterator[Action]:
    """A dry run's plan, line by line: the adoptions decided while listing, then the rest."""
    if plan is not None:
        yield from plan.adopted.actions()
        yield from plan.actions


def _why_not_ok(code: int, report: Any, errors: list[str], unfinished: bool) -> str:
    """The reason beside a failing exit code, in the summary itself: "0 failed" must
    never stand alone next to exit 1."""
    if code == EX_OK or report.interrupted:
        return ""
    from .report import printable

    if errors:
        more = f" (and {len(errors) - 1} more, above)" if len(errors) > 1 else ""
        return f"; exit {code}: {printable(errors[0])}{more}"
    if unfinished:
        return f"; exit {code}: indexing did not finish in time"
    return f"; exit {code}: see the failed actions above"


@contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C (or SIGTERM) during a pass: the first lets the requests in flight finish and
    sends nothing more, so the pass ends with its summary (exit 130); a second leaves at
    once (what was in flight is resolved by the next pass, from the journal)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            if os.isatty(2):  # the progress display hides the cursor; os._exit leaves no one to show it
                os.write(2, b"\x1b[?25h\n")
            os.write(2, b"difysync: second signal, exiting at once\n")
            os._exit(EX_INTERRUPTED)
        stop.set()
        log.warning("stopping: letting the requests in flight finish (press Ctrl-C again to quit at once)")

    if threading.current_thread() is not threading.main_thread():  # (signals reach the main thread only)
        yield stop
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say_waiting(holder: Any) -> None:
    who = holder.describe() if holder is not None else "another process"
    log.info("waiting for the folder's write lease, held by %s", who)


def _wait(client: DifyClient, store: StateStore, report: Any, timeout: float,
          observer: Observer = NOBODY) -> dict[str, Any]:
    """`--wait`: poll what this pass uploaded until it is indexed (remote.py's poller). The
    ``observer`` sees the counts after each poll; the time waited goes into the report
    (the summary's elapsed time includes it)."""
    from .backoff import Backoff, poll_wait
    from .events import Fanout
    from .progress import WaitClock
    from .remote import IndexingPoller, wait_for_indexing

    pauses = Backoff(poll_wait(1.0, 10.0))
    clock, started = WaitClock(), time.monotonic()
    try:
        finished, tally = wait_for_indexing(IndexingPoller(client), store, report.touched_documents(),
                                            timeout=timeout, pauses=pauses.next_delay, sleep=time.sleep,
                                            clock=time.monotonic, observer=Fanout([observer, clock]))
    except DifyError as exc:
        finished, tally = False, {}
        log.error("waiting for indexing failed: %s", exc)
    report.seconds += time.monotonic() - started
    for f in report.folders:
        f.waited = clock.seconds.get(f.folder, 0.0)
    if not finished:
        log.error("indexing did not finish within %.0f s: %s", timeout,
                  ", ".join(f"{v} {k}" for k, v in sorted(tally.items())))
    return {"finished": finished, "statuses": tally}


@main.command()
@config_option
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object, with ISO 8601 times (UTC) and reason codes (schema: docs/status-json.md).")
@click.option("--refresh", is_flag=True,
              help="First ask Dify how the pending documents are doing and record it. Costs, per dataset with "
                   "pending documents, one request per upload batch (up to four), else four status-filtered "
                   "listings (one page per 100 documents), plus one dataset listing when a folder is configured "
                   "by dataset_id (for its name). Without --refresh, status sends nothing.")
def status(config: str | None, path: str | None, as_json: bool, refresh: bool) -> None:
    """What the state DB says: per folder, the counts, the last successful full pass, the
    last attempt and its outcome, and the files in error or skipped.

    PATH (relative to its folder's root, as status prints it, or a path on disk)
    describes one file instead: its hash, size and mtime, document, indexing status,
    skip or error reason with its code, attempts and any unsettled request; a directory
    lists its files. Exit 1 when difysync has no record of PATH."""
    settings = load_config(config)
    with open_store(settings, readonly=True) as store:  # (says so when there is no state DB yet)
        targets = _retry_targets(settings, store, path) if path is not None else None
    if targets == []:
        _die(f"{path} is neither inside a configured folder nor a path as `difysync status` prints it "
             f"(relative to a folder's root)", EX_FAILED)
    refreshed = _refresh_status(settings, targets) if refresh else None
    if refreshed is not None and refreshed.error is not None:
        click.echo(f"difysync: {refreshed.describe()}; showing what the state DB says", err=True)
    roots = [f.key for f, rel in targets or () if rel is None]
    if targets is None or roots:
        _status_folders(settings, as_json, refreshed, only=roots or None)
    else:
        _status_files(settings, targets, as_json, refreshed)
    if refreshed is not None and refreshed.error is not None:
        sys.exit(exit_code(refreshed.error))


def _refresh_status(settings: Settings, targets: list[tuple[FolderSettings, str | None]] | None) -> Any:
    """``status --refresh``: what Dify says of the pending documents (of PATH's, if given),
    written into the state DB; and the names of datasets configured by id."""
    from .statusview import folder_rows, ids_to_name
    from .statusview import refresh as refresh_pending

    scope = None if targets is None else [(f.key, rel) for f, rel in targets]
    with make_client(settings) as client, open_store(settings) as store:
        rows = folder_rows(settings, store.summaries())
        if scope is not None:
            rows = [r for r in rows if r.folder in {key for key, _ in scope}]
        return refresh_pending(client, store, scope, ids_to_name(settings, rows))


def _status_folders(settings: Settings, as_json: bool, refreshed: Any, only: list[str] | None) -> None:
    from .lease import FolderLocks
    from .statusview import dataset_names, folder_rows, status_json

    with open_store(settings, readonly=True) as store:
        summaries = [s for s in folder_rows(settings, store.summaries()) if only is None or s.folder in only]
        problems = [p for p in store.problems() if only is None or p.folder in only]
        in_flight = [i for i in store.in_flight() if only is None or i.folder in only]
        names = dataset_names(settings, summaries, store.dataset_names())
    # Who has the folders now: a service that holds one, a pass that is writing it.
    held = {s.folder: FolderLocks(Path(settings.state_db), s.folder, what="difysync status") for s in summaries}
    holders = {key: (locks.daemon_holder(), locks.current_holder()) for key, locks in held.items()}
    if as_json:
        echo_json(status_json(settings, summaries, problems, in_flight, holders, names, refreshed))
        return
    from rich.markup import escape

    from .report import print_status

    notes = [] if refreshed is None or refreshed.error is not None else [escape(refreshed.describe())]
    print_status(summaries, problems, {k: v[0] for k, v in holders.items()},
                 owner=settings.owner if settings.metadata.enabled else None, names=names, notes=notes)


def _status_files(settings: Settings, targets: list[tuple[FolderSettings, str | None]], as_json: bool,
                  refreshed: Any) -> None:
    """``status PATH``: the file (or a directory's files) in each folder that has it."""
    from .report import printable
    from .statusview import (dataset_names, describe_path, files_json, folder_rows, print_files,
                             unknown_path_message)

    views = []
    with open_store(settings, readonly=True) as store:
        names = dataset_names(settings, folder_rows(settings, store.summaries()), store.dataset_names())
        for folder, rel in targets:
            views.extend(describe_path(settings, store, folder, rel or "", names))
    if not views:
        folder, rel = targets[0]
        _die(printable(unknown_path_message(folder, rel or "")), EX_FAILED)
    if as_json:
        echo_json(files_json(views, refreshed))
        return
    if refreshed is not None and refreshed.error is None:
        click.echo(refreshed.describe())
    print_files(views)


@main.command()
@config_option
def check(config: str | None) -> None:
    """Validate the config, reach the server, verify the key and each dataset."""
    settings = load_config(config, validate=True)
    click.echo(f"config {settings.config_path}: ok ({len(settings.folders)} folders)")
    click.echo(f"owner {settings.owner!r}: " + ("written into difysync_owner on every document it makes"
                                                 if settings.metadata.enabled else "metadata off"))
    code = _check_local(settings)
    with make_client(settings) as client:
        try:
            client.check_key()
            click.echo(f"server {settings.dify.base_url}: reachable, API key accepted")
        except DifyError as exc:
            _die(str(exc), exit_code(exc))
        for folder in settings.folders:
            where = f"folder {folder.path}"
            if not Path(folder.path).is_dir():
                click.echo(f"{where}: MISSING (not a directory)")
                code = EX_FAILED
            try:
                if folder.dataset_id:
                    client.check_dataset(folder.dataset_id)
                    click.echo(f"{where} -> dataset {folder.dataset_id}: ok")
                else:
                    found = client.find_dataset(folder.dataset_name)
                    state = f"ok ({found['id']})" if found else "absent, will be created on first reconcile"
                    click.echo(f"{where} -> dataset {folder.dataset_name!r}: {state}")
            except FatalError as exc:
                click.echo(f"{where}: {exc}")
                code = max(code, exit_code(exc))
            except DifyError as exc:
                _die(str(exc), exit_code(exc))
    sys.exit(code)


def _check_local(settings: Settings) -> int:
    """What ``check`` can tell without the server: the state DB can be written, and the key
    file is not readable by others (a warning). Returns the exit code so far."""
    from .settingsfile import api_key_path

    db = Path(settings.state_db)
    if db.exists():
        target = db
        writable = os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)  # (SQLite writes -wal beside it)
    else:  # made on the first pass, with its missing folders: the nearest existing one must take it
        target = next(p for p in db.parents if p.exists())
        writable = target.is_dir() and os.access(target, os.W_OK)
    if writable:
        click.echo(f"state DB {db}: ok ({'writable' if db.exists() else 'will be created'})")
    else:
        click.echo(f"state DB {db}: NOT WRITABLE ({target} cannot be written by this user; SQLite also "
                   f"writes {db.name}-wal beside it): fix its owner or permissions, or set state_db")
    try:
        key_file = api_key_path(settings)
    except ConfigError:
        key_file = None  # reported when the key is loaded
    if key_file is not None and key_file.exists() and key_file.stat().st_mode & 0o077:
        mode = key_file.stat().st_mode & 0o777
        click.echo(f"warning: key file {key_file} can be read by other users (mode {mode:o}): chmod 600 {key_file}")
    return EX_OK if writable else EX_CONFIG


@main.command()
@config_option
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--all", "all_", is_flag=True, help="Every quarantined or refused file.")
def retry(config: str | None, paths: tuple[str, ...], all_: bool) -> None:
    """Let quarantined or refused files be tried again on the next pass."""
    from .reconcile import folder_key

    if not paths and not all_:
        raise click.UsageError("give one or more PATHs, or --all")
    settings = load_config(config)
    with open_store(settings) as store:
        if all_:
            count = store.retry()
        else:
            count = 0
            for raw in paths:
                targets = _retry_targets(settings, store, raw)
                if not targets:
                    _die(f"{raw} is neither inside a configured folder nor a path as `difysync status` "
                         f"prints it (relative to a folder's root)", EX_USAGE)
                count += sum(store.retry(folder_key(folder), rel) for folder, rel in targets)
    click.echo(f"{count} file(s) will be tried again on the next pass")


def _retry_targets(settings: Settings, store: StateStore, raw: str) -> list[tuple[FolderSettings, str | None]]:
    """(folder, path relative to its root; None: all of it) for a PATH given to ``retry``:
    a path on disk inside a folder, or one relative to a folder's root as ``status``
    prints it (in every folder whose state DB rows or tree have it)."""
    from .reconcile import folder_key

    target = Path(raw).absolute()
    for folder in settings.folders:
        if target == Path(folder.path) or Path(folder.path) in target.parents:
            rel = target.relative_to(folder.path).as_posix()
            return [(folder, None if rel == "." else rel)]
    if Path(raw).is_absolute():
        return []
    rel = PurePosixPath(raw).as_posix().strip("/")
    return [(folder, rel) for folder in settings.folders
            if store.has_path(folder_key(folder), rel) or (Path(folder.path) / rel).exists()]


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def datasets(config: str | None, as_json: bool) -> None:
    """The datasets the API key sees: name, id, documents, indexing technique, and the
    configured folder that syncs into each."""
    from .listing import dataset_rows, print_datasets

    settings = load_config(config)
    with make_client(settings) as client:
        try:
            rows = dataset_rows(client.list_datasets(), settings)
        except DifyError as exc:
            _die(str(exc), exit_code(exc))
    if as_json:
        echo_json({"datasets": rows})
    else:
        print_datasets(rows)


@main.command("ls")
@config_option
@click.argument("folder", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ls(config: str | None, folder: str | None, as_json: bool) -> None:
    """The documents of a folder's dataset (every folder's without FOLDER): name, local
    path, status and owner. Read-only."""
    from .listing import document_rows, print_documents

    settings = load_config(config)
    chosen = _folders_named(settings, folder)
    out = []
    with make_client(settings) as client, _state_for_reading(settings) as store:
        for f in chosen:
            try:
                dataset_id = _dataset_for_listing(client, store, f)
                docs = client.list_documents(dataset_id) if dataset_id else []
            except DifyError as exc:
                _die(f"folder {f.key}: {exc}", exit_code(exc))
            paths = store.document_paths(f.key) if store is not None else {}
            out.append((f, dataset_id, document_rows(docs, paths)))
    if as_json:
        echo_json({"folders": [{"folder": f.key, "dataset_id": ds, "documents": rows} for f, ds, rows in out]})
        return
    for f, ds, rows in out:
        if ds is None:
            click.echo(f"folder {f.key}: dataset {f.dataset_name!r} does not exist yet")
        else:
            print_documents(f, ds, rows)


def _dataset_for_listing(client: DifyClient, store: StateStore | None, folder: FolderSettings) -> str | None:
    """The folder's dataset as a pass resolves it (remembered id first), made and
    remembered never: ``ls`` only looks."""
    from .remote import resolve_dataset

    return resolve_dataset(client, store, folder, create=False, remember=False, recall=store is not None)


@main.command("diff")
@config_option
@click.argument("folder", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys in the README).")
def diff(config: str | None, folder: str | None, as_json: bool) -> None:
    """Compare each folder (or FOLDER: its path or its dataset's name) with its dataset,
    like `rclone check`: only local, only remote (made by us or not), differing, in
    error, skipped, and how much is in step. Read-only: exit 0 in step, 1 differences
    (or a folder root that is missing)."""
    from .compare import diff_folder, diff_json, print_diffs

    settings = load_config(config)
    chosen = _folders_named(settings, folder)
    results = []
    with make_client(settings) as client, _state_for_reading(settings) as store:
        for f in chosen:
            try:
                results.append(diff_folder(client, store, settings, f))
            except DifyError as exc:
                _die(f"folder {f.key}: {exc}", exit_code(exc))
    if as_json:
        echo_json(diff_json(results))
    else:
        print_diffs(results)
    sys.exit(EX_OK if all(r.comparison.ok for r in results) else EX_FAILED)


def _folders_named(settings: Settings, folder: str | None) -> list[FolderSettings]:
    """The configured folders a FOLDER argument names (its path, its ``name``, or its
    dataset's name or id); all of them without one. Exit 2 when none matches."""
    chosen = [f for f in settings.folders if folder is None or Path(folder).absolute() == Path(f.path)
              or folder in (f.name, f.dataset_name, f.dataset_id)]
    if not chosen:
        _die(f"{folder} is not a configured folder (give its path or its dataset's name)", EX_USAGE)
    return chosen


@contextmanager
def _state_for_reading(settings: Settings) -> Iterator[StateStore | None]:
    """The state DB opened read-only, or None when there is none yet; one that exists but
    cannot be read is an error (exit 78), not an empty state."""
    if not Path(settings.state_db).exists():
        yield None
        return
    with open_store(settings, readonly=True) as store:
        yield store


@main.command("rebuild-state")
@config_option
@lock_timeout_option
def rebuild_state_command(config: str | None, lock_timeout: float) -> None:
    """Rebuild a lost or corrupt state DB from Dify's listing and the local tree,
    uploading nothing. An existing DB is kept aside as STATE_DB.broken-TIMESTAMP.
    Refused (exit 75) while a service runs on any of the folders."""
    from .reconcile import Env, rebuild_state

    settings = load_config(config)
    with _every_folder_held(settings, lock_timeout, "difysync rebuild-state"):
        _set_aside(Path(settings.state_db))
        with make_client(settings) as client, open_store(settings) as store:
            reports = rebuild_state(Env(settings, client, store, who="difysync rebuild-state"))
    code = EX_OK
    for r in reports:
        if r.error:
            click.echo(f"{r.folder}: {r.error}", err=True)
            code = EX_FAILED
        else:
            click.echo(f"{r.folder}: {r.adopted} documents linked to local files, {r.not_uploaded} files "
                       f"not in Dify yet (the next reconcile uploads them), {r.foreign} other documents left alone")
    sys.exit(code)


@contextmanager
def _every_folder_held(settings: Settings, lock_timeout: float, who: str) -> Iterator[None]:
    """Hold every folder as a service would, and its write lease: nothing else may use
    the state DB while it is replaced."""
    from .lease import FolderLocks

    Path(settings.state_db).parent.mkdir(parents=True, exist_ok=True)
    try:
        with ExitStack() as stack:
            for folder in settings.folders:
                locks = FolderLocks(Path(settings.state_db), folder.key, what=who)
                locks.hold()
                stack.callback(locks.release_hold)
                stack.enter_context(locks.pass_lease(lock_timeout, on_wait=_say_waiting))
            yield
    except LeaseBusy as exc:
        _die(str(exc), EX_TEMPFAIL)


def _set_aside(path: Path) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        old = Path(str(path) + suffix)
        if old.exists():
            old.rename(Path(f"{path}.broken-{stamp}{suffix}"))
            if not suffix:
                click.echo(f"kept the old state DB as {path}.broken-{stamp}")


@main.command("run")
@config_option
def run_service(config: str | None) -> None:
    """Run as a service: watch the folders, sync changes within seconds, full pass on a
    schedule. Stops cleanly on SIGTERM/SIGINT; SIGHUP reloads the configuration. Exits 75
    at once when another service already holds one of the folders."""
    from .allocator import cap_malloc_arenas
    from .daemon import Daemon
    from .walkshare import StandingHelpers

    settings = load_config(config, validate=True)
    cap_malloc_arenas()  # before any thread starts (allocator.py)
    # Forked now, while this process runs one thread: the service's walks are shared with them.
    helpers = StandingHelpers.start(WALK_HELPERS)
    try:
        daemon = Daemon(settings.config_path or Path(config or "sync.toml"), settings, walk_helpers=helpers)
    except ConfigError as exc:
        click.echo(render_problems(exc), err=True)
        sys.exit(EX_CONFIG)
    try:
        code = daemon.run_forever()
    finally:
        if helpers is not None:
            helpers.close()
    sys.exit(code)


_EMULATOR_KEY = "emulator-key"  # a test value, so the banner prints it (a key the operator chose is not printed)


@main.command(epilog="Exit codes: 0 stopped by SIGINT/SIGTERM (state saved), 1 the state could not be "
              "saved, 75 the port is taken (EX_TEMPFAIL), 78 an unusable --state-file or address (EX_CONFIG).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=click.IntRange(0, 65535),
              help="0: any free port (the banner tells which). A taken port: exit 75.")
@click.option("--api-key", default=_EMULATOR_KEY, show_default=True, envvar="DIFYSYNC_EMULATOR_API_KEY",
              help="The key the emulator accepts (a test value; also $DIFYSYNC_EMULATOR_API_KEY).")
@click.option("--legacy", is_flag=True, help="Behave like an old (0.x) Dify server.")
@click.option("--indexing-delay", type=float, default=1.0, show_default=True,
              help="Seconds a document takes to go from queued to completed.")
@click.option("--state-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Keep datasets and documents in this JSON file: read at start, written within "
                   "a second of each change and on SIGINT/SIGTERM.")
def emulator(host: str, port: int, api_key: str, legacy: bool, indexing_delay: float,
             state_file: str | None) -> None:
    """Run the bundled Dify Knowledge API emulator (needs the `emulator` extra). With -v,
    one line per request on stderr (method, path, status, duration, bytes in)."""
    try:
        from .emulator import serve
    except ImportError:
        _die("the emulator needs its extra: pip install 'difysync[emulator]'", EX_FAILED)
    add_secret(api_key)
    note = f"API key {api_key}" if api_key == _EMULATOR_KEY else "API key as given"
    sys.exit(serve(host=host, port=port, api_key=api_key, key_note=note, legacy=legacy,
                   indexing_delay=indexing_delay, state_path=state_file,
                   log_requests=logging.getLogger().isEnabledFor(logging.DEBUG)))


@main.command()
def demo() -> None:
    """Mirror a small sample folder into a local emulator and show the result."""
    from .demo import run_demo

    sys.exit(run_demo())


def entry() -> NoReturn:
    """The `difysync` script and `python -m difysync`: the command, then a quick exit.

    A command has closed its state DB, its client and its files by the time it returns;
    what a normal interpreter exit adds is freeing every module's objects one by one,
    0.15 s of each run here, a third of a quiet pass's start-up. So when only this thread
    is left, the streams and log handlers are flushed and the process ends there. With
    another thread still running, the exit is the normal one, which waits for it.
    """
    try:
        main(prog_name="difysync")
        code: Any = EX_OK
    except SystemExit as exc:
        code = exc.code
    if any(t is not threading.current_thread() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    if code is None:
        code = EX_OK
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = EX_FAILED
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`), a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
