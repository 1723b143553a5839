"""Security properties, each proven rather than promised: the API key stays secret, TLS is
verified, plain http leaves the machine only when asked to, the state DB is private."""

from __future__ import annotations

import shutil
import stat
import subprocess
import threading
import time

import click
import pytest
import uvicorn

from difysync.cli import main
from difysync.emulator import EmulatorServer
from difysync.emulator.faults import FaultRule

from .sandbox import Sandbox

SECRET = "dataset-s3cr3t-k3y-that-must-never-leak"


@pytest.fixture
def secret_emulator():
    with EmulatorServer(api_key=SECRET) as emu:
        yield emu


def test_the_key_appears_in_no_output_log_json_or_state_even_when_things_go_wrong(tmp_path, secret_emulator):
    emu = secret_emulator
    box = Sandbox(tmp_path, emu)
    box.write("a.md", "a")
    box.write("b.md", "b")
    box.write("skip.png", "x")
    emu.faults.fail_next.extend([
        FaultRule(status=503, method="POST"),
        FaultRule(status=429, headers={"Retry-After": "0"}),
        FaultRule(status=400, code="invalid_param", message="", method="POST"),
        FaultRule(action="drop", method="GET"),
    ])
    outputs = [
        box.cli("--log-level", "debug", "reconcile", "-c", str(box.config), "--json"),
        box.cli("--log-level", "debug", "--log-format", "json", "reconcile", "-c", str(box.config), "--dry-run"),
        box.cli("--log-level", "debug", "status", "-c", str(box.config), "--json"),
        box.cli("--log-level", "debug", "check", "-c", str(box.config)),
        box.subprocess("--log-level", "debug", "reconcile", "-c", str(box.config), "--json"),
    ]
    box.remove("b.md")
    outputs.append(box.subprocess("--log-level", "debug", "reconcile", "-c", str(box.config)))
    emu.stop()  # unreachable: the error path must not leak either
    outputs.append(box.subprocess("--log-level", "debug", "reconcile", "-c", str(box.config)))
    for result in outputs:
        assert SECRET not in result.stdout and SECRET not in result.stderr
    for path in [*tmp_path.glob("state.db*"), *tmp_path.glob("state.db.locks/*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_the_key_is_never_taken_from_the_command_line():
    """No command but the emulator's (whose key is a test value) has an option for a key."""
    def walk(command: click.Command, name: str):
        yield name, command
        if isinstance(command, click.Group):
            for sub_name, sub in command.commands.items():
                yield from walk(sub, sub_name)

    for name, command in walk(main, "difysync"):
        if name == "emulator":
            continue
        for param in command.params:
            assert "key" not in param.name.lower(), f"{name} takes {param.name}"


def test_state_db_and_wal_files_are_created_private(tmp_path, secret_emulator):
    box = Sandbox(tmp_path, secret_emulator)
    box.write("a.md", "a")
    assert box.reconcile().code == 0
    files = [p for p in tmp_path.glob("state.db*") if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    locks = tmp_path / "state.db.locks"  # the write leases (lease.py), beside the DB
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in locks.iterdir())


def test_plain_http_to_a_remote_host_is_refused_unless_allowed(tmp_path, secret_emulator):
    box = Sandbox(tmp_path, secret_emulator)
    box.config.write_text(box.config.read_text().replace(secret_emulator.base_url, "http://dify.example.com/v1"))
    refused = box.reconcile()
    assert refused.code == 78 and "dify.base_url" in refused.stderr and "unencrypted" in refused.stderr
    box.config.write_text(box.config.read_text().replace("[dify]\n", "[dify]\nallow_insecure_http = true\n"))
    assert box.cli("reconcile", "-c", str(box.config), "--dry-run").code != 78


def test_a_plain_http_base_url_gets_a_verifying_tls_context_and_https_the_trusted_cas():
    """An http:// Dify is never spoken to over TLS (no redirects are followed), so its
    client skips reading the CA bundle; the context it holds still verifies (fails closed)."""
    import ssl

    from difysync.dify import _tls_for

    plain = _tls_for("http://127.0.0.1:5001/v1")
    assert isinstance(plain, ssl.SSLContext)
    assert plain.verify_mode is ssl.CERT_REQUIRED and plain.check_hostname
    assert plain.cert_store_stats()["x509_ca"] == 0  # trusts nobody
    assert _tls_for("https://dify.example/v1") is True  # httpx's default: certifi's CAs, verified


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make a test certificate")
def test_tls_certificates_are_verified(tmp_path, secret_emulator):
    """A server with a certificate nobody trusts is refused at once, not retried."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = uvicorn.Server(uvicorn.Config(secret_emulator.app, host="127.0.0.1", port=0, log_level="error",
                                           ssl_keyfile=str(key), ssl_certfile=str(cert), lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        box = Sandbox(tmp_path, secret_emulator)
        box.config.write_text(box.config.read_text().replace(secret_emulator.base_url,
                                                             f"https://127.0.0.1:{port}/v1"))
        box.write("a.md", "a")
        secret_emulator.reset_requests()
        result = box.cli("--log-level", "debug", "reconcile", "-c", str(box.config), "--json")
        assert result.code == 69
        assert "not trusted" in " ".join(result.json["errors"])
        assert secret_emulator.requests == []  # nothing got through
        assert "retrying" not in result.stderr  # and nothing was tried again
    finally:
        server.should_exit = True
        thread.join(timeout=5)
