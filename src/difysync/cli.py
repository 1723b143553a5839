"""The command line: parse, load the config, call one library function, print, choose
the exit code. No sync logic lives here.

Exit codes: 0 ok, 1 some actions failed, 2 usage, 69 server unreachable (EX_UNAVAILABLE),
77 API key rejected (EX_NOPERM), 78 invalid configuration or state (EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .config import Settings, find_config_path, load_api_key, load_settings, render_problems
from .dify import DifyClient
from .errors import (AuthError, ConfigError, DifyError, FatalError, NotDifyAPI,
                     ServerUnreachable, StateError, StateWriteError)
from .logs import add_secret, setup_logging
from .plan import MaxDelete
from .state import StateStore

EX_OK, EX_FAILED, EX_USAGE = 0, 1, 2
EX_UNAVAILABLE, EX_NOPERM, EX_CONFIG = 69, 77, 78

log = logging.getLogger("difysync")


def printable(value: Any) -> Any:
    """Strings (recursively) safe to print as UTF-8: a file name that is not UTF-8 keeps
    its odd bytes as ``\\xNN`` instead of breaking the JSON or the terminal."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {k: printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(printable(value), ensure_ascii=False))


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"difysync: {message}", err=True)
    sys.exit(code)


def exit_code_for(error: BaseException | None) -> int:
    if error is None:
        return EX_OK
    if isinstance(error, StateWriteError):
        return EX_FAILED
    if isinstance(error, AuthError):
        return EX_NOPERM
    if isinstance(error, (ServerUnreachable, NotDifyAPI)):
        return EX_UNAVAILABLE
    if isinstance(error, (ConfigError, StateError)):
        return EX_CONFIG
    return EX_FAILED


def load_config(config: str | None) -> Settings:
    try:
        return load_settings(find_config_path(config))
    except ConfigError as exc:
        click.echo(render_problems(exc), err=True)
        sys.exit(EX_CONFIG)


def make_client(settings: Settings) -> DifyClient:
    try:
        key = load_api_key(settings).get_secret_value()
    except ConfigError as exc:
        click.echo(render_problems(exc), err=True)
        sys.exit(EX_CONFIG)
    add_secret(key)
    return DifyClient.from_settings(settings.dify, key)


@contextmanager
def open_store(settings: Settings, *, readonly: bool = False) -> Iterator[StateStore]:
    try:
        store = StateStore(settings.state_db, readonly=readonly)
    except StateError as exc:
        _die(str(exc), EX_CONFIG)
    try:
        yield store
    finally:
        store.close()


def _max_delete(value: str | None) -> MaxDelete | None:
    if value is None:
        return None
    try:
        return MaxDelete.parse(value)
    except ValueError:
        raise click.BadParameter("give a count (10) or a percentage (25%)", param_hint="--max-delete") from None


