"""HTTP for `strata receive`: remote-write, flush, health, readiness and /metrics.

Endpoints are rows of `ROUTES`; adding one is a row plus a Handler method. Every request but
scrapes and probes gets an access-log line (`request`), and any request slower than the slow
threshold a `slow_query` line at warn, in the same format as the gateway's.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from blocks.auth import TenantAuth
from blocks.errors import StrataError, http_status_for
from blocks.log import log_request
from ingest.receiver import Receiver
from ingest.rw_decode import MalformedRequest, decompress

MAX_COMPRESSED_BODY = 32 << 20


@dataclass(frozen=True)
class Route:
    """One endpoint: its log/metrics name, the Handler method serving it, the one method it takes."""

    api: str
    handler: str
    method: str = "GET"
    quiet: bool = False  # scrapes and probes: no access-log line


ROUTES: dict[str, Route] = {
    "/api/v1/write": Route("write", "_write", "POST"),
    "/api/v1/push": Route("write", "_write", "POST"),
    "/api/v1/receive": Route("write", "_write", "POST"),
    "/-/flush": Route("flush", "_flush", "POST"),
    "/-/healthy": Route("healthy", "_healthy", quiet=True),
    "/-/ready": Route("ready", "_ready", quiet=True),
    "/metrics": Route("metrics", "_metrics", quiet=True),
}
WRITE_PATHS = tuple(p for p, r in ROUTES.items() if r.api == "write")


@dataclass
class ServerOptions:
    """What `strata receive` sets about its HTTP side."""

    access_log: bool = True
    slow_request_s: float = 5.0


class _Reply(Exception):
    """An answer other than success: status, one line of text, extra headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _error_reply(e: StrataError) -> _Reply:
    """A Strata error as an HTTP answer: status from the error table, the headers it implies."""
    status = http_status_for(e)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Retry-After": "5"} if status == 503 else {}
    text = f"malformed remote-write request: {e}" if isinstance(e, MalformedRequest) else str(e)
    return _Reply(status, text, headers)


def _handler(rx: Receiver, auth: TenantAuth, opts: ServerOptions):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "strata-receive"

        def log_message(self, fmt, *args):  # the access log below replaces http.server's
            return

        def _send(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None:
                raise _Reply(411, "Content-Length is required")
            try:
                n = int(length)
            except ValueError:
                raise _Reply(400, f"invalid Content-Length {length!r}") from None
            if n > MAX_COMPRESSED_BODY:
                self.close_connection = True  # the unread body makes this connection unusable
                raise _Reply(413, f"request body of {n} bytes exceeds the limit of {MAX_COMPRESSED_BODY}")
            return self.rfile.read(n)

        def _tenant(self) -> str:
            return auth.resolve(self.headers.get("X-Scope-OrgID"), self.headers.get("Authorization"))

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch()

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch()

        def _dispatch(self) -> None:
            path = urlparse(self.path).path
            route = ROUTES.get(path)
            t0 = time.perf_counter()
            self._fields: dict = {}
            status = 500
            try:
                if route is None:
                    raise _Reply(404, "not found")
                if self.command != route.method:
                    raise _Reply(405, f"use {route.method}", {"Allow": route.method})
                status = getattr(self, route.handler)()
            except (_Reply, StrataError) as e:  # for a StrataError the error table decides the status
                r = e if isinstance(e, _Reply) else _error_reply(e)
                status = r.status
                self._send(r.status, (str(r) + "\n").encode(), headers=r.headers)
            except Exception as e:  # a server fault (disk, bug): 500 so the sender retries
                status = 500
                self._send(500, f"internal error: {type(e).__name__}: {e}\n".encode())
            finally:
                api = route.api if route else "unknown"
                if api == "write":
                    rx.metrics.requests.labels(str(status)).inc()
                log_request("receiver", api, status, time.perf_counter() - t0,
                            access_log=opts.access_log and not (route and route.quiet), slow_s=opts.slow_request_s,
                            method=self.command, path=path, client=self.client_address[0], **self._fields)

        # ---- endpoints: each returns its status or raises _Reply / StrataError ---------------
        def _healthy(self) -> int:
            self._send(200, b"Healthy.\n")
            return 200

        def _ready(self) -> int:
            ok = rx.ready.is_set()
            self._send(200 if ok else 503, b"Ready.\n" if ok else b"Not ready (replaying the WAL or shutting down).\n")
            return 200 if ok else 503

        def _metrics(self) -> int:
            self._send(200, rx.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
            return 200

        def _write(self) -> int:
            body = self._body()
            ctype = self.headers.get("Content-Type", "")
            version = self.headers.get("X-Prometheus-Remote-Write-Version", "0.1.0")
            if "io.prometheus.write.v2" in ctype or version.startswith("2."):
                raise _Reply(415, "remote-write 2.0 is not supported; send remote-write 1.0 (protobuf prometheus.WriteRequest)")
            enc = (self.headers.get("Content-Encoding") or "snappy").lower()
            if enc != "snappy":
                raise _Reply(415, f"unsupported Content-Encoding {enc!r}: send snappy block format")
            tenant = self._fields["tenant"] = self._tenant()
            raw = decompress(body, rx.cfg.max_request_bytes)
            res = rx.write(tenant, raw)
            self._fields["samples"] = res.accepted
            if res.rejected:
                n = self._fields["rejected"] = sum(res.rejected.values())
                reasons = ", ".join(f"{k}={v}" for k, v in sorted(res.rejected.items()))
                raise _Reply(400, f"{n} samples rejected ({reasons}), {res.accepted} accepted; first: {res.first_error}")
            self._send(204, b"")
            return 204

        def _flush(self) -> int:
            if auth.tokens:  # with tokens, only a token holder may seal
                self._fields["tenant"] = self._tenant()
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            if not rx.ready.is_set():
                raise _Reply(503, "not ready")
            t0 = time.perf_counter()
            sealed = rx.flush()
            doc = {"seconds": round(time.perf_counter() - t0, 3),
                   "blocks": [{"tenant": s.meta.tenant, "ulid": s.meta.ulid, "min_time": s.meta.min_time,
                               "max_time": s.meta.max_time, "sealed_until": s.sealed_until,
                               "series": s.meta.stats.series, "samples": s.meta.stats.samples,
                               "duplicates_dropped": s.duplicates_dropped} for s in sealed]}
            self._fields["blocks"] = len(sealed)
            self._send(200, json.dumps(doc).encode(), "application/json")
            return 200

    return Handler


def serve_http(rx: Receiver, auth: TenantAuth, listen: str,
               options: ServerOptions | None = None) -> tuple[ThreadingHTTPServer, int]:
    """Start the HTTP server in a thread; returns (server, bound port)."""
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _handler(rx, auth, options or ServerOptions()))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="strata-receive-http", daemon=True).start()
    return server, server.server_address[1]


__all__ = ["serve_http", "ServerOptions", "ROUTES", "WRITE_PATHS"]
