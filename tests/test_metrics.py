"""`difysync run` with ``metrics.listen``: one real service (a subprocess) against the
emulator for the whole module, scraped over HTTP with httpx and parsed with
prometheus-client's own parser; /healthz through an outage and back; the bind and
config errors; and the health rules on their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from difysync.config import load_settings
from difysync.emulator import EmulatorServer
from difysync.errors import ConfigError
from difysync.events import Phase
from difysync.metrics import (
    LiveFolder,
    ServiceFacts,
    StoredFolder,
    Unhealthy,
    problem_of,
)

from .test_daemon import Daemon, daemon_box, wait_until

FILES = {"a.md": "alpha", "b.md": "beta", "notes/c.txt": "gamma", "tool.exe": "not a document"}
PER_FOLDER_GAUGES = ("difysync_pending_files", "difysync_in_flight_operations", "difysync_quarantined_files",
                     "difysync_synced_files", "difysync_error_files", "difysync_skipped_files",
                     "difysync_dirty_paths", "difysync_folder_healthy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_metrics(config: Path, listen: str) -> None:
    text = config.read_text()
    if "[metrics]" in text:
        start = text.index("[metrics]")
        end = text.index("\n", text.index("listen", start))
        text = text[:start] + f'[metrics]\nlisten = "{listen}"' + text[end:]
    else:
        text = text.replace("[[folders]]", f'[metrics]\nlisten = "{listen}"\n[[folders]]', 1)
    config.write_text(text)


@dataclass
class Service:
    emu: EmulatorServer
    box: object
    daemon: Daemon
    url: str
    started: float

    @property
    def folder(self) -> str:
        return str(self.box.root)  # type: ignore[attr-defined]

    def scrape(self) -> list[Sample]:
        response = httpx.get(self.url + "metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")  # what any scraper reads
        return [s for family in text_string_to_metric_families(response.text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        return sample_value(self.scrape(), name, **labels)


def sample_value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return sum(found) if found else None


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with EmulatorServer() as emu:
        tmp = tmp_path_factory.mktemp("metrics")
        box = daemon_box(tmp, emu)
        port = free_port()
        with_metrics(box.config, f"127.0.0.1:{port}")
        for rel, content in FILES.items():
            box.write(rel, content)
        started = time.time()
        daemon = Daemon(box)
        try:
            daemon.wait_ready()
            svc = Service(emu, box, daemon, f"http://127.0.0.1:{port}/", started)
            wait_until(lambda: svc.value("difysync_actions_total", kind="create", result="ok") == 3, 10,
                       what="three creates counted")
            yield svc
        finally:
            daemon.kill()


# --- the scrape --------------------------------------------------------------------------


def test_actions_are_counted_by_folder_kind_and_result(service: Service) -> None:
    samples = service.scrape()
    assert sample_value(samples, "difysync_actions_total", folder=service.folder, kind="create", result="ok") == 3
    assert sample_value(samples, "difysync_actions_total", folder=service.folder, kind="skip",
                        result="skipped") == 1  # tool.exe
    assert sample_value(samples, "difysync_sent_bytes_total", folder=service.folder) == sum(
        len(c) for rel, c in FILES.items() if not rel.endswith(".exe"))


def test_request_latency_is_a_histogram_by_route_method_and_status(service: Service) -> None:
    samples = service.scrape()
    create = {"route": "/datasets/{id}/document/create_by_file", "method": "POST", "status": "200"}
    assert sample_value(samples, "difysync_request_duration_seconds_count", **create) == 3
    assert sample_value(samples, "difysync_request_duration_seconds_bucket", le="+Inf", **create) == 3
    assert 0 < sample_value(samples, "difysync_request_duration_seconds_sum", **create) < 30
    listing = sample_value(samples, "difysync_request_duration_seconds_count", route="/datasets/{id}/documents",
                           method="GET", status="200")
    assert listing and listing >= 1
    assert not any("dataset" in s.labels.get("route", "") and any(ch.isdigit() for ch in s.labels["route"])
                   for s in samples)  # ids never become label values


def test_every_folder_has_its_gauges_its_phase_and_its_last_successful_pass(service: Service) -> None:
    samples = service.scrape()
    for name in PER_FOLDER_GAUGES:
        assert sample_value(samples, name, folder=service.folder) is not None, name
    assert sample_value(samples, "difysync_skipped_files", folder=service.folder) == 1
    assert sample_value(samples, "difysync_quarantined_files", folder=service.folder) == 0
    assert sample_value(samples, "difysync_folder_healthy", folder=service.folder) == 1
    assert service.started <= sample_value(samples, "difysync_last_success_timestamp_seconds",
                                           folder=service.folder) <= time.time()
    assert sample_value(samples, "difysync_folder_phase", folder=service.folder, difysync_folder_phase="idle") == 1
    assert sample_value(samples, "difysync_watcher_state", difysync_watcher_state="running") == 1
    assert sample_value(samples, "difysync_build_info") == 1


def test_a_scraper_that_asks_for_openmetrics_gets_it(service: Service) -> None:
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    response = httpx.get(service.url + "metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"},
                         timeout=5)
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(response.text)}
    assert families["difysync_actions"].type == "counter"
    assert families["difysync_request_duration_seconds"].type == "histogram"


def test_healthz_answers_200_while_every_folder_is_healthy(service: Service) -> None:
    response = httpx.get(service.url + "healthz", timeout=5)
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_status_json_has_each_folder_with_its_state_counts_and_recent_actions(service: Service) -> None:
    status = httpx.get(service.url + "status.json", timeout=5).json()
    [folder] = status["folders"]
    assert folder["folder"] == service.folder and folder["phase"] == "idle" and folder["healthy"]
    assert folder["counts"]["skipped"] == 1
    assert folder["counts"]["synced"] + folder["counts"]["pending"] + folder["counts"]["indexing"] == 3
    assert {(a["kind"], a["path"], a["result"]) for a in status["recent_actions"]} >= {
        ("create", "a.md", "ok"), ("create", "notes/c.txt", "ok"), ("skip", "tool.exe", "skipped")}
    assert status["service"]["watcher"] == "running"


def test_unknown_paths_are_404(service: Service) -> None:
    assert httpx.get(service.url + "nothing-here", timeout=5).status_code == 404


def test_healthz_answers_503_with_the_reason_while_dify_is_unreachable_then_200_again(service: Service) -> None:
    # given a healthy service; when Dify goes away and a change needs sending
    service.emu.stop()
    try:
        service.box.write("during.md", "written while Dify is down")  # type: ignore[attr-defined]
        def backing_off() -> dict | None:  # (a failed pass is "error" for the moment before its backoff starts)
            response = httpx.get(service.url + "healthz", timeout=5)
            body = response.json()
            return body if response.status_code == 503 and body["folders"][0]["reason"] == "backing_off" else None

        # then /healthz answers 503, naming the folder and why
        [problem] = wait_until(backing_off, 10, what="503 backing_off")["folders"]
        assert problem["folder"] == service.folder and problem["reason"] == Unhealthy.BACKING_OFF.value
        assert "cannot reach" in problem["message"]
        samples = service.scrape()
        assert sample_value(samples, "difysync_folder_healthy", folder=service.folder) == 0
        assert sample_value(samples, "difysync_request_duration_seconds_count", status="none") >= 1
        assert sample_value(samples, "difysync_retries_total", error="ServerUnreachable") >= 1
    finally:
        service.emu.start()
    # and once Dify answers again, the next try gets through
    wait_until(lambda: httpx.get(service.url + "healthz", timeout=5).status_code == 200, 15, what="200 again")
    wait_until(lambda: "during.md" in service.box.docs(), 5, what="catch-up")  # type: ignore[attr-defined]


def test_a_reload_with_a_new_listen_address_moves_the_endpoint(service: Service) -> None:
    import signal

    old = service.url
    port = free_port()
    with_metrics(service.box.config, f"127.0.0.1:{port}")  # type: ignore[attr-defined]
    service.daemon.signal(signal.SIGHUP)
    new = f"http://127.0.0.1:{port}/"
    wait_until(lambda: _answers(new + "healthz"), 10, what="the new address")
    assert not _answers(old + "healthz")
    service.url = new


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code in (200, 503)
    except httpx.TransportError:
        return False


# --- errors at start ---------------------------------------------------------------------


def test_a_port_already_taken_stops_the_start_with_exit_78_and_one_line_naming_the_key(
        service: Service, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "sync.toml"
        config.write_text(service.box.config.read_text().replace(  # type: ignore[attr-defined]
            'state_db = "state.db"', f'state_db = "{tmp_path / "state.db"}"').replace(
            'path = "docs"', f'path = "{tmp_path / "docs"}"'))
        with_metrics(config, f"127.0.0.1:{port}")
        proc = subprocess.run([sys.executable, "-m", "difysync", "run", "-c", str(config)], capture_output=True,
                              check=False, text=True, timeout=30, env={**os.environ, **service.box.env})  # type: ignore[attr-defined]
    assert proc.returncode == 78, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, proc.stderr
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state.db").exists()  # nothing started


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:0", "127.0.0.1:99999", ":9464", "http://127.0.0.1:9464",
                                    "[not-ipv6]:1"])
def test_a_listen_value_that_is_not_host_port_is_one_config_error_naming_the_key(tmp_path: Path,
                                                                                listen: str) -> None:
    config = tmp_path / "sync.toml"
    config.write_text(f'[metrics]\nlisten = "{listen}"\n[[folders]]\npath = "docs"\ndataset_name = "Docs"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert caught.value.problems == [("metrics.listen: must be HOST:PORT with a port from 1 to 65535, such as "
                                      f"127.0.0.1:9464 or [::1]:9464 (got {listen!r})")]


def test_listen_is_off_by_default_and_takes_ipv6_and_the_environment(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "sync.toml"
    config.write_text('[[folders]]\npath = "docs"\ndataset_name = "Docs"\n')
    assert load_settings(config).metrics.address is None
    monkeypatch.setenv("DIFYSYNC_METRICS__LISTEN", "[::1]:9464")
    assert load_settings(config).metrics.address == ("::1", 9464)


# --- the health rules --------------------------------------------------------------------

HOUR = 3600.0
FACTS = ServiceFacts(folders=(), state_db=Path("unused.db"), full_pass_seconds=HOUR, started_at=1_000_000.0)
FINE = LiveFolder("/srv/docs", "Docs")


def test_a_folder_is_healthy_within_three_schedule_intervals_of_its_last_successful_pass() -> None:
    stored = StoredFolder(last_success=FACTS.started_at + 10)
    assert problem_of(Phase.IDLE, FINE, stored, FACTS, now=stored.last_success + 3 * HOUR - 1) is None
    late = problem_of(Phase.IDLE, FINE, stored, FACTS, now=stored.last_success + 3 * HOUR + 1)
    assert late is not None and late.reason is Unhealthy.STALE and "3x schedule.full_reconcile_minutes" in late.message


def test_a_service_that_just_started_is_not_stale_for_an_old_last_pass() -> None:
    stored = StoredFolder(last_success=FACTS.started_at - 10 * HOUR)  # before a long shutdown
    assert problem_of(Phase.SCANNING, FINE, stored, FACTS, now=FACTS.started_at + 60) is None
    never = problem_of(Phase.IDLE, FINE, StoredFolder(), FACTS, now=FACTS.started_at + 3 * HOUR + 1)
    assert never is not None and never.reason is Unhealthy.STALE and "since the service started" in never.message


def test_an_outage_counts_through_its_retries_and_a_failed_pass_is_an_error() -> None:
    down = LiveFolder("/srv/docs", "Docs", outage="cannot reach dify.example.com", retry_in=4)
    for phase in (Phase.BACKING_OFF, Phase.LISTING):  # the backoff, and the retry pass under way
        problem = problem_of(phase, down, StoredFolder(), FACTS, now=FACTS.started_at)
        assert problem is not None and problem.reason is Unhealthy.BACKING_OFF
        assert problem.message.startswith("cannot reach dify.example.com")
    failed = problem_of(Phase.ERROR, FINE, StoredFolder(last_attempt_error="dataset x does not exist"), FACTS,
                        now=FACTS.started_at)
    assert failed is not None and failed.reason is Unhealthy.ERROR and failed.message == "dataset x does not exist"