config_option = click.option("-c", "--config", "config", metavar="FILE", envvar=None,
                             help="Config file (default: $DIFYSYNC_CONFIG, ./sync.toml, /etc/difysync/sync.toml).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="difysync")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="How much to log on stderr.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per line, for log shippers.")
def main(log_level: str, log_format: str) -> None:
    """Keep Dify knowledge bases in step with folders on disk."""
    setup_logging(log_level, log_format)


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
def reconcile(config: str | None, dry_run: bool, wait_: bool, wait_timeout: float, as_json: bool,
              max_delete: str | None, full_listing: bool) -> None:
    """Make the datasets mirror the folders, once (cron, CI, first import)."""
    from .reconcile import reconcile as run_pass
    from .reconcile import wait_for_indexing

    limit = _max_delete(max_delete)
    settings = load_config(config)
    with make_client(settings) as client, open_store(settings) as store:
        report = run_pass(settings, client, store, dry_run=dry_run, max_delete=limit, full_listing=full_listing)
        waited: dict[str, Any] | None = None
        if wait_ and not dry_run and report.fatal is None:
            try:
                finished, tally = wait_for_indexing(client, store, report.touched_documents(),
                                                    timeout=wait_timeout)
            except DifyError as exc:
                finished, tally = False, {}
                log.error("waiting for indexing failed: %s", exc)
            waited = {"finished": finished, "statuses": tally}
            if not finished:
                log.error("indexing did not finish within %.0f s: %s", wait_timeout,
                          ", ".join(f"{v} {k}" for k, v in sorted(tally.items())))
    counts = report.counts
    errors = [f"{f.folder}: {e}" for f in report.folders for e in f.errors]
    if as_json:
        out: dict[str, Any] = {k: counts.get(k, 0) for k in
                               ("created", "updated", "renamed", "deleted", "unchanged", "skipped", "failed")}
        out["waiting"] = counts.get("waiting", 0)
        out["hashed"] = report.hashed
        out["dry_run"] = dry_run
        out["errors"] = errors
        out["remote_checks"] = {f.folder: f.remote_check for f in report.folders}
        out["actions"] = _actions_json(report)
        if waited is not None:
            out["indexing"] = waited
        echo_json(out)
    else:
        if dry_run:
            for f in report.folders:
                if f.plan:
                    for a in f.plan.actions:
                        click.echo(printable(f"{f.folder}: {a.describe()}"))
        for e in errors:
            click.echo(f"difysync: error: {e}", err=True)
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v or k in ("created", "failed"))
        prefix = "plan (dry run): " if dry_run else ""
        click.echo(f"{prefix}{summary} in {report.seconds:.1f} s")
    code = exit_code_for(report.fatal)
    if code == EX_OK and (not report.ok or (waited is not None and not waited["finished"])):
        code = EX_FAILED
    sys.exit(code)


def _actions_json(report: Any) -> list[dict[str, Any]]:
    out = []
    for f in report.folders:
        if f.outcomes:
            for o in f.outcomes:
                if o.action.kind.value == "forget":
                    continue
                out.append({"folder": f.folder, **o.as_dict()})
        elif f.plan:
            for a in f.plan.actions:
                if a.kind.value == "forget":
                    continue
                out.append({"folder": f.folder, "action": str(a.kind), "path": a.rel_path,
                            "old_path": a.old_rel_path, "document_id": a.document_id,
                            "result": "planned", "message": a.reason})
    return out


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: str | None, as_json: bool) -> None:
    """What the state store says: per-folder counts, and files in error or skipped."""
    settings = load_config(config)
    with open_store(settings, readonly=True) as store:
        summaries = store.summaries()
        problems = store.problems()
        in_flight = store.in_flight()
    if as_json:
        echo_json({
            "folders": [dataclasses.asdict(s) for s in summaries],
            "problems": [dataclasses.asdict(p) for p in problems],
            "in_flight": [{"folder": f, "path": p, "document_id": d} for f, p, d, _ in in_flight],
        })
        return
    print_status(summaries, problems)


