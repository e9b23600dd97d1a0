"""HTTP for `strata receive`: remote-write, flush, health, readiness and /metrics."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

from blocks.errors import StrataError, http_status_for
from ingest.receiver import Receiver
from ingest.rw_decode import MalformedRequest, decompress
from blocks.auth import TenantAuth

MAX_COMPRESSED_BODY = 32 << 20
WRITE_PATHS = ("/api/v1/write", "/api/v1/push", "/api/v1/receive")


class _Reply(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _handler(rx: Receiver, auth: TenantAuth):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "strata-receive"

        def log_message(self, fmt, *args):  # quiet; /metrics has the numbers
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

        def do_GET(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            if path == "/-/healthy":
                self._send(200, b"Healthy.\n")
            elif path == "/-/ready":
                ok = rx.ready.is_set()
                self._send(200 if ok else 503, b"Ready.\n" if ok else b"Not ready (replaying the WAL or shutting down).\n")
            elif path == "/metrics":
                self._send(200, rx.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
            elif path in WRITE_PATHS or path == "/-/flush":
                self._send(405, b"use POST\n", headers={"Allow": "POST"})
            else:
                self._send(404, b"not found\n")

        def do_POST(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            if path in WRITE_PATHS:
                self._write()
            elif path == "/-/flush":
                self._flush()
            elif path in ("/-/healthy", "/-/ready", "/metrics"):
                self._send(405, b"use GET\n", headers={"Allow": "GET"})
            else:
                self._send(404, b"not found\n")

        def _write(self) -> None:
            status = 204
            try:
                try:
                    body = self._body()
                    ctype = self.headers.get("Content-Type", "")
                    version = self.headers.get("X-Prometheus-Remote-Write-Version", "0.1.0")
                    if "io.prometheus.write.v2" in ctype or version.startswith("2."):
                        raise _Reply(415, "remote-write 2.0 is not supported; send remote-write 1.0 (protobuf prometheus.WriteRequest)")
                    enc = (self.headers.get("Content-Encoding") or "snappy").lower()
                    if enc != "snappy":
                        raise _Reply(415, f"unsupported Content-Encoding {enc!r}: send snappy block format")
                    tenant = auth.resolve(self.headers.get("X-Scope-OrgID"), self.headers.get("Authorization"))
                    raw = decompress(body, rx.cfg.max_request_bytes)
                    res = rx.write(tenant, raw)
                except StrataError as e:  # the error table decides the status
                    raise _error_reply(e) from None
                if res.rejected:
                    n = sum(res.rejected.values())
                    reasons = ", ".join(f"{k}={v}" for k, v in sorted(res.rejected.items()))
                    raise _Reply(400, f"{n} samples rejected ({reasons}), {res.accepted} accepted; first: {res.first_error}")
                self._send(204, b"")
            except _Reply as r:
                status = r.status
                self._send(r.status, (str(r) + "\n").encode(), headers=r.headers)
            except Exception as e:  # a server fault (disk, bug): 500 so the sender retries
                status = 500
                self._send(500, f"internal error: {type(e).__name__}: {e}\n".encode())
            finally:
                rx.metrics.requests.labels(str(status)).inc()

        def _flush(self) -> None:
            try:
                if auth.tokens:  # with tokens, only a token holder may seal
                    auth.resolve(self.headers.get("X-Scope-OrgID"), self.headers.get("Authorization"))
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
                self._send(200, json.dumps(doc).encode(), "application/json")
            except StrataError as e:
                r = _error_reply(e)
                self._send(r.status, (str(r) + "\n").encode(), headers=r.headers)
            except _Reply as r:
                self._send(r.status, (str(r) + "\n").encode())
            except Exception as e:
                self._send(500, f"flush failed: {type(e).__name__}: {e}\n".encode())

    return Handler


def _error_reply(e: StrataError) -> "_Reply":
    """A Strata error as an HTTP answer: status from the error table, the headers it implies."""
    status = http_status_for(e)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {"Retry-After": "5"} if status == 503 else {}
    text = f"malformed remote-write request: {e}" if isinstance(e, MalformedRequest) else str(e)
    return _Reply(status, text, headers)


def serve_http(rx: Receiver, auth: TenantAuth, listen: str) -> tuple[ThreadingHTTPServer, int]:
    """Start the HTTP server in a thread; returns (server, bound port)."""
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _handler(rx, auth))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="strata-receive-http", daemon=True).start()
    return server, server.server_address[1]


__all__ = ["serve_http", "WRITE_PATHS"]
