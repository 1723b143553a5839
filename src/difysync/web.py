"""The service's small HTTP endpoint (``metrics.listen``): /metrics for Prometheus, /healthz
for a load balancer or systemd's neighbours, /status.json and a read-only status page at /.

stdlib http.server in a daemon thread: no web framework is a dependency of the service.
It only reads (metrics.Board); every request is a GET, and nothing it serves can change
what difysync does. File names are user data: the page builds its DOM with textContent,
never with HTML from the data, and its Content-Security-Policy allows only its own script.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import choose_encoder

from .errors import ConfigError
from .metrics import Board

log = logging.getLogger("difysync")

REFRESH_MS = 3000


class StatusServer:
    """Binds at construction (a port already taken is a ConfigError naming
    metrics.listen), serves from ``start()`` until ``stop()``."""

    def __init__(self, board: Board, host: str, port: int) -> None:
        self.board = board
        self.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {self.listen}: {exc.strerror or exc} "
                              "(another service on that port? give each its own)") from None
        self._server.board = board  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="difysync-web",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in str(host) else f"http://{host}:{port}/"

    def start(self) -> StatusServer:
        self._thread.start()
        log.info("metrics, /healthz and the status page on %s", self.url)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=2)
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restart does not wait for TIME_WAIT; a live listener still refuses us


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = "difysync"
    sys_version = ""  # no Python version in the Server header
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # http.server calls it by this name
        board: Board = self.server.board  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":  # text format 0.0.4, or OpenMetrics for a scraper that asks for it
                encode, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, content_type, encode(board.registry))
            elif path == "/healthz":
                health = board.snapshot().health()
                status = HTTPStatus.OK if health["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
                self._json(status, health)
            elif path == "/status.json":
                self._json(HTTPStatus.OK, board.snapshot().as_dict())
            elif path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode(), page=True)
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": "not found",
                                                  "paths": ["/", "/status.json", "/healthz", "/metrics"]})
        except Exception:  # a failed read answers 500; the service goes on
            log.exception("the status endpoint failed to answer %s", path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the service's log)"})

    def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body, ensure_ascii=False).encode())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, *, page: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if page:
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        log.debug("web: " + format, *args)


SCRIPT = """
const STATES = {idle: "idle", scanning: "scanning", hashing: "scanning", listing: "scanning",
                syncing: "syncing", waiting: "syncing", backing_off: "backing off", error: "error"};