def print_status(summaries: list[Any], problems: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"

    console = Console()
    # A full pass may be quiet (a probe, not a listing): say when each dataset was last
    # listed whole, below the table, where it does not crowd an 80-column terminal.
    table = Table(title="difysync status", caption="\n".join(
        f"{s.folder}: whole dataset last listed {when(s.last_full_listing)}" for s in summaries) or None,
                  caption_justify="left")
    for col in ("folder", "dataset", "synced", "pending", "indexing", "error", "skipped", "last full pass"):
        table.add_column(col, overflow="fold", justify="right" if col in (
            "synced", "pending", "indexing", "error", "skipped") else "left")
    for s in summaries:
        table.add_row(s.folder, s.dataset_id or "-", str(s.synced), str(s.pending), str(s.indexing),
                      str(s.error), str(s.skipped), when(s.last_full_reconcile))
    console.print(table)
    if problems:
        ptable = Table(title="files in error or skipped")
        for col in ("folder", "file", "state", "reason"):
            ptable.add_column(col, overflow="fold")
        for p in problems:
            ptable.add_row(p.folder, printable(p.rel_path), p.kind, printable(p.reason))
        console.print(ptable)


@main.command()
@config_option
def check(config: str | None) -> None:
    """Validate the config, reach the server, verify the key and each dataset."""
    settings = load_config(config)
    click.echo(f"config {settings.config_path}: ok ({len(settings.folders)} folders)")
    code = EX_OK
    with make_client(settings) as client:
        try:
            client.check_key()
            click.echo(f"server {settings.dify.base_url}: reachable, API key accepted")
        except DifyError as exc:
            _die(str(exc), exit_code_for(exc))
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
                code = max(code, EX_FAILED) if not isinstance(exc, AuthError) else EX_NOPERM
            except DifyError as exc:
                _die(str(exc), exit_code_for(exc))
    sys.exit(code)


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
                target = Path(raw).absolute()
                folder = next((f for f in settings.folders
                               if target == Path(f.path) or Path(f.path) in target.parents), None)
                if folder is None:
                    _die(f"{raw} is not inside a configured folder", EX_USAGE)
                rel = target.relative_to(folder.path).as_posix()
                count += store.retry(folder_key(folder), None if rel == "." else rel)
    click.echo(f"{count} file(s) will be tried again on the next pass")


@main.command("rebuild-state")
@config_option
def rebuild_state_command(config: str | None) -> None:
    """Rebuild a lost or corrupt state DB from Dify's listing and the local tree,
    uploading nothing. An existing DB is kept aside as STATE_DB.broken-TIMESTAMP."""
    from .reconcile import rebuild_state

    settings = load_config(config)
    path = Path(settings.state_db)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        old = Path(str(path) + suffix)
        if old.exists():
            old.rename(Path(f"{path}.broken-{stamp}{suffix}"))
            if not suffix:
                click.echo(f"kept the old state DB as {path}.broken-{stamp}")
    with make_client(settings) as client, open_store(settings) as store:
        reports = rebuild_state(settings, client, store)
    code = EX_OK
    for r in reports:
        if r.error:
            click.echo(f"{r.folder}: {r.error}", err=True)
            code = EX_FAILED
        else:
            click.echo(f"{r.folder}: {r.adopted} documents linked to local files, {r.not_uploaded} files "
                       f"not in Dify yet (the next reconcile uploads them), {r.foreign} other documents left alone")
    sys.exit(code)


@main.command("run")
@config_option
def run_service(config: str | None) -> None:
    """Run as a service: watch the folders, sync changes within seconds, full pass on a
    schedule. Stops cleanly on SIGTERM/SIGINT; SIGHUP reloads the configuration."""
    from .daemon import Daemon

    settings = load_config(config)
    try:
        daemon = Daemon(settings.config_path or Path(config or "sync.toml"), settings)
    except ConfigError as exc:
        click.echo(render_problems(exc), err=True)
        sys.exit(EX_CONFIG)
    sys.exit(daemon.run_forever())


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
@click.option("--api-key", default="emulator-key", show_default=True,
              help="The key the emulator accepts (a test value, not a secret).")
@click.option("--legacy", is_flag=True, help="Behave like an old (0.x) Dify server.")
@click.option("--indexing-delay", type=float, default=1.0, show_default=True,
              help="Seconds a document takes to go from queued to completed.")
def emulator(host: str, port: int, api_key: str, legacy: bool, indexing_delay: float) -> None:
    """Run the bundled Dify Knowledge API emulator (needs the `emulator` extra)."""
    try:
        from .emulator import serve
    except ImportError:
        _die("the emulator needs its extra: pip install 'difysync[emulator]'", EX_FAILED)
    click.echo(f"Dify emulator on http://{host}:{port}/v1 (API key: {api_key})", err=True)
    serve(host=host, port=port, api_key=api_key, legacy=legacy, indexing_delay=indexing_delay)


@main.command()
def demo() -> None:
    """Mirror a small sample folder into a local emulator and show the result."""
    from .demo import run_demo

    sys.exit(run_demo())


def run() -> None:  # pragma: no cover - console entry point alias
    main()


if __name__ == "__main__":  # pragma: no cover
    main()