const COUNTS = ["synced", "pending", "indexing", "error", "skipped", "quarantined", "in_flight"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 120) return s + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function clock(iso) {
  return iso ? new Date(Date.parse(iso)).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit",
                                                                 second: "2-digit", hour12: false}) : "";
}
function label(folder) { return folder.split("/").filter(Boolean).pop() || folder; }
function fill(id, rows) {
  const body = document.getElementById(id);
  body.replaceChildren(...rows);
}
function render(data) {
  const svc = data.service;
  document.getElementById("health").textContent = svc.healthy ? "healthy" : "unhealthy";
  document.getElementById("health").className = "badge " + (svc.healthy ? "ok" : "bad");
  document.getElementById("meta").textContent =
    "difysync " + svc.version + " \\u00b7 watcher " + svc.watcher + " \\u00b7 up since " + clock(svc.started_at) +
    (svc.state_error ? " \\u00b7 state DB: " + svc.state_error : "");
  fill("folders", data.folders.map(f => {
    const state = STATES[f.phase] || f.phase_text;
    const row = el("tr", {"data-folder": f.folder, "data-phase": f.phase},
      el("td", {class: "folder"}, el("div", {class: "name"}, label(f.folder)),
         el("div", {class: "sub path"}, f.folder), el("div", {class: "sub"}, "dataset " + f.dataset)),
      el("td", {class: "status"}, el("span", {class: "state " + state.replace(" ", "-")}, state),
         f.problem ? el("div", {class: "sub warn"}, f.problem.message) : ""),
      ...COUNTS.map(c => el("td", {class: "num " + c + (f.counts[c] && (c === "error" || c === "quarantined") ? " warn" : ""),
                                 "data-count": c}, f.counts[c])),
      el("td", {title: f.last_success || ""}, ago(f.last_success)));
    return row;
  }));
  fill("actions", data.recent_actions.length ? data.recent_actions.map(a => el("tr", {class: "result-" + a.result},
      el("td", {class: "time"}, clock(a.at)), el("td", {title: a.folder}, label(a.folder)), el("td", {}, a.kind),
      el("td", {class: "path"}, a.old_path ? a.old_path + " \\u2192 " + a.path : a.path),
      el("td", {class: "result"}, a.result), el("td", {class: "sub"}, a.message)))
    : [el("tr", {}, el("td", {colspan: 6, class: "sub"}, "nothing yet"))]);
  fill("errors", data.recent_errors.length ? data.recent_errors.map(e => el("li", {},
      el("span", {class: "sub time"}, clock(e.at) + " "), el("b", {title: e.folder}, label(e.folder) + ": "),
      e.message))
    : [el("li", {class: "sub"}, "none")]);
  document.getElementById("updated").textContent = "updated " + clock(svc.generated_at);
}
async function refresh() {
  try {
    const response = await fetch("status.json", {cache: "no-store"});
    render(await response.json());
    document.getElementById("offline").hidden = true;
  } catch (e) {
    document.getElementById("offline").hidden = false;
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
""".replace("REFRESH_MS", str(REFRESH_MS))

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em 2em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.6em 0 .5em; }
header { display: flex; align-items: baseline; gap: 1em; flex-wrap: wrap; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e4e4e4; vertical-align: top; }
th { font-weight: 600; color: #555; font-size: .9em; background: #f0f0f0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; width: 1%; }
td.folder { min-width: 12em; } td.folder .name { font-weight: 600; } td.status { min-width: 14em; }
.time { white-space: nowrap; } li { margin: .25em 0; }
.path { font-family: ui-monospace, monospace; font-size: .92em; word-break: break-all; }
.sub { color: #777; font-size: .88em; } .warn { color: #b3261e; }
.badge { padding: .1em .6em; border-radius: 1em; font-weight: 600; }
.ok { background: #dcf3e0; color: #14682a; } .bad { background: #fbe0de; color: #b3261e; }
.state { padding: .05em .5em; border-radius: .3em; background: #eee; }
.state.idle { background: #dcf3e0; } .state.scanning, .state.syncing { background: #dde8fb; }
.state.backing-off { background: #fdf0cf; } .state.error { background: #fbe0de; }
tr.result-failed td.result { color: #b3261e; font-weight: 600; }
ul { background: #fff; padding: .5em 1.5em; margin: 0; } #offline { color: #b3261e; }
"""

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>difysync status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body>
<header><h1>difysync</h1><span id="health" class="badge">loading</span><span id="meta" class="sub"></span>
<span id="updated" class="sub"></span><span id="offline" hidden>the service does not answer</span></header>
<noscript>This page needs JavaScript; the same data is at <a href="status.json">status.json</a>.</noscript>
<h2>Folders</h2>
<table><thead><tr><th>Folder / dataset</th><th>State</th><th class="num">Synced</th><th class="num">Pending</th>
<th class="num">Indexing</th><th class="num">Errors</th><th class="num">Skipped</th><th class="num">Quarantined</th>
<th class="num">In flight</th><th>Last success</th></tr></thead><tbody id="folders"></tbody></table>
<h2>Recent errors</h2>
<ul id="errors"></ul>
<h2>Recent actions</h2>
<table><thead><tr><th>Time</th><th>Folder</th><th>Action</th><th>Path</th><th>Result</th><th>Detail</th></tr></thead>
<tbody id="actions"></tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

__all__ = ["PAGE", "StatusServer"]
